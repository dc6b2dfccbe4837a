// Entry points of the CUDA kernels, callable from the plain C++ binding files. Each launches on
// `stream` of CUDA device `device` and never allocates device memory.
#pragma once
#include <cstdint>

#include "../common/attention_params.h"
#include "../common/dtype.h"

namespace vilg::cuda {

void attention_fwd(const AttnParams& p, DType dtype, int device, uintptr_t stream);
void attention_bwd(const AttnParams& p, DType dtype, int device, uintptr_t stream);

}  // namespace vilg::cuda
