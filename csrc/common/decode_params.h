// Fused decoding attention: one generation step, the query at sequence position `pos` attending
// exactly the keys its layout allows (a short, sorted list of cache positions), with per-sample
// padded text masked. Params are shared by the CPU kernel (../cpu/decode.h) and the CUDA twin
// (../cuda/decode.h).
#pragma once
#include <cstdint>

#include "dtype.h"
#include "macros.h"

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
  // Or every position's list at once (CSR: position i's keys are keys[key_ptr[i]:key_ptr[i+1]])
  // and the position in memory: the arguments are then the same at every step, which a CUDA
  // graph or a compiled step needs. A position outside [0, key_rows) attends nothing.
  const int32_t* key_ptr = nullptr;
  const int64_t* pos = nullptr;
  int key_rows = 0;
  // Text keys at positions [text_start + text_lens[b], text_start + text_len) are masked.
  const int32_t* text_lens = nullptr;  // [batch] or null; clamped to [0, text_len]
  int text_start = 0, text_len = 0;
  // CUDA split-K: partial (max, sum, acc[head_dim]) per (batch, head, split).
  float* ws = nullptr;
  int splits = 1;
};

struct KeySpan {
  const int32_t* keys;
  int count;
};

// The keys this call's query attends, for both ways of passing them.
VILG_HD KeySpan key_span(const DecodeParams& p) {
  if (p.key_ptr == nullptr) return {p.keys, p.num_keys};
  const int64_t pos = *p.pos;
  if (pos < 0 || pos >= p.key_rows) return {p.keys, 0};
  const int32_t lo = p.key_ptr[pos];
  return {p.keys + lo, p.key_ptr[pos + 1] - lo};
}

}  // namespace vilg
