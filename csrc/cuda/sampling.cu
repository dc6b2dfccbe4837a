// The fused sampler on CUDA: one block per row, the algorithm of ../common/sampling_params.h
// with the bit-exact helpers of ../common/philox.h, so it draws what the CPU draws.
//
// The row's mixed, tempered logits z are staged once in shared memory (or, for vocabularies
// too large for it, recomputed from global memory on every pass; the arithmetic is identical).
// Both thresholds come from a radix select over the order-preserving 32-bit keys of z, 8 bits
// per pass, most significant first (no sort): top-k with counts, top-p with the integer weights
// restricted to the top-k survivors. Each pass builds a 256-bin shared histogram (64-bit integer
// atomics: exact and order-independent, hence deterministic) and one warp picks the digit with
// a shuffle scan. The draw is an exclusive block scan of per-thread weight sums over contiguous
// index chunks; the thread whose chunk holds the target walks it.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "../common/philox.h"
#include "../common/tensor_ref.h"
#include "common.cuh"
#include "nvtx.h"
#include "sampling.h"

namespace vilg::cuda {
namespace {

using ull = unsigned long long;
constexpr int THREADS = 512, NWARPS = THREADS / 32;

__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }

struct Shared {
  ull hist[256];
  ull red[NWARPS];
  float redf[NWARPS];
  int redi[NWARPS];
  uint32_t prefix;
  ull want;
  ull total;
  float m;
  int best;
};

__device__ __forceinline__ ull warp_sum(ull v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Block-wide sum (every thread gets it).
__device__ ull block_sum(ull v, Shared& sh) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = warp_sum(v);
  __syncthreads();  // sh.red may still be read from a previous call
  if (lane == 0) sh.red[warp] = v;
  __syncthreads();
  ull t = lane < NWARPS ? sh.red[lane] : 0;
  return warp_sum(t);
}

// Radix select over the keys of z: the largest key K with sum_{key >= K} weight >= want
// (weight(i, z) is 0 for entries that do not take part). 4 passes of 8 bits.
template <typename ZF, typename WF>
__device__ uint32_t radix_select(int64_t V, ull want, ZF zval, WF weight, Shared& sh) {
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  uint32_t prefix = 0, mask = 0;
  for (int shift = 24; shift >= 0; shift -= 8) {
    __syncthreads();  // previous readers of hist / prefix are done
    for (int i = tid; i < 256; i += THREADS) sh.hist[i] = 0;
    __syncthreads();
    for (int64_t i = tid; i < V; i += THREADS) {
      const float z = zval(i);
      const uint32_t key = float_key(z);
      if ((key & mask) == prefix) {
        const ull w = weight(i, z);
        if (w) atomicAdd(&sh.hist[(key >> shift) & 255u], w);
      }
    }
    __syncthreads();
    if (warp == 0) {
      // lane l owns digits 255 - 8l .. 248 - 8l (descending)
      ull mine = 0;
#pragma unroll
      for (int j = 0; j < 8; ++j) mine += sh.hist[255 - 8 * lane - j];
      ull incl = mine;
#pragma unroll
      for (int o = 1; o < 32; o <<= 1) {
        const ull u = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o) incl += u;
      }
      const unsigned hit = __ballot_sync(0xffffffffu, incl >= want);
      const int first = hit ? __ffs(hit) - 1 : 31;  // hit == 0 cannot happen (mass >= want)
      if (lane == first) {
        ull cum = incl - mine;
        int digit = 248 - 8 * lane;
        ull left = want;
        for (int j = 0; j < 8; ++j) {
          const int d = 255 - 8 * lane - j;
          const ull hd = sh.hist[d];
          if (cum + hd >= want) {
            digit = d;
            left = want - cum;
            break;
          }
          cum += hd;
        }
        sh.prefix = prefix | (uint32_t(digit) << shift);
        sh.want = left;
      }
    }
    __syncthreads();
    prefix = sh.prefix;
    want = sh.want;
    mask |= 255u << shift;
  }
  return prefix;
}

template <typename T, bool STAGED>
__global__ void __launch_bounds__(THREADS) sample_kernel(const SampleParams p) {
  extern __shared__ float sz[];  // [vocab] when STAGED
  __shared__ Shared sh;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int row = blockIdx.x;
  const int64_t V = p.vocab;
  const T* lg = static_cast<const T*>(p.logits) + row * p.l_stride;
  const T* un = p.uncond ? static_cast<const T*>(p.uncond) + row * p.u_stride : nullptr;

  auto compute_z = [&](int64_t i) {
    float u;
    if (un) u = to_f(un[i]);
    return sampler_logit(to_f(lg[i]), un ? &u : nullptr, p.cfg, p.inv_t);
  };
  auto zval = [&](int64_t i) -> float {
    if constexpr (STAGED) return sz[i];
    else return compute_z(i);
  };

  // stage z; row maximum with the lowest index on ties
  float bv = -INFINITY;
  int bi = 0x7fffffff;
  for (int64_t i = tid; i < V; i += THREADS) {
    const float z = compute_z(i);
    if constexpr (STAGED) sz[i] = z;
    if (z > bv || (bi == 0x7fffffff)) {  // first element seen, or strictly larger
      bv = z;
      bi = int(i);
    }
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
    const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
    if (ov > bv || (ov == bv && oi < bi)) {
      bv = ov;
      bi = oi;
    }
  }
  if (lane == 0) {
    sh.redf[warp] = bv;
    sh.redi[warp] = bi;
  }
  __syncthreads();
  if (tid == 0) {
    float v = sh.redf[0];
    int i0 = sh.redi[0];
    for (int w = 1; w < NWARPS; ++w) {
      const float ov = sh.redf[w];
      const int oi = sh.redi[w];
      if (ov > v || (ov == v && oi < i0)) {
        v = ov;
        i0 = oi;
      }
    }
    sh.m = v;
    sh.best = i0;
  }
  __syncthreads();
  const float m = sh.m;
  if (p.greedy) {
    if (tid == 0) p.out[row] = sh.best;
    return;
  }

  float tau = -INFINITY;
  if (p.top_k > 0 && p.top_k < V) {
    const uint32_t k = radix_select(
        V, ull(p.top_k), zval, [](int64_t, float) -> ull { return 1; }, sh);
    tau = key_float(k);
  }
  auto kept_weight = [&](int64_t, float z) -> ull {
    return z >= tau ? ull(sampler_weight(z, m)) : 0ull;
  };
  ull local = 0;
  for (int64_t i = tid; i < V; i += THREADS) local += kept_weight(i, zval(i));
  ull total = block_sum(local, sh);
  if (p.top_p < 1.0) {
    const ull need = top_p_need(p.top_p, total);
    const uint32_t k = radix_select(V, need, zval, kept_weight, sh);
    tau = key_float(k);  // >= the top-k cut: k is the key of a kept entry
    local = 0;
    for (int64_t i = tid; i < V; i += THREADS) local += kept_weight(i, zval(i));
    total = block_sum(local, sh);
  }

  // draw: contiguous chunks per thread, exclusive scan of their weight sums
  const ull target = scale_draw(sample_bits53(p.seed, p.offset, uint64_t(row)), total);
  const int64_t chunk = (V + THREADS - 1) / THREADS;
  const int64_t lo = tid * chunk, hi = lo + chunk < V ? lo + chunk : V;
  ull mine = 0;
  for (int64_t i = lo; i < hi; ++i) mine += kept_weight(i, zval(i));
  ull incl = mine;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const ull u = __shfl_up_sync(0xffffffffu, incl, o);
    if (lane >= o) incl += u;
  }
  __syncthreads();
  if (lane == 31) sh.red[warp] = incl;
  __syncthreads();
  ull before = 0;
  for (int w = 0; w < warp; ++w) before += sh.red[w];
  const ull excl = before + incl - mine;
  if (mine > 0 && excl <= target && target < excl + mine) {
    ull cum = excl;
    for (int64_t i = lo; i < hi; ++i) {
      cum += kept_weight(i, zval(i));
      if (cum > target) {
        p.out[row] = i;
        break;
      }
    }
  }
}

template <typename T>
void launch(const SampleParams& p, int device, cudaStream_t st) {
  int optin = 0;
  check_cuda(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device),
             "cudaDeviceGetAttribute");
  const int64_t bytes = p.vocab * int64_t(sizeof(float));
  const int64_t budget = int64_t(optin) - int64_t(sizeof(Shared)) - 1024;
  if (!p.greedy && bytes <= budget) {
    if (bytes > 48 * 1024)
      check_cuda(cudaFuncSetAttribute(sample_kernel<T, true>,
                                      cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)),
                 "cudaFuncSetAttribute");
    sample_kernel<T, true><<<unsigned(p.batch), THREADS, size_t(bytes), st>>>(p);
  } else {
    sample_kernel<T, false><<<unsigned(p.batch), THREADS, 0, st>>>(p);
  }
  check_launch("sample");
}

}  // namespace

void sample(const SampleParams& p, DType dtype, int device, uintptr_t stream) {
  NvtxRange range("vilg::sample");
  if (p.batch == 0) return;
  DeviceGuard guard(device);
  const cudaStream_t st = as_stream(stream);
  switch (dtype) {
    case DType::F32: return launch<float>(p, device, st);
    case DType::F16: return launch<__half>(p, device, st);
    case DType::BF16: return launch<__nv_bfloat16>(p, device, st);
    default: fail("sample: unsupported dtype");
  }
}

}  // namespace vilg::cuda
