#include "tile_math.h"

#include <cmath>
#include <cstring>
#include <limits>

#include "../common/macros.h"

namespace vilg::cpu {
namespace {

constexpr int MR = 4, NR = 16;

// 4x16 register tile: B rows are loaded once per 4 FMAs; acc stays in vector registers.
template <bool TransA>
inline void micro(int k, const float* A, int lda, const float* B, int ldb, float* C, int ldc) {
  float acc[MR][NR] = {};
  for (int p = 0; p < k; ++p) {
    const float* b = B + int64_t(p) * ldb;
    for (int i = 0; i < MR; ++i) {
      const float a = TransA ? A[int64_t(p) * lda + i] : A[int64_t(i) * lda + p];
      for (int j = 0; j < NR; ++j) acc[i][j] += a * b[j];
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) C[int64_t(i) * ldc + j] += acc[i][j];
}

// exp(x) for x <= 0 or -inf, to about 2 ulp: 2^(x log2 e) = 2^i * 2^f, |f| <= 1/2, with the
// degree-6 Taylor series of 2^f. Branch-free so the loops around it vectorise.
inline float exp_neg(float x) {
  x = x < -87.f ? -87.f : x;
  const float t = x * 1.4426950408889634f;
  const float fi = (t + 12582912.f) - 12582912.f;  // round to nearest integer
  const float f = t - fi;
  float p = 1.5403530393381606e-4f;
  p = p * f + 1.3333558146428443e-3f;
  p = p * f + 9.6181291076284772e-3f;
  p = p * f + 5.5504108664821580e-2f;
  p = p * f + 2.4022650695910071e-1f;
  p = p * f + 6.9314718055994531e-1f;
  p = p * f + 1.f;
  const int32_t bits = (int32_t(fi) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, 4);
  return p * scale;
}

inline bool allowed(const uint64_t* rowmask, int words, int r, int c) {
  return (rowmask[int64_t(r) * words + (c >> 6)] >> (c & 63)) & 1u;
}

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

}  // namespace

VILG_CPU_CLONES void gemm_nn(int m, int n, int k, const float* A, int lda, const float* B,
                             int ldb, float* C, int ldc) {
  for (int i = 0; i < m; i += MR)
    for (int j = 0; j < n; j += NR)
      micro<false>(k, A + int64_t(i) * lda, lda, B + j, ldb, C + int64_t(i) * ldc + j, ldc);
}

VILG_CPU_CLONES void gemm_tn(int m, int n, int k, const float* A, int lda, const float* B,
                             int ldb, float* C, int ldc) {
  for (int i = 0; i < m; i += MR)
    for (int j = 0; j < n; j += NR)
      micro<true>(k, A + i, lda, B + j, ldb, C + int64_t(i) * ldc + j, ldc);
}

VILG_CPU_CLONES void softmax_step(float* S, int rows, int cols, const uint64_t* rowmask,
                                  int words, float* m, float* l, float* O, int dp) {
  for (int r = 0; r < rows; ++r) {
    float* s = S + int64_t(r) * cols;
    if (rowmask)
      for (int c = 0; c < cols; ++c) s[c] = allowed(rowmask, words, r, c) ? s[c] : kNegInf;
    float mx = m[r];
    for (int c = 0; c < cols; ++c) mx = s[c] > mx ? s[c] : mx;
    if (mx == kNegInf) {  // nothing allowed yet in this row
      for (int c = 0; c < cols; ++c) s[c] = 0.f;
      continue;
    }
    const float alpha = m[r] == kNegInf ? 0.f : exp_neg(m[r] - mx);
    float sum = 0.f;
    for (int c = 0; c < cols; ++c) {
      const float p = s[c] == kNegInf ? 0.f : exp_neg(s[c] - mx);
      s[c] = p;
      sum += p;
    }
    m[r] = mx;
    l[r] = l[r] * alpha + sum;
    if (alpha != 1.f) {
      float* o = O + int64_t(r) * dp;
      for (int d = 0; d < dp; ++d) o[d] *= alpha;
    }
  }
}

VILG_CPU_CLONES void probs_from_lse(float* S, int rows, int cols, const uint64_t* rowmask,
                                    int words, const float* lse) {
  for (int r = 0; r < rows; ++r) {
    float* s = S + int64_t(r) * cols;
    const float z = lse[r];
    if (z == kNegInf) {
      for (int c = 0; c < cols; ++c) s[c] = 0.f;
      continue;
    }
    if (rowmask)
      for (int c = 0; c < cols; ++c)
        s[c] = allowed(rowmask, words, r, c) ? exp_neg(s[c] - z) : 0.f;
    else
      for (int c = 0; c < cols; ++c) s[c] = exp_neg(s[c] - z);
  }
}

VILG_CPU_CLONES void dscores(float* dP, const float* P, int rows, int cols, const float* delta) {
  for (int r = 0; r < rows; ++r) {
    float* d = dP + int64_t(r) * cols;
    const float* p = P + int64_t(r) * cols;
    const float dr = delta[r];
    for (int c = 0; c < cols; ++c) d[c] = p[c] * (d[c] - dr);
  }
}

}  // namespace vilg::cpu
