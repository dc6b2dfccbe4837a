// Counter-based random numbers (Philox4x32-10, Salmon et al., SC'11) and the bit-exact helpers
// the CPU and CUDA samplers share, so that both draw the same token for the same (seed, offset)
// unless a float rounding differs in an edge case.
//
// Everything here is VILG_HD and written so that no compiler may re-associate or contract it:
// every multiply-add is an explicit fma and every product a sampler_mul, never `a * b + c`
// (nvcc's --fmad and gcc's -ffp-contract=fast would fuse those differently on each side).
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#include "macros.h"

namespace vilg {

// ---- Philox4x32-10 ------------------------------------------------------------------------
struct Philox4 {
  uint32_t v[4];
};

VILG_HD uint32_t mulhi32(uint32_t a, uint32_t b) {
#if defined(__CUDA_ARCH__)
  return __umulhi(a, b);
#else
  return uint32_t((uint64_t(a) * b) >> 32);
#endif
}

// Random123's philox4x32_R(10, ctr, key); known answers in tests/test_sampling.py.
VILG_HD Philox4 philox4x32_10(Philox4 c, uint32_t k0, uint32_t k1) {
  constexpr uint32_t M0 = 0xD2511F53u, M1 = 0xCD9E8D57u;
  constexpr uint32_t W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int r = 0; r < 10; ++r) {
    const uint32_t hi0 = mulhi32(M0, c.v[0]), lo0 = M0 * c.v[0];
    const uint32_t hi1 = mulhi32(M1, c.v[2]), lo1 = M1 * c.v[2];
    c = Philox4{{hi1 ^ c.v[1] ^ k0, lo1, hi0 ^ c.v[3] ^ k1, lo0}};
    k0 += W0;
    k1 += W1;
  }
  return c;
}

// The sampler's stream: key = seed, counter = (offset, row). 53 random bits from words 0, 1.
VILG_HD uint64_t sample_bits53(uint64_t seed, uint64_t offset, uint64_t row) {
  const Philox4 r = philox4x32_10(
      Philox4{{uint32_t(offset), uint32_t(offset >> 32), uint32_t(row), uint32_t(row >> 32)}},
      uint32_t(seed), uint32_t(seed >> 32));
  return ((uint64_t(r.v[0]) << 32) | r.v[1]) >> 11;
}

// floor(bits53 * total / 2^53): the draw's position in [0, total), exact (128-bit product).
VILG_HD uint64_t scale_draw(uint64_t bits53, uint64_t total) {
#if defined(__CUDA_ARCH__)
  const uint64_t hi = __umul64hi(bits53, total), lo = bits53 * total;
#else
  const unsigned __int128 p = (unsigned __int128)bits53 * total;
  const uint64_t hi = uint64_t(p >> 64), lo = uint64_t(p);
#endif
  return (hi << 11) | (lo >> 53);
}

// ---- the sampler's shared arithmetic --------------------------------------------------------
// Kept tokens are drawn with integer weights w = floor(exp(z - max) * 2^40): integer sums are
// exact and order-independent, so the top-p cut and the draw depend on the weights only (and
// vocabularies up to 2^23 entries cannot overflow 64 bits). Relative weights below 2^-40 round
// to zero: such tokens are never drawn.
constexpr float kWeightScale = 1099511627776.0f;  // 2^40
constexpr int64_t kMaxVocab = int64_t(1) << 23;

VILG_HD float sampler_fma(float a, float b, float c) {
#if defined(__CUDA_ARCH__)
  return __fmaf_rn(a, b, c);
#else
  return std::fma(a, b, c);
#endif
}

// a * b rounded once and never fused into a neighbouring add (the device intrinsic is never
// contracted; on the host an empty asm hides the product from gcc's contraction).
VILG_HD float sampler_mul(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  float p = a * b;
#if defined(__GNUC__) && defined(__x86_64__)
  __asm__("" : "+x"(p));
#elif defined(__GNUC__)
  __asm__ volatile("" : "+m"(p));
#endif
  return p;
#endif
}

// exp(x) for x <= 0 (or -inf), identical bit for bit on host and device: 2^(x log2 e) split as
// 2^i * 2^f, |f| <= 1/2, with a degree-7 polynomial for 2^f (relative error ~1e-7).
VILG_HD float sampler_exp(float x) {
  if (!(x > -30.f)) return 0.f;  // exp(-30) * 2^40 < 1: weight 0 either way (also -inf, nan)
  const float t = sampler_mul(x, 1.44269504088896341f);
  const float fi = rintf(t);
  const float f = t - fi;  // exact
  float p = 1.5252734e-5f;
  p = sampler_fma(p, f, 1.5403530e-4f);
  p = sampler_fma(p, f, 1.3333558e-3f);
  p = sampler_fma(p, f, 9.6181291e-3f);
  p = sampler_fma(p, f, 5.5504109e-2f);
  p = sampler_fma(p, f, 2.4022651e-1f);
  p = sampler_fma(p, f, 6.9314718e-1f);
  p = sampler_fma(p, f, 1.f);
  const int32_t bits = (int32_t(fi) + 127) << 23;
  float scale;
#if defined(__CUDA_ARCH__)
  scale = __int_as_float(bits);
#else
  std::memcpy(&scale, &bits, 4);
#endif
  return sampler_mul(p, scale);
}

// Integer weight of a kept value z given the row maximum m (z <= m). A row whose maximum is
// +inf keeps only its +inf entries; a row that is all -inf weighs every entry equally.
VILG_HD uint64_t sampler_weight(float z, float m) {
  const float e = z == m ? 1.f : sampler_exp(z - m);
  return uint64_t(e * kWeightScale);  // exact scaling by 2^40, then truncation
}

// Mixed, tempered logit: nan -> -inf and -0 -> +0, so that value order, equality and the radix
// keys below agree. `inv_t` is 1/temperature (1 in argmax mode), computed once on the host.
VILG_HD float sampler_logit(float c, const float* u, float cfg, float inv_t) {
  float l = u ? sampler_fma(cfg, c - *u, *u) : c;
  l = sampler_mul(l, inv_t);
  if (l != l) l = -INFINITY;
  if (l == 0.f) l = 0.f;
  return l;
}

// Order-preserving map float -> uint32 (larger float, larger key), and back.
VILG_HD uint32_t float_key(float f) {
  uint32_t u;
#if defined(__CUDA_ARCH__)
  u = __float_as_uint(f);
#else
  std::memcpy(&u, &f, 4);
#endif
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

VILG_HD float key_float(uint32_t k) {
  const uint32_t u = (k & 0x80000000u) ? (k & 0x7fffffffu) : ~k;
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, 4);
  return f;
#endif
}

// Top-p target mass for kept total `total` (the same double arithmetic on both sides).
VILG_HD uint64_t top_p_need(double top_p, uint64_t total) {
  uint64_t need = uint64_t(top_p * double(total));
  if (need > total) need = total;
  return need == 0 ? 1 : need;
}

}  // namespace vilg
