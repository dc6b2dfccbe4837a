// Fused decoding attention: one generation step, the query at sequence position `pos` attending
// exactly the keys its layout allows (a short, sorted list of cache positions), with per-sample
// padded text masked. Params are shared by the CPU kernel (here) and the CUDA twin.
#pragma once
#include <cstdint>

#include "../common/dtype.h"

namespace vilg {

struct DecodeParams {
  int batch = 0, heads = 0, head_dim = 0;
  int64_t cache_len = 0;  // S
  float scale = 1.f;
  // q, out: [batch, heads, head_dim]; caches: [batch, heads, S, head_dim]; strides in elements
  // for the leading dims, unit stride along head_dim.
  const void* q = nullptr;
  int64_t q_s[2] = {0, 0};
  const void* k = nullptr;
  int64_t k_s[3] = {0, 0, 0};
  const void* v = nullptr;
  int64_t v_s[3] = {0, 0, 0};
  void* o = nullptr;
  int64_t o_s[2] = {0, 0};
  // Allowed key positions (sequence order, < S), ascending.
  const int32_t* keys = nullptr;
  int num_keys = 0;
  // Text keys at positions [text_start + text_lens[b], text_start + text_len) are masked.
  const int32_t* text_lens = nullptr;  // [batch] or null; clamped to [0, text_len]
  int text_start = 0, text_len = 0;
  // CUDA split-K: partial (max, sum, acc[head_dim]) per (batch, head, split).
  float* ws = nullptr;
  int splits = 1;
};

}  // namespace vilg

namespace vilg::cpu {

void decode_attention(const DecodeParams& p, DType dtype);

}  // namespace vilg::cpu
