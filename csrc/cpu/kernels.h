// Entry points of the CPU kernels (the CUDA twins live in ../cuda/kernels.h).
#pragma once
#include "../common/attention_params.h"
#include "../common/dtype.h"
#include "../common/tensor_ref.h"

namespace vilg::cpu {

void attention_fwd(const AttnParams& p, DType dtype);
void attention_bwd(const AttnParams& p, DType dtype);

}  // namespace vilg::cpu
