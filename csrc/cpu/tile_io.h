// Moving tiles between the caller's strided tensors (any float dtype) and zero-padded float
// scratch, following the layout's permutation; and building a tile's row masks.
#pragma once
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "../common/block_mask.h"
#include "../common/dtype.h"

namespace vilg::cpu {

inline int round16(int x) { return (x + 15) / 16 * 16; }

// Rows (or columns) of tile t inside a side of `len` rows (ls.q_len for query tiles, ls.seq_len
// for key tiles), rounded up to 16. Padding rows load as zeros and padding columns are masked
// (full tiles lie wholly inside), so the rounding is harmless.
inline int valid16(const BlockSparse& ls, int len, int t) {
  const int n = len - t * ls.block;
  return round16(n < ls.block ? n : ls.block);
}

// Rows p0 .. p0+bs-1 (kernel order) of a [len, D] slice into dst [bs x ld], or transposed into
// dst [D x ld]. Rows past len and columns past D are zero.
template <typename T>
void load_tile(float* dst, int ld, const T* base, int64_t row_stride, const BlockSparse& ls,
               int len, int p0, int bs, int D, int Dp, bool transpose) {
  if (transpose) {
    std::memset(dst, 0, sizeof(float) * size_t(Dp) * ld);
  }
  for (int r = 0; r < bs; ++r) {
    const int p = p0 + r;
    if (!transpose) {
      float* out = dst + int64_t(r) * ld;
      if (p >= len) {
        std::memset(out, 0, sizeof(float) * Dp);
        continue;
      }
      const T* in = base + int64_t(seq_row(ls, p)) * row_stride;
      for (int d = 0; d < D; ++d) out[d] = to_float(in[d]);
      for (int d = D; d < Dp; ++d) out[d] = 0.f;
    } else if (p < len) {
      const T* in = base + int64_t(seq_row(ls, p)) * row_stride;
      for (int d = 0; d < D; ++d) dst[int64_t(d) * ld + r] = to_float(in[d]);
    }
  }
}

// Rows of src [bs x ld] (times `mul`) into the caller's tensor; rows past len are skipped.
template <typename T>
void store_tile(T* base, int64_t row_stride, const float* src, int ld, const BlockSparse& ls,
                int len, int p0, int bs, int D, float mul) {
  for (int r = 0; r < bs && p0 + r < len; ++r) {
    T* out = base + int64_t(seq_row(ls, p0 + r)) * row_stride;
    const float* in = src + int64_t(r) * ld;
    for (int d = 0; d < D; ++d) out[d] = from_float<T>(in[d] * mul);
  }
}

// Row masks of tile entry (mask id `mid`, key tile kb) for a sample keeping `keep` of the
// padded segment, into dst [bs x words]. Returns nullptr when the whole tile is allowed.
inline const uint64_t* tile_rowmask(std::vector<uint64_t>& dst, const BlockSparse& ls, int mid,
                                    int kb, KeepRange keep) {
  const bool pad = tile_has_padding(ls, kb, keep);
  if (mid < 0 && !pad) return nullptr;
  const int words = ls.mask_words, bs = ls.block;
  dst.resize(size_t(bs) * words);
  for (int w = 0; w < words; ++w) {
    const uint64_t drop = pad ? text_pad_bits(ls, kb, w, keep) : 0;
    for (int r = 0; r < bs; ++r) dst[size_t(r) * words + w] = tile_bits(ls, mid, r, w) & ~drop;
  }
  return dst.data();
}

// Sequence positions (as floats, for ALiBi) of the bs kernel positions p0 .. p0+bs-1 of the
// query side (query = true) or the key side.
inline void tile_positions(float* dst, const BlockSparse& ls, int p0, int bs, bool query) {
  for (int r = 0; r < bs; ++r)
    dst[r] = float(query ? query_pos(ls, p0 + r) : key_pos(ls, p0 + r));
}

// Per-thread store of converted tiles of one (batch, head): a key tile that many query tiles
// visit (the text prefix visits every one) is converted to float once per head, not once per
// visit. Past VILG_CPU_TILE_CACHE_MB (default 16) per thread it holds a single slot, refilled
// on every call.
inline size_t tile_cache_floats() {
  const char* env = std::getenv("VILG_CPU_TILE_CACHE_MB");
  const long mb = env ? std::atol(env) : 16;
  return size_t(mb < 0 ? 0 : mb) << 18;  // 4-byte floats per MiB
}

class TileCache {
 public:
  TileCache(int tiles, size_t floats_per_tile, size_t budget = tile_cache_floats())
      : per_(floats_per_tile),
        cached_(floats_per_tile * tiles <= budget),
        owner_(cached_ ? tiles : 1, -1),
        data_(per_ * owner_.size()) {}
  // Tile t of (batch, head) `owner`; `fresh` is set when the caller must fill it.
  float* get(int64_t owner, int t, bool& fresh) {
    if (!cached_) {
      fresh = true;
      return data_.data();
    }
    fresh = owner_[t] != owner;
    owner_[t] = owner;
    return data_.data() + per_ * t;
  }

 private:
  size_t per_;
  bool cached_;
  std::vector<int64_t> owner_;
  std::vector<float> data_;
};

// Pointer to the [L, D] slice of sample b, head h.
template <typename T>
inline T* slice(const void* base, const int64_t* s, int b, int h) {
  return (T*)base + int64_t(b) * s[0] + int64_t(h) * s[1];
}

}  // namespace vilg::cpu
