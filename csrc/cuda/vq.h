// CUDA entry points of the VQ family (parameter blocks in ../common/vq_params.h). Each launches on
// `stream` of CUDA device `device` and never allocates device memory.
#pragma once
#include <cstdint>

#include "../common/vq_params.h"

namespace vilg::cuda {

// Float32 elements of the quantize workspace: the code norms ||c||^2.
int64_t vq_workspace_floats(int k, int d);

// fast_fp32: float32 inputs on tensor cores with split-TF32 (3 TF32 products per term,
// ~fp32-accurate scores, not bit-identical to the FMA path); ignored for fp16 / bf16.
void vq_quantize(const VqParams& p, DType dtype, bool fast_fp32, int device, uintptr_t stream);
// Out-of-range indices give zero rows and are recorded in p.err (see VqEmbedParams).
void vq_embed(const VqEmbedParams& p, DType dtype, int device, uintptr_t stream);
// float32 atomics: sums are not bit-reproducible run to run. Bad indices are skipped and
// recorded in p.err.
void vq_code_stats(const VqStatsParams& p, DType dtype, int device, uintptr_t stream);

}  // namespace vilg::cuda
