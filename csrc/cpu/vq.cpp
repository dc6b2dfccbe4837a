// VQ on the CPU. Quantize: scores ||c||^2 - 2 x.c (||x||^2 is the same for every code) as
// register-blocked GEMM tiles, [KB codes x MB rows] at a time, folded into a running
// (min, argmin) per row: the n x k distance matrix never exists. Code statistics bucket the rows
// by code first, so every sum runs in row order whatever the thread count (deterministic).
#include "vq.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "../common/macros.h"
#include "../common/tensor_ref.h"
#include "tile_io.h"
#include "tile_math.h"

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

// best[m] / arg[m] <- min over the tile's codes of cn[c] - 2 S[c][m]; codes in increasing order
// and a strict < keep the lowest index on exact ties.
VILG_CPU_CLONES void fold_argmin(const float* S, const float* cn, int kb, int k0, float* best,
                                 int32_t* arg) {
  for (int c = 0; c < kb; ++c) {
    const float* s = S + int64_t(c) * MB;
    const float norm = cn[c];
    const int32_t id = k0 + c;
    for (int m = 0; m < MB; ++m) {
      const float v = norm - 2.f * s[m];
      const bool lt = v < best[m];
      best[m] = lt ? v : best[m];
      arg[m] = lt ? id : arg[m];
    }
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
    std::vector<float> Xt(size_t(Dp) * MB), S(size_t(KB) * MB), best(MB);
    std::vector<int32_t> arg(MB);
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < tiles; ++t) {
      const int64_t r0 = t * MB;
      const int rows = int(std::min<int64_t>(MB, p.n - r0));
      // x tile, transposed: Xt[d][m] (zero past n and past d)
      std::fill(Xt.begin(), Xt.end(), 0.f);
      for (int m = 0; m < rows; ++m) {
        const T* in = (const T*)p.x + (r0 + m) * p.x_stride;
        for (int d = 0; d < p.d; ++d) Xt[size_t(d) * MB + m] = to_float(in[d]);
      }
      std::fill(best.begin(), best.end(), std::numeric_limits<float>::infinity());
      std::fill(arg.begin(), arg.end(), 0);
      for (int k0 = 0; k0 < Kp; k0 += KB) {
        const int kb = std::min(KB, Kp - k0);
        std::fill(S.begin(), S.begin() + size_t(kb) * MB, 0.f);
        gemm_nn(kb, MB, Dp, cb + int64_t(k0) * Dp, Dp, Xt.data(), MB, S.data(), MB);
        fold_argmin(S.data(), cn + k0, kb, k0, best.data(), arg.data());
      }
      for (int m = 0; m < rows; ++m) p.out[r0 + m] = arg[m];
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
      for (int32_t e = lo; e < hi; ++e) {
        const T* in = (const T*)p.x + int64_t(order[e]) * p.x_stride;
        for (int d = 0; d < D; ++d) acc[d] += double(to_float(in[d]));
      }
      p.counts[c] = float(hi - lo);
      float* out = p.sums + int64_t(c) * D;
      for (int d = 0; d < D; ++d) out[d] = float(acc[d]);
    }
  }
}

template <typename F>
void dispatch(DType dtype, const char* what, F&& f) {
  switch (dtype) {
    case DType::F32: return f(float{});
    case DType::F16: return f(f16_t{});
    case DType::BF16: return f(bf16_t{});
    default: fail(std::string(what) + ": unsupported dtype");
  }
}

}  // namespace

int64_t vq_workspace_floats(int k, int d) {
  const int64_t Kp = round16_64(k), Dp = round16_64(d);
  return Kp + Kp * Dp;
}

void vq_quantize(const VqParams& p, DType dtype) {
  if (p.n == 0) return;
  dispatch(dtype, "vq_quantize", [&](auto t) { quantize_impl<decltype(t)>(p); });
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
  dispatch(dtype, "vq_code_stats", [&](auto t) { stats_impl<decltype(t)>(p); });
}

}  // namespace vilg::cpu
