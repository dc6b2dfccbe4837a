// Block-sparse attention backward on the CPU, FlashAttention-2 style: probabilities are
// recomputed from the saved log-sum-exp. No atomics, so results are deterministic. Two
// schedules: "fused" walks each (batch, head) once and computes every tile pair's P and dS a
// single time, accumulating dK/dV in per-thread buffers; "tiles" splits the work into a dQ pass
// per query tile (CSR) and a dK/dV pass per key tile (CSC), recomputing P and dS in each, but
// has batch x heads x tiles tasks to spread over the threads. Fused is used when batch x heads
// alone keeps every thread busy; VILG_CPU_ATTN_BWD=fused|tiles forces one. GQA: a k/v head's
// dK, dV sum over the q heads of its group, accumulated in one task (no atomics, no per-q-head
// copies).
#include <omp.h>

#include <cstdlib>
#include <cstring>
#include <vector>

#include "kernels.h"
#include "dispatch.h"
#include "tile_io.h"
#include "tile_math.h"

namespace vilg::cpu {
namespace {

void load_rowvec(float* dst, const float* src, const BlockSparse& ls, int len, int p0, int bs,
                 float pad) {
  for (int r = 0; r < bs; ++r) dst[r] = p0 + r < len ? src[seq_row(ls, p0 + r)] : pad;
}

// delta = rowsum(dO * O), per query row.
template <typename T>
void delta_pass(const AttnParams& p) {
  const int L = p.ls.q_len, D = p.head_dim;
  const int64_t rows = int64_t(p.batch) * p.heads * L;
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < rows; ++t) {
    const int row = int(t % L), h = int((t / L) % p.heads), b = int(t / (int64_t(L) * p.heads));
    const T* o = slice<const T>(p.o, p.o_s, b, h) + int64_t(row) * p.o_s[2];
    const T* g = slice<const T>(p.dout, p.do_s, b, h) + int64_t(row) * p.do_s[2];
    float acc = 0.f;
    for (int d = 0; d < D; ++d) acc += to_float(o[d]) * to_float(g[d]);
    p.delta[t] = acc;
  }
}

// Score modifiers of the tile pair being computed (null get() when they are off): the slope of
// the query side's head and, for ALiBi, both sides' sequence positions, set per tile.
class PairMods {
 public:
  PairMods(const AttnParams& p, int bs)
      : p_(p), bs_(bs), on_(p.mods.any()), alibi_(p.mods.alibi != nullptr), qpos_(bs),
        kpos_(bs) {
    tm_.softcap = p.mods.softcap;
    tm_.qpos = qpos_.data();
    tm_.kpos = alibi_ ? kpos_.data() : nullptr;
  }
  void set_query(int b, int h, int qb) {
    if (!on_) return;
    tm_.slope = alibi_slope(p_, b, h);
    if (alibi_) tile_positions(qpos_.data(), p_.ls, qb * bs_, bs_, true);
  }
  void set_key(int kb) {
    if (alibi_) tile_positions(kpos_.data(), p_.ls, kb * bs_, bs_, false);
  }
  const TileMods* get() const { return on_ ? &tm_ : nullptr; }

 private:
  const AttnParams& p_;
  int bs_;
  bool on_, alibi_;
  TileMods tm_;
  std::vector<float> qpos_, kpos_;
};

struct Scratch {
  std::vector<float> S, dP, T, acc, acc2;  // T: tanh of the capped scores (soft-cap only)
  std::vector<uint64_t> mask;
  PairMods mods;
  Scratch(const AttnParams& p, int bs, int Dp)
      : S(size_t(bs) * bs), dP(size_t(bs) * bs), T(p.mods.softcap > 0.f ? size_t(bs) * bs : 0),
        acc(size_t(bs) * Dp), acc2(size_t(bs) * Dp), mods(p, bs) {}
};

// The float operands of one key tile (K^T and V^T [Dp x bs], K [bs x Dp]) or one query tile
// (Q and dO [bs x Dp], lse and delta [bs]), as laid out in a TileCache slot.
struct KeySide {
  float *Kt, *Vt, *K;
  static size_t floats(int bs, int Dp) { return 3 * size_t(bs) * Dp; }
  KeySide(float* base, int bs, int Dp)
      : Kt(base), Vt(base + size_t(bs) * Dp), K(base + 2 * size_t(bs) * Dp) {}
};
struct QuerySide {
  float *Q, *dO, *lse, *delta;
  static size_t floats(int bs, int Dp) { return 2 * size_t(bs) * Dp + 2 * size_t(bs); }
  QuerySide(float* base, int bs, int Dp)
      : Q(base), dO(base + size_t(bs) * Dp), lse(base + 2 * size_t(bs) * Dp),
        delta(base + 2 * size_t(bs) * Dp + bs) {}
};

// P [mq x mk] and dS of one (query tile, key tile) pair into s.S / s.dP, packed with leading
// dim mk. occ (null for a full tile) skips the 4x16 blocks with no allowed entry. With score
// modifiers (s.mods set for this pair) P comes from the modified scores and dS is carried back
// through the soft-cap (ALiBi's bias is a constant: no factor).
void pair_grads(Scratch& s, const QuerySide& qs, const KeySide& ks, int bs, int mq, int mk,
                int Dp, float scale, const uint64_t* rm, int words, const Occupancy* occ) {
  const size_t n = size_t(mq) * mk;
  const uint32_t* blocks = occ ? occ->rows : nullptr;
  gemm_nn_blocks(mq, mk, Dp, qs.Q, Dp, ks.Kt, bs, s.S.data(), mk, blocks);
  gemm_nn_blocks(mq, mk, Dp, qs.dO, Dp, ks.Vt, bs, s.dP.data(), mk, blocks);
  for (size_t i = 0; i < n; ++i) s.S[i] *= scale;
  const TileMods* tm = s.mods.get();
  float* T = s.T.empty() ? nullptr : s.T.data();
  if (tm) modify_scores(s.S.data(), mq, mk, *tm, T, blocks);
  probs_from_lse(s.S.data(), mq, mk, rm, words, qs.lse, blocks);
  dscores(s.dP.data(), s.S.data(), mq, mk, qs.delta, blocks);
  if (T) softcap_grad(s.dP.data(), T, mq, mk, blocks);
}

// dQ += dS K, dV += P^T dO and dK += dS^T Q for one pair (null accumulators are skipped).
void pair_accumulate(Scratch& s, const QuerySide& qs, const KeySide& ks, int mq, int mk, int Dp,
                     const Occupancy* occ, float* dq, float* dk, float* dv) {
  if (!occ) {
    if (dq) gemm_nn(mq, Dp, mk, s.dP.data(), mk, ks.K, Dp, dq, Dp);
    if (dv) gemm_tn(mk, Dp, mq, s.S.data(), mk, qs.dO, Dp, dv, Dp);
    if (dk) gemm_tn(mk, Dp, mq, s.dP.data(), mk, qs.Q, Dp, dk, Dp);
    return;
  }
  if (dq) gemm_nn_ksparse(mq, Dp, mk, s.dP.data(), mk, ks.K, Dp, dq, Dp, occ->rows);
  if (dv) gemm_tn_ksparse(mk, Dp, mq, s.S.data(), mk, qs.dO, Dp, dv, Dp, occ->cols);
  if (dk) gemm_tn_ksparse(mk, Dp, mq, s.dP.data(), mk, qs.Q, Dp, dk, Dp, occ->cols);
}

// Key tile kb of k/v head hk.
template <typename T>
void load_key_side(const KeySide& ks, const AttnParams& p, int b, int hk, int kb) {
  const BlockSparse& ls = p.ls;
  const int bs = ls.block, D = p.head_dim, Dp = round16(D), L = ls.seq_len;
  const T* kbase = slice<const T>(p.k, p.k_s, b, hk);
  load_tile(ks.Kt, bs, kbase, p.k_s[2], ls, L, kb * bs, bs, D, Dp, true);
  load_tile(ks.K, Dp, kbase, p.k_s[2], ls, L, kb * bs, bs, D, Dp, false);
  load_tile(ks.Vt, bs, slice<const T>(p.v, p.v_s, b, hk), p.v_s[2], ls, L, kb * bs, bs, D, Dp,
            true);
}

// Query tile qb of q head h.
template <typename T>
void load_query_side(const QuerySide& qs, const AttnParams& p, int b, int h, int qb) {
  const BlockSparse& ls = p.ls;
  const int bs = ls.block, D = p.head_dim, Dp = round16(D), Lq = ls.q_len;
  const int64_t off = (int64_t(b) * p.heads + h) * Lq;
  load_tile(qs.Q, Dp, slice<const T>(p.q, p.q_s, b, h), p.q_s[2], ls, Lq, qb * bs, bs, D, Dp,
            false);
  load_tile(qs.dO, Dp, slice<const T>(p.dout, p.do_s, b, h), p.do_s[2], ls, Lq, qb * bs, bs, D,
            Dp, false);
  // Rows past q_len get lse = -inf, so their probabilities are zero.
  load_rowvec(qs.lse, p.lse + off, ls, Lq, qb * bs, bs, -__builtin_inff());
  load_rowvec(qs.delta, p.delta + off, ls, Lq, qb * bs, bs, 0.f);
}

// The tile's row masks and, for a partial tile, its occupancy (null for a full tile).
inline const Occupancy* tile_occupancy(Occupancy& occ, const uint64_t* rm, int words, int mq,
                                       int mk) {
  if (!rm) return nullptr;
  occupancy(rm, words, mq, mk, occ);
  return &occ;
}

template <typename T>
void dq_pass(const AttnParams& p) {
  const BlockSparse& ls = p.ls;
  const int bs = ls.block, D = p.head_dim, Dp = round16(D);
  const int64_t tasks = int64_t(p.batch) * p.heads * ls.num_q_blocks;
#pragma omp parallel
  {
    Scratch s(p, bs, Dp);
    std::vector<float> qbuf(QuerySide::floats(bs, Dp));
    const QuerySide qs(qbuf.data(), bs, Dp);
    TileCache keys(ls.num_k_blocks, KeySide::floats(bs, Dp));
    Occupancy occ;
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < tasks; ++t) {
      const int qb = int(t % ls.num_q_blocks), h = int((t / ls.num_q_blocks) % p.heads);
      const int b = int(t / (int64_t(ls.num_q_blocks) * p.heads));
      const KeepRange keep = keep_range(p, b);
      const int hk = kv_head(p, h);
      load_query_side<T>(qs, p, b, h, qb);
      s.mods.set_query(b, h, qb);
      std::fill(s.acc.begin(), s.acc.end(), 0.f);
      const int mq = valid16(ls, ls.q_len, qb);
      for (int e = ls.q_ptr[qb]; e < ls.q_ptr[qb + 1]; ++e) {
        const int kb = ls.q_kv[e], mk = valid16(ls, ls.seq_len, kb);
        s.mods.set_key(kb);
        const uint64_t* rm = tile_rowmask(s.mask, ls, ls.q_mask[e], kb, keep);
        bool fresh;
        const KeySide ks(keys.get(int64_t(b) * kv_heads(p) + hk, kb, fresh), bs, Dp);
        if (fresh) load_key_side<T>(ks, p, b, hk, kb);
        const Occupancy* o = tile_occupancy(occ, rm, ls.mask_words, mq, mk);
        pair_grads(s, qs, ks, bs, mq, mk, Dp, p.scale, rm, ls.mask_words, o);
        pair_accumulate(s, qs, ks, mq, mk, Dp, o, s.acc.data(), nullptr, nullptr);
      }
      store_tile(slice<T>(p.dq, p.dq_s, b, h), p.dq_s[2], s.acc.data(), Dp, ls, ls.q_len, qb * bs,
                 bs, D, p.scale);
    }
  }
}

template <typename T>
void dkdv_pass(const AttnParams& p) {
  const BlockSparse& ls = p.ls;
  const int bs = ls.block, D = p.head_dim, Dp = round16(D);
  const int Hk = kv_heads(p);
  const int64_t tasks = int64_t(p.batch) * Hk * ls.num_k_blocks;
#pragma omp parallel
  {
    Scratch s(p, bs, Dp);
    std::vector<float> kbuf(KeySide::floats(bs, Dp));
    const KeySide ks(kbuf.data(), bs, Dp);
    TileCache queries(ls.num_q_blocks, QuerySide::floats(bs, Dp));
    Occupancy occ;
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < tasks; ++t) {
      const int kb = int(t % ls.num_k_blocks), hk = int((t / ls.num_k_blocks) % Hk);
      const int b = int(t / (int64_t(ls.num_k_blocks) * Hk));
      const KeepRange keep = keep_range(p, b);
      load_key_side<T>(ks, p, b, hk, kb);
      s.mods.set_key(kb);
      std::fill(s.acc.begin(), s.acc.end(), 0.f);   // dK
      std::fill(s.acc2.begin(), s.acc2.end(), 0.f);  // dV
      const int mk = valid16(ls, ls.seq_len, kb);
      for (int h = hk * p.kv_group; h < (hk + 1) * p.kv_group; ++h) {  // the group's q heads
        for (int e = ls.k_ptr[kb]; e < ls.k_ptr[kb + 1]; ++e) {
          const int qb = ls.k_q[e], mq = valid16(ls, ls.q_len, qb);
          const uint64_t* rm = tile_rowmask(s.mask, ls, ls.k_mask[e], kb, keep);
          bool fresh;
          const QuerySide qs(queries.get(int64_t(b) * p.heads + h, qb, fresh), bs, Dp);
          if (fresh) load_query_side<T>(qs, p, b, h, qb);
          s.mods.set_query(b, h, qb);
          const Occupancy* o = tile_occupancy(occ, rm, ls.mask_words, mq, mk);
          pair_grads(s, qs, ks, bs, mq, mk, Dp, p.scale, rm, ls.mask_words, o);
          pair_accumulate(s, qs, ks, mq, mk, Dp, o, nullptr, s.acc.data(), s.acc2.data());
        }
      }
      store_tile(slice<T>(p.dk, p.dk_s, b, hk), p.dk_s[2], s.acc.data(), Dp, ls, ls.seq_len,
                 kb * bs, bs, D, p.scale);
      store_tile(slice<T>(p.dv, p.dv_s, b, hk), p.dv_s[2], s.acc2.data(), Dp, ls, ls.seq_len,
                 kb * bs, bs, D, 1.f);
    }
  }
}

template <typename T>
void fused_pass(const AttnParams& p) {
  const BlockSparse& ls = p.ls;
  const int bs = ls.block, D = p.head_dim, Dp = round16(D);
  const size_t tile = size_t(bs) * Dp, all = tile * ls.num_k_blocks;
  const int Hk = kv_heads(p);
  const int64_t tasks = int64_t(p.batch) * Hk;  // one per (sample, k/v head)
#pragma omp parallel
  {
    Scratch s(p, bs, Dp);
    std::vector<float> qbuf(QuerySide::floats(bs, Dp));
    const QuerySide qs(qbuf.data(), bs, Dp);
    TileCache keys(ls.num_k_blocks, KeySide::floats(bs, Dp));
    Occupancy occ;
    std::vector<float> dK(all), dV(all);
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < tasks; ++t) {
      const int hk = int(t % Hk), b = int(t / Hk);
      const KeepRange keep = keep_range(p, b);
      std::fill(dK.begin(), dK.end(), 0.f);
      std::fill(dV.begin(), dV.end(), 0.f);
      for (int h = hk * p.kv_group; h < (hk + 1) * p.kv_group; ++h) {  // the group's q heads
        for (int qb = 0; qb < ls.num_q_blocks; ++qb) {
          load_query_side<T>(qs, p, b, h, qb);
          s.mods.set_query(b, h, qb);
          std::fill(s.acc.begin(), s.acc.end(), 0.f);  // dQ
          const int mq = valid16(ls, ls.q_len, qb);
          for (int e = ls.q_ptr[qb]; e < ls.q_ptr[qb + 1]; ++e) {
            const int kb = ls.q_kv[e], mk = valid16(ls, ls.seq_len, kb);
            s.mods.set_key(kb);
            const uint64_t* rm = tile_rowmask(s.mask, ls, ls.q_mask[e], kb, keep);
            bool fresh;
            const KeySide ks(keys.get(t, kb, fresh), bs, Dp);
            if (fresh) load_key_side<T>(ks, p, b, hk, kb);
            const Occupancy* o = tile_occupancy(occ, rm, ls.mask_words, mq, mk);
            pair_grads(s, qs, ks, bs, mq, mk, Dp, p.scale, rm, ls.mask_words, o);
            pair_accumulate(s, qs, ks, mq, mk, Dp, o, s.acc.data(), dK.data() + tile * kb,
                            dV.data() + tile * kb);
          }
          store_tile(slice<T>(p.dq, p.dq_s, b, h), p.dq_s[2], s.acc.data(), Dp, ls, ls.q_len,
                     qb * bs, bs, D, p.scale);
        }
      }
      for (int kb = 0; kb < ls.num_k_blocks; ++kb) {
        store_tile(slice<T>(p.dk, p.dk_s, b, hk), p.dk_s[2], dK.data() + tile * kb, Dp, ls,
                   ls.seq_len, kb * bs, bs, D, p.scale);
        store_tile(slice<T>(p.dv, p.dv_s, b, hk), p.dv_s[2], dV.data() + tile * kb, Dp, ls,
                   ls.seq_len, kb * bs, bs, D, 1.f);
      }
    }
  }
}

bool use_fused(const AttnParams& p) {
  if (const char* mode = std::getenv("VILG_CPU_ATTN_BWD")) {
    if (!std::strcmp(mode, "fused")) return true;
    if (!std::strcmp(mode, "tiles")) return false;
  }
  const int64_t floats = int64_t(p.ls.block) * round16(p.head_dim) * p.ls.num_k_blocks;
  return int64_t(p.batch) * kv_heads(p) >= 4 * int64_t(omp_get_max_threads()) &&
         floats <= (int64_t(1) << 22);  // dK + dV scratch: at most 32 MB per thread
}

template <typename T>
void bwd_impl(const AttnParams& p) {
  delta_pass<T>(p);
  if (use_fused(p)) {
    fused_pass<T>(p);
  } else {
    dq_pass<T>(p);
    dkdv_pass<T>(p);
  }
}

}  // namespace

void attention_bwd(const AttnParams& p, DType dtype) {
  dispatch_float(dtype, "attention", [&](auto t) { bwd_impl<decltype(t)>(p); });
}

}  // namespace vilg::cpu
