// Tile plumbing shared by the tensor-core attention kernels: shared-memory tile geometry,
// global <-> shared tile moves through the layout's permutation, in-tile masks.
#pragma once
#include <cstdint>

#include "../common/attention_params.h"
#include "../common/block_mask.h"
#include "mma.cuh"

namespace vilg::cuda {

constexpr int kTile = 64;  // query rows = key columns of a tile (the layout's block size)
constexpr int kWarps = 4;  // one warp per 16 rows of the 64-row tile
constexpr int kThreads = 32 * kWarps;
constexpr float kInf = __builtin_huge_valf();

// A 64 x D tile of 16-bit values in shared memory: rows are D values with no padding, and the
// 16-byte chunks of a row are XOR-swizzled so that the 8 rows an ldmatrix phase (or a quad
// of accumulator stores) touches at one chunk column fall into 8 different bank groups:
// chunk c of row r sits at chunk c ^ (r % 8) (D >= 64: a row spans whole 128-byte lines) or
// c ^ ((r / 2) % 4) (D = 32: two rows share a line, the row's parity picks its half).
template <int D>
struct Smem {
  static_assert(D == 32 || D == 64 || D == 128, "head_dim must be 32, 64 or 128");
  static constexpr int kChunks = D / 8;  // 16-byte chunks per row
  static constexpr int kElems = kTile * D;
  static constexpr int kBytes = kElems * 2;
  // Offset (in 16-bit elements) of chunk c of row r.
  static VILG_HD int off(int r, int c) {
    const int sw = D >= 64 ? (r & 7) : ((r >> 1) & 3);
    return r * D + ((c ^ sw) << 3);
  }
};

// Pointer to the [L, D] slice of sample b, head h of a strided [B, H, L, D] tensor.
template <typename P>
VILG_DEVICE P* slice_ptr(P* base, const int64_t* s, int b, int h) {
  return base + int64_t(b) * s[0] + int64_t(h) * s[1];
}

// Rows p0 .. p0+63 (kernel order) of the [len, D] slice g (row stride rs elements) into the
// tile s; rows at or past len (ls.q_len for query-side tensors, ls.seq_len for keys) are
// zero-filled. All kThreads threads take part. With vec (16-byte
// aligned rows) the copies are cp.async, which the caller commits and waits for; otherwise
// they are synchronous element loads. Neighbouring threads copy neighbouring chunks of a row.
template <int D>
VILG_DEVICE void load_tile(uint16_t* s, const uint16_t* g, int64_t rs, const BlockSparse& ls,
                           int len, int p0, bool vec) {
  using S = Smem<D>;
  constexpr int kPer = kTile * S::kChunks / kThreads;
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    const int idx = int(threadIdx.x) + i * kThreads;
    const int r = idx / S::kChunks, c = idx % S::kChunks;
    uint16_t* dst = s + S::off(r, c);
    const int pos = p0 + r;
    if (pos < len) {
      const uint16_t* src = g + int64_t(seq_row(ls, pos)) * rs + c * 8;
      if (vec)
        cp_async16(dst, src);
      else
        sts128(dst, ldg_8x16(src));
    } else {
      sts128(dst, U128{0, 0, 0, 0});
    }
  }
}

// The calling warp's 16 x D f32 accumulator rows (C fragments: acc[n8 tile][4]) as T into rows
// p0 .. p0+15 (kernel order) of the [len, D] slice g, staged through rows r0 .. r0+15 of the
// shared tile s (which only this warp may touch here) so that global stores are 16 bytes
// wide. Rows at or past len are not written.
template <typename T, int D>
VILG_DEVICE void store_warp_rows(uint16_t* s, int r0, const float (&acc)[D / 8][4], uint16_t* g,
                                 int64_t rs, const BlockSparse& ls, int len, int p0, bool vec) {
  using S = Smem<D>;
  const int lane = int(threadIdx.x) & 31, gq = lane >> 2, t = lane & 3;
#pragma unroll
  for (int j = 0; j < D / 8; ++j) {
    sts32(s + S::off(r0 + gq, j) + 2 * t, pack2<T>(acc[j][0], acc[j][1]));
    sts32(s + S::off(r0 + gq + 8, j) + 2 * t, pack2<T>(acc[j][2], acc[j][3]));
  }
  __syncwarp();
  constexpr int kPer = 16 * S::kChunks / 32;
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    const int idx = lane + 32 * i, r = idx / S::kChunks, c = idx % S::kChunks;
    const int pos = p0 + r;
    if (pos < len) {
      const U128 v = lds128(s + S::off(r0 + r, c));
      uint16_t* dst = g + int64_t(seq_row(ls, pos)) * rs + c * 8;
      if (vec)
        stg128(dst, v);
      else
        stg_8x16(dst, v);
    }
  }
}

// Does CSR/CSC entry (mask id mid, key tile kb) need its in-tile mask for this sample?
VILG_DEVICE bool entry_masked(const BlockSparse& ls, int mid, int kb, KeepRange keep) {
  return mid >= 0 || tile_has_padding(ls, kb, keep);
}

// Allowed key columns (bit c = tile-local key c) of tile-local query row r, padded keys
// cleared. Requires the 64-column tile of the CUDA kernels (one mask word per row).
VILG_DEVICE uint64_t row_bits(const BlockSparse& ls, int mid, int kb, int r, KeepRange keep) {
  return tile_bits(ls, mid, r, 0) & ~text_pad_bits(ls, kb, 0, keep);
}

// Score modifiers (ScoreMods) of one (sample, q head). The kernels that use them, or left
// padding (keep_lo), are instantiated separately (a `Mod` template flag), so that without them
// not even the branches remain.
VILG_HD bool needs_mod_kernel(const AttnParams& p) { return p.mods.any() || p.keep_lo; }

// The kept key range of sample b: both ends in a Mod kernel, the right end only otherwise.
template <bool Mod>
VILG_DEVICE KeepRange kernel_keep_range(const AttnParams& p, int b) {
  if constexpr (Mod)
    return keep_range(p, b);
  else
    return keep_range_right(p, b);
}

struct TileMods {
  float cap, inv_cap, slope;  // cap 0: no soft-cap; slope 0 with alibi false
  bool alibi;
};

VILG_DEVICE TileMods tile_mods(const AttnParams& p, int b, int h) {
  const float cap = p.mods.softcap;
  return {cap, cap > 0.f ? 1.f / cap : 0.f, alibi_slope(p, b, h), p.mods.alibi != nullptr};
}

// tanh(x) = sign(x) (1 - e) / (1 + e) with e = exp(-2|x|) <= 1: absolute error near float32
// rounding (like the CPU kernels' tanh). Not tanhf, which --use_fast_math turns into
// tanh.approx.f32 (relative error ~2^-11: too coarse for the fp32 path with a large cap).
VILG_DEVICE float tanh_accurate(float x) {
  const float e = expf(-2.f * fabsf(x));
  return copysignf((1.f - e) / (1.f + e), x);
}

// The modified score of a scaled score x = scale * q.k, for a query at sequence position qp
// and a key at kp: softcap * tanh(x / softcap), then - slope * |qp - kp|. th receives the tanh
// (0 without soft-cap), so the backward's factor d(score)/dx is 1 - th * th either way.
VILG_DEVICE float modified_score(float x, const TileMods& m, int qp, int kp, float& th) {
  th = 0.f;
  if (m.cap > 0.f) {
    th = tanh_accurate(x * m.inv_cap);
    x = m.cap * th;
  }
  if (m.alibi) x -= m.slope * fabsf(float(qp - kp));
  return x;
}

// Score fragments s[n8 tile j][4] of a warp's 16 rows x 64 keys: entries (row g, keys 8j+2t,
// 8j+2t+1) and (row g+8, same keys) outside the allowed bits w_lo (row g) / w_hi (row g+8)
// become -inf.
VILG_DEVICE void mask_scores(float (&s)[8][4], uint64_t w_lo, uint64_t w_hi, int t) {
#pragma unroll
  for (int j = 0; j < 8; ++j)
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int c = 8 * j + 2 * t + e;
      if (!((w_lo >> c) & 1u)) s[j][e] = -kInf;
      if (!((w_hi >> c) & 1u)) s[j][2 + e] = -kInf;
    }
}

// Flags of 16-byte-aligned tensors (vectorised copies allowed), one bit per tensor.
enum VecBit : unsigned {
  kVecQ = 1u, kVecK = 2u, kVecV = 4u, kVecO = 8u,
  kVecDO = 16u, kVecDQ = 32u, kVecDK = 64u, kVecDV = 128u
};

}  // namespace vilg::cuda
