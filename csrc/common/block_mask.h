// Tile logic shared by the CPU and CUDA attention kernels: row lookup through the permutation,
// in-tile mask bits, per-sample key padding and the positions the score modifiers read.
#pragma once
#include <cstdint>

#include "attention_params.h"
#include "macros.h"

namespace vilg {

// Row of the caller's tensor holding kernel position p.
VILG_HD int seq_row(const BlockSparse& ls, int p) { return ls.perm ? ls.perm[p] : p; }

// Mask word `w` (columns 64w .. 64w+63 of the tile) for row r of tile entry with mask id m.
// A full tile (m < 0) allows every column.
VILG_HD uint64_t tile_bits(const BlockSparse& ls, int m, int r, int w) {
  return m < 0 ? ~uint64_t(0) : ls.masks[(int64_t(m) * ls.block + r) * ls.mask_words + w];
}

// The keys a sample keeps inside the padded segment: [lo, hi), relative to its start.
struct KeepRange {
  int lo, hi;
};

// Sample b's kept range, clamped to [0, text_len] (and hi >= lo) so bad values cannot read
// past the segment; with neither array the whole segment is kept.
VILG_HD KeepRange keep_range(const AttnParams& p, int b) {
  const int n = p.ls.text_len;
  int lo = p.keep_lo ? p.keep_lo[b] : 0, hi = p.keep_hi ? p.keep_hi[b] : n;
  lo = lo < 0 ? 0 : (lo > n ? n : lo);
  hi = hi < lo ? lo : (hi > n ? n : hi);
  return {lo, hi};
}

// Bits of positions [a, b) among the 64 positions c0 .. c0+63.
VILG_HD uint64_t span_bits(int c0, int a, int b) {
  a -= c0;
  b -= c0;
  a = a < 0 ? 0 : a;
  b = b > 64 ? 64 : b;
  if (a >= b) return 0;
  const uint64_t upto_b = b == 64 ? ~uint64_t(0) : ((uint64_t(1) << b) - 1);
  return upto_b & ~((uint64_t(1) << a) - 1);
}

// Right padding only (keep.lo = 0): what a kernel instantiated without left padding uses, so
// that the constant lo folds the left-hand tests below away.
VILG_HD KeepRange keep_range_right(const AttnParams& p, int b) {
  const int n = p.ls.text_len;
  const int hi = p.keep_hi ? p.keep_hi[b] : n;
  return {0, hi < 0 ? 0 : (hi > n ? n : hi)};
}

// Bits of columns 64w .. 64w+63 of key tile kb that are padded keys for a sample keeping
// `keep` (those bits must be cleared): the segment's keys before keep.lo and from keep.hi on.
VILG_HD uint64_t text_pad_bits(const BlockSparse& ls, int kb, int w, KeepRange keep) {
  const int c0 = kb * ls.block + 64 * w, s = ls.text_start;
  uint64_t bits = span_bits(c0, s + keep.hi, s + ls.text_len);
  if (keep.lo > 0) bits |= span_bits(c0, s, s + keep.lo);
  return bits;
}

// Does key tile kb intersect padded keys for this sample? (Cheap test before masking.)
VILG_HD bool tile_has_padding(const BlockSparse& ls, int kb, KeepRange keep) {
  const int t0 = kb * ls.block, t1 = t0 + ls.block, s = ls.text_start, e = s + ls.text_len;
  const bool left = keep.lo > 0 && t0 < s + keep.lo && t1 > s;
  const bool right = s + keep.hi < e && t0 < e && t1 > s + keep.hi;
  return left || right;
}

// The k/v head that q head h reads (GQA / MQA), and how many k/v heads there are.
VILG_HD int kv_head(const AttnParams& p, int h) { return h / p.kv_group; }
VILG_HD int kv_heads(const AttnParams& p) { return p.heads / p.kv_group; }

// ---- score modifiers (ScoreMods) --------------------------------------------------------------

// Sequence position of kernel query row p: a rectangular layout's queries are the last q_len
// positions. Rows past q_len (tile padding, never stored) give p.
VILG_HD int query_pos(const BlockSparse& ls, int p) {
  return p < ls.q_len ? seq_row(ls, p) + (ls.seq_len - ls.q_len) : p;
}

// Sequence position of kernel key p; columns past seq_len (tile padding, always masked) give p.
VILG_HD int key_pos(const BlockSparse& ls, int p) { return p < ls.seq_len ? seq_row(ls, p) : p; }

// ALiBi slope of (sample b, q head h); 0 when ALiBi is off.
VILG_HD float alibi_slope(const AttnParams& p, int b, int h) {
  return p.mods.alibi ? p.mods.alibi[int64_t(b) * p.mods.alibi_batch_stride + h] : 0.f;
}

}  // namespace vilg
