// CPU entry points of the sampling family (parameters in ../common/sampling_params.h).
#pragma once
#include <cstdint>

#include "../common/sampling_params.h"

namespace vilg::cpu {

void sample(const SampleParams& p, DType dtype);

}  // namespace vilg::cpu
