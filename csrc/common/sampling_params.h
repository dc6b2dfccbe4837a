// Fused sampler: classifier-free-guidance mix, temperature, top-k, top-p and one categorical
// draw per row from Philox4x32-10 (key = seed, counter = (offset, row)). The algorithm, shared by
// the CPU kernel (../cpu/sampling.h) and the CUDA twin (../cuda/sampling.h), step by step for a
// row of V logits:
//   z_i = sampler_logit(logits_i, uncond_i)    (philox.h; nan -> -inf)
//   greedy (temperature <= 0): the lowest i with the largest z_i (no temperature applied)
//   top-k (0 < k < V): tau_k = the k-th largest z (with repeats); keep z_i >= tau_k
//   weights w_i = sampler_weight(z_i, max z) for kept i (integers, exact sums), W = sum w_i
//   top-p (p < 1): tau_p = the largest kept value v with sum_{z_j >= v} w_j >= top_p_need(p, W);
//                  keep z_i >= tau_p
//   draw: t = scale_draw(sample_bits53(seed, offset, row), W'), W' = the kept total; the token
//         is the first kept i (index order) whose inclusive running sum of w exceeds t.
#pragma once
#include <cstdint>

#include "dtype.h"

namespace vilg {

struct SampleParams {
  int batch = 0;
  int64_t vocab = 0;
  const void* logits = nullptr;  // [batch, vocab], unit stride along vocab
  int64_t l_stride = 0;
  const void* uncond = nullptr;  // same shape, or null
  int64_t u_stride = 0;
  int64_t* out = nullptr;  // [batch]
  float cfg = 1.f;
  float inv_t = 1.f;  // 1 / temperature; 1 in greedy mode
  bool greedy = false;
  int64_t top_k = 0;  // 0 or >= vocab: off
  double top_p = 1.0;  // >= 1: off
  uint64_t seed = 0, offset = 0;
};

}  // namespace vilg
