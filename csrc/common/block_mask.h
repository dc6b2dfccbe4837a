// Tile logic shared by the CPU and CUDA attention kernels: row lookup through the permutation,
// in-tile mask bits and per-sample text padding.
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

// Bits of columns 64w .. 64w+63 of key tile kb that are padded text for a sample whose caption
// has `text_valid` real tokens (those bits must be cleared).
VILG_HD uint64_t text_pad_bits(const BlockSparse& ls, int kb, int w, int text_valid) {
  const int c0 = kb * ls.block + 64 * w;  // kernel position of bit 0
  const int lo = ls.text_start + text_valid, hi = ls.text_start + ls.text_len;  // padded range
  int a = lo - c0, b = hi - c0;  // padded columns [a, b) relative to bit 0
  a = a < 0 ? 0 : a;
  b = b > 64 ? 64 : b;
  if (a >= b) return 0;
  const uint64_t upto_b = b == 64 ? ~uint64_t(0) : ((uint64_t(1) << b) - 1);
  const uint64_t below_a = (uint64_t(1) << a) - 1;
  return upto_b & ~below_a;
}

// Does key tile kb intersect padded text for this sample? (Cheap test before masking.)
VILG_HD bool tile_has_padding(const BlockSparse& ls, int kb, int text_valid) {
  const int lo = ls.text_start + text_valid, hi = ls.text_start + ls.text_len;
  return lo < hi && kb * ls.block < hi && (kb + 1) * ls.block > lo;
}

// The k/v head that q head h reads (GQA / MQA), and how many k/v heads there are.
VILG_HD int kv_head(const AttnParams& p, int h) { return h / p.kv_group; }
VILG_HD int kv_heads(const AttnParams& p) { return p.heads / p.kv_group; }

// Real caption length of sample b, clamped to [0, text_len] so bad values cannot read past.
VILG_HD int text_valid_len(const AttnParams& p, int b) {
  if (!p.text_lens) return p.ls.text_len;
  const int t = p.text_lens[b];
  return t < 0 ? 0 : (t > p.ls.text_len ? p.ls.text_len : t);
}

}  // namespace vilg
