// Plain-old-data parameters of the block-sparse attention kernels (CPU and CUDA alike).
//
// All indices below are in *kernel order*: position p of the kernel's sequence lives in row
// perm[p] of the caller's tensors (perm == nullptr means identity). A layout may permute, e.g.
// to run column attention as row attention on the transposed image grid.
#pragma once
#include <cstdint>

#include "macros.h"

namespace vilg {

struct BlockSparse {
  int seq_len = 0;  // L: keys (rows of k, v, dk, dv)
  // Query rows (of q, o, lse, dq, dout): seq_len, or fewer for a rectangular layout, whose
  // query rows are the *last* q_len positions of the sequence (a chunk of new queries against
  // a longer KV cache). Query tile i holds query rows i*block .., so the in-tile masks carry
  // the offset; a rectangular layout has no permutation.
  int q_len = 0;
  int block = 64;   // square tile size (query rows = key columns)
  int num_q_blocks = 0, num_k_blocks = 0;
  // CSR by query block: entries q_ptr[i] .. q_ptr[i+1] list key blocks q_kv[e], ascending, each
  // either full (q_mask[e] < 0) or partial, with its in-tile mask at masks[q_mask[e]].
  const int32_t* q_ptr = nullptr;
  const int32_t* q_kv = nullptr;
  const int32_t* q_mask = nullptr;
  // CSC by key block (same entries, for the dK/dV pass): k_q[e] is the query block.
  const int32_t* k_ptr = nullptr;
  const int32_t* k_q = nullptr;
  const int32_t* k_mask = nullptr;
  // In-tile masks: [num_masks][block][mask_words] bitsets, bit c of row r set = may attend.
  // Rows outside [0, q_len) and columns outside [0, L) are always clear, and full tiles lie wholly inside.
  const uint64_t* masks = nullptr;
  int mask_words = 1;
  const int32_t* perm = nullptr;
  // The padded segment [text_start, text_start + text_len) in kernel order, inside which
  // per-sample key padding (AttnParams::keep_lo / keep_hi) masks keys: the text prefix of an
  // ERNIE layout, or the whole sequence (in sequence order) for key_starts / key_lens.
  int text_start = 0, text_len = 0;
};

// Score modifiers, applied to each scaled score s = scale * q.k before the softmax (flash-attn's
// order): soft-capping s = softcap * tanh(s / softcap), then ALiBi s -= slope * |i - j|, with i
// and j the query's and the key's *sequence* positions (a rectangular layout's query row r is
// position seq_len - q_len + r; a permutation maps kernel positions back through perm).
struct ScoreMods {
  float softcap = 0.f;            // > 0: on
  const float* alibi = nullptr;   // slopes [batch][heads] or [heads]; null: off
  int64_t alibi_batch_stride = 0;  // heads for [batch, heads] slopes, 0 for [heads]
  VILG_HD bool any() const { return softcap > 0.f || alibi != nullptr; }
};

struct AttnParams {
  BlockSparse ls;
  int batch = 0, heads = 0, head_dim = 0;
  // GQA / MQA: k, v (and dk, dv) have heads / kv_group heads; q head h reads k/v head
  // h / kv_group (transformers' repeat_kv order). 1: as many k/v heads as q heads.
  int kv_group = 1;
  float scale = 1.f;
  // Per-sample key padding of the segment ls.text_start .. (kernel order): sample b keeps
  // the segment's keys [keep_lo[b], keep_hi[b]) (relative to its start; clamped to
  // [0, text_len]) and masks the rest of it: left and right padding. Null: 0 / text_len.
  // text_lens is keep_hi of an ERNIE text prefix; key_starts / key_lens are keep_lo / keep_hi
  // of a segment that spans the whole sequence.
  const int32_t* keep_lo = nullptr;  // [batch] or null
  const int32_t* keep_hi = nullptr;  // [batch] or null
  ScoreMods mods;

  // Forward: q, k, v -> o, lse. Strides in elements for [batch, heads, seq]; last dim is unit.
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  void* o = nullptr;
  float* lse = nullptr;  // [batch, heads, q_len] contiguous; -inf for a row with no allowed key
  int64_t q_s[3] = {0, 0, 0}, k_s[3] = {0, 0, 0}, v_s[3] = {0, 0, 0}, o_s[3] = {0, 0, 0};

  // Backward: do -> dq, dk, dv; delta = rowsum(do * o) is a [batch, heads, q_len] fp32
  // workspace.
  const void* dout = nullptr;
  void* dq = nullptr;
  void* dk = nullptr;
  void* dv = nullptr;
  float* delta = nullptr;
  int64_t do_s[3] = {0, 0, 0}, dq_s[3] = {0, 0, 0}, dk_s[3] = {0, 0, 0}, dv_s[3] = {0, 0, 0};
};

}  // namespace vilg
