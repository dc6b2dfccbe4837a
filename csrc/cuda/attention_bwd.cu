// Block-sparse attention backward on tensor cores, FlashAttention-2 style: probabilities are
// recomputed from the saved log-sum-exp, never stored. Three kernels, no atomics, so the
// result is deterministic (the CPU twin, csrc/cpu/attention_bwd.cpp, has the same passes):
//   1. delta = rowsum(dO * O) per sequence row (any float dtype; the fp32 path uses it too);
//   2. dQ per query tile over its CSR list:  S = Q K^T, dP = dO V^T, dS = P (dP - delta),
//      dQ += dS K;
//   3. dK, dV per key tile over its CSC list, computed transposed so that every product keeps
//      its A operand in registers:  S^T = K Q^T, dP^T = V dO^T, dV += P^T dO,
//      dK += dS^T Q. GQA: one block per k/v head walks the CSC list once per q head of its
//      group, so dK, dV sum over the group in registers (no atomics, no per-q-head copies).
// Warp w owns rows 16w .. 16w+15 of its tile (query rows in 2., key rows in 3.); the other
// side's tiles are double-buffered with cp.async. All five products are mma.m16n8k16; P and dS
// go from the f32 accumulator fragments straight into A fragments (no shared-memory trip).
// Score modifiers (and left padding): kernels 2. and 3. have a Mod = true instantiation that
// recomputes the modified scores and carries dS back through the soft-cap (dS *= 1 - tanh^2).
#include "attention_tiles.cuh"

#include "attention_launch.h"
#include "common.cuh"
#include "nvtx.h"
#include "kernels.h"

namespace vilg::cuda {
namespace {

// ---- 1. delta ---------------------------------------------------------------------------------

constexpr int kDeltaThreads = 256;  // 16 lanes per row, 16 rows per block

template <typename T>
__global__ void __launch_bounds__(kDeltaThreads) attn_delta_kernel(const AttnParams p) {
  const int L = p.ls.q_len;
  const int64_t rows = int64_t(p.batch) * p.heads * L;
  const int64_t row = (int64_t(blockIdx.x) * kDeltaThreads + threadIdx.x) >> 4;
  const int sub = int(threadIdx.x) & 15;
  float acc = 0.f;
  if (row < rows) {
    const int l = int(row % L), h = int((row / L) % p.heads), b = int(row / (int64_t(L) * p.heads));
    const T* o = static_cast<const T*>(p.o) + int64_t(b) * p.o_s[0] + int64_t(h) * p.o_s[1] +
                 int64_t(l) * p.o_s[2];
    const T* g = static_cast<const T*>(p.dout) + int64_t(b) * p.do_s[0] +
                 int64_t(h) * p.do_s[1] + int64_t(l) * p.do_s[2];
    for (int d = sub; d < p.head_dim; d += 16) acc += to_f32(o[d]) * to_f32(g[d]);
  }
#pragma unroll
  for (int off = 8; off > 0; off >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, off);
  if (row < rows && sub == 0) p.delta[row] = acc;
}

// ---- 2. dQ ------------------------------------------------------------------------------------

template <int D>
struct DqSmem {
  // Q, dO, then K[2], V[2].
  static constexpr int kBytes = 6 * Smem<D>::kBytes;
};

// log2-domain softmax base of a row from its lse: +inf for a row with no allowed key (lse =
// -inf) or past L, so that exp2(s - base) = 0 there and no inf - inf arises.
VILG_DEVICE float lse_base(float lse) { return lse == -kInf ? kInf : lse * kLog2e; }

template <typename T, int D, bool Mod>
__global__ void __launch_bounds__(kThreads)
    attn_bwd_dq_kernel(const AttnParams p, const unsigned vec) {
  using S = Smem<D>;
  VILG_DYN_SMEM(smem);
  uint16_t* sQ = reinterpret_cast<uint16_t*>(smem);
  uint16_t* sO = sQ + S::kElems;      // dO
  uint16_t* sK = sO + S::kElems;      // two buffers
  uint16_t* sV = sK + 2 * S::kElems;  // two buffers

  const BlockSparse& ls = p.ls;
  const int qb = int(blockIdx.x), h = int(blockIdx.y), b = int(blockIdx.z);
  const int warp = int(threadIdx.x) >> 5, lane = int(threadIdx.x) & 31;
  const int g = lane >> 2, t = lane & 3;
  const int r0 = 16 * warp;
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

  const int hk = kv_head(p, h), Lq = ls.q_len, Lk = ls.seq_len;
  const uint16_t* kg = slice_ptr(static_cast<const uint16_t*>(p.k), p.k_s, b, hk);
  const uint16_t* vg = slice_ptr(static_cast<const uint16_t*>(p.v), p.v_s, b, hk);

  float dq[D / 8][4];
#pragma unroll
  for (int j = 0; j < D / 8; ++j) dq[j][0] = dq[j][1] = dq[j][2] = dq[j][3] = 0.f;

  if (ne > 0) {  // block-uniform
    float base[2], dl[2];
    const int64_t off = (int64_t(b) * p.heads + h) * Lq;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int pos = qb * kTile + r0 + g + 8 * r;
      base[r] = kInf;
      dl[r] = 0.f;
      if (pos < Lq) {
        const int row = seq_row(ls, pos);
        base[r] = lse_base(p.lse[off + row]);
        dl[r] = p.delta[off + row];
      }
    }
    load_tile<D>(sQ, slice_ptr(static_cast<const uint16_t*>(p.q), p.q_s, b, h), p.q_s[2], ls,
                 Lq, qb * kTile, vec & kVecQ);
    load_tile<D>(sO, slice_ptr(static_cast<const uint16_t*>(p.dout), p.do_s, b, h), p.do_s[2],
                 ls, Lq, qb * kTile, vec & kVecDO);
    {
      const int kb = ls.q_kv[e0];
      load_tile<D>(sK, kg, p.k_s[2], ls, Lk, kb * kTile, vec & kVecK);
      load_tile<D>(sV, vg, p.v_s[2], ls, Lk, kb * kTile, vec & kVecV);
    }
    cp_async_commit();
    for (int i = 0; i < ne; ++i) {
      const int buf = i & 1;
      if (i + 1 < ne) {  // prefetch into the buffer released by the previous iteration
        const int kb = ls.q_kv[e0 + i + 1];
        load_tile<D>(sK + (buf ^ 1) * S::kElems, kg, p.k_s[2], ls, Lk, kb * kTile, vec & kVecK);
        load_tile<D>(sV + (buf ^ 1) * S::kElems, vg, p.v_s[2], ls, Lk, kb * kTile, vec & kVecV);
        cp_async_commit();
        cp_async_wait<1>();
      } else {
        cp_async_wait<0>();
      }
      __syncthreads();
      const uint16_t* kt = sK + buf * S::kElems;
      const uint16_t* vt = sV + buf * S::kElems;

      // S = Q K^T and dP = dO V^T, 16 x 64 per warp.
      float s[8][4], dp[8][4];
#pragma unroll
      for (int j = 0; j < 8; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[j][e] = dp[j][e] = 0.f;
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        uint32_t aq[4], ao[4];
        ldsm_x4(aq, sQ + S::off(r0 + ldsm_a_row(lane), 2 * kk + ldsm_a_col(lane) / 8));
        ldsm_x4(ao, sO + S::off(r0 + ldsm_a_row(lane), 2 * kk + ldsm_a_col(lane) / 8));
#pragma unroll
        for (int n2 = 0; n2 < 4; ++n2) {
          uint32_t bk[4], bv[4];
          ldsm_x4(bk, kt + S::off(16 * n2 + ldsm_bnk_row(lane), 2 * kk + ldsm_bnk_col(lane) / 8));
          ldsm_x4(bv, vt + S::off(16 * n2 + ldsm_bnk_row(lane), 2 * kk + ldsm_bnk_col(lane) / 8));
          mma16816<T>(s[2 * n2], aq, bk[0], bk[1]);
          mma16816<T>(s[2 * n2 + 1], aq, bk[2], bk[3]);
          mma16816<T>(dp[2 * n2], ao, bv[0], bv[1]);
          mma16816<T>(dp[2 * n2 + 1], ao, bv[2], bv[3]);
        }
      }

      // P = exp(S scale - lse) on allowed entries (0 elsewhere), dS = P (dP - delta), into s.
      const int kb = ls.q_kv[e0 + i], mid = ls.q_mask[e0 + i];
      uint64_t w[2] = {~uint64_t(0), ~uint64_t(0)};
      if (entry_masked(ls, mid, kb, keep)) {
        w[0] = row_bits(ls, mid, kb, r0 + g, keep);
        w[1] = row_bits(ls, mid, kb, r0 + g + 8, keep);
      }
#pragma unroll
      for (int j = 0; j < 8; ++j)
#pragma unroll
        for (int r = 0; r < 2; ++r)
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const int c = 8 * j + 2 * t + e;
            if constexpr (Mod) {
              const int kp = md.alibi ? key_pos(ls, kb * kTile + c) : 0;
              float th;
              const float x = modified_score(s[j][2 * r + e] * p.scale, md, qpos[r], kp, th);
              const float pr = (w[r] >> c) & 1u ? exp2f(x * kLog2e - base[r]) : 0.f;
              s[j][2 * r + e] = pr * (dp[j][2 * r + e] - dl[r]) * (1.f - th * th);
            } else {
              const float pr = (w[r] >> c) & 1u ? exp2f(s[j][2 * r + e] * sl2 - base[r]) : 0.f;
              s[j][2 * r + e] = pr * (dp[j][2 * r + e] - dl[r]);
            }
          }

      // dQ += dS K: K as the k x n operand ([key][dim] in shared memory, hence .trans).
#pragma unroll
      for (int kk = 0; kk < 4; ++kk) {
        const uint32_t a[4] = {pack2<T>(s[2 * kk][0], s[2 * kk][1]),
                               pack2<T>(s[2 * kk][2], s[2 * kk][3]),
                               pack2<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                               pack2<T>(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
        for (int n2 = 0; n2 < D / 16; ++n2) {
          uint32_t bf[4];
          ldsm_x4_t(bf, kt + S::off(16 * kk + ldsm_bkn_row(lane), 2 * n2 + ldsm_bkn_col(lane) / 8));
          mma16816<T>(dq[2 * n2], a, bf[0], bf[1]);
          mma16816<T>(dq[2 * n2 + 1], a, bf[2], bf[3]);
        }
      }
      __syncthreads();  // buffer `buf` is refilled next iteration
    }
  }

#pragma unroll
  for (int j = 0; j < D / 8; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) dq[j][e] *= p.scale;
  // The warp's Q rows are free: only this warp read them (A operand), behind __syncthreads.
  store_warp_rows<T, D>(sQ, r0, dq, slice_ptr(static_cast<uint16_t*>(p.dq), p.dq_s, b, h),
                        p.dq_s[2], ls, Lq, qb * kTile + r0, vec & kVecDQ);
}

// ---- 3. dK, dV --------------------------------------------------------------------------------

template <int D>
struct DkvSmem {
  // Query columns per inner step: 32 at D = 128 keeps S^T / dP^T small next to the 2 x 64
  // f32 registers of the dK / dV accumulators.
  static constexpr int kQC = D == 128 ? 16 : 64;
  // K, V, then Q[2], dO[2], then lse base[2][64] and delta[2][64] (f32).
  static constexpr int kTiles = 6 * Smem<D>::kBytes;
  static constexpr int kBytes = kTiles + 4 * kTile * 4;
};

// Key-major mask bits of the calling warp's key rows r0+g and r0+g+8: bit q set = tile-local
// query q may attend that key (padded text keys: none). A transpose of the query-major masks
// by ballots; the whole warp must call it.
VILG_DEVICE void key_major_bits(const BlockSparse& ls, int mid, int kb, KeepRange keep, int r0,
                                int lane, uint64_t (&wt)[2]) {
  const uint64_t lo = tile_bits(ls, mid, lane, 0), hi = tile_bits(ls, mid, lane + 32, 0);
  const int g = lane >> 2;
  wt[0] = wt[1] = 0;
#pragma unroll
  for (int j = 0; j < 16; ++j) {
    const int kr = r0 + j;
    const uint64_t col = uint64_t(__ballot_sync(0xffffffffu, int((lo >> kr) & 1u))) |
                         (uint64_t(__ballot_sync(0xffffffffu, int((hi >> kr) & 1u))) << 32);
    if (j == g) wt[0] = col;
    if (j == g + 8) wt[1] = col;
  }
  const uint64_t pad = text_pad_bits(ls, kb, 0, keep);
  if ((pad >> (r0 + g)) & 1u) wt[0] = 0;
  if ((pad >> (r0 + g + 8)) & 1u) wt[1] = 0;
}

// Query-side tiles of query tile qb (Q, dO by cp.async or plain copies; lse base and delta by
// plain loads, threads 0..63) into buffer set `buf`.
template <int D>
VILG_DEVICE void load_query_side(const AttnParams& p, int b, int h, int qb, uint16_t* q_s,
                                 uint16_t* o_s, float* lse_s, float* delta_s, unsigned vec) {
  const BlockSparse& ls = p.ls;
  const int Lq = ls.q_len;
  load_tile<D>(q_s, slice_ptr(static_cast<const uint16_t*>(p.q), p.q_s, b, h), p.q_s[2], ls,
               Lq, qb * kTile, vec & kVecQ);
  load_tile<D>(o_s, slice_ptr(static_cast<const uint16_t*>(p.dout), p.do_s, b, h), p.do_s[2],
               ls, Lq, qb * kTile, vec & kVecDO);
  const int tid = int(threadIdx.x);
  if (tid < kTile) {
    const int pos = qb * kTile + tid;
    float base = kInf, dl = 0.f;
    if (pos < Lq) {
      const int64_t at = (int64_t(b) * p.heads + h) * Lq + seq_row(ls, pos);
      base = lse_base(p.lse[at]);
      dl = p.delta[at];
    }
    sts_f32(lse_s + tid, base);
    sts_f32(delta_s + tid, dl);
  }
}

template <typename T, int D, bool Mod>
__global__ void __launch_bounds__(kThreads)
    attn_bwd_dkdv_kernel(const AttnParams p, const unsigned vec) {
  using S = Smem<D>;
  constexpr int kQC = DkvSmem<D>::kQC, kNQ = kQC / 8;
  VILG_DYN_SMEM(smem);
  uint16_t* sK = reinterpret_cast<uint16_t*>(smem);
  uint16_t* sV = sK + S::kElems;
  uint16_t* sQ = sV + S::kElems;      // two buffers
  uint16_t* sO = sQ + 2 * S::kElems;  // dO, two buffers
  float* sL = reinterpret_cast<float*>(smem + DkvSmem<D>::kTiles);  // lse base, two buffers
  float* sD = sL + 2 * kTile;                                         // delta, two buffers

  const BlockSparse& ls = p.ls;
  const int kb = int(blockIdx.x), hk = int(blockIdx.y), b = int(blockIdx.z);  // hk: k/v head
  const int warp = int(threadIdx.x) >> 5, lane = int(threadIdx.x) & 31;
  const int t = lane & 3;
  const int r0 = 16 * warp;  // first key row of this warp
  const int e0 = ls.k_ptr[kb], ne = ls.k_ptr[kb + 1] - e0;
  // Steps i = 0 .. n-1 walk the CSC list once per q head of the group: q head h0 + i / ne,
  // entry e0 + i % ne.
  const int h0 = hk * p.kv_group, n = ne * p.kv_group;
  const KeepRange keep = kernel_keep_range<Mod>(p, b);
  const float sl2 = p.scale * kLog2e;
  int kpos[2] = {0, 0};  // sequence positions of key rows r0+g, r0+g+8 (ALiBi)
  if constexpr (Mod) {
    kpos[0] = key_pos(ls, kb * kTile + r0 + (lane >> 2));
    kpos[1] = key_pos(ls, kb * kTile + r0 + (lane >> 2) + 8);
  }

  float dk[D / 8][4], dv[D / 8][4];
#pragma unroll
  for (int j = 0; j < D / 8; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) dk[j][e] = dv[j][e] = 0.f;

  if (ne > 0) {  // block-uniform
    load_tile<D>(sK, slice_ptr(static_cast<const uint16_t*>(p.k), p.k_s, b, hk), p.k_s[2], ls,
                 ls.seq_len, kb * kTile, vec & kVecK);
    load_tile<D>(sV, slice_ptr(static_cast<const uint16_t*>(p.v), p.v_s, b, hk), p.v_s[2], ls,
                 ls.seq_len, kb * kTile, vec & kVecV);
    load_query_side<D>(p, b, h0, ls.k_q[e0], sQ, sO, sL, sD, vec);
    cp_async_commit();
    for (int i = 0; i < n; ++i) {
      const int buf = i & 1;
      if (i + 1 < n) {  // prefetch into the buffer released by the previous iteration
        const int nb = buf ^ 1, j = i + 1;
        load_query_side<D>(p, b, h0 + j / ne, ls.k_q[e0 + j % ne], sQ + nb * S::kElems,
                           sO + nb * S::kElems, sL + nb * kTile, sD + nb * kTile, vec);
        cp_async_commit();
        cp_async_wait<1>();
      } else {
        cp_async_wait<0>();
      }
      __syncthreads();
      const uint16_t* qt = sQ + buf * S::kElems;
      const uint16_t* ot = sO + buf * S::kElems;
      const float* lt = sL + buf * kTile;
      const float* dt = sD + buf * kTile;

      const int mid = ls.k_mask[e0 + i % ne];
      uint64_t wt[2] = {~uint64_t(0), ~uint64_t(0)};
      if (entry_masked(ls, mid, kb, keep)) key_major_bits(ls, mid, kb, keep, r0, lane, wt);
      TileMods md{};
      int qb = 0;  // this step's query tile (ALiBi positions)
      if constexpr (Mod) {
        md = tile_mods(p, b, h0 + i / ne);
        qb = ls.k_q[e0 + i % ne];
      }

#pragma unroll 1
      for (int qc = 0; qc < kTile; qc += kQC) {
        // S^T = K Q^T and dP^T = V dO^T: 16 keys x kQC queries per warp.
        float st[kNQ][4], dpt[kNQ][4];
#pragma unroll
        for (int j = 0; j < kNQ; ++j)
#pragma unroll
          for (int e = 0; e < 4; ++e) st[j][e] = dpt[j][e] = 0.f;
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) {
          uint32_t ak[4], av[4];
          ldsm_x4(ak, sK + S::off(r0 + ldsm_a_row(lane), 2 * kk + ldsm_a_col(lane) / 8));
          ldsm_x4(av, sV + S::off(r0 + ldsm_a_row(lane), 2 * kk + ldsm_a_col(lane) / 8));
#pragma unroll
          for (int n2 = 0; n2 < kNQ / 2; ++n2) {
            uint32_t bq[4], bo[4];
            const int row = qc + 16 * n2 + ldsm_bnk_row(lane);
            ldsm_x4(bq, qt + S::off(row, 2 * kk + ldsm_bnk_col(lane) / 8));
            ldsm_x4(bo, ot + S::off(row, 2 * kk + ldsm_bnk_col(lane) / 8));
            mma16816<T>(st[2 * n2], ak, bq[0], bq[1]);
            mma16816<T>(st[2 * n2 + 1], ak, bq[2], bq[3]);
            mma16816<T>(dpt[2 * n2], av, bo[0], bo[1]);
            mma16816<T>(dpt[2 * n2 + 1], av, bo[2], bo[3]);
          }
        }
        // P^T (into st) and dS^T (into dpt); column q of the fragment is query qc + 8j + 2t + e.
#pragma unroll
        for (int j = 0; j < kNQ; ++j)
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const int q = qc + 8 * j + 2 * t + e;
            const float base = lds_f32(lt + q), dl = lds_f32(dt + q);
            if constexpr (Mod) {
              const int qp = md.alibi ? query_pos(ls, qb * kTile + q) : 0;
#pragma unroll
              for (int r = 0; r < 2; ++r) {
                float th;
                const float x = modified_score(st[j][2 * r + e] * p.scale, md, qp, kpos[r], th);
                const float pr = (wt[r] >> q) & 1u ? exp2f(x * kLog2e - base) : 0.f;
                st[j][2 * r + e] = pr;
                dpt[j][2 * r + e] = pr * (dpt[j][2 * r + e] - dl) * (1.f - th * th);
              }
            } else {
#pragma unroll
              for (int r = 0; r < 2; ++r) {
                const float pr = (wt[r] >> q) & 1u ? exp2f(st[j][2 * r + e] * sl2 - base) : 0.f;
                st[j][2 * r + e] = pr;
                dpt[j][2 * r + e] = pr * (dpt[j][2 * r + e] - dl);
              }
            }
          }
        // dV += P^T dO and dK += dS^T Q, with dO / Q as k x n operands (.trans).
#pragma unroll
        for (int kq = 0; kq < kQC / 16; ++kq) {
          const uint32_t ap[4] = {pack2<T>(st[2 * kq][0], st[2 * kq][1]),
                                  pack2<T>(st[2 * kq][2], st[2 * kq][3]),
                                  pack2<T>(st[2 * kq + 1][0], st[2 * kq + 1][1]),
                                  pack2<T>(st[2 * kq + 1][2], st[2 * kq + 1][3])};
          const uint32_t as[4] = {pack2<T>(dpt[2 * kq][0], dpt[2 * kq][1]),
                                  pack2<T>(dpt[2 * kq][2], dpt[2 * kq][3]),
                                  pack2<T>(dpt[2 * kq + 1][0], dpt[2 * kq + 1][1]),
                                  pack2<T>(dpt[2 * kq + 1][2], dpt[2 * kq + 1][3])};
          const int row = qc + 16 * kq + ldsm_bkn_row(lane);
#pragma unroll
          for (int n2 = 0; n2 < D / 16; ++n2) {
            uint32_t bo[4], bq[4];
            ldsm_x4_t(bo, ot + S::off(row, 2 * n2 + ldsm_bkn_col(lane) / 8));
            ldsm_x4_t(bq, qt + S::off(row, 2 * n2 + ldsm_bkn_col(lane) / 8));
            mma16816<T>(dv[2 * n2], ap, bo[0], bo[1]);
            mma16816<T>(dv[2 * n2 + 1], ap, bo[2], bo[3]);
            mma16816<T>(dk[2 * n2], as, bq[0], bq[1]);
            mma16816<T>(dk[2 * n2 + 1], as, bq[2], bq[3]);
          }
        }
      }
      __syncthreads();  // buffer `buf` is refilled next iteration
    }
  }

#pragma unroll
  for (int j = 0; j < D / 8; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) dk[j][e] *= p.scale;
  // The warp's K / V rows are free: only this warp read them (A operands).
  store_warp_rows<T, D>(sK, r0, dk, slice_ptr(static_cast<uint16_t*>(p.dk), p.dk_s, b, hk),
                        p.dk_s[2], ls, ls.seq_len, kb * kTile + r0, vec & kVecDK);
  store_warp_rows<T, D>(sV, r0, dv, slice_ptr(static_cast<uint16_t*>(p.dv), p.dv_s, b, hk),
                        p.dv_s[2], ls, ls.seq_len, kb * kTile + r0, vec & kVecDV);
}

template <typename T>
void launch_delta(const AttnParams& p, cudaStream_t stream) {
  const int64_t rows = int64_t(p.batch) * p.heads * p.ls.q_len;
  const int64_t blocks = (rows * 16 + kDeltaThreads - 1) / kDeltaThreads;
  check(blocks <= 0x7fffffff, "attention backward: too many rows");
  attn_delta_kernel<T><<<unsigned(blocks), kDeltaThreads, 0, stream>>>(p);
  check_launch("attention backward (delta)");
}

template <typename T, int D, bool Mod>
void launch_bwd(const AttnParams& p, cudaStream_t stream) {
  const unsigned vec =
      (aligned16(p.q, p.q_s) ? kVecQ : 0u) | (aligned16(p.k, p.k_s) ? kVecK : 0u) |
      (aligned16(p.v, p.v_s) ? kVecV : 0u) | (aligned16(p.dout, p.do_s) ? kVecDO : 0u) |
      (aligned16(p.dq, p.dq_s) ? kVecDQ : 0u) | (aligned16(p.dk, p.dk_s) ? kVecDK : 0u) |
      (aligned16(p.dv, p.dv_s) ? kVecDV : 0u);
  {
    constexpr int smem = DqSmem<D>::kBytes;
    auto kernel = attn_bwd_dq_kernel<T, D, Mod>;
    check_cuda(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem),
               "attention backward (dq): shared memory opt-in");
    const dim3 grid(unsigned(p.ls.num_q_blocks), unsigned(p.heads), unsigned(p.batch));
    kernel<<<grid, kThreads, smem, stream>>>(p, vec);
    check_launch("attention backward (dq)");
  }
  {
    constexpr int smem = DkvSmem<D>::kBytes;
    auto kernel = attn_bwd_dkdv_kernel<T, D, Mod>;
    check_cuda(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem),
               "attention backward (dk/dv): shared memory opt-in");
    const dim3 grid(unsigned(p.ls.num_k_blocks), unsigned(kv_heads(p)), unsigned(p.batch));
    kernel<<<grid, kThreads, smem, stream>>>(p, vec);
    check_launch("attention backward (dk/dv)");
  }
}

template <typename T, bool Mod>
void launch_bwd_dim(const AttnParams& p, cudaStream_t stream) {
  switch (p.head_dim) {
    case 32: return launch_bwd<T, 32, Mod>(p, stream);
    case 64: return launch_bwd<T, 64, Mod>(p, stream);
    case 128: return launch_bwd<T, 128, Mod>(p, stream);
    default: fail("CUDA sparse_attention supports head_dim 32, 64 or 128");
  }
}

template <typename T>
void launch_bwd_mods(const AttnParams& p, cudaStream_t stream) {
  if (needs_mod_kernel(p))
    launch_bwd_dim<T, true>(p, stream);
  else
    launch_bwd_dim<T, false>(p, stream);
}

}  // namespace

void launch_attention_delta(const AttnParams& p, DType dtype, cudaStream_t stream) {
  switch (dtype) {
    case DType::F32: return launch_delta<float>(p, stream);
    case DType::F16: return launch_delta<f16>(p, stream);
    case DType::BF16: return launch_delta<bf16>(p, stream);
    default: fail("attention: unsupported dtype");
  }
}

void attention_bwd(const AttnParams& p, DType dtype, int device, uintptr_t stream) {
  NvtxRange range("vilg::attention_bwd");
  check_attention_params(p);
  if (p.batch == 0 || p.heads == 0 || p.ls.seq_len == 0) return;
  DeviceGuard guard(device);
  const cudaStream_t s = as_stream(stream);
  launch_attention_delta(p, dtype, s);
  switch (dtype) {
    case DType::F32: return simt_attention_bwd(p, s);
    case DType::F16: return launch_bwd_mods<f16>(p, s);
    case DType::BF16: return launch_bwd_mods<bf16>(p, s);
    default: fail("attention: unsupported dtype");
  }
}

}  // namespace vilg::cuda
