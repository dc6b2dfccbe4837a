// The CUDA runtime API, vector and 16-bit float types, atomics and intrinsics that the .cu files
// written against plain CUDA (decode.cu, vq.cu, sampling.cu) use, on top of the warp emulation
// of emulate.cuh. tests/cuda_emulation/include/ maps <cuda_runtime.h>, <cuda_fp16.h> and
// <cuda_bf16.h> here, and tests/cuda_emulation/translate.py rewrites each `k<<<...>>>(args)`
// into launch_kernel below, so the real host launchers (dtype / head-dim dispatch, grid and
// block sizes, the shared-memory opt-in) run unchanged. The emulated device is configurable
// (device()), and a launch the hardware would refuse (an empty or too large grid, too many
// threads, dynamic shared memory above 48 KiB without the opt-in, or above the opt-in limit)
// sets the sticky error that cudaGetLastError reports, as on a GPU. Vector loads through __ldg
// and atomics check their alignment; plain vector accesses are checked by UBSan's alignment
// check in the sanitized build (the vector types carry their CUDA alignment).
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <map>

#include "emulate.cuh"

#define __forceinline__
#ifndef __restrict__
#define __restrict__ __restrict
#endif

// ---- types -----------------------------------------------------------------------------------
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};
struct alignas(16) float4 {
  float x, y, z, w;
};
struct alignas(8) float2 {
  float x, y;
};
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }

using __half = ::vilg::f16_t;
using __nv_bfloat16 = ::vilg::bf16_t;
struct alignas(4) __half2 {
  __half x, y;
};
struct alignas(4) __nv_bfloat162 {
  __nv_bfloat16 x, y;
};
inline float __half2float(__half h) { return ::vilg::to_float(h); }
inline float __bfloat162float(__nv_bfloat16 h) { return ::vilg::to_float(h); }
inline __half __float2half_rn(float f) { return ::vilg::from_float<__half>(f); }
inline __half __float2half(float f) { return ::vilg::from_float<__half>(f); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return ::vilg::from_float<__nv_bfloat16>(f); }
inline __nv_bfloat16 __float2bfloat16(float f) { return ::vilg::from_float<__nv_bfloat16>(f); }
inline float2 __half22float2(__half2 h) { return {__half2float(h.x), __half2float(h.y)}; }
inline float2 __bfloat1622float2(__nv_bfloat162 h) {
  return {__bfloat162float(h.x), __bfloat162float(h.y)};
}

// ---- intrinsics ------------------------------------------------------------------------------
inline float __uint_as_float(unsigned u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline unsigned __float_as_uint(float f) {
  unsigned u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float __int_as_float(int i) {
  float f;
  std::memcpy(&f, &i, 4);
  return f;
}
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }

namespace vilg::cuda::emu {

template <typename T>
inline void check_align(const T* p, const char* what) {
  if (reinterpret_cast<uintptr_t>(p) % alignof(T))
    fatal("misaligned %s (address %% %zu = %zu)", what, alignof(T),
          size_t(reinterpret_cast<uintptr_t>(p) % alignof(T)));
}

}  // namespace vilg::cuda::emu

template <typename T>
inline T __ldg(const T* p) {
  ::vilg::cuda::emu::check_align(p, "__ldg");
  return *p;
}

// Atomics: fibers switch only at barriers and collectives, so a read-modify-write is atomic.
template <typename T>
inline T atomicAdd(T* p, T v) {
  ::vilg::cuda::emu::check_align(p, "atomicAdd");
  const T old = *p;
  *p = old + v;
  return old;
}
template <typename T>
inline T atomicMin(T* p, T v) {
  ::vilg::cuda::emu::check_align(p, "atomicMin");
  const T old = *p;
  *p = v < old ? v : old;
  return old;
}
template <typename T>
inline T atomicExch(T* p, T v) {
  ::vilg::cuda::emu::check_align(p, "atomicExch");
  const T old = *p;
  *p = v;
  return old;
}

// ---- runtime API -----------------------------------------------------------------------------
enum cudaError_t : int {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInvalidDevice = 101,
};
enum cudaDeviceAttr : int {
  cudaDevAttrMultiProcessorCount = 16,
  cudaDevAttrMaxSharedMemoryPerBlockOptin = 97,
};
enum cudaFuncAttribute : int { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
struct CUstream_st;
using cudaStream_t = CUstream_st*;

namespace vilg::cuda::emu {

struct Device {
  int sms = 132;                // H100 SXM
  int smem_optin = 227 * 1024;  // per-block opt-in limit of sm_90
  int count = 1;
};
inline Device& device() {
  static Device d;
  return d;
}

struct Api {
  cudaError_t last = cudaSuccess;
  int current = 0;
  std::map<const void*, int> max_dyn;  // cudaFuncAttributeMaxDynamicSharedMemorySize per kernel
  long launches = 0;
};
inline Api& api() {
  static Api a;
  return a;
}

inline cudaError_t set_error(cudaError_t e) {
  if (api().last == cudaSuccess) api().last = e;
  return e;
}

template <typename F>
inline const void* kernel_id(F* f) {
  return reinterpret_cast<const void*>(f);
}

// k<<<grid, block, dyn, stream>>>(args) after translate.py.
template <typename Body>
inline void launch_kernel(const void* kernel, dim3 grid, dim3 block, size_t dyn, cudaStream_t,
                          Body&& body) {
  Api& A = api();
  const uint64_t threads = uint64_t(block.x) * block.y * block.z;
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.x > 0x7fffffffu || grid.y > 65535 ||
      grid.z > 65535 || threads == 0 || threads > 1024 || block.z > 64) {
    set_error(cudaErrorInvalidConfiguration);
    return;
  }
  if (block.y != 1 || block.z != 1) fatal("only 1-D blocks are emulated");
  const auto it = A.max_dyn.find(kernel);
  const size_t allowed = it == A.max_dyn.end() ? 48 * 1024 : size_t(it->second);
  if (dyn > allowed) {
    set_error(cudaErrorInvalidValue);
    return;
  }
  ++A.launches;
  launch(Dim3{grid.x, grid.y, grid.z}, int(threads), dyn, std::function<void()>(body));
  if (rt().static_used + dyn > size_t(device().smem_optin))
    fatal("static + dynamic shared memory %zu above the device's %d", rt().static_used + dyn,
          device().smem_optin);
}

}  // namespace vilg::cuda::emu

inline const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
  }
  return "unknown error";
}
inline cudaError_t cudaGetLastError() {
  const cudaError_t e = ::vilg::cuda::emu::api().last;
  ::vilg::cuda::emu::api().last = cudaSuccess;
  return e;
}
inline cudaError_t cudaPeekAtLastError() { return ::vilg::cuda::emu::api().last; }
inline cudaError_t cudaGetDevice(int* d) {
  *d = ::vilg::cuda::emu::api().current;
  return cudaSuccess;
}
inline cudaError_t cudaSetDevice(int d) {
  if (d < 0 || d >= ::vilg::cuda::emu::device().count)
    return ::vilg::cuda::emu::set_error(cudaErrorInvalidDevice);
  ::vilg::cuda::emu::api().current = d;
  return cudaSuccess;
}
inline cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr a, int dev) {
  if (dev < 0 || dev >= ::vilg::cuda::emu::device().count)
    return ::vilg::cuda::emu::set_error(cudaErrorInvalidDevice);
  switch (a) {
    case cudaDevAttrMultiProcessorCount: *v = ::vilg::cuda::emu::device().sms; return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin:
      *v = ::vilg::cuda::emu::device().smem_optin;
      return cudaSuccess;
  }
  return ::vilg::cuda::emu::set_error(cudaErrorInvalidValue);
}
template <typename F>
inline cudaError_t cudaFuncSetAttribute(F* kernel, cudaFuncAttribute a, int value) {
  if (a != cudaFuncAttributeMaxDynamicSharedMemorySize || value < 0 ||
      value > ::vilg::cuda::emu::device().smem_optin)
    return ::vilg::cuda::emu::set_error(cudaErrorInvalidValue);
  ::vilg::cuda::emu::api().max_dyn[::vilg::cuda::emu::kernel_id(kernel)] = value;
  return cudaSuccess;
}
inline cudaError_t cudaMemsetAsync(void* p, int v, size_t n, cudaStream_t = nullptr) {
  std::memset(p, v, n);
  return cudaSuccess;
}
