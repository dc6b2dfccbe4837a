// Host-side helpers shared by the attention .cu files (launch checks, alignment, the fp32
// reference path and the delta pass, which both directions' files use).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "../common/attention_params.h"
#include "../common/dtype.h"
#include "../common/tensor_ref.h"

namespace vilg::cuda {

// Can rows of this [B, H, L, D] 16-bit tensor be moved in 16-byte pieces?
inline bool aligned16(const void* ptr, const int64_t* s) {
  return reinterpret_cast<uintptr_t>(ptr) % 16 == 0 && s[0] % 8 == 0 && s[1] % 8 == 0 &&
         s[2] % 8 == 0;
}

// What every CUDA attention kernel assumes (vilg/ops/_validate.py checks the same first).
inline void check_attention_params(const AttnParams& p) {
  check(p.ls.block == 64 && p.ls.mask_words == 1,
        "CUDA sparse_attention needs layouts with block_size=64");
  check(p.head_dim == 32 || p.head_dim == 64 || p.head_dim == 128,
        "CUDA sparse_attention supports head_dim 32, 64 or 128");
  check(p.heads <= 65535 && p.batch <= 65535,
        "CUDA sparse_attention supports at most 65535 heads and 65535 samples");
}

// fp32 reference path (attention_simt.cu): forward, and dq/dk/dv once delta is computed.
void simt_attention_fwd(const AttnParams& p, cudaStream_t stream);
void simt_attention_bwd(const AttnParams& p, cudaStream_t stream);

// delta = rowsum(dO * O) per sequence row, any float dtype (attention_bwd.cu).
void launch_attention_delta(const AttnParams& p, DType dtype, cudaStream_t stream);

}  // namespace vilg::cuda
