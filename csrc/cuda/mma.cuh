// Warp-level building blocks of the tensor-core attention kernels (sm_80 and later):
// cp.async, ldmatrix, mma.sync.m16n8k16 (f16 / bf16 in, f32 accumulate), fp16/bf16 packing,
// and shared / global memory accessors.
//
// Every shared-memory access of the kernels goes through the small accessors below, so that
// the host emulation in emulate.cuh (compiled with VILG_CUDA_EMULATE, never in the package) can
// run the very same kernel source on a CPU and check races, pending cp.async data and fragment
// layouts there.
//
// Fragment layouts of mma.m16n8k16 (PTX ISA, "Matrix Fragments for mma.m16n8k16 with floating
// point type"), with g = lane / 4 and t = lane % 4, two 16-bit values per 32-bit register, the
// lower column (A, C) or lower k (B) in the low half:
//   A 16x16 (row-major):  a[0] = (g,   2t..2t+1)   a[1] = (g+8, 2t..2t+1)
//                         a[2] = (g,   2t+8..+9)   a[3] = (g+8, 2t+8..+9)
//   B 16x8  (k x n):      b[0] = (k 2t..2t+1, n g) b[1] = (k 2t+8..2t+9, n g)
//   C 16x8  (f32):        c[0], c[1] = (g, 2t), (g, 2t+1)   c[2], c[3] = (g+8, 2t), (g+8, 2t+1)
// ldmatrix.x4: lanes 8i..8i+7 give the row addresses (16 bytes each) of 8x8 matrix i; register
// i of lane l receives row l/4, columns 2(l%4), 2(l%4)+1 of matrix i (with .trans: rows
// 2(l%4), 2(l%4)+1 of column l/4).
#pragma once
#include <cstdint>

#include "../common/macros.h"

#ifdef VILG_CUDA_EMULATE
#include "emulate.cuh"
#else
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#endif

namespace vilg::cuda {

#ifndef VILG_CUDA_EMULATE
using f16 = __half;
using bf16 = __nv_bfloat16;
#define VILG_DYN_SMEM(name) extern __shared__ __align__(16) unsigned char name[]
#endif

struct alignas(16) U128 {
  uint32_t x, y, z, w;
};

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// ---- ldmatrix.x4 address patterns (row, column of the 16-byte row lane `l` points at) --------
// A operand, 16x16 tile stored row-major [m][k]: registers 0..3 = a[0..3].
VILG_HD int ldsm_a_row(int l) { return l & 15; }
VILG_HD int ldsm_a_col(int l) { return (l >> 4) * 8; }
// B operand of two n8 tiles (n0..n0+15) x k16, stored [n][k] (K for Q K^T): registers
// {0, 1} = b[0..1] of columns n0..n0+7, {2, 3} = b[0..1] of columns n0+8..n0+15. No .trans.
VILG_HD int ldsm_bnk_row(int l) { return (l & 7) + ((l >> 4) << 3); }
VILG_HD int ldsm_bnk_col(int l) { return ((l >> 3) & 1) * 8; }
// B operand of k16 x two n8 tiles, stored [k][n] (V for P V): same register meaning, loaded
// with .trans.
VILG_HD int ldsm_bkn_row(int l) { return (l & 7) + (((l >> 3) & 1) << 3); }
VILG_HD int ldsm_bkn_col(int l) { return (l >> 4) * 8; }

#ifndef VILG_CUDA_EMULATE

VILG_DEVICE uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte global -> shared copy, completed by cp_async_wait (L2 only: K/V are re-read by
// neighbouring blocks, not by this one).
VILG_DEVICE void cp_async16(void* smem, const void* gmem) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem_addr(smem)), "l"(gmem)
               : "memory");
}
VILG_DEVICE void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
// Waits until at most N committed groups of this thread are still in flight.
template <int N>
VILG_DEVICE void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

VILG_DEVICE void ldsm_x4(uint32_t (&r)[4], const void* smem) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(smem))
               : "memory");
}
VILG_DEVICE void ldsm_x4_t(uint32_t (&r)[4], const void* smem) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(smem))
               : "memory");
}

// c += A * B for one m16n8k16 tile.
template <typename T>
VILG_DEVICE void mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);

template <>
VILG_DEVICE void mma16816<f16>(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, "
      "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

template <>
VILG_DEVICE void mma16816<bf16>(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
      "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Two floats -> one register of two 16-bit values (lo in the low half), round to nearest.
template <typename T>
VILG_DEVICE uint32_t pack2(float lo, float hi);

template <>
VILG_DEVICE uint32_t pack2<f16>(float lo, float hi) {
  const __half2 h = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&h);
}

template <>
VILG_DEVICE uint32_t pack2<bf16>(float lo, float hi) {
  const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&h);
}

VILG_DEVICE float to_f32(float x) { return x; }
VILG_DEVICE float to_f32(f16 x) { return __half2float(x); }
VILG_DEVICE float to_f32(bf16 x) { return __bfloat162float(x); }

// Shared memory accessors (plain accesses here; instrumented under emulation).
VILG_DEVICE void sts128(void* s, U128 v) {
  *reinterpret_cast<uint4*>(s) = make_uint4(v.x, v.y, v.z, v.w);
}
VILG_DEVICE U128 lds128(const void* s) {
  const uint4 v = *reinterpret_cast<const uint4*>(s);
  return U128{v.x, v.y, v.z, v.w};
}
VILG_DEVICE void sts32(void* s, uint32_t v) { *reinterpret_cast<uint32_t*>(s) = v; }
VILG_DEVICE void sts_f32(float* s, float v) { *s = v; }
VILG_DEVICE float lds_f32(const float* s) { return *s; }

#else  // VILG_CUDA_EMULATE: the same primitives on the host emulation of emulate.cuh

inline void cp_async16(void* smem, const void* gmem) { emu::cp_async(smem, gmem, 16); }
inline void cp_async_commit() { emu::cp_async_commit(); }
template <int N>
inline void cp_async_wait() {
  emu::cp_async_wait(N);
}

inline void ldsm_common(uint32_t (&r)[4], const void* smem, bool trans) {
  emu::Slot s{};
  s.ptr = smem;
  s = emu::collective(trans ? emu::kLdsmT : emu::kLdsm, s);
  for (int i = 0; i < 4; ++i) r[i] = uint32_t(s.v[i]);
}
inline void ldsm_x4(uint32_t (&r)[4], const void* smem) { ldsm_common(r, smem, false); }
inline void ldsm_x4_t(uint32_t (&r)[4], const void* smem) { ldsm_common(r, smem, true); }

template <typename T>
inline void mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  static_assert(sizeof(T) == 2, "16-bit operands");
  emu::Slot s{};
  for (int i = 0; i < 4; ++i) s.v[i] = a[i];
  s.v[4] = b0;
  s.v[5] = b1;
  std::memcpy(&s.v[6], c, 16);
  s = emu::collective(std::is_same_v<T, bf16> ? emu::kMmaBF16 : emu::kMmaF16, s);
  std::memcpy(c, &s.v[6], 16);
}

template <typename T>
inline uint32_t pack2(float lo, float hi) {
  return uint32_t(::vilg::from_float<T>(lo).bits) |
         (uint32_t(::vilg::from_float<T>(hi).bits) << 16);
}

inline float to_f32(float x) { return x; }
inline float to_f32(f16 x) { return ::vilg::to_float(x); }
inline float to_f32(bf16 x) { return ::vilg::to_float(x); }

inline void sts128(void* s, U128 v) { emu::smem_store(s, &v, 16); }
inline U128 lds128(const void* s) {
  U128 v;
  emu::smem_load(&v, s, 16);
  return v;
}
inline void sts32(void* s, uint32_t v) { emu::smem_store(s, &v, 4); }
inline void sts_f32(float* s, float v) { emu::smem_store(s, &v, 4); }
inline float lds_f32(const float* s) {
  float v;
  emu::smem_load(&v, s, 4);
  return v;
}

#endif  // VILG_CUDA_EMULATE

// Global memory: 8 consecutive 16-bit values, vectorised (16-byte aligned) or element-wise.
VILG_DEVICE U128 ldg_8x16(const uint16_t* g) {
  U128 v;
  v.x = uint32_t(g[0]) | (uint32_t(g[1]) << 16);
  v.y = uint32_t(g[2]) | (uint32_t(g[3]) << 16);
  v.z = uint32_t(g[4]) | (uint32_t(g[5]) << 16);
  v.w = uint32_t(g[6]) | (uint32_t(g[7]) << 16);
  return v;
}
VILG_DEVICE void stg128(uint16_t* g, U128 v) {
#ifdef VILG_CUDA_EMULATE
  if (reinterpret_cast<uintptr_t>(g) % 16) emu::fatal("misaligned 16-byte global store");
#endif
  *reinterpret_cast<U128*>(g) = v;
}
VILG_DEVICE void stg_8x16(uint16_t* g, U128 v) {
  const uint32_t w[4] = {v.x, v.y, v.z, v.w};
  for (int i = 0; i < 4; ++i) {
    g[2 * i] = uint16_t(w[i] & 0xffffu);
    g[2 * i + 1] = uint16_t(w[i] >> 16);
  }
}

// Max / sum over the 4 lanes of a quad (the lanes holding one accumulator row).
VILG_DEVICE float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}
VILG_DEVICE float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

}  // namespace vilg::cuda
