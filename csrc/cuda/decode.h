// CUDA entry point of decoding attention (parameters in ../common/decode_params.h).
#pragma once
#include <cstdint>

#include "../common/decode_params.h"

namespace vilg::cuda {

// Blocks per (batch, head) the launch will use (split-K over the key list when batch * heads
// would leave the GPU idle); the workspace holds (head_dim + 2) floats per (batch, head, split)
// when splits > 1.
int decode_splits(int batch, int heads, int num_keys, int device);
int64_t decode_workspace_floats(int batch, int heads, int head_dim, int splits);

void decode_attention(const DecodeParams& p, DType dtype, int device, uintptr_t stream);

}  // namespace vilg::cuda
