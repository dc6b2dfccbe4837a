// CUDA entry point of the fused sampler (algorithm and parameters in ../cpu/sampling.h).
#pragma once
#include <cstdint>

#include "../cpu/sampling.h"

namespace vilg::cuda {

void sample(const SampleParams& p, DType dtype, int device, uintptr_t stream);

}  // namespace vilg::cuda
