// Block-sparse attention forward on tensor cores (fp16 / bf16 in, f32 accumulate).
//
// One block of 4 warps per (query tile, head, sample); warp w owns query rows 16w .. 16w+15 of
// the 64-row tile. Only the key tiles listed for the query tile (CSR) are visited; their K and
// V tiles are double-buffered in shared memory with cp.async. S = Q K^T and O += P V run on
// mma.m16n8k16; the online softmax stays in registers in the log2 domain (scores pre-scaled
// by scale * log2 e, exp2). The in-tile bit mask (and per-sample text padding) is applied only
// to tiles that are partial or touch padded text. GQA: q head h reads k/v head h / kv_group.
// A rectangular layout (q_len < seq_len) only changes the query side's row count. Score
// modifiers (soft-cap, ALiBi) and left padding run in a separate instantiation (Mod = true);
// the modifiers act on the score fragments before masking. fp32 inputs take the SIMT reference path (attention_simt.cu).
#include "attention_tiles.cuh"

#include "attention_launch.h"
#include "common.cuh"
#include "nvtx.h"
#include "kernels.h"

namespace vilg::cuda {
namespace {

template <int D>
struct FwdSmem {
  // Q, then K[2], then V[2].
  static constexpr int kBytes = 5 * Smem<D>::kBytes;
};

// Online-softmax step over one 16 x 64 score fragment (already scaled to the log2 domain, -inf
// where masked): updates the running row max m and sum l (partial: this lane's columns only),
// rescales the output accumulator and turns s into the probabilities.
template <int D>
VILG_DEVICE void softmax_step(float (&s)[8][4], float (&m)[2], float (&l)[2],
                              float (&o)[D / 8][4]) {
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float mx = -kInf;
#pragma unroll
    for (int j = 0; j < 8; ++j) mx = fmaxf(mx, fmaxf(s[j][2 * r], s[j][2 * r + 1]));
    mx = quad_max(mx);
    const float m_new = fmaxf(m[r], mx);
    // A row with no allowed key so far keeps m = -inf: subtract 0 instead, so that
    // exp2(-inf - 0) = 0 and never exp2(-inf + inf) = NaN.
    const float base = m_new == -kInf ? 0.f : m_new;
    const float alpha = exp2f(m[r] - base);
    m[r] = m_new;
    float sum = 0.f;
#pragma unroll
    for (int j = 0; j < 8; ++j)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const float p = exp2f(s[j][2 * r + e] - base);
        s[j][2 * r + e] = p;
        sum += p;
      }
    l[r] = l[r] * alpha + sum;
#pragma unroll
    for (int j = 0; j < D / 8; ++j) {
      o[j][2 * r] *= alpha;
      o[j][2 * r + 1] *= alpha;
    }
  }
}

template <typename T, int D, bool Mod>
__global__ void __launch_bounds__(kThreads)
    attn_fwd_kernel(const AttnParams p, const unsigned vec) {
  using S = Smem<D>;
  VILG_DYN_SMEM(smem);
  uint16_t* sQ = reinterpret_cast<uint16_t*>(smem);
  uint16_t* sK = sQ + S::kElems;      // two buffers
  uint16_t* sV = sK + 2 * S::kElems;  // two buffers

  const BlockSparse& ls = p.ls;
  const int qb = int(blockIdx.x), h = int(blockIdx.y), b = int(blockIdx.z);
  const int warp = int(threadIdx.x) >> 5, lane = int(threadIdx.x) & 31;
  const int g = lane >> 2, t = lane & 3;
  const int r0 = 16 * warp;  // first tile row of this warp
  const int e0 = ls.q_ptr[qb], ne = ls.q_ptr[qb + 1] - e0;
  const KeepRange keep = kernel_keep_range<Mod>(p, b);
  const float sl2 = p.scale * kLog2e;
  TileMods md{};
  int qpos[2] = {0, 0};  // sequence positions of rows r0+g, r0+g+8 (ALiBi)
  if constexpr (Mod) {
    md = tile_mods(p, b, h);
    qpos[0] = query_pos(ls, qb * kTile + r0 + g);
    qpos[1] = query_pos(ls, qb * kTile + r0 + g + 8);
  }

  const uint16_t* qg = slice_ptr(static_cast<const uint16_t*>(p.q), p.q_s, b, h);
  const int hk = kv_head(p, h), Lq = ls.q_len, Lk = ls.seq_len;
  const uint16_t* kg = slice_ptr(static_cast<const uint16_t*>(p.k), p.k_s, b, hk);
  const uint16_t* vg = slice_ptr(static_cast<const uint16_t*>(p.v), p.v_s, b, hk);

  float o[D / 8][4];
#pragma unroll
  for (int j = 0; j < D / 8; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.f;
  float m[2] = {-kInf, -kInf}, l[2] = {0.f, 0.f};

  if (ne > 0) {  // block-uniform
    uint32_t qf[D / 16][4];
    load_tile<D>(sQ, qg, p.q_s[2], ls, Lq, qb * kTile, vec & kVecQ);
    {
      const int kb = ls.q_kv[e0];
      load_tile<D>(sK, kg, p.k_s[2], ls, Lk, kb * kTile, vec & kVecK);
      load_tile<D>(sV, vg, p.v_s[2], ls, Lk, kb * kTile, vec & kVecV);
    }
    cp_async_commit();
    for (int i = 0; i < ne; ++i) {
      const int buf = i & 1;
      if (i + 1 < ne) {
        // Prefetch the next pair into the other buffer: its last readers (iteration i-1)
        // finished at the __syncthreads() closing that iteration.
        const int kb = ls.q_kv[e0 + i + 1];
        load_tile<D>(sK + (buf ^ 1) * S::kElems, kg, p.k_s[2], ls, Lk, kb * kTile, vec & kVecK);
        load_tile<D>(sV + (buf ^ 1) * S::kElems, vg, p.v_s[2], ls, Lk, kb * kTile, vec & kVecV);
        cp_async_commit();
        cp_async_wait<1>();
      } else {
        cp_async_wait<0>();
      }
      __syncthreads();  // this iteration's tiles (and Q) are visible to every warp

      if (i == 0) {
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk)
          ldsm_x4(qf[kk], sQ + S::off(r0 + ldsm_a_row(lane), 2 * kk + ldsm_a_col(lane) / 8));
      }
      const uint16_t* kt = sK + buf * S::kElems;
      const uint16_t* vt = sV + buf * S::kElems;

      // S = Q K^T: 16 rows x 64 keys per warp, as 8 n8 tiles.
      float s[8][4];
#pragma unroll
      for (int j = 0; j < 8; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.f;
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk)
#pragma unroll
        for (int n2 = 0; n2 < 4; ++n2) {
          uint32_t bf[4];
          ldsm_x4(bf, kt + S::off(16 * n2 + ldsm_bnk_row(lane), 2 * kk + ldsm_bnk_col(lane) / 8));
          mma16816<T>(s[2 * n2], qf[kk], bf[0], bf[1]);
          mma16816<T>(s[2 * n2 + 1], qf[kk], bf[2], bf[3]);
        }
      const int kb = ls.q_kv[e0 + i], mid = ls.q_mask[e0 + i];
      if constexpr (Mod) {
#pragma unroll
        for (int j = 0; j < 8; ++j)
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const int kp = md.alibi ? key_pos(ls, kb * kTile + 8 * j + 2 * t + e) : 0;
            float th;
#pragma unroll
            for (int r = 0; r < 2; ++r)
              s[j][2 * r + e] =
                  modified_score(s[j][2 * r + e] * p.scale, md, qpos[r], kp, th) * kLog2e;
          }
      } else {
#pragma unroll
        for (int j = 0; j < 8; ++j)
#pragma unroll
          for (int e = 0; e < 4; ++e) s[j][e] *= sl2;  // before masking: scale may be negative
      }

      if (entry_masked(ls, mid, kb, keep))
        mask_scores(s, row_bits(ls, mid, kb, r0 + g, keep),
                    row_bits(ls, mid, kb, r0 + g + 8, keep), t);
      softmax_step<D>(s, m, l, o);

      // O += P V, P taken from the score accumulators: n8 tiles 2kk, 2kk+1 of S form the
      // A fragment of keys 16kk .. 16kk+15.
#pragma unroll
      for (int kk = 0; kk < 4; ++kk) {
        const uint32_t a[4] = {pack2<T>(s[2 * kk][0], s[2 * kk][1]),
                               pack2<T>(s[2 * kk][2], s[2 * kk][3]),
                               pack2<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                               pack2<T>(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
        for (int n2 = 0; n2 < D / 16; ++n2) {
          uint32_t bf[4];
          ldsm_x4_t(bf, vt + S::off(16 * kk + ldsm_bkn_row(lane), 2 * n2 + ldsm_bkn_col(lane) / 8));
          mma16816<T>(o[2 * n2], a, bf[0], bf[1]);
          mma16816<T>(o[2 * n2 + 1], a, bf[2], bf[3]);
        }
      }
      __syncthreads();  // every warp is done with buffer `buf` before it is refilled
    }
  }

  // Epilogue: full row sums, normalise, lse; rows with no allowed key get O = 0, lse = -inf.
  float* lse = p.lse + (int64_t(b) * p.heads + h) * Lq;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const float sum = quad_sum(l[r]);
    const float inv = sum > 0.f ? 1.f / sum : 0.f;
#pragma unroll
    for (int j = 0; j < D / 8; ++j) {
      o[j][2 * r] *= inv;
      o[j][2 * r + 1] *= inv;
    }
    const int pos = qb * kTile + r0 + g + 8 * r;
    if (t == 0 && pos < Lq)
      lse[seq_row(ls, pos)] = sum > 0.f ? m[r] * kLn2 + logf(sum) : -kInf;
  }
  // Q's tile is free (its fragments were read at i == 0, and every later access is behind a
  // __syncthreads); each warp stages its own rows there.
  store_warp_rows<T, D>(sQ, r0, o, slice_ptr(static_cast<uint16_t*>(p.o), p.o_s, b, h),
                        p.o_s[2], ls, Lq, qb * kTile + r0, vec & kVecO);
}

template <typename T, int D>
void launch_fwd(const AttnParams& p, cudaStream_t stream) {
  constexpr int smem = FwdSmem<D>::kBytes;
  auto kernel =
      needs_mod_kernel(p) ? attn_fwd_kernel<T, D, true> : attn_fwd_kernel<T, D, false>;
  check_cuda(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem),
             "attention forward: shared memory opt-in");
  const unsigned vec = (aligned16(p.q, p.q_s) ? kVecQ : 0u) | (aligned16(p.k, p.k_s) ? kVecK : 0u) |
                       (aligned16(p.v, p.v_s) ? kVecV : 0u) | (aligned16(p.o, p.o_s) ? kVecO : 0u);
  const dim3 grid(unsigned(p.ls.num_q_blocks), unsigned(p.heads), unsigned(p.batch));
  kernel<<<grid, kThreads, smem, stream>>>(p, vec);
  check_launch("attention forward");
}

template <typename T>
void launch_fwd_dim(const AttnParams& p, cudaStream_t stream) {
  switch (p.head_dim) {
    case 32: return launch_fwd<T, 32>(p, stream);
    case 64: return launch_fwd<T, 64>(p, stream);
    case 128: return launch_fwd<T, 128>(p, stream);
    default: fail("CUDA sparse_attention supports head_dim 32, 64 or 128");
  }
}

}  // namespace

void attention_fwd(const AttnParams& p, DType dtype, int device, uintptr_t stream) {
  NvtxRange range("vilg::attention_fwd");
  check_attention_params(p);
  if (p.batch == 0 || p.heads == 0 || p.ls.seq_len == 0) return;
  DeviceGuard guard(device);
  const cudaStream_t s = as_stream(stream);
  switch (dtype) {
    case DType::F32: return simt_attention_fwd(p, s);
    case DType::F16: return launch_fwd_dim<f16>(p, s);
    case DType::BF16: return launch_fwd_dim<bf16>(p, s);
    default: fail("attention: unsupported dtype");
  }
}

}  // namespace vilg::cuda
