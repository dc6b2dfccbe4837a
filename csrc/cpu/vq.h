// CPU entry points of the vq family (parameters in ../common/vq_params.h).
#pragma once
#include <cstdint>

#include "../common/vq_params.h"

namespace vilg::cpu {

// Float32 elements of the CPU quantize workspace: code norms and a zero-padded float codebook.
int64_t vq_workspace_floats(int k, int d);

void vq_quantize(const VqParams& p, DType dtype);
// Raise std::invalid_argument (ValueError) naming the first out-of-range index.
void vq_embed(const VqEmbedParams& p, DType dtype);
void vq_code_stats(const VqStatsParams& p, DType dtype);

}  // namespace vilg::cpu
