// Decoding attention on the CPU: one task per (batch, head); scores for the allowed keys only,
// then a two-pass softmax and the weighted sum of their values, all in float32.
#include "decode.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "../common/macros.h"
#include "../common/tensor_ref.h"
#include "dispatch.h"

namespace vilg::cpu {
namespace {

// Eight independent partial sums: a single float accumulator would serialise on FMA latency
// (the compiler may not reassociate a float reduction by itself).
template <typename T>
VILG_CPU_CLONES float dot_row(const float* q, const T* k, int D) {
  float acc[8] = {};
  int d = 0;
  for (; d + 8 <= D; d += 8)
    for (int j = 0; j < 8; ++j) acc[j] += q[d + j] * to_float(k[d + j]);
  float s = 0.f;
  for (; d < D; ++d) s += q[d] * to_float(k[d]);
  for (int j = 0; j < 8; ++j) s += acc[j];
  return s;
}

template <typename T>
VILG_CPU_CLONES void axpy_row(float* o, float a, const T* v, int D) {
  for (int d = 0; d < D; ++d) o[d] += a * to_float(v[d]);
}

template <typename T>
void decode_impl(const DecodeParams& p) {
  const int D = p.head_dim;
  const int64_t tasks = int64_t(p.batch) * p.heads;
  const KeySpan span = key_span(p);
  const int32_t* keys = span.keys;
  const int num_keys = span.count;
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  // Small calls stay on the calling thread: waking a team costs more than it saves.
#pragma omp parallel if (tasks > 1 && tasks * num_keys * D >= (1 << 15))
  {
    std::vector<float> qf(D), acc(D), s(std::max(num_keys, 1));
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < tasks; ++t) {
      const int b = int(t / p.heads), h = int(t % p.heads);
      int tv = p.text_len;
      if (p.text_lens) tv = std::clamp(p.text_lens[b], 0, p.text_len);
      const int pad_lo = p.text_start + tv, pad_hi = p.text_start + p.text_len;
      const T* q = (const T*)p.q + b * p.q_s[0] + h * p.q_s[1];
      const T* kb = (const T*)p.k + b * p.k_s[0] + h * p.k_s[1];
      const T* vb = (const T*)p.v + b * p.v_s[0] + h * p.v_s[1];
      for (int d = 0; d < D; ++d) qf[d] = to_float(q[d]) * p.scale;
      float mx = kNegInf;
      for (int j = 0; j < num_keys; ++j) {
        const int kp = keys[j];
        const bool masked = kp >= pad_lo && kp < pad_hi;
        s[j] = masked ? kNegInf : dot_row(qf.data(), kb + kp * p.k_s[2], D);
        mx = std::max(mx, s[j]);
      }
      std::fill(acc.begin(), acc.end(), 0.f);
      float sum = 0.f;
      if (mx != kNegInf) {
        for (int j = 0; j < num_keys; ++j) {
          if (s[j] == kNegInf) continue;
          const float e = std::exp(s[j] - mx);
          sum += e;
          axpy_row(acc.data(), e, vb + keys[j] * p.v_s[2], D);
        }
      }
      const float inv = sum > 0.f ? 1.f / sum : 0.f;  // no allowed key: output 0
      T* o = (T*)p.o + b * p.o_s[0] + h * p.o_s[1];
      for (int d = 0; d < D; ++d) o[d] = from_float<T>(acc[d] * inv);
    }
  }
}

}  // namespace

void decode_attention(const DecodeParams& p, DType dtype) {
  dispatch_float(dtype, "decode_attention", [&](auto t) { decode_impl<decltype(t)>(p); });
}

}  // namespace vilg::cpu
