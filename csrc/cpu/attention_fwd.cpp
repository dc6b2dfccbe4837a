// Block-sparse attention forward on the CPU: online softmax over the allowed key tiles of each
// query tile, parallel over batch x heads x query tiles. Score modifiers (soft-cap, ALiBi) act
// on each score tile between the product and the softmax. GQA: q head h reads k/v head
// h / kv_group, and the converted key tiles are cached per (sample, k/v head), so the heads of
// a group share them.
#include <cmath>
#include <limits>
#include <vector>

#include "kernels.h"
#include "dispatch.h"
#include "tile_io.h"
#include "tile_math.h"

namespace vilg::cpu {
namespace {

template <typename T>
void fwd_impl(const AttnParams& p) {
  const BlockSparse& ls = p.ls;
  const int bs = ls.block, D = p.head_dim, Dp = round16(D), Lq = ls.q_len, Lk = ls.seq_len;
  const int64_t tasks = int64_t(p.batch) * p.heads * ls.num_q_blocks;
#pragma omp parallel
  {
    std::vector<float> Q(size_t(bs) * Dp), S(size_t(bs) * bs), O(size_t(bs) * Dp), m(bs), l(bs);
    std::vector<float> qpos(bs), kpos(bs);
    std::vector<uint64_t> maskbuf;
    TileCache kv(ls.num_k_blocks, 2 * size_t(bs) * Dp);  // K^T [Dp x bs], then V [bs x Dp]
    Occupancy occ;
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < tasks; ++t) {
      const int qb = int(t % ls.num_q_blocks);
      const int h = int((t / ls.num_q_blocks) % p.heads);
      const int b = int(t / (int64_t(ls.num_q_blocks) * p.heads));
      const KeepRange keep = keep_range(p, b);
      const int hk = kv_head(p, h);
      const int64_t kv_owner = int64_t(b) * kv_heads(p) + hk;
      const T* kbase = slice<const T>(p.k, p.k_s, b, hk);
      const T* vbase = slice<const T>(p.v, p.v_s, b, hk);
      load_tile(Q.data(), Dp, slice<const T>(p.q, p.q_s, b, h), p.q_s[2], ls, Lq, qb * bs, bs, D,
                Dp, false);
      for (float& x : Q) x *= p.scale;
      std::fill(O.begin(), O.end(), 0.f);
      std::fill(m.begin(), m.end(), -std::numeric_limits<float>::infinity());
      std::fill(l.begin(), l.end(), 0.f);
      // Only the rows / columns inside the sequence, rounded up to the microkernel's 16: a short
      // sequence in one 64-wide tile does not pay for the whole tile.
      const int mq = valid16(ls, Lq, qb);
      // Score modifiers: one branch per tile pair when they are off.
      const bool mod = p.mods.any(), alibi = p.mods.alibi != nullptr;
      TileMods tm;
      if (mod) {
        tm.softcap = p.mods.softcap;
        tm.slope = alibi_slope(p, b, h);
        tm.qpos = qpos.data();
        tm.kpos = alibi ? kpos.data() : nullptr;
        if (alibi) tile_positions(qpos.data(), ls, qb * bs, bs, true);
      }
      for (int e = ls.q_ptr[qb]; e < ls.q_ptr[qb + 1]; ++e) {
        const int kb = ls.q_kv[e], mk = valid16(ls, Lk, kb);
        const uint64_t* rm = tile_rowmask(maskbuf, ls, ls.q_mask[e], kb, keep);
        bool fresh;
        float* Kt = kv.get(kv_owner, kb, fresh);
        float* V = Kt + size_t(Dp) * bs;
        if (fresh) {
          load_tile(Kt, bs, kbase, p.k_s[2], ls, Lk, kb * bs, bs, D, Dp, true);
          load_tile(V, Dp, vbase, p.v_s[2], ls, Lk, kb * bs, bs, D, Dp, false);
        }
        const uint32_t* blocks = nullptr;  // a full tile computes every block
        if (rm) {
          occupancy(rm, ls.mask_words, mq, mk, occ);
          blocks = occ.rows;
        }
        gemm_nn_blocks(mq, mk, Dp, Q.data(), Dp, Kt, bs, S.data(), mk, blocks);
        if (mod) {
          if (alibi) tile_positions(kpos.data(), ls, kb * bs, bs, false);
          modify_scores(S.data(), mq, mk, tm, nullptr, blocks);
        }
        softmax_step(S.data(), mq, mk, rm, ls.mask_words, m.data(), l.data(), O.data(), Dp,
                     blocks);
        if (blocks)
          gemm_nn_ksparse(mq, Dp, mk, S.data(), mk, V, Dp, O.data(), Dp, blocks);
        else
          gemm_nn(mq, Dp, mk, S.data(), mk, V, Dp, O.data(), Dp);
      }
      float* lse = p.lse + (int64_t(b) * p.heads + h) * Lq;
      for (int r = 0; r < bs && qb * bs + r < Lq; ++r) {
        const bool empty = l[r] == 0.f;
        const float inv = empty ? 0.f : 1.f / l[r];
        for (int d = 0; d < Dp; ++d) O[size_t(r) * Dp + d] *= inv;
        lse[seq_row(ls, qb * bs + r)] =
            empty ? -std::numeric_limits<float>::infinity() : m[r] + std::log(l[r]);
      }
      store_tile(slice<T>(p.o, p.o_s, b, h), p.o_s[2], O.data(), Dp, ls, Lq, qb * bs, bs, D,
                 1.f);
    }
  }
}

}  // namespace

void attention_fwd(const AttnParams& p, DType dtype) {
  dispatch_float(dtype, "attention", [&](auto t) { fwd_impl<decltype(t)>(p); });
}

}  // namespace vilg::cpu
