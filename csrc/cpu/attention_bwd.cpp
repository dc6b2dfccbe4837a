// Block-sparse attention backward on the CPU, FlashAttention-2 style: probabilities are
// recomputed from the saved log-sum-exp. No atomics, so results are deterministic. Two
// schedules: "fused" walks each (batch, head) once and computes every tile pair's P and dS a
// single time, accumulating dK/dV in per-thread buffers; "tiles" splits the work into a dQ pass
// per query tile (CSR) and a dK/dV pass per key tile (CSC), recomputing P and dS in each, but
// has batch x heads x tiles tasks to spread over the threads. Fused is used when batch x heads
// alone keeps every thread busy; VILG_CPU_ATTN_BWD=fused|tiles forces one.
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

void load_rowvec(float* dst, const float* src, const BlockSparse& ls, int p0, int bs, float pad) {
  for (int r = 0; r < bs; ++r) dst[r] = p0 + r < ls.seq_len ? src[seq_row(ls, p0 + r)] : pad;
}

// delta = rowsum(dO * O), per sequence row.
template <typename T>
void delta_pass(const AttnParams& p) {
  const int L = p.ls.seq_len, D = p.head_dim;
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

struct Scratch {
  std::vector<float> Q, dO, Kt, Vt, K, S, dP, acc, acc2, lse, delta;
  std::vector<uint64_t> mask;
  Scratch(int bs, int Dp)
      : Q(size_t(bs) * Dp), dO(size_t(bs) * Dp), Kt(size_t(Dp) * bs), Vt(size_t(Dp) * bs),
        K(size_t(bs) * Dp), S(size_t(bs) * bs), dP(size_t(bs) * bs), acc(size_t(bs) * Dp),
        acc2(size_t(bs) * Dp), lse(bs), delta(bs) {}
};

// P [mq x mk] and dS of one (query tile, key tile) pair, packed with leading dim mk; expects
// Q, dO, Kt, Vt (leading dim bs), lse and delta loaded.
void pair_grads(Scratch& s, int bs, int mq, int mk, int Dp, float scale, const uint64_t* rm,
                int words) {
  const size_t n = size_t(mq) * mk;
  std::fill(s.S.begin(), s.S.begin() + n, 0.f);
  gemm_nn(mq, mk, Dp, s.Q.data(), Dp, s.Kt.data(), bs, s.S.data(), mk);
  for (size_t i = 0; i < n; ++i) s.S[i] *= scale;
  probs_from_lse(s.S.data(), mq, mk, rm, words, s.lse.data());
  std::fill(s.dP.begin(), s.dP.begin() + n, 0.f);
  gemm_nn(mq, mk, Dp, s.dO.data(), Dp, s.Vt.data(), bs, s.dP.data(), mk);
  dscores(s.dP.data(), s.S.data(), mq, mk, s.delta.data());
}

template <typename T>
void load_query_side(Scratch& s, const AttnParams& p, int b, int h, int qb) {
  const BlockSparse& ls = p.ls;
  const int bs = ls.block, D = p.head_dim, Dp = round16(D);
  const int64_t off = (int64_t(b) * p.heads + h) * ls.seq_len;
  load_tile(s.Q.data(), Dp, slice<const T>(p.q, p.q_s, b, h), p.q_s[2], ls, qb * bs, bs, D, Dp,
            false);
  load_tile(s.dO.data(), Dp, slice<const T>(p.dout, p.do_s, b, h), p.do_s[2], ls, qb * bs, bs, D,
            Dp, false);
  // Rows past L get lse = -inf, so their probabilities are zero.
  load_rowvec(s.lse.data(), p.lse + off, ls, qb * bs, bs, -__builtin_inff());
  load_rowvec(s.delta.data(), p.delta + off, ls, qb * bs, bs, 0.f);
}

template <typename T>
void dq_pass(const AttnParams& p) {
  const BlockSparse& ls = p.ls;
  const int bs = ls.block, D = p.head_dim, Dp = round16(D);
  const int64_t tasks = int64_t(p.batch) * p.heads * ls.num_q_blocks;
#pragma omp parallel
  {
    Scratch s(bs, Dp);
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < tasks; ++t) {
      const int qb = int(t % ls.num_q_blocks), h = int((t / ls.num_q_blocks) % p.heads);
      const int b = int(t / (int64_t(ls.num_q_blocks) * p.heads));
      const int tv = text_valid_len(p, b);
      load_query_side<T>(s, p, b, h, qb);
      std::fill(s.acc.begin(), s.acc.end(), 0.f);
      for (int e = ls.q_ptr[qb]; e < ls.q_ptr[qb + 1]; ++e) {
        const int kb = ls.q_kv[e];
        const uint64_t* rm = tile_rowmask(s.mask, ls, ls.q_mask[e], kb, tv);
        load_tile(s.Kt.data(), bs, slice<const T>(p.k, p.k_s, b, h), p.k_s[2], ls, kb * bs, bs,
                  D, Dp, true);
        load_tile(s.K.data(), Dp, slice<const T>(p.k, p.k_s, b, h), p.k_s[2], ls, kb * bs, bs, D,
                  Dp, false);
        load_tile(s.Vt.data(), bs, slice<const T>(p.v, p.v_s, b, h), p.v_s[2], ls, kb * bs, bs,
                  D, Dp, true);
        const int mq = valid16(ls, qb), mk = valid16(ls, kb);
        pair_grads(s, bs, mq, mk, Dp, p.scale, rm, ls.mask_words);
        gemm_nn(mq, Dp, mk, s.dP.data(), mk, s.K.data(), Dp, s.acc.data(), Dp);  // dQ += dS K
      }
      store_tile(slice<T>(p.dq, p.dq_s, b, h), p.dq_s[2], s.acc.data(), Dp, ls, qb * bs, bs, D,
                 p.scale);
    }
  }
}

template <typename T>
void dkdv_pass(const AttnParams& p) {
  const BlockSparse& ls = p.ls;
  const int bs = ls.block, D = p.head_dim, Dp = round16(D);
  const int64_t tasks = int64_t(p.batch) * p.heads * ls.num_k_blocks;
#pragma omp parallel
  {
    Scratch s(bs, Dp);
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < tasks; ++t) {
      const int kb = int(t % ls.num_k_blocks), h = int((t / ls.num_k_blocks) % p.heads);
      const int b = int(t / (int64_t(ls.num_k_blocks) * p.heads));
      const int tv = text_valid_len(p, b);
      load_tile(s.Kt.data(), bs, slice<const T>(p.k, p.k_s, b, h), p.k_s[2], ls, kb * bs, bs, D,
                Dp, true);
      load_tile(s.Vt.data(), bs, slice<const T>(p.v, p.v_s, b, h), p.v_s[2], ls, kb * bs, bs, D,
                Dp, true);
      std::fill(s.acc.begin(), s.acc.end(), 0.f);   // dK
      std::fill(s.acc2.begin(), s.acc2.end(), 0.f);  // dV
      for (int e = ls.k_ptr[kb]; e < ls.k_ptr[kb + 1]; ++e) {
        const int qb = ls.k_q[e];
        const uint64_t* rm = tile_rowmask(s.mask, ls, ls.k_mask[e], kb, tv);
        load_query_side<T>(s, p, b, h, qb);
        const int mq = valid16(ls, qb), mk = valid16(ls, kb);
        pair_grads(s, bs, mq, mk, Dp, p.scale, rm, ls.mask_words);
        gemm_tn(mk, Dp, mq, s.S.data(), mk, s.dO.data(), Dp, s.acc2.data(), Dp);  // dV += P^T dO
        gemm_tn(mk, Dp, mq, s.dP.data(), mk, s.Q.data(), Dp, s.acc.data(), Dp);   // dK += dS^T Q
      }
      store_tile(slice<T>(p.dk, p.dk_s, b, h), p.dk_s[2], s.acc.data(), Dp, ls, kb * bs, bs, D,
                 p.scale);
      store_tile(slice<T>(p.dv, p.dv_s, b, h), p.dv_s[2], s.acc2.data(), Dp, ls, kb * bs, bs, D,
                 1.f);
    }
  }
}

template <typename T>
void fused_pass(const AttnParams& p) {
  const BlockSparse& ls = p.ls;
  const int bs = ls.block, D = p.head_dim, Dp = round16(D);
  const size_t tile = size_t(bs) * Dp, all = tile * ls.num_k_blocks;
  const int64_t tasks = int64_t(p.batch) * p.heads;
#pragma omp parallel
  {
    Scratch s(bs, Dp);
    std::vector<float> dK(all), dV(all);
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < tasks; ++t) {
      const int h = int(t % p.heads), b = int(t / p.heads);
      const int tv = text_valid_len(p, b);
      const T* kbase = slice<const T>(p.k, p.k_s, b, h);
      const T* vbase = slice<const T>(p.v, p.v_s, b, h);
      std::fill(dK.begin(), dK.end(), 0.f);
      std::fill(dV.begin(), dV.end(), 0.f);
      for (int qb = 0; qb < ls.num_q_blocks; ++qb) {
        load_query_side<T>(s, p, b, h, qb);
        std::fill(s.acc.begin(), s.acc.end(), 0.f);  // dQ
        const int mq = valid16(ls, qb);
        for (int e = ls.q_ptr[qb]; e < ls.q_ptr[qb + 1]; ++e) {
          const int kb = ls.q_kv[e], mk = valid16(ls, kb);
          const uint64_t* rm = tile_rowmask(s.mask, ls, ls.q_mask[e], kb, tv);
          load_tile(s.Kt.data(), bs, kbase, p.k_s[2], ls, kb * bs, bs, D, Dp, true);
          load_tile(s.K.data(), Dp, kbase, p.k_s[2], ls, kb * bs, bs, D, Dp, false);
          load_tile(s.Vt.data(), bs, vbase, p.v_s[2], ls, kb * bs, bs, D, Dp, true);
          pair_grads(s, bs, mq, mk, Dp, p.scale, rm, ls.mask_words);
          gemm_nn(mq, Dp, mk, s.dP.data(), mk, s.K.data(), Dp, s.acc.data(), Dp);  // dQ += dS K
          float* dk = dK.data() + tile * kb;
          float* dv = dV.data() + tile * kb;
          gemm_tn(mk, Dp, mq, s.S.data(), mk, s.dO.data(), Dp, dv, Dp);   // dV += P^T dO
          gemm_tn(mk, Dp, mq, s.dP.data(), mk, s.Q.data(), Dp, dk, Dp);   // dK += dS^T Q
        }
        store_tile(slice<T>(p.dq, p.dq_s, b, h), p.dq_s[2], s.acc.data(), Dp, ls, qb * bs, bs, D,
                   p.scale);
      }
      for (int kb = 0; kb < ls.num_k_blocks; ++kb) {
        store_tile(slice<T>(p.dk, p.dk_s, b, h), p.dk_s[2], dK.data() + tile * kb, Dp, ls,
                   kb * bs, bs, D, p.scale);
        store_tile(slice<T>(p.dv, p.dv_s, b, h), p.dv_s[2], dV.data() + tile * kb, Dp, ls,
                   kb * bs, bs, D, 1.f);
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
  return int64_t(p.batch) * p.heads >= 4 * int64_t(omp_get_max_threads()) &&
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
