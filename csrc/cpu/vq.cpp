// VQ on the CPU. Quantize: scores ||c||^2 - 2 x.c (||x||^2 is the same for every code) from a
// register-blocked kernel, 4 codes x 16 rows at a time, over [KB codes x MB rows] tiles, folded
// into a running (min, argmin) per row in registers: the n x k distance matrix never exists. Code statistics bucket the rows
// by code first, so every sum runs in row order whatever the thread count (deterministic).
#include "vq.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "../common/macros.h"
#include "../common/tensor_ref.h"
#include "dispatch.h"
#include "tile_io.h"

namespace vilg::cpu {
namespace {

constexpr int MB = 64;   // rows of x per task
constexpr int KB = 128;  // codes per score tile

inline int64_t round16_64(int64_t x) { return (x + 15) / 16 * 16; }

template <typename T>
void prepare_codebook(const VqParams& p, float* cn, float* cb, int Kp, int Dp) {
#pragma omp parallel for schedule(static) if (int64_t(Kp) * Dp >= (1 << 16))
  for (int c = 0; c < Kp; ++c) {
    float* row = cb + int64_t(c) * Dp;
    if (c >= p.k) {
      std::fill(row, row + Dp, 0.f);
      cn[c] = std::numeric_limits<float>::infinity();  // padding codes never win
      continue;
    }
    const T* in = (const T*)p.codebook + int64_t(c) * p.c_stride;
    float s = 0.f;
    for (int d = 0; d < p.d; ++d) {
      const float v = to_float(in[d]);
      row[d] = v;
      s += v * v;
    }
    for (int d = p.d; d < Dp; ++d) row[d] = 0.f;
    cn[c] = s;
  }
}

// The register-blocked fused kernel: 4 codes x 16 rows of x per step, accumulated in eight
// 8-wide vectors (GCC vector extensions: AVX2 + FMA in the x86-64-v3 clone, pairs of SSE ops in
// the portable one), then folded into the rows' running (min, argmin) without leaving
// registers. Every code's score takes the same sequence of operations, and codes are folded in
// increasing order with a strict <, so exact ties keep the lowest index.
typedef float v8f __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));

// Rows of x as groups of 16: xg[g][d][16] (zero past n and past d).
constexpr int RG = 16;

VILG_CPU_CLONES void argmin_tile(const float* xg, int groups, int Dp, const float* cb,
                                 const float* cn, int k0, int kb, v8f* best, v8i* arg) {
  for (int g = 0; g < groups; ++g) {
    const float* xs = xg + int64_t(g) * Dp * RG;
    v8f b0 = best[2 * g], b1 = best[2 * g + 1];
    v8i a0 = arg[2 * g], a1 = arg[2 * g + 1];
    for (int c0 = 0; c0 < kb; c0 += 4) {
      const float* A = cb + int64_t(c0) * Dp;
      v8f acc[4][2] = {};
      for (int d = 0; d < Dp; ++d) {
        v8f x0, x1;  // (memcpy: unaligned-safe loads, no vector-returning helper)
        std::memcpy(&x0, xs + d * RG, sizeof(v8f));
        std::memcpy(&x1, xs + d * RG + 8, sizeof(v8f));
        for (int c = 0; c < 4; ++c) {
          const float a = A[int64_t(c) * Dp + d];
          acc[c][0] += a * x0;
          acc[c][1] += a * x1;
        }
      }
      for (int c = 0; c < 4; ++c) {
        const float norm = cn[c0 + c];
        const int32_t id = k0 + c0 + c;
        const v8f s0 = norm - 2.f * acc[c][0], s1 = norm - 2.f * acc[c][1];
        const v8i lt0 = s0 < b0, lt1 = s1 < b1;
        b0 = lt0 ? s0 : b0;
        b1 = lt1 ? s1 : b1;
        a0 = lt0 ? id : a0;
        a1 = lt1 ? id : a1;
      }
    }
    best[2 * g] = b0;
    best[2 * g + 1] = b1;
    arg[2 * g] = a0;
    arg[2 * g + 1] = a1;
  }
}

template <typename T>
void quantize_impl(const VqParams& p) {
  const int Dp = round16(p.d), Kp = round16(p.k);
  float* cn = p.ws;
  float* cb = p.ws + Kp;
  prepare_codebook<T>(p, cn, cb, Kp, Dp);
  const int64_t tiles = (p.n + MB - 1) / MB;
  // Small calls stay on the calling thread: waking a team costs more than it saves.
#pragma omp parallel if (tiles > 1 && p.n * int64_t(Kp) * Dp >= (1 << 18))
  {
    std::vector<float> xg(size_t(Dp) * MB);
    v8f best[MB / 8];
    v8i arg[MB / 8];
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < tiles; ++t) {
      const int64_t r0 = t * MB;
      const int rows = int(std::min<int64_t>(MB, p.n - r0));
      const int groups = (rows + RG - 1) / RG;
      std::fill(xg.begin(), xg.end(), 0.f);
      for (int m = 0; m < rows; ++m) {
        const T* in = (const T*)p.x + (r0 + m) * p.x_stride;
        float* out = xg.data() + int64_t(m / RG) * Dp * RG + m % RG;
        for (int d = 0; d < p.d; ++d) out[d * RG] = to_float(in[d]);
      }
      for (int i = 0; i < MB / 8; ++i) {
        best[i] = v8f{} + std::numeric_limits<float>::infinity();
        arg[i] = v8i{};
      }
      for (int k0 = 0; k0 < Kp; k0 += KB) {
        const int kb = std::min(KB, Kp - k0);
        argmin_tile(xg.data(), groups, Dp, cb + int64_t(k0) * Dp, cn + k0, k0, kb, best, arg);
      }
      const int32_t* ids = reinterpret_cast<const int32_t*>(arg);
      for (int m = 0; m < rows; ++m) p.out[r0 + m] = ids[m];
    }
  }
}

inline int64_t index_at(const void* idx, bool idx64, int64_t i) {
  return idx64 ? ((const int64_t*)idx)[i] : int64_t(((const int32_t*)idx)[i]);
}

// Serial and cheap next to the work it guards; raises ValueError naming the first bad index.
void check_indices(const void* idx, bool idx64, int64_t n, int k) {
  for (int64_t i = 0; i < n; ++i) {
    const int64_t c = index_at(idx, idx64, i);
    if (c < 0 || c >= k)
      fail("index " + std::to_string(c) + " at position " + std::to_string(i) +
           " is out of range for a codebook of " + std::to_string(k) + " codes");
  }
}

// acc += row, in float64 (the AVX2 clone adds 4 doubles at a time).
template <typename T>
VILG_CPU_CLONES void add_row(double* acc, const T* in, int D) {
  for (int d = 0; d < D; ++d) acc[d] += double(to_float(in[d]));
}

template <typename T>
void stats_impl(const VqStatsParams& p) {
  const int K = p.k, D = p.d;
  int32_t* off = p.ws;             // [K + 1]
  int32_t* order = p.ws + K + 1;   // [n]
  // counting sort of rows by code (stable: rows stay in increasing order inside a bucket)
  std::fill(off, off + K + 1, 0);
  for (int64_t i = 0; i < p.n; ++i) ++off[index_at(p.idx, p.idx64, i) + 1];
  for (int c = 0; c < K; ++c) off[c + 1] += off[c];
  for (int64_t i = 0; i < p.n; ++i) order[off[index_at(p.idx, p.idx64, i)]++] = int32_t(i);
  // now off[c] is the end of bucket c (and the start of bucket c + 1)
#pragma omp parallel if (p.n * int64_t(D) >= (1 << 16))
  {
    std::vector<double> acc(D);
#pragma omp for schedule(dynamic, 16)
    for (int c = 0; c < K; ++c) {
      const int32_t lo = c == 0 ? 0 : off[c - 1], hi = off[c];
      std::fill(acc.begin(), acc.end(), 0.0);
      for (int32_t e = lo; e < hi; ++e)
        add_row(acc.data(), (const T*)p.x + int64_t(order[e]) * p.x_stride, D);
      p.counts[c] = float(hi - lo);
      float* out = p.sums + int64_t(c) * D;
      for (int d = 0; d < D; ++d) out[d] = float(acc[d]);
    }
  }
}

}  // namespace

int64_t vq_workspace_floats(int k, int d) {
  const int64_t Kp = round16_64(k), Dp = round16_64(d);
  return Kp + Kp * Dp;
}

void vq_quantize(const VqParams& p, DType dtype) {
  if (p.n == 0) return;
  dispatch_float(dtype, "vq_quantize", [&](auto t) { quantize_impl<decltype(t)>(p); });
}

void vq_embed(const VqEmbedParams& p, DType dtype) {
  check_indices(p.idx, p.idx64, p.n, p.k);
  const size_t row_bytes = size_t(p.d) * dtype_size(dtype);
  const char* cb = (const char*)p.codebook;
  char* out = (char*)p.out;
  const int64_t c_bytes = p.c_stride * dtype_size(dtype);
#pragma omp parallel for schedule(static) if (p.n * int64_t(row_bytes) >= (1 << 18))
  for (int64_t i = 0; i < p.n; ++i)
    std::memcpy(out + i * int64_t(row_bytes), cb + index_at(p.idx, p.idx64, i) * c_bytes,
                row_bytes);
}

void vq_code_stats(const VqStatsParams& p, DType dtype) {
  check_indices(p.idx, p.idx64, p.n, p.k);
  dispatch_float(dtype, "vq_code_stats", [&](auto t) { stats_impl<decltype(t)>(p); });
}

}  // namespace vilg::cpu
