// Vector quantisation: nearest-code lookup, code embedding (gather) and per-code statistics.
// The POD parameter blocks are shared by the CPU kernels (../cpu/vq.h) and the CUDA twins
// (../cuda/vq.h). Kernels never allocate: outputs and workspaces come from the caller.
#pragma once
#include <cstdint>

#include "dtype.h"

namespace vilg {

// argmin_k ||x_i - c_k||^2 (ties to the lowest k) for x [n, d], codebook [k, d]; rows of both
// have unit element stride and free row strides. `ws` holds the code norms (and, on the CPU, a
// float copy of the codebook); its size comes from vq_workspace_floats.
struct VqParams {
  int64_t n = 0;
  int k = 0, d = 0;
  const void* x = nullptr;
  int64_t x_stride = 0;
  const void* codebook = nullptr;
  int64_t c_stride = 0;
  int64_t* out = nullptr;  // [n]
  float* ws = nullptr;
};

// out [n, d] (contiguous) = codebook[idx[i]]; idx int32 or int64 [n].
struct VqEmbedParams {
  int64_t n = 0;
  int k = 0, d = 0;
  const void* idx = nullptr;
  bool idx64 = true;
  const void* codebook = nullptr;
  int64_t c_stride = 0;
  void* out = nullptr;
  // CUDA only: [2] int64 error record (count of out-of-range indices, one such index).
  int64_t* err = nullptr;
};

// counts [k] = #{i : idx[i] = c}, sums [k, d] = sum of x[i] over those i (float32 outputs).
struct VqStatsParams {
  int64_t n = 0;
  int k = 0, d = 0;
  const void* idx = nullptr;
  bool idx64 = true;
  const void* x = nullptr;
  int64_t x_stride = 0;
  float* counts = nullptr;
  float* sums = nullptr;  // contiguous [k, d]
  int32_t* ws = nullptr;  // CPU: n + k + 1 int32 (bucket offsets and row order)
  int64_t* err = nullptr;  // CUDA only, as in VqEmbedParams
};

}  // namespace vilg
