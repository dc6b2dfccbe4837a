// Written with GCC/Clang vector types: one source gives AVX2+FMA code in the x86-64-v3 clone
// and SSE2 pairs in the default one, with the accumulators pinned in registers.
#include "tile_math.h"

#include <cstring>
#include <limits>

#include "../common/macros.h"

namespace vilg::cpu {
namespace {

typedef float v8f __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));

inline v8f ld(const float* p) {
  v8f v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void st(float* p, v8f v) { std::memcpy(p, &v, sizeof v); }
inline v8f splat(float x) { return v8f{} + x; }

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
const v8i kLanes = {0, 1, 2, 3, 4, 5, 6, 7};

// exp(x) for x <= ~0: 2^(x log2 e) = 2^i * 2^f with |f| <= 1/2 and the degree-6 Taylor series
// of 2^f, about 2 ulp. Below x = -80 (and for -inf) it returns exactly 0: such a weight is
// invisible next to the row maximum's 1, and a product of it (P dP, P V) would otherwise be a
// subnormal float, which x86 computes on a slow microcode path (ALiBi's large negative biases
// made a backward pass several times slower that way).
inline v8f exp8(v8f x) {
  const v8i tiny = x < -80.f;
  x = tiny ? splat(-80.f) : x;
  const v8f t = x * 1.4426950408889634f;
  const v8f fi = (t + 12582912.f) - 12582912.f;  // round to nearest integer
  const v8f f = t - fi;
  v8f p = splat(1.5403530393381606e-4f);
  p = p * f + 1.3333558146428443e-3f;
  p = p * f + 9.6181291076284772e-3f;
  p = p * f + 5.5504108664821580e-2f;
  p = p * f + 2.4022650695910071e-1f;
  p = p * f + 6.9314718055994531e-1f;
  p = p * f + 1.f;
  const v8i bits = (__builtin_convertvector(fi, v8i) + 127) << 23;
  return tiny ? v8f{} : p * (v8f)bits;
}

// tanh(x) = sign(x) (1 - e) / (1 + e) with e = exp(-2|x|) <= 1: no overflow for any x, and an
// absolute error near float32's rounding of the capped score.
inline v8f tanh8(v8f x) {
  const v8f ax = x < 0.f ? -x : x;
  const v8f e = exp8(ax * -2.f);
  const v8f t = (1.f - e) / (1.f + e);
  return x < 0.f ? -t : t;
}

// Lanes c..c+7 of a row's mask as all-ones / zero lanes.
inline v8i mask8(const uint64_t* row, int c) {
  const int32_t byte = int32_t((row[c >> 6] >> (c & 63)) & 0xffu);
  return ((v8i{} + byte) >> kLanes & 1) != 0;
}

inline v8f vmax(v8f a, v8f b) { return a > b ? a : b; }
inline float hmax(v8f v) {  // a max is exact in any order: a shuffle tree
  v = vmax(v, __builtin_shufflevector(v, v, 4, 5, 6, 7, 0, 1, 2, 3));
  v = vmax(v, __builtin_shufflevector(v, v, 2, 3, 0, 1, 6, 7, 4, 5));
  v = vmax(v, __builtin_shufflevector(v, v, 1, 0, 3, 2, 5, 4, 7, 6));
  return v[0];
}
inline float hsum(v8f v) {
  float s = 0.f;
  for (int i = 0; i < 8; ++i) s += v[i];
  return s;
}

// C[4 x 16] (+)= A[4 x k] B[k x 16] (A transposed when TransA), over the 16-deep slices of k
// set in kbits (all of them when kbits is ~0): 8 accumulators in registers.
template <bool TransA, bool Acc>
inline void micro(int k, uint32_t kbits, const float* A, int lda, const float* B, int ldb,
                  float* C, int ldc) {
  v8f c00{}, c01{}, c10{}, c11{}, c20{}, c21{}, c30{}, c31{};
  const int64_t s = TransA ? 1 : lda;
  for (int p0 = 0; p0 < k; p0 += 16) {
    if (!(kbits >> (p0 >> 4) & 1u)) continue;
    for (int p = p0; p < p0 + 16; ++p) {
      const float* b = B + int64_t(p) * ldb;
      const v8f b0 = ld(b), b1 = ld(b + 8);
      const float* a = TransA ? A + int64_t(p) * lda : A + p;
      const float a0 = a[0], a1 = a[s], a2 = a[2 * s], a3 = a[3 * s];
      c00 += b0 * a0; c01 += b1 * a0;
      c10 += b0 * a1; c11 += b1 * a1;
      c20 += b0 * a2; c21 += b1 * a2;
      c30 += b0 * a3; c31 += b1 * a3;
    }
  }
  if (Acc) {
    c00 += ld(C), c01 += ld(C + 8), c10 += ld(C + ldc), c11 += ld(C + ldc + 8);
    c20 += ld(C + 2 * ldc), c21 += ld(C + 2 * ldc + 8);
    c30 += ld(C + 3 * ldc), c31 += ld(C + 3 * ldc + 8);
  }
  st(C, c00), st(C + 8, c01), st(C + ldc, c10), st(C + ldc + 8, c11);
  st(C + 2 * ldc, c20), st(C + 2 * ldc + 8, c21);
  st(C + 3 * ldc, c30), st(C + 3 * ldc + 8, c31);
}

constexpr uint32_t kAll = ~0u;

// Bits of a row's mask for columns 16j..16j+15.
inline uint32_t chunk16(const uint64_t* row, int j) {
  return uint32_t(row[j >> 2] >> ((j & 3) * 16)) & 0xffffu;
}

}  // namespace

void occupancy(const uint64_t* rowmask, int words, int rows, int cols, Occupancy& occ) {
  for (int i = 0; i < rows / 4; ++i) occ.rows[i] = 0;
  for (int j = 0; j < cols / 4; ++j) occ.cols[j] = 0;
  for (int r = 0; r < rows; ++r) {
    const uint64_t* row = rowmask + int64_t(r) * words;
    for (int j = 0; j < cols / 16; ++j) {
      const uint32_t bits = chunk16(row, j);
      if (!bits) continue;
      occ.rows[r / 4] |= 1u << j;
      for (int g = 0; g < 4; ++g)
        if (bits >> (4 * g) & 0xfu) occ.cols[4 * j + g] |= 1u << (r / 16);
    }
  }
}

VILG_CPU_CLONES void gemm_nn(int m, int n, int k, const float* A, int lda, const float* B,
                             int ldb, float* C, int ldc) {
  for (int i = 0; i < m; i += 4)
    for (int j = 0; j < n; j += 16)
      micro<false, true>(k, kAll, A + int64_t(i) * lda, lda, B + j, ldb,
                         C + int64_t(i) * ldc + j, ldc);
}

VILG_CPU_CLONES void gemm_tn(int m, int n, int k, const float* A, int lda, const float* B,
                             int ldb, float* C, int ldc) {
  for (int i = 0; i < m; i += 4)
    for (int j = 0; j < n; j += 16)
      micro<true, true>(k, kAll, A + i, lda, B + j, ldb, C + int64_t(i) * ldc + j, ldc);
}

VILG_CPU_CLONES void gemm_nn_blocks(int m, int n, int k, const float* A, int lda,
                                    const float* B, int ldb, float* C, int ldc,
                                    const uint32_t* blocks) {
  for (int i = 0; i < m; i += 4)
    for (int j = 0; j < n; j += 16)
      if (!blocks || blocks[i / 4] >> (j / 16) & 1u)
        micro<false, false>(k, kAll, A + int64_t(i) * lda, lda, B + j, ldb,
                            C + int64_t(i) * ldc + j, ldc);
}

VILG_CPU_CLONES void gemm_nn_ksparse(int m, int n, int k, const float* A, int lda,
                                     const float* B, int ldb, float* C, int ldc,
                                     const uint32_t* blocks) {
  for (int i = 0; i < m; i += 4) {
    if (!blocks[i / 4]) continue;
    for (int j = 0; j < n; j += 16)
      micro<false, true>(k, blocks[i / 4], A + int64_t(i) * lda, lda, B + j, ldb,
                         C + int64_t(i) * ldc + j, ldc);
  }
}

VILG_CPU_CLONES void gemm_tn_ksparse(int m, int n, int k, const float* A, int lda,
                                     const float* B, int ldb, float* C, int ldc,
                                     const uint32_t* blocks) {
  for (int i = 0; i < m; i += 4) {
    if (!blocks[i / 4]) continue;
    for (int j = 0; j < n; j += 16)
      micro<true, true>(k, blocks[i / 4], A + i, lda, B + j, ldb, C + int64_t(i) * ldc + j, ldc);
  }
}

VILG_CPU_CLONES void softmax_step(float* S, int rows, int cols, const uint64_t* rowmask,
                                  int words, float* m, float* l, float* O, int dp,
                                  const uint32_t* blocks) {
  const v8f neg_inf = splat(kNegInf), zero{};
  for (int r = 0; r < rows; ++r) {
    float* s = S + int64_t(r) * cols;
    const uint64_t* row = rowmask ? rowmask + int64_t(r) * words : nullptr;
    const uint32_t live = blocks ? blocks[r / 4] : kAll;
    v8f mx = splat(m[r]);
    for (int c = 0; c < cols; c += 8) {
      if (!(live >> (c / 16) & 1u)) continue;
      v8f x = ld(s + c);
      if (row) x = mask8(row, c) ? x : neg_inf, st(s + c, x);
      mx = vmax(x, mx);
    }
    const float mnew = hmax(mx);
    if (mnew == kNegInf) {  // nothing allowed yet in this row
      std::memset(s, 0, sizeof(float) * cols);
      continue;
    }
    const float alpha = m[r] == kNegInf ? 0.f : exp8(splat(m[r] - mnew))[0];
    v8f sum{};
    for (int c = 0; c < cols; c += 8) {
      if (!(live >> (c / 16) & 1u)) {
        st(s + c, zero);
        continue;
      }
      const v8f x = ld(s + c);
      // only masking writes -inf (finite scores otherwise): no select on an unmasked row
      const v8f p = row ? (x == neg_inf ? zero : exp8(x - mnew)) : exp8(x - mnew);
      st(s + c, p);
      sum += p;
    }
    m[r] = mnew;
    l[r] = l[r] * alpha + hsum(sum);
    if (alpha != 1.f) {
      float* o = O + int64_t(r) * dp;
      for (int d = 0; d < dp; d += 8) st(o + d, ld(o + d) * alpha);
    }
  }
}

VILG_CPU_CLONES void modify_scores(float* S, int rows, int cols, const TileMods& mods, float* T,
                                   const uint32_t* blocks) {
  const bool cap = mods.softcap > 0.f;
  const float inv = cap ? 1.f / mods.softcap : 0.f, slope = mods.slope;
  for (int r = 0; r < rows; ++r) {
    float* s = S + int64_t(r) * cols;
    float* t = T ? T + int64_t(r) * cols : nullptr;
    const uint32_t live = blocks ? blocks[r / 4] : kAll;
    const v8f qp = splat(mods.qpos ? mods.qpos[r] : 0.f);
    for (int c = 0; c < cols; c += 8) {
      if (!(live >> (c / 16) & 1u)) continue;
      v8f x = ld(s + c);
      if (cap) {
        const v8f th = tanh8(x * inv);
        if (t) st(t + c, th);
        x = th * mods.softcap;
      }
      if (mods.kpos) {
        const v8f d = qp - ld(mods.kpos + c);
        x -= (d < 0.f ? -d : d) * slope;
      }
      st(s + c, x);
    }
  }
}

VILG_CPU_CLONES void softcap_grad(float* dS, const float* T, int rows, int cols,
                                  const uint32_t* blocks) {
  for (int r = 0; r < rows; ++r) {
    float* d = dS + int64_t(r) * cols;
    const float* t = T + int64_t(r) * cols;
    const uint32_t live = blocks ? blocks[r / 4] : kAll;
    for (int c = 0; c < cols; c += 8) {
      if (!(live >> (c / 16) & 1u)) continue;
      const v8f th = ld(t + c);
      st(d + c, ld(d + c) * (1.f - th * th));
    }
  }
}

VILG_CPU_CLONES void probs_from_lse(float* S, int rows, int cols, const uint64_t* rowmask,
                                    int words, const float* lse, const uint32_t* blocks) {
  const v8f zero{};
  for (int r = 0; r < rows; ++r) {
    float* s = S + int64_t(r) * cols;
    const float z = lse[r];
    if (z == kNegInf) {
      std::memset(s, 0, sizeof(float) * cols);
      continue;
    }
    const uint64_t* row = rowmask ? rowmask + int64_t(r) * words : nullptr;
    const uint32_t live = blocks ? blocks[r / 4] : kAll;
    for (int c = 0; c < cols; c += 8) {
      if (!(live >> (c / 16) & 1u)) {
        st(s + c, zero);
        continue;
      }
      v8f p = exp8(ld(s + c) - z);
      if (row) p = mask8(row, c) ? p : zero;
      st(s + c, p);
    }
  }
}

VILG_CPU_CLONES void dscores(float* dP, const float* P, int rows, int cols, const float* delta,
                             const uint32_t* blocks) {
  const v8f zero{};
  for (int r = 0; r < rows; ++r) {
    float* d = dP + int64_t(r) * cols;
    const float* p = P + int64_t(r) * cols;
    const uint32_t live = blocks ? blocks[r / 4] : kAll;
    for (int c = 0; c < cols; c += 8)
      st(d + c, live >> (c / 16) & 1u ? ld(p + c) * (ld(d + c) - delta[r]) : zero);
  }
}

}  // namespace vilg::cpu
