// VQ on CUDA.
//
// Quantize: a GEMM-shaped kernel that never writes a score. Each block owns BM = 128 rows of x
// and walks a range of BN = 128-code tiles (all of them, or 1/splits of them when the rows
// alone cannot fill the GPU); per tile it accumulates x . c over the code dimension in 64-byte
// k-chunks (double-buffered shared memory, cp.async when rows are 16-byte aligned), then folds
// score = ||c||^2 - 2 x.c into a per-thread running (min, argmin). At the end the candidates of
// a row are merged as packed 64-bit keys (order-preserving float bits << 32 | index), whose
// minimum is the smallest score with ties to the lowest index: a shuffle inside the warp, then
// one atomicMin per (row, warp column, split) into the int64 output itself, pre-filled with
// ~0 and masked to the index by a last tiny kernel. Extra memory: the K code norms only.
//   fp16 / bf16: tensor cores, mma.sync m16n8k16 (ldmatrix fragments), 8 warps of 64 x 32.
//   fp32 (default): exact FMA path, 16 x 16 threads each owning an 8 x 8 register tile.
//   fp32 (fast_fp32): mma.sync m16n8k8 TF32 with the split-TF32 trick (big*big + big*small +
//   small*big, ~fp32 accuracy), same tiling as fp16.
//
// Embed: a 16-byte-vector gather (element-wise when rows are not aligned). Code stats: one warp
// per row, float atomics into zeroed outputs. Out-of-range indices: zero rows / skipped rows,
// counted in err[0] with one example in err[1] (the Python side checks lazily).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "../common/philox.h"  // float_key: order-preserving float bits
#include "../common/tensor_ref.h"
#include "common.cuh"
#include "nvtx.h"
#include "vq.h"

namespace vilg::cuda {
namespace {

using ull = unsigned long long;

constexpr int THREADS = 256;
constexpr int BM = 128, BN = 128;
constexpr int ROW_BYTES = 64;   // one k-chunk of a tile row
constexpr int SROW_BYTES = 80;  // its shared-memory pitch (16 bytes of padding: no conflicts)

__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T zero_of();
template <> __device__ __forceinline__ float zero_of<float>() { return 0.f; }
template <> __device__ __forceinline__ __half zero_of<__half>() { return __float2half(0.f); }
template <> __device__ __forceinline__ __nv_bfloat16 zero_of<__nv_bfloat16>() {
  return __float2bfloat16(0.f);
}

#ifndef VILG_CUDA_EMULATE
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid) {
  const unsigned s = unsigned(__cvta_generic_to_shared(smem));
  const int n = valid ? 16 : 0;  // 0: zero-fill, nothing read
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(n));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}
#else  // the host emulation (emulate.cuh) of the same instructions
void cp_async16(void* smem, const void* gmem, bool valid) {
  emu::cp_async(smem, gmem, 16, valid ? 16 : 0);
}
void cp_async_commit() { emu::cp_async_commit(); }
template <int N>
void cp_async_wait() {
  emu::cp_async_wait(N);
}
#endif

// Smallest score, ties to the lowest index, as one unsigned 64-bit key.
__device__ __forceinline__ ull pack_key(float s, int idx) {
  if (s == 0.f) s = 0.f;  // -0 -> +0: equal scores must map to equal keys
  return (ull(float_key(s)) << 32) | unsigned(idx);
}

__device__ __forceinline__ ull shfl_min(ull key, int mask) {
  const ull o = __shfl_xor_sync(0xffffffffu, key, mask);
  return o < key ? o : key;
}

// ---- tile loads into [rows][pitch] shared memory (mma kernels) ------------------------------
// Rows row0 .. row0+127 of a [nrows, D] matrix, k-chunk k0 .. k0+BK-1, zero outside.
template <typename T, bool VEC>
__device__ __forceinline__ void load_rows(T* s, const T* __restrict__ g, int64_t stride,
                                          int64_t row0, int64_t nrows, int k0, int D, int tid) {
  constexpr int BK = ROW_BYTES / int(sizeof(T)), SK = SROW_BYTES / int(sizeof(T));
  if constexpr (VEC) {
    constexpr int EPC = 16 / int(sizeof(T)), CPR = ROW_BYTES / 16;
#pragma unroll
    for (int i = 0; i < BM * CPR / THREADS; ++i) {
      const int c = tid + i * THREADS;
      const int r = c / CPR, kc = (c % CPR) * EPC;
      const int64_t gr = row0 + r;
      const bool ok = gr < nrows && k0 + kc < D;  // D % EPC == 0: a chunk is all in or all out
      cp_async16(s + r * SK + kc, ok ? g + gr * stride + k0 + kc : g, ok);
    }
  } else {
#pragma unroll 4
    for (int e = tid; e < BM * BK; e += THREADS) {
      const int r = e / BK, k = e % BK;
      const int64_t gr = row0 + r;
      s[r * SK + k] = (gr < nrows && k0 + k < D) ? g[gr * stride + k0 + k] : zero_of<T>();
    }
  }
}

// ---- tensor-core MMA helpers ---------------------------------------------------------------
#ifndef VILG_CUDA_EMULATE
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* p) {
  const unsigned s = unsigned(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(s));
}

template <typename T>
__device__ __forceinline__ void mma_16816(float (&c)[4], const uint32_t (&a)[4],
                                          const uint32_t (&b)[2]) {
  if constexpr (std::is_same_v<T, __half>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
}

__device__ __forceinline__ void mma_1688_tf32(float (&c)[4], const uint32_t (&a)[4],
                                              const uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

__device__ __forceinline__ uint32_t to_tf32(float v) {
  uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(v));
  return r;
}
#else  // the host emulation (emulate.cuh) of the same instructions
void ldmatrix_x4(uint32_t (&r)[4], const void* p) {
  emu::Slot s{};
  s.ptr = p;
  s = emu::collective(emu::kLdsm, s);
  for (int i = 0; i < 4; ++i) r[i] = uint32_t(s.v[i]);
}
inline void mma_emu(int kind, float (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  emu::Slot s{};
  for (int i = 0; i < 4; ++i) s.v[i] = a[i];
  s.v[4] = b[0];
  s.v[5] = b[1];
  memcpy(&s.v[6], c, 16);
  s = emu::collective(kind, s);
  memcpy(c, &s.v[6], 16);
}
template <typename T>
void mma_16816(float (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  mma_emu(std::is_same_v<T, __half> ? emu::kMmaF16 : emu::kMmaBF16, c, a, b);
}
void mma_1688_tf32(float (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  mma_emu(emu::kMmaTF32, c, a, b);
}
uint32_t to_tf32(float v) {  // cvt.rna: nearest, ties away from zero, 10 mantissa bits
  uint32_t u = __float_as_uint(v);
  if ((u & 0x7f800000u) != 0x7f800000u) u = (u + 0x1000u) & 0xffffe000u;
  return u;
}
#endif

// v = big + small, both TF32.
__device__ __forceinline__ void split_tf32(float v, uint32_t& big, uint32_t& small) {
  big = to_tf32(v);
  small = to_tf32(v - __uint_as_float(big));
}

// One 64-byte k-chunk of the warp's 64 x 32 block of x . c.
template <typename T>
__device__ __forceinline__ void mma_chunk(const T* sA, const T* sB, float (&acc)[4][4][4],
                                          int wm, int wn, int lane) {
  constexpr int SK = SROW_BYTES / int(sizeof(T));
  if constexpr (std::is_same_v<T, float>) {
    const int g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int ks = 0; ks < 2; ++ks) {  // two k8 steps
      uint32_t ab[4][4], as[4][4], bb[4][2], bs[4][2];
#pragma unroll
      for (int mi = 0; mi < 4; ++mi) {
        const float* a = sA + (wm * 64 + mi * 16 + g) * SK + ks * 8 + t;
        split_tf32(a[0], ab[mi][0], as[mi][0]);
        split_tf32(a[8 * SK], ab[mi][1], as[mi][1]);
        split_tf32(a[4], ab[mi][2], as[mi][2]);
        split_tf32(a[8 * SK + 4], ab[mi][3], as[mi][3]);
      }
#pragma unroll
      for (int ni = 0; ni < 4; ++ni) {
        const float* b = sB + (wn * 32 + ni * 8 + g) * SK + ks * 8 + t;
        split_tf32(b[0], bb[ni][0], bs[ni][0]);
        split_tf32(b[4], bb[ni][1], bs[ni][1]);
      }
#pragma unroll
      for (int mi = 0; mi < 4; ++mi)
#pragma unroll
        for (int ni = 0; ni < 4; ++ni) {
          mma_1688_tf32(acc[mi][ni], as[mi], bb[ni]);
          mma_1688_tf32(acc[mi][ni], ab[mi], bs[ni]);
          mma_1688_tf32(acc[mi][ni], ab[mi], bb[ni]);
        }
    }
  } else {
#pragma unroll
    for (int ks = 0; ks < 2; ++ks) {  // two k16 steps
      uint32_t a[4][4], b[4][2];
#pragma unroll
      for (int mi = 0; mi < 4; ++mi)
        ldmatrix_x4(a[mi], sA + (wm * 64 + mi * 16 + (lane & 15)) * SK + ks * 16 + (lane >> 4) * 8);
#pragma unroll
      for (int np = 0; np < 2; ++np) {
        uint32_t r[4];
        ldmatrix_x4(r, sB + (wn * 32 + np * 16 + (lane & 7) + ((lane >> 4) << 3)) * SK +
                           ks * 16 + ((lane >> 3) & 1) * 8);
        b[2 * np][0] = r[0];
        b[2 * np][1] = r[1];
        b[2 * np + 1][0] = r[2];
        b[2 * np + 1][1] = r[3];
      }
#pragma unroll
      for (int mi = 0; mi < 4; ++mi)
#pragma unroll
        for (int ni = 0; ni < 4; ++ni) mma_16816<T>(acc[mi][ni], a[mi], b[ni]);
    }
  }
}

// Tensor-core quantize: fp16 / bf16 (m16n8k16) and float with split TF32 (m16n8k8).
template <typename T, bool VEC>
__global__ void __launch_bounds__(THREADS, sizeof(T) == 2 ? 2 : 1) vq_mma_kernel(
    const T* __restrict__ x, int64_t x_stride, const T* __restrict__ cb, int64_t c_stride,
    const float* __restrict__ cn, int64_t N, int K, int D, int tiles_per_split, ull* out) {
  constexpr int BK = ROW_BYTES / int(sizeof(T)), SK = SROW_BYTES / int(sizeof(T));
  __shared__ __align__(16) T sA[2][BM * SK];
  __shared__ __align__(16) T sB[2][BN * SK];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wm = warp >> 2, wn = warp & 3, g = lane >> 2, t = lane & 3;
  const int64_t m0 = int64_t(blockIdx.x) * BM;
  const int ntiles = (K + BN - 1) / BN;
  const int t_begin = blockIdx.y * tiles_per_split;
  const int t_end = min(ntiles, t_begin + tiles_per_split);
  if (t_begin >= t_end) return;
  const int nk = (D + BK - 1) / BK;
  const int iters = (t_end - t_begin) * nk;

  float acc[4][4][4];
  float best[8];
  int bidx[8];
#pragma unroll
  for (int r = 0; r < 8; ++r) {
    best[r] = INFINITY;
    bidx[r] = 0;
  }
#pragma unroll
  for (int mi = 0; mi < 4; ++mi)
#pragma unroll
    for (int ni = 0; ni < 4; ++ni)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[mi][ni][e] = 0.f;

  auto load = [&](int it) {
    const int tile = t_begin + it / nk, k0 = (it % nk) * BK, st = it & 1;
    load_rows<T, VEC>(sA[st], x, x_stride, m0, N, k0, D, tid);
    load_rows<T, VEC>(sB[st], cb, c_stride, int64_t(tile) * BN, K, k0, D, tid);
  };

  load(0);
  cp_async_commit();
  for (int it = 0; it < iters; ++it) {
    if (it + 1 < iters) load(it + 1);
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    mma_chunk<T>(sA[it & 1], sB[it & 1], acc, wm, wn, lane);
    __syncthreads();
    if (it % nk == nk - 1) {  // code tile done: fold its scores into the running argmin
      const int c0 = (t_begin + it / nk) * BN + wn * 32 + 2 * t;
#pragma unroll
      for (int ni = 0; ni < 4; ++ni)
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          const int c = c0 + ni * 8 + j;  // increasing over (ni, j): strict < keeps the lowest
          if (c < K) {
            const float norm = __ldg(cn + c);
#pragma unroll
            for (int mi = 0; mi < 4; ++mi)
#pragma unroll
              for (int h = 0; h < 2; ++h) {
                const float s = norm - 2.f * acc[mi][ni][h * 2 + j];
                const int r = mi * 2 + h;
                if (s < best[r]) {
                  best[r] = s;
                  bidx[r] = c;
                }
              }
          }
        }
#pragma unroll
      for (int mi = 0; mi < 4; ++mi)
#pragma unroll
        for (int ni = 0; ni < 4; ++ni)
#pragma unroll
          for (int e = 0; e < 4; ++e) acc[mi][ni][e] = 0.f;
    }
  }
#pragma unroll
  for (int mi = 0; mi < 4; ++mi)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      ull key = pack_key(best[mi * 2 + h], bidx[mi * 2 + h]);
      key = shfl_min(key, 1);
      key = shfl_min(key, 2);
      const int64_t row = m0 + wm * 64 + mi * 16 + h * 8 + g;
      if (t == 0 && row < N) atomicMin(out + row, key);
    }
}

// Exact float32 quantize: FMA on CUDA cores. Shared tiles are k-major ([BK][BM + 4]) so each
// thread reads its 8 rows / 8 codes as float4s; rows ty*4 .. +3 and 64 + ty*4 .. +3, codes
// likewise with tx.
template <bool VEC>
__global__ void __launch_bounds__(THREADS, VEC ? 2 : 1) vq_simt_kernel(
    const float* __restrict__ x, int64_t x_stride, const float* __restrict__ cb,
    int64_t c_stride, const float* __restrict__ cn, int64_t N, int K, int D,
    int tiles_per_split, ull* out) {
  constexpr int BK = 16, SM = BM + 4;
  __shared__ __align__(16) float sX[2][BK * SM];
  __shared__ __align__(16) float sC[2][BK * SM];
  const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
  const int64_t m0 = int64_t(blockIdx.x) * BM;
  const int ntiles = (K + BN - 1) / BN;
  const int t_begin = blockIdx.y * tiles_per_split;
  const int t_end = min(ntiles, t_begin + tiles_per_split);
  if (t_begin >= t_end) return;
  const int nk = (D + BK - 1) / BK;
  const int iters = (t_end - t_begin) * nk;

  float acc[8][8];
  float best[8];
  int bidx[8];
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    best[i] = INFINITY;
    bidx[i] = 0;
#pragma unroll
    for (int j = 0; j < 8; ++j) acc[i][j] = 0.f;
  }
  float rx[2][4], rc[2][4];  // prefetched chunks: 2 x (one row, 4 consecutive k)

  auto fetch = [&](float (&r)[2][4], const float* __restrict__ g, int64_t stride, int64_t row0,
                   int64_t nrows, int k0) {
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int c = tid + i * THREADS;
      const int64_t gr = row0 + (c >> 2);
      const int k = k0 + (c & 3) * 4;
      if constexpr (VEC) {
        float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
        if (gr < nrows && k < D) v = __ldg(reinterpret_cast<const float4*>(g + gr * stride + k));
        r[i][0] = v.x;
        r[i][1] = v.y;
        r[i][2] = v.z;
        r[i][3] = v.w;
      } else {
#pragma unroll
        for (int e = 0; e < 4; ++e)
          r[i][e] = (gr < nrows && k + e < D) ? __ldg(g + gr * stride + k + e) : 0.f;
      }
    }
  };
  auto stash = [&](float* s, const float (&r)[2][4]) {
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int c = tid + i * THREADS;
#pragma unroll
      for (int e = 0; e < 4; ++e) s[((c & 3) * 4 + e) * SM + (c >> 2)] = r[i][e];
    }
  };
  auto fetch_it = [&](int it) {
    const int tile = t_begin + it / nk, k0 = (it % nk) * BK;
    fetch(rx, x, x_stride, m0, N, k0);
    fetch(rc, cb, c_stride, int64_t(tile) * BN, K, k0);
  };

  fetch_it(0);
  stash(sX[0], rx);
  stash(sC[0], rc);
  __syncthreads();
  for (int it = 0; it < iters; ++it) {
    const int st = it & 1;
    if (it + 1 < iters) fetch_it(it + 1);  // in flight during the FMAs below
#pragma unroll
    for (int k = 0; k < BK; ++k) {
      const float* xs = sX[st] + k * SM;
      const float* cs = sC[st] + k * SM;
      const float4 a0 = *reinterpret_cast<const float4*>(xs + ty * 4);
      const float4 a1 = *reinterpret_cast<const float4*>(xs + 64 + ty * 4);
      const float4 b0 = *reinterpret_cast<const float4*>(cs + tx * 4);
      const float4 b1 = *reinterpret_cast<const float4*>(cs + 64 + tx * 4);
      const float a[8] = {a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w};
      const float b[8] = {b0.x, b0.y, b0.z, b0.w, b1.x, b1.y, b1.z, b1.w};
#pragma unroll
      for (int i = 0; i < 8; ++i)
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
    }
    if (it + 1 < iters) {
      stash(sX[st ^ 1], rx);
      stash(sC[st ^ 1], rc);
    }
    __syncthreads();
    if (it % nk == nk - 1) {
      const int c0 = (t_begin + it / nk) * BN;
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const int c = c0 + (j < 4 ? tx * 4 + j : 64 + tx * 4 + (j - 4));  // increasing in j
        if (c < K) {
          const float norm = __ldg(cn + c);
#pragma unroll
          for (int i = 0; i < 8; ++i) {
            const float s = norm - 2.f * acc[i][j];
            if (s < best[i]) {
              best[i] = s;
              bidx[i] = c;
            }
          }
        }
      }
#pragma unroll
      for (int i = 0; i < 8; ++i)
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[i][j] = 0.f;
    }
  }
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    ull key = pack_key(best[i], bidx[i]);
#pragma unroll
    for (int m = 1; m < 16; m <<= 1) key = shfl_min(key, m);  // the 16 tx of this row
    const int64_t row = m0 + (i < 4 ? ty * 4 + i : 64 + ty * 4 + (i - 4));
    if (tx == 0 && row < N) atomicMin(out + row, key);
  }
}

// ||c||^2 in float32, one warp per code.
template <typename T>
__global__ void code_norms_kernel(const T* __restrict__ cb, int64_t stride, int K, int D,
                                  float* __restrict__ cn) {
  const int lane = threadIdx.x & 31;
  const int64_t c = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  if (c >= K) return;
  const T* row = cb + c * stride;
  float s = 0.f;
  for (int d = lane; d < D; d += 32) {
    const float v = to_f(row[d]);
    s = fmaf(v, v, s);
  }
#pragma unroll
  for (int m = 16; m > 0; m >>= 1) s += __shfl_xor_sync(0xffffffffu, s, m);
  if (lane == 0) cn[c] = s;
}

__global__ void unpack_index_kernel(ull* out, int64_t n) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) out[i] &= 0xffffffffull;
}

__device__ __forceinline__ int64_t load_index(const void* idx, bool idx64, int64_t i) {
  return idx64 ? __ldg((const long long*)idx + i) : int64_t(__ldg((const int*)idx + i));
}

__device__ __forceinline__ void record_bad(int64_t* err, int64_t c) {
  atomicAdd(reinterpret_cast<ull*>(err), 1ull);
  atomicExch(reinterpret_cast<ull*>(err + 1), ull(c));
}

// out[i, :] = codebook[idx[i], :] moved in units of U (uint4 when rows are 16-byte aligned).
template <typename U>
__global__ void embed_kernel(const void* idx, bool idx64, const char* __restrict__ cb,
                             int64_t c_stride_bytes, int K, int64_t units_per_row, int64_t n,
                             U* __restrict__ out, int64_t* err) {
  const int64_t total = n * units_per_row;
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < total;
       e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = e / units_per_row, u = e % units_per_row;
    const int64_t c = load_index(idx, idx64, i);
    if (c < 0 || c >= K) {
      out[e] = U{};
      if (u == 0) record_bad(err, c);
    } else {
      out[e] = reinterpret_cast<const U*>(cb + c * c_stride_bytes)[u];
    }
  }
}

template <typename T>
__global__ void code_stats_kernel(const void* idx, bool idx64, const T* __restrict__ x,
                                  int64_t x_stride, int K, int D, int64_t n,
                                  float* __restrict__ counts, float* __restrict__ sums,
                                  int64_t* err) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = (int64_t(gridDim.x) * blockDim.x) >> 5;
  for (int64_t i = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) >> 5; i < n; i += warps) {
    const int64_t c = load_index(idx, idx64, i);
    if (c < 0 || c >= K) {
      if (lane == 0) record_bad(err, c);
      continue;
    }
    if (lane == 0) atomicAdd(counts + c, 1.f);
    const T* row = x + i * x_stride;
    float* dst = sums + c * D;
    for (int d = lane; d < D; d += 32) atomicAdd(dst + d, to_f(row[d]));
  }
}

int sm_count(int device) {
  int n = 0;
  check_cuda(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device),
             "cudaDeviceGetAttribute");
  return n;
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

int grid_for(int64_t work, int threads, int device) {
  const int64_t blocks = (work + threads - 1) / threads;
  const int64_t cap = int64_t(sm_count(device)) * 16;
  return int(blocks < 1 ? 1 : (blocks > cap ? cap : blocks));
}

template <typename T>
void launch_quantize(const VqParams& p, bool fast_fp32, dim3 grid, int tps, cudaStream_t st) {
  const T* x = static_cast<const T*>(p.x);
  const T* cb = static_cast<const T*>(p.codebook);
  ull* out = reinterpret_cast<ull*>(p.out);
  constexpr int EPC = 16 / int(sizeof(T));
  const bool vec = p.d % EPC == 0 && p.x_stride % EPC == 0 && p.c_stride % EPC == 0 &&
                   aligned16(p.x) && aligned16(p.codebook);
  if constexpr (std::is_same_v<T, float>) {
    if (!fast_fp32) {
      if (vec)
        vq_simt_kernel<true><<<grid, THREADS, 0, st>>>(x, p.x_stride, cb, p.c_stride, p.ws,
                                                       p.n, p.k, p.d, tps, out);
      else
        vq_simt_kernel<false><<<grid, THREADS, 0, st>>>(x, p.x_stride, cb, p.c_stride, p.ws,
                                                        p.n, p.k, p.d, tps, out);
      return;
    }
  }
  if (vec)
    vq_mma_kernel<T, true><<<grid, THREADS, 0, st>>>(x, p.x_stride, cb, p.c_stride, p.ws, p.n,
                                                     p.k, p.d, tps, out);
  else
    vq_mma_kernel<T, false><<<grid, THREADS, 0, st>>>(x, p.x_stride, cb, p.c_stride, p.ws, p.n,
                                                      p.k, p.d, tps, out);
}

template <typename F>
void dispatch(DType dtype, const char* what, F&& f) {
  switch (dtype) {
    case DType::F32: return f(float{});
    case DType::F16: return f(__half{});
    case DType::BF16: return f(__nv_bfloat16{});
    default: fail(std::string(what) + ": unsupported dtype");
  }
}

}  // namespace

int64_t vq_workspace_floats(int k, int d) { return k; }

void vq_quantize(const VqParams& p, DType dtype, bool fast_fp32, int device, uintptr_t stream) {
  NvtxRange range("vilg::vq_quantize");
  if (p.n == 0) return;
  DeviceGuard guard(device);
  const cudaStream_t st = as_stream(stream);
  const int64_t mblocks = (p.n + BM - 1) / BM;
  check(mblocks <= 0x7fffffff, "vq_quantize: too many rows");
  const int ntiles = (p.k + BN - 1) / BN;
  // Split the codes across blocks when the row blocks alone would leave SMs idle.
  const int64_t want = 2 * int64_t(sm_count(device));
  int splits = mblocks >= want ? 1 : int((want + mblocks - 1) / mblocks);
  splits = splits > ntiles ? ntiles : splits;
  splits = splits > 65535 ? 65535 : splits;
  const int tps = (ntiles + splits - 1) / splits;
  splits = (ntiles + tps - 1) / tps;
  const dim3 grid{unsigned(mblocks), unsigned(splits), 1u};
  check_cuda(cudaMemsetAsync(p.out, 0xff, sizeof(int64_t) * size_t(p.n), st), "cudaMemsetAsync");
  dispatch(dtype, "vq_quantize", [&](auto tag) {
    using T = decltype(tag);
    const int norm_blocks = int((int64_t(p.k) * 32 + THREADS - 1) / THREADS);
    code_norms_kernel<T><<<norm_blocks, THREADS, 0, st>>>(static_cast<const T*>(p.codebook),
                                                          p.c_stride, p.k, p.d, p.ws);
    check_launch("vq_quantize (code norms)");
    launch_quantize<T>(p, fast_fp32, grid, tps, st);
    check_launch("vq_quantize");
  });
  const int64_t fin = (p.n + THREADS - 1) / THREADS;
  unpack_index_kernel<<<unsigned(fin), THREADS, 0, st>>>(reinterpret_cast<ull*>(p.out), p.n);
  check_launch("vq_quantize (indices)");
}

void vq_embed(const VqEmbedParams& p, DType dtype, int device, uintptr_t stream) {
  NvtxRange range("vilg::vq_embed");
  if (p.n == 0) return;
  DeviceGuard guard(device);
  const cudaStream_t st = as_stream(stream);
  const int64_t es = dtype_size(dtype), row_bytes = int64_t(p.d) * es,
                cs_bytes = p.c_stride * es;
  const char* cb = static_cast<const char*>(p.codebook);
  if (row_bytes % 16 == 0 && cs_bytes % 16 == 0 && aligned16(cb) && aligned16(p.out)) {
    const int64_t units = row_bytes / 16;
    embed_kernel<uint4><<<grid_for(p.n * units, THREADS, device), THREADS, 0, st>>>(
        p.idx, p.idx64, cb, cs_bytes, p.k, units, p.n, static_cast<uint4*>(p.out), p.err);
  } else if (es == 4) {
    embed_kernel<uint32_t><<<grid_for(p.n * p.d, THREADS, device), THREADS, 0, st>>>(
        p.idx, p.idx64, cb, cs_bytes, p.k, p.d, p.n, static_cast<uint32_t*>(p.out), p.err);
  } else {
    embed_kernel<uint16_t><<<grid_for(p.n * p.d, THREADS, device), THREADS, 0, st>>>(
        p.idx, p.idx64, cb, cs_bytes, p.k, p.d, p.n, static_cast<uint16_t*>(p.out), p.err);
  }
  check_launch("vq_embed");
}

void vq_code_stats(const VqStatsParams& p, DType dtype, int device, uintptr_t stream) {
  NvtxRange range("vilg::vq_code_stats");
  DeviceGuard guard(device);
  const cudaStream_t st = as_stream(stream);
  check_cuda(cudaMemsetAsync(p.counts, 0, sizeof(float) * size_t(p.k), st), "cudaMemsetAsync");
  check_cuda(cudaMemsetAsync(p.sums, 0, sizeof(float) * size_t(p.k) * size_t(p.d), st),
             "cudaMemsetAsync");
  if (p.n == 0) return;
  dispatch(dtype, "vq_code_stats", [&](auto tag) {
    using T = decltype(tag);
    code_stats_kernel<T><<<grid_for(p.n * 32, THREADS, device), THREADS, 0, st>>>(
        p.idx, p.idx64, static_cast<const T*>(p.x), p.x_stride, p.k, p.d, p.n, p.counts,
        p.sums, p.err);
    check_launch("vq_code_stats");
  });
}

}  // namespace vilg::cuda
