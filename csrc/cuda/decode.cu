// Decoding attention on CUDA: memory-bound, so the design is about bytes in flight.
//
// One block of 4 warps per (batch, head, split). A key row (head_dim elements) is read as 16-byte
// vectors by a group of LPK = min(32, row bytes / 16) lanes, so a warp covers 32 / LPK keys per
// step and, unrolled twice, has 2 keys x (K + V) rows of loads in flight per lane group before
// it needs any of them. Each lane group keeps its own online softmax (running max, sum and its
// slice of the output accumulator, float32, exp2 with log2(e) folded into the query scale);
// groups merge by shuffles, warps through shared memory. When batch * heads blocks would leave
// the GPU idle the key list is split across blocks (split-K): each writes (max, sum, acc) to a
// workspace and a second kernel merges them. Only the listed keys are ever read.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "../common/tensor_ref.h"
#include "common.cuh"
#include "nvtx.h"
#include "decode.h"

namespace vilg::cuda {
namespace {

constexpr int NWARPS = 4, THREADS = NWARPS * 32, UNROLL = 2;
constexpr float kLog2e = 1.4426950408889634f;

// 16 bytes -> VEC floats.
template <typename T>
__device__ __forceinline__ void unpack16(const uint4& u, float* f) {
  if constexpr (std::is_same_v<T, float>) {
    f[0] = __uint_as_float(u.x);
    f[1] = __uint_as_float(u.y);
    f[2] = __uint_as_float(u.z);
    f[3] = __uint_as_float(u.w);
  } else {
    const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      float2 p;
      if constexpr (std::is_same_v<T, __half>) {
        __half2 h;
        memcpy(&h, &w[i], 4);
        p = __half22float2(h);
      } else {
        __nv_bfloat162 h;
        memcpy(&h, &w[i], 4);
        p = __bfloat1622float2(h);
      }
      f[2 * i] = p.x;
      f[2 * i + 1] = p.y;
    }
  }
}

template <typename T> __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_f<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// exp2(a - b) with -inf - -inf treated as "nothing yet" (weight 0).
__device__ __forceinline__ float rescale(float a, float b) {
  return a == -INFINITY ? 0.f : exp2f(a - b);
}

template <typename T, int D>
__global__ void __launch_bounds__(THREADS) decode_kernel(const DecodeParams p) {
  constexpr int VEC = 16 / int(sizeof(T));  // elements per 16-byte vector
  constexpr int CH = D / VEC;               // vectors per row
  constexpr int LPK = CH < 32 ? CH : 32;    // lanes per key
  constexpr int EPL = CH / LPK;             // vectors per lane
  constexpr int KPW = 32 / LPK;             // keys per warp step
  constexpr int NV = EPL * VEC;             // floats per lane

  __shared__ float s_m[NWARPS], s_l[NWARPS];
  __shared__ float s_acc[NWARPS][D];

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int sg = lane / LPK, lid = lane % LPK;
  const int bh = blockIdx.x, split = blockIdx.y;
  const int b = bh / p.heads, h = bh % p.heads;

  // this block's slice of the key list
  const KeySpan span = key_span(p);
  const int32_t* keys = span.keys;
  const int per = (span.count + p.splits - 1) / p.splits;
  const int kb = split * per;
  const int ke = min(span.count, kb + per);

  int tv = p.text_len;
  if (p.text_lens) tv = min(max(p.text_lens[b], 0), p.text_len);
  const int pad_lo = p.text_start + tv, pad_hi = p.text_start + p.text_len;

  const T* kbase = static_cast<const T*>(p.k) + b * p.k_s[0] + h * p.k_s[1];
  const T* vbase = static_cast<const T*>(p.v) + b * p.v_s[0] + h * p.v_s[1];

  float q[NV];
  {
    const T* qp = static_cast<const T*>(p.q) + b * p.q_s[0] + h * p.q_s[1];
    const float qs = p.scale * kLog2e;
#pragma unroll
    for (int e = 0; e < EPL; ++e) {
      unpack16<T>(__ldg(reinterpret_cast<const uint4*>(qp) + lid + e * LPK), q + e * VEC);
    }
#pragma unroll
    for (int i = 0; i < NV; ++i) q[i] *= qs;
  }

  float m = -INFINITY, l = 0.f, acc[NV];
#pragma unroll
  for (int i = 0; i < NV; ++i) acc[i] = 0.f;

  for (int base = kb + warp * KPW; base < ke; base += NWARPS * KPW * UNROLL) {
    uint4 kr[UNROLL][EPL], vr[UNROLL][EPL];
    bool ok[UNROLL];
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {  // issue every load before using any
      const int j = base + u * NWARPS * KPW + sg;
      int kp = 0;
      ok[u] = j < ke;
      if (ok[u]) {
        kp = __ldg(keys + j);
        ok[u] = kp < pad_lo || kp >= pad_hi;
      }
#pragma unroll
      for (int e = 0; e < EPL; ++e) {
        kr[u][e] = make_uint4(0, 0, 0, 0);
        vr[u][e] = make_uint4(0, 0, 0, 0);
      }
      if (ok[u]) {
        const uint4* kq = reinterpret_cast<const uint4*>(kbase + kp * p.k_s[2]);
        const uint4* vq = reinterpret_cast<const uint4*>(vbase + kp * p.v_s[2]);
#pragma unroll
        for (int e = 0; e < EPL; ++e) {
          kr[u][e] = __ldg(kq + lid + e * LPK);
          vr[u][e] = __ldg(vq + lid + e * LPK);
        }
      }
    }
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
      float s = 0.f;
#pragma unroll
      for (int e = 0; e < EPL; ++e) {
        float kf[VEC];
        unpack16<T>(kr[u][e], kf);
#pragma unroll
        for (int i = 0; i < VEC; ++i) s = fmaf(q[e * VEC + i], kf[i], s);
      }
#pragma unroll
      for (int o = 1; o < LPK; o <<= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
      if (!ok[u]) s = -INFINITY;
      const float mn = fmaxf(m, s);
      const float alpha = m == mn ? 1.f : exp2f(m - mn);
      const float pw = s == -INFINITY ? 0.f : exp2f(s - mn);
      l = l * alpha + pw;
#pragma unroll
      for (int e = 0; e < EPL; ++e) {
        float vf[VEC];
        unpack16<T>(vr[u][e], vf);
#pragma unroll
        for (int i = 0; i < VEC; ++i) acc[e * VEC + i] = fmaf(pw, vf[i], acc[e * VEC + i] * alpha);
      }
      m = mn;
    }
  }

  // merge the KPW lane groups of the warp
#pragma unroll
  for (int o = LPK; o < 32; o <<= 1) {
    const float mo = __shfl_xor_sync(0xffffffffu, m, o);
    const float lo = __shfl_xor_sync(0xffffffffu, l, o);
    const float mn = fmaxf(m, mo);
    const float a = rescale(m, mn), c = rescale(mo, mn);
    l = l * a + lo * c;
#pragma unroll
    for (int i = 0; i < NV; ++i) {
      const float ao = __shfl_xor_sync(0xffffffffu, acc[i], o);
      acc[i] = acc[i] * a + ao * c;
    }
    m = mn;
  }
  if (sg == 0) {
#pragma unroll
    for (int e = 0; e < EPL; ++e)
#pragma unroll
      for (int i = 0; i < VEC; ++i) s_acc[warp][(lid + e * LPK) * VEC + i] = acc[e * VEC + i];
    if (lid == 0) {
      s_m[warp] = m;
      s_l[warp] = l;
    }
  }
  __syncthreads();

  float M = -INFINITY;
#pragma unroll
  for (int w = 0; w < NWARPS; ++w) M = fmaxf(M, s_m[w]);
  float wt[NWARPS], L = 0.f;
#pragma unroll
  for (int w = 0; w < NWARPS; ++w) {
    wt[w] = rescale(s_m[w], M);
    L += s_l[w] * wt[w];
  }
  if (p.splits == 1) {
    const float inv = L > 0.f ? 1.f / L : 0.f;  // no allowed key: output 0
    T* o = static_cast<T*>(p.o) + b * p.o_s[0] + h * p.o_s[1];
    for (int d = tid; d < D; d += THREADS) {
      float v = 0.f;
#pragma unroll
      for (int w = 0; w < NWARPS; ++w) v += s_acc[w][d] * wt[w];
      o[d] = from_f<T>(v * inv);
    }
  } else {
    float* part = p.ws + (int64_t(bh) * p.splits + split) * (D + 2);
    for (int d = tid; d < D; d += THREADS) {
      float v = 0.f;
#pragma unroll
      for (int w = 0; w < NWARPS; ++w) v += s_acc[w][d] * wt[w];
      part[2 + d] = v;
    }
    if (tid == 0) {
      part[0] = M;
      part[1] = L;
    }
  }
}

// Merge the split-K partials of one (batch, head).
template <typename T>
__global__ void decode_combine_kernel(const DecodeParams p) {
  const int D = p.head_dim, bh = blockIdx.x;
  const int b = bh / p.heads, h = bh % p.heads;
  const float* part = p.ws + int64_t(bh) * p.splits * (D + 2);
  float M = -INFINITY;
  for (int s = 0; s < p.splits; ++s) M = fmaxf(M, part[s * (D + 2)]);
  float L = 0.f;
  for (int s = 0; s < p.splits; ++s) L += part[s * (D + 2) + 1] * rescale(part[s * (D + 2)], M);
  const float inv = L > 0.f ? 1.f / L : 0.f;
  T* o = static_cast<T*>(p.o) + b * p.o_s[0] + h * p.o_s[1];
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    float v = 0.f;
    for (int s = 0; s < p.splits; ++s)
      v += part[s * (D + 2) + 2 + d] * rescale(part[s * (D + 2)], M);
    o[d] = from_f<T>(v * inv);
  }
}

template <typename T>
void launch(const DecodeParams& p, cudaStream_t st) {
  const dim3 grid{unsigned(p.batch * p.heads), unsigned(p.splits), 1u};
  switch (p.head_dim) {
    case 32: decode_kernel<T, 32><<<grid, THREADS, 0, st>>>(p); break;
    case 64: decode_kernel<T, 64><<<grid, THREADS, 0, st>>>(p); break;
    case 128: decode_kernel<T, 128><<<grid, THREADS, 0, st>>>(p); break;
    case 256: decode_kernel<T, 256><<<grid, THREADS, 0, st>>>(p); break;
    default: fail("CUDA decode_attention supports head_dim 32, 64, 128, 256");
  }
  check_launch("decode_attention");
  if (p.splits > 1) {
    decode_combine_kernel<T><<<unsigned(p.batch * p.heads), 128, 0, st>>>(p);
    check_launch("decode_attention (split-K combine)");
  }
}

}  // namespace

int decode_splits(int batch, int heads, int num_keys, int device) {
  int sms = 0;
  check_cuda(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device),
             "cudaDeviceGetAttribute");
  const int64_t bh = int64_t(batch) * heads, want = 4 * int64_t(sms);  // ~4 blocks per SM
  if (bh >= want || num_keys < 128) return 1;
  int64_t s = (want + bh - 1) / bh;
  const int64_t most = num_keys / 64;  // at least 64 keys per split
  s = s > most ? most : s;
  s = s > 64 ? 64 : s;
  return s < 1 ? 1 : int(s);
}

int64_t decode_workspace_floats(int batch, int heads, int head_dim, int splits) {
  return splits > 1 ? int64_t(batch) * heads * splits * (head_dim + 2) : 0;
}

void decode_attention(const DecodeParams& p, DType dtype, int device, uintptr_t stream) {
  NvtxRange range("vilg::decode_attention");
  if (p.batch == 0 || p.heads == 0) return;
  check(int64_t(p.batch) * p.heads <= 0x7fffffff, "decode_attention: batch * heads too large");
  check(p.splits == 1 || p.ws != nullptr, "decode_attention: split-K needs a workspace");
  DeviceGuard guard(device);
  const cudaStream_t st = as_stream(stream);
  switch (dtype) {
    case DType::F32: return launch<float>(p, st);
    case DType::F16: return launch<__half>(p, st);
    case DType::BF16: return launch<__nv_bfloat16>(p, st);
    default: fail("decode_attention: unsupported dtype");
  }
}

}  // namespace vilg::cuda
