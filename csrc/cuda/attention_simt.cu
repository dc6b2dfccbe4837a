// fp32 block-sparse attention on CUDA: the *reference* path, not the fast one. Plain SIMT code
// (no tensor cores, no shared memory) so that float32 inputs work on every device with the
// same tile logic (CSR / CSC lists, in-tile masks, text padding, permutation) as the fp16 /
// bf16 kernels. One warp per row; lanes split the head dimension; keys are visited one by one
// with a scalar online softmax. Backward: dQ per query row over its CSR tiles, dK / dV per key
// row over its CSC tiles (no atomics, deterministic), after the shared delta kernel. GQA: q head
// h reads k/v head h / kv_group; a k/v row's warp sums over the q heads of its group. Score
// modifiers: a warp-uniform branch per key (this path is the reference, not the fast one).
#include "attention_tiles.cuh"

#include "attention_launch.h"
#include "common.cuh"

namespace vilg::cuda {
namespace {

constexpr int kSimtRows = 4;  // rows (warps) per block

VILG_DEVICE float warp_sum(float x) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) x += __shfl_xor_sync(0xffffffffu, x, off);
  return x;
}

// Lane `lane` holds elements lane, lane + 32, ... of a row.
template <int D>
VILG_DEVICE void load_row(float (&x)[D / 32], const float* row, int lane) {
#pragma unroll
  for (int i = 0; i < D / 32; ++i) x[i] = row[lane + 32 * i];
}

template <int D>
VILG_DEVICE float dot_row(const float (&x)[D / 32], const float* row, int lane) {
  float acc = 0.f;
#pragma unroll
  for (int i = 0; i < D / 32; ++i) acc += x[i] * row[lane + 32 * i];
  return warp_sum(acc);
}

template <int D>
VILG_DEVICE void store_row(float* row, const float (&x)[D / 32], float mul, int lane) {
#pragma unroll
  for (int i = 0; i < D / 32; ++i) row[lane + 32 * i] = x[i] * mul;
}

VILG_DEVICE const float* row_ptr(const void* base, const int64_t* s, int b, int h, int row) {
  return static_cast<const float*>(base) + int64_t(b) * s[0] + int64_t(h) * s[1] +
         int64_t(row) * s[2];
}
VILG_DEVICE float* row_ptr(void* base, const int64_t* s, int b, int h, int row) {
  return static_cast<float*>(base) + int64_t(b) * s[0] + int64_t(h) * s[1] + int64_t(row) * s[2];
}

// Forward: warp per query position (kernel order).
template <int D>
__global__ void __launch_bounds__(32 * kSimtRows, 1) simt_fwd_kernel(const AttnParams p) {
  const BlockSparse& ls = p.ls;
  const int lane = int(threadIdx.x) & 31;
  const int pos = int(blockIdx.x) * kSimtRows + (int(threadIdx.x) >> 5);
  const int h = int(blockIdx.y), b = int(blockIdx.z);
  if (pos >= ls.q_len) return;  // whole warps only; no block-wide barriers below
  const int qb = pos / kTile, r = pos % kTile, row = seq_row(ls, pos);
  const KeepRange keep = keep_range(p, b);
  const int hk = kv_head(p, h), qp = query_pos(ls, pos);
  const bool mod = p.mods.any();
  const TileMods md = tile_mods(p, b, h);
  float q[D / 32], acc[D / 32];
  load_row<D>(q, row_ptr(p.q, p.q_s, b, h, row), lane);
#pragma unroll
  for (int i = 0; i < D / 32; ++i) acc[i] = 0.f;
  float m = -kInf, l = 0.f;
  for (int e = ls.q_ptr[qb]; e < ls.q_ptr[qb + 1]; ++e) {
    const int kb = ls.q_kv[e];
    const uint64_t bits = row_bits(ls, ls.q_mask[e], kb, r, keep);
    for (int c = 0; c < kTile; ++c) {
      if (!((bits >> c) & 1u)) continue;  // warp-uniform; set bits are keys inside [0, L)
      const int krow = seq_row(ls, kb * kTile + c);
      float s = dot_row<D>(q, row_ptr(p.k, p.k_s, b, hk, krow), lane) * p.scale;
      float th;
      if (mod) s = modified_score(s, md, qp, krow, th);
      if (s > m) {  // new max: rescale what was accumulated (nothing yet when m = -inf)
        const float alpha = m == -kInf ? 0.f : expf(m - s);
        l *= alpha;
#pragma unroll
        for (int i = 0; i < D / 32; ++i) acc[i] *= alpha;
        m = s;
      }
      const float pr = expf(s - m);
      l += pr;
      const float* v = row_ptr(p.v, p.v_s, b, hk, krow);
#pragma unroll
      for (int i = 0; i < D / 32; ++i) acc[i] += pr * v[lane + 32 * i];
    }
  }
  store_row<D>(row_ptr(p.o, p.o_s, b, h, row), acc, l > 0.f ? 1.f / l : 0.f, lane);
  if (lane == 0)
    p.lse[(int64_t(b) * p.heads + h) * ls.q_len + row] = l > 0.f ? m + logf(l) : -kInf;
}

// dQ: warp per query position.
template <int D>
__global__ void __launch_bounds__(32 * kSimtRows, 1) simt_dq_kernel(const AttnParams p) {
  const BlockSparse& ls = p.ls;
  const int lane = int(threadIdx.x) & 31;
  const int pos = int(blockIdx.x) * kSimtRows + (int(threadIdx.x) >> 5);
  const int h = int(blockIdx.y), b = int(blockIdx.z);
  if (pos >= ls.q_len) return;
  const int qb = pos / kTile, r = pos % kTile, row = seq_row(ls, pos);
  const KeepRange keep = keep_range(p, b);
  const int hk = kv_head(p, h), qp = query_pos(ls, pos);
  const bool mod = p.mods.any();
  const TileMods md = tile_mods(p, b, h);
  const int64_t at = (int64_t(b) * p.heads + h) * ls.q_len + row;
  const float lse = p.lse[at], dl = p.delta[at];
  float q[D / 32], go[D / 32], acc[D / 32];
  load_row<D>(q, row_ptr(p.q, p.q_s, b, h, row), lane);
  load_row<D>(go, row_ptr(p.dout, p.do_s, b, h, row), lane);
#pragma unroll
  for (int i = 0; i < D / 32; ++i) acc[i] = 0.f;
  const int e_end = lse == -kInf ? ls.q_ptr[qb] : ls.q_ptr[qb + 1];  // empty row: dq = 0
  for (int e = ls.q_ptr[qb]; e < e_end; ++e) {
    const int kb = ls.q_kv[e];
    const uint64_t bits = row_bits(ls, ls.q_mask[e], kb, r, keep);
    for (int c = 0; c < kTile; ++c) {
      if (!((bits >> c) & 1u)) continue;
      const int krow = seq_row(ls, kb * kTile + c);
      const float* k = row_ptr(p.k, p.k_s, b, hk, krow);
      float s = dot_row<D>(q, k, lane) * p.scale, th = 0.f;
      if (mod) s = modified_score(s, md, qp, krow, th);
      const float pr = expf(s - lse);
      const float ds =
          pr * (dot_row<D>(go, row_ptr(p.v, p.v_s, b, hk, krow), lane) - dl) * (1.f - th * th);
#pragma unroll
      for (int i = 0; i < D / 32; ++i) acc[i] += ds * k[lane + 32 * i];
    }
  }
  store_row<D>(row_ptr(p.dq, p.dq_s, b, h, row), acc, p.scale, lane);
}

// dK, dV: warp per key position of a k/v head (blockIdx.y), over the q heads of its group.
template <int D>
__global__ void __launch_bounds__(32 * kSimtRows, 1) simt_dkdv_kernel(const AttnParams p) {
  const BlockSparse& ls = p.ls;
  const int lane = int(threadIdx.x) & 31;
  const int pos = int(blockIdx.x) * kSimtRows + (int(threadIdx.x) >> 5);
  const int hk = int(blockIdx.y), b = int(blockIdx.z);
  if (pos >= ls.seq_len) return;
  const int kb = pos / kTile, c = pos % kTile, row = seq_row(ls, pos);
  const bool padded = (text_pad_bits(ls, kb, 0, keep_range(p, b)) >> c) & 1u;  // every query
  const bool mod = p.mods.any();
  float k[D / 32], v[D / 32], gk[D / 32], gv[D / 32];
  load_row<D>(k, row_ptr(p.k, p.k_s, b, hk, row), lane);
  load_row<D>(v, row_ptr(p.v, p.v_s, b, hk, row), lane);
#pragma unroll
  for (int i = 0; i < D / 32; ++i) gk[i] = gv[i] = 0.f;
  const int e_end = padded ? ls.k_ptr[kb] : ls.k_ptr[kb + 1];
  for (int h = hk * p.kv_group; h < (hk + 1) * p.kv_group; ++h) {
    const TileMods md = tile_mods(p, b, h);
    for (int e = ls.k_ptr[kb]; e < e_end; ++e) {
      const int64_t off = (int64_t(b) * p.heads + h) * ls.q_len;
      const int qb = ls.k_q[e], mid = ls.k_mask[e];
      for (int r = 0; r < kTile; ++r) {
        if (!((tile_bits(ls, mid, r, 0) >> c) & 1u)) continue;  // queries in [0, q_len)
        const int qrow = seq_row(ls, qb * kTile + r);
        const float lse = p.lse[off + qrow];
        if (lse == -kInf) continue;
        const float* q = row_ptr(p.q, p.q_s, b, h, qrow);
        const float* go = row_ptr(p.dout, p.do_s, b, h, qrow);
        float s = dot_row<D>(k, q, lane) * p.scale, th = 0.f;
        if (mod) s = modified_score(s, md, query_pos(ls, qb * kTile + r), row, th);
        const float pr = expf(s - lse);
        const float ds = pr * (dot_row<D>(v, go, lane) - p.delta[off + qrow]) * (1.f - th * th);
#pragma unroll
        for (int i = 0; i < D / 32; ++i) {
          gv[i] += pr * go[lane + 32 * i];
          gk[i] += ds * q[lane + 32 * i];
        }
      }
    }
  }
  store_row<D>(row_ptr(p.dk, p.dk_s, b, hk, row), gk, p.scale, lane);
  store_row<D>(row_ptr(p.dv, p.dv_s, b, hk, row), gv, 1.f, lane);
}

template <int D>
void launch_simt(const AttnParams& p, cudaStream_t stream, bool forward) {
  const dim3 grid(unsigned((p.ls.q_len + kSimtRows - 1) / kSimtRows), unsigned(p.heads),
                  unsigned(p.batch));  // query rows
  const dim3 kgrid(unsigned((p.ls.seq_len + kSimtRows - 1) / kSimtRows), unsigned(kv_heads(p)),
                   unsigned(p.batch));  // key rows of each k/v head
  if (forward) {
    simt_fwd_kernel<D><<<grid, 32 * kSimtRows, 0, stream>>>(p);
    check_launch("attention forward (fp32)");
  } else {
    simt_dq_kernel<D><<<grid, 32 * kSimtRows, 0, stream>>>(p);
    check_launch("attention backward (fp32 dq)");
    simt_dkdv_kernel<D><<<kgrid, 32 * kSimtRows, 0, stream>>>(p);
    check_launch("attention backward (fp32 dk/dv)");
  }
}

void launch_simt_dim(const AttnParams& p, cudaStream_t stream, bool forward) {
  switch (p.head_dim) {
    case 32: return launch_simt<32>(p, stream, forward);
    case 64: return launch_simt<64>(p, stream, forward);
    case 128: return launch_simt<128>(p, stream, forward);
    default: fail("CUDA sparse_attention supports head_dim 32, 64 or 128");
  }
}

}  // namespace

void simt_attention_fwd(const AttnParams& p, cudaStream_t stream) {
  launch_simt_dim(p, stream, true);
}

void simt_attention_bwd(const AttnParams& p, cudaStream_t stream) {
  launch_simt_dim(p, stream, false);
}

}  // namespace vilg::cuda
