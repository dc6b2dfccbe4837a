// CUDA entry point of the fused sampler (algorithm and parameters in ../common/sampling_params.h).
#pragma once
#include <cstdint>

#include "../common/sampling_params.h"

namespace vilg::cuda {

void sample(const SampleParams& p, DType dtype, int device, uintptr_t stream);

}  // namespace vilg::cuda
