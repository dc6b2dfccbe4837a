// Runs the CUDA attention kernels' source on the host emulation (csrc/cuda/emulate.cuh) through
// their real entry points (attention_fwd / attention_bwd: dtype and head-dim dispatch, grids,
// the shared-memory opt-in), and compares with the CPU kernels (and, with REF64 set, a float64
// reference). Built and driven by tests/test_cuda_emulation.py; the .cu files are included after
// tests/cuda_emulation/translate.py.
#include "attention_fwd.emu.cpp"
#include "attention_bwd.emu.cpp"
#include "attention_simt.emu.cpp"
#include "cpu/kernels.h"

#include <chrono>
#include <random>
#include <string>

using namespace vilg;
using namespace vilg::cuda;

struct LayoutData {
  BlockSparse ls;
  std::vector<int32_t> q_ptr, q_kv, q_mask, k_ptr, k_q, k_mask, perm;
  std::vector<uint64_t> masks;
};

static LayoutData load_layout(const std::string& path) {
  FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) { std::perror(path.c_str()); std::exit(1); }
  int h[10];
  if (std::fread(h, 4, 10, f) != 10) std::exit(2);
  LayoutData d;
  const int L = h[0], bs = h[1], nb = h[2], ne = h[5], nm = h[6], Lq = h[8], nbq = h[9];
  auto rd = [&](auto& v, size_t n) {
    v.resize(n);
    if (n && std::fread(v.data(), sizeof(v[0]), n, f) != n) std::exit(3);
  };
  rd(d.q_ptr, nbq + 1); rd(d.q_kv, ne); rd(d.q_mask, ne);
  rd(d.k_ptr, nb + 1); rd(d.k_q, ne); rd(d.k_mask, ne);
  rd(d.masks, size_t(nm) * bs);
  if (h[7]) rd(d.perm, L);
  std::fclose(f);
  BlockSparse& ls = d.ls;
  ls.seq_len = L; ls.q_len = Lq; ls.block = bs; ls.num_q_blocks = nbq; ls.num_k_blocks = nb;
  ls.q_ptr = d.q_ptr.data(); ls.q_kv = d.q_kv.data(); ls.q_mask = d.q_mask.data();
  ls.k_ptr = d.k_ptr.data(); ls.k_q = d.k_q.data(); ls.k_mask = d.k_mask.data();
  ls.masks = d.masks.data(); ls.mask_words = 1;
  ls.perm = d.perm.empty() ? nullptr : d.perm.data();
  ls.text_start = h[3]; ls.text_len = h[4];
  return d;
}

// [B, H, L, D] tensor with a storage mode: 0 contiguous, 1 [B, L, H, D] view, 2 padded rows and
// an odd base offset (not 16-byte aligned: element-wise path).
template <typename E>
struct Tensor {
  std::vector<E> buf;
  size_t base = 0;
  int64_t s[3];
  int B, H, L, D;
  Tensor(int B_, int H_, int L_, int D_, int mode) : B(B_), H(H_), L(L_), D(D_) {
    if (mode == 0) { s[2] = D; s[1] = int64_t(L) * D; s[0] = int64_t(H) * L * D; base = 0; }
    else if (mode == 1) { s[2] = int64_t(H) * D; s[1] = D; s[0] = int64_t(L) * H * D; base = 0; }
    else { s[2] = D + 3; s[1] = int64_t(L) * (D + 3) + 5; s[0] = int64_t(H) * s[1] + 1; base = 1; }
    buf.resize(base + size_t(B - 1) * s[0] + size_t(H - 1) * s[1] + size_t(L - 1) * s[2] + D);
  }
  E& at(int b, int h, int l, int d) { return buf[base + b * s[0] + h * s[1] + l * s[2] + d]; }
  E* ptr() { return buf.data() + base; }
};

template <typename E> E nan_value();
template <> float nan_value<float>() { return std::nanf(""); }
template <> f16_t nan_value<f16_t>() { return f16_t{0x7fff}; }
template <> bf16_t nan_value<bf16_t>() { return bf16_t{0x7fff}; }

struct Err {
  double max_abs = 0, max_ref = 0;
  long bad = 0;  // NaN / unwritten
  double rel() const { return max_abs / (max_ref > 0 ? max_ref : 1); }
};

template <typename E>
static Err compare(Tensor<E>& got, Tensor<E>& ref) {
  Err e;
  for (int b = 0; b < got.B; ++b)
    for (int h = 0; h < got.H; ++h)
      for (int l = 0; l < got.L; ++l)
        for (int d = 0; d < got.D; ++d) {
          const double x = to_float(got.at(b, h, l, d)), y = to_float(ref.at(b, h, l, d));
          if (!std::isfinite(x)) { ++e.bad; continue; }
          e.max_abs = std::max(e.max_abs, std::fabs(x - y));
          e.max_ref = std::max(e.max_ref, std::fabs(y));
        }
  return e;
}

// Elements of the buffer outside the tensor's [B,H,L,D] view must still hold the poison.
template <typename E>
static long untouched_padding_violations(Tensor<E>& t) {
  std::vector<char> inside(t.buf.size(), 0);
  for (int b = 0; b < t.B; ++b)
    for (int h = 0; h < t.H; ++h)
      for (int l = 0; l < t.L; ++l)
        for (int d = 0; d < t.D; ++d) inside[t.base + b * t.s[0] + h * t.s[1] + l * t.s[2] + d] = 1;
  long bad = 0;
  for (size_t i = 0; i < t.buf.size(); ++i)
    if (!inside[i] && std::isfinite(to_float(t.buf[i]))) ++bad;
  return bad;
}

template <typename E>
static constexpr DType dtype_of() {
  return std::is_same_v<E, float> ? DType::F32 : std::is_same_v<E, f16_t> ? DType::F16 : DType::BF16;
}

// float64 dense reference from the kernel-order layout: o, lse, dq, dk, dv in sequence rows.
struct Ref64 { std::vector<double> o, lse, dq, dk, dv; };
template <typename E>
static Ref64 ref64(const AttnParams& p, Tensor<E>& q, Tensor<E>& k, Tensor<E>& v, Tensor<E>& go) {
  const BlockSparse& ls = p.ls;  // the layout's, with the case's padded segment
  const int L = ls.seq_len, Lq = ls.q_len, B = p.batch, H = p.heads, D = p.head_dim, G = p.kv_group;
  Ref64 r;
  const size_t nq = size_t(B) * H * Lq * D, nk = size_t(B) * (H / G) * L * D;
  r.o.assign(nq, 0); r.dq.assign(nq, 0); r.dk.assign(nk, 0); r.dv.assign(nk, 0); r.lse.assign(size_t(B) * H * Lq, 0);
  for (int b = 0; b < B; ++b) {
    const KeepRange keep = keep_range(p, b);
    // allowed[qrow][krow] in sequence rows
    std::vector<char> allow(size_t(Lq) * L, 0);
    for (int qb = 0; qb < ls.num_q_blocks; ++qb)
      for (int e = ls.q_ptr[qb]; e < ls.q_ptr[qb + 1]; ++e) {
        const int kb = ls.q_kv[e];
        for (int rr = 0; rr < 64; ++rr) {
          const int qp = qb * 64 + rr;
          if (qp >= Lq) continue;
          const uint64_t w = tile_bits(ls, ls.q_mask[e], rr, 0) & ~text_pad_bits(ls, kb, 0, keep);
          for (int c = 0; c < 64; ++c)
            if ((w >> c) & 1) allow[size_t(seq_row(ls, qp)) * L + seq_row(ls, kb * 64 + c)] = 1;
        }
      }
    for (int h = 0; h < H; ++h) {
      auto X = [&](Tensor<E>& t, int l, int d) { return double(to_float(t.at(b, h, l, d))); };
      auto Y = [&](Tensor<E>& t, int l, int d) { return double(to_float(t.at(b, h / G, l, d))); };
      std::vector<double> P(size_t(Lq) * L, 0), dS(size_t(Lq) * L, 0), TH(size_t(Lq) * L, 0);
      const double cap = p.mods.softcap, slope = alibi_slope(p, b, h);
      for (int i = 0; i < Lq; ++i) {
        double mx = -INFINITY;
        std::vector<double> s(L, -INFINITY);
        for (int j = 0; j < L; ++j) if (allow[size_t(i) * L + j]) {
          double acc = 0; for (int d = 0; d < D; ++d) acc += X(q, i, d) * Y(k, j, d);
          s[j] = acc * p.scale;
          if (cap > 0) { TH[size_t(i) * L + j] = std::tanh(s[j] / cap); s[j] = cap * TH[size_t(i) * L + j]; }
          s[j] -= slope * std::fabs(double(i + L - Lq - j));  // q row i is position i + L - Lq
          mx = std::max(mx, s[j]);
        }
        const size_t row = (size_t(b) * H + h) * Lq + i;
        if (mx == -INFINITY) { r.lse[row] = -INFINITY; continue; }
        double sum = 0; for (int j = 0; j < L; ++j) if (s[j] > -INFINITY) sum += std::exp(s[j] - mx);
        r.lse[row] = mx + std::log(sum);
        for (int j = 0; j < L; ++j) if (s[j] > -INFINITY) P[size_t(i) * L + j] = std::exp(s[j] - r.lse[row]);
        for (int d = 0; d < D; ++d) { double acc = 0; for (int j = 0; j < L; ++j) acc += P[size_t(i) * L + j] * Y(v, j, d); r.o[row * D + d] = acc; }
        double delta = 0; for (int d = 0; d < D; ++d) delta += r.o[row * D + d] * X(go, i, d);
        for (int j = 0; j < L; ++j) if (P[size_t(i) * L + j] != 0) {
          double dp = 0; for (int d = 0; d < D; ++d) dp += X(go, i, d) * Y(v, j, d);
          const double th = TH[size_t(i) * L + j];
          dS[size_t(i) * L + j] = P[size_t(i) * L + j] * (dp - delta) * (1 - th * th);
        }
      }
      const size_t base = (size_t(b) * H + h) * Lq, kbase = (size_t(b) * (H / G) + h / G) * L;
      for (int i = 0; i < Lq; ++i) for (int j = 0; j < L; ++j) {
        const double pv = P[size_t(i) * L + j], ds = dS[size_t(i) * L + j];
        if (pv == 0 && ds == 0) continue;
        for (int d = 0; d < D; ++d) {
          r.dq[(base + i) * D + d] += p.scale * ds * Y(k, j, d);
          r.dk[(kbase + j) * D + d] += p.scale * ds * X(q, i, d);
          r.dv[(kbase + j) * D + d] += pv * X(go, i, d);
        }
      }
    }
  }
  return r;
}
template <typename E>
static double err64(Tensor<E>& t, const std::vector<double>& ref) {
  double mx = 0, mr = 0;
  for (int b = 0; b < t.B; ++b) for (int h = 0; h < t.H; ++h) for (int l = 0; l < t.L; ++l) for (int d = 0; d < t.D; ++d) {
    const double y = ref[((size_t(b) * t.H + h) * t.L + l) * t.D + d];
    mx = std::max(mx, std::fabs(double(to_float(t.at(b, h, l, d))) - y)); mr = std::max(mr, std::fabs(y));
  }
  return mx / (mr > 0 ? mr : 1);
}
static int failures = 0;

// Case flags (the harness's 5th argument): which per-sample padding and score modifiers.
enum CaseFlags : int {
  kTextPad = 1,   // text_lens-style right padding of the layout's text segment
  kSoftcap = 2,   // soft-capping
  kAlibi = 4,     // ALiBi slopes per sample x head
  kKeyRange = 8,  // key_starts / key_lens: the padded segment is the whole sequence, both ends cut
};

template <typename E, int D>
static void run_case(const std::string& name, LayoutData& lay, int mode, int flags, uint32_t seed,
                     float scale_mul = 1.f) {
  // GQA layouts ("gqa_..."): 4 q heads on 2 k/v heads; otherwise 2 and 2.
  const int G = name.rfind("gqa_", 0) == 0 ? 2 : 1;
  const int B = 2, H = 2 * G, Hk = H / G, L = lay.ls.seq_len, Lq = lay.ls.q_len;
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.f, 1.f);
  Tensor<E> q(B, H, Lq, D, mode), k(B, Hk, L, D, mode), v(B, Hk, L, D, mode), go(B, H, Lq, D, mode);
  for (auto* t : {&q, &k, &v, &go}) {
    std::fill(t->buf.begin(), t->buf.end(), nan_value<E>());  // gaps must never be read
    for (int b = 0; b < t->B; ++b) for (int h = 0; h < t->H; ++h) for (int l = 0; l < t->L; ++l) for (int d = 0; d < D; ++d)
      t->at(b, h, l, d) = from_float<E>(nd(rng));
  }
  const bool padded = flags & kTextPad;
  std::vector<int32_t> lens, starts;
  AttnParams p;
  p.ls = lay.ls;
  if (flags & kKeyRange) {  // sample 0 keeps [L/3, L), sample 1 [5, L - 17) (clamped)
    p.ls.text_start = 0;
    p.ls.text_len = L;
    starts = {L / 3, 5};
    lens = {L, L - 17};
  } else if (padded && lay.ls.text_len > 0) {
    lens = {0, lay.ls.text_len / 3 + 1};  // sample 0: all text padded; sample 1: partly
    if (lens[1] > lay.ls.text_len) lens[1] = lay.ls.text_len;
  }
  std::vector<float> slopes(size_t(B) * H);
  for (size_t i = 0; i < slopes.size(); ++i) slopes[i] = 0.05f + 0.6f * float(i) / float(slopes.size());
  p.batch = B; p.heads = H; p.head_dim = D; p.kv_group = G;
  p.scale = scale_mul / std::sqrt(float(D));
  p.keep_hi = lens.empty() ? nullptr : lens.data();
  p.keep_lo = starts.empty() ? nullptr : starts.data();
  if (flags & kSoftcap) p.mods.softcap = 1.5f;
  if (flags & kAlibi) { p.mods.alibi = slopes.data(); p.mods.alibi_batch_stride = H; }
  p.q = q.ptr(); p.k = k.ptr(); p.v = v.ptr();
  for (int i = 0; i < 3; ++i) { p.q_s[i] = q.s[i]; p.k_s[i] = k.s[i]; p.v_s[i] = v.s[i]; }

  // CPU reference forward (contiguous outputs)
  Tensor<E> o_ref(B, H, Lq, D, 0), o_gpu(B, H, Lq, D, mode);
  std::vector<float> lse_ref(size_t(B) * H * Lq), lse_gpu(size_t(B) * H * Lq, std::nanf(""));
  AttnParams pc = p;
  pc.o = o_ref.ptr(); for (int i = 0; i < 3; ++i) pc.o_s[i] = o_ref.s[i];
  pc.lse = lse_ref.data();
  const DType dt = std::is_same_v<E, float> ? DType::F32 : std::is_same_v<E, f16_t> ? DType::F16 : DType::BF16;
  cpu::attention_fwd(pc, dt);

  std::fill(o_gpu.buf.begin(), o_gpu.buf.end(), nan_value<E>());
  AttnParams pg = p;
  pg.o = o_gpu.ptr(); for (int i = 0; i < 3; ++i) pg.o_s[i] = o_gpu.s[i];
  pg.lse = lse_gpu.data();
  const auto t0 = std::chrono::steady_clock::now();
  vilg::cuda::attention_fwd(pg, dtype_of<E>(), 0, 0);
  Err eo = compare(o_gpu, o_ref);
  long pad_o = mode == 2 ? untouched_padding_violations(o_gpu) : 0;
  double lse_err = 0; long lse_bad = 0, empty_rows = 0;
  for (size_t i = 0; i < lse_ref.size(); ++i) {
    if (std::isnan(lse_gpu[i])) { ++lse_bad; continue; }
    if (std::isinf(lse_ref[i]) || std::isinf(lse_gpu[i])) {
      if (lse_ref[i] != lse_gpu[i]) ++lse_bad;
      else ++empty_rows;
      continue;
    }
    lse_err = std::max(lse_err, double(std::fabs(lse_gpu[i] - lse_ref[i])));
  }

  // Backward, both from the reference o / lse.
  Tensor<E> dq_ref(B, H, Lq, D, 0), dk_ref(B, Hk, L, D, 0), dv_ref(B, Hk, L, D, 0);
  Tensor<E> dq_gpu(B, H, Lq, D, mode), dk_gpu(B, Hk, L, D, mode), dv_gpu(B, Hk, L, D, mode);
  Tensor<E> o_in(B, H, Lq, D, mode);
  std::fill(o_in.buf.begin(), o_in.buf.end(), nan_value<E>());
  for (int b = 0; b < B; ++b) for (int h = 0; h < H; ++h) for (int l = 0; l < Lq; ++l) for (int d = 0; d < D; ++d)
    o_in.at(b, h, l, d) = o_ref.at(b, h, l, d);
  std::vector<float> delta_ref(lse_ref.size()), delta_gpu(lse_ref.size(), std::nanf(""));
  auto set_bwd = [&](AttnParams& x, Tensor<E>& dq, Tensor<E>& dk, Tensor<E>& dv, float* delta) {
    x.o = o_in.ptr(); for (int i = 0; i < 3; ++i) x.o_s[i] = o_in.s[i];
    x.lse = lse_ref.data();
    x.dout = go.ptr(); for (int i = 0; i < 3; ++i) x.do_s[i] = go.s[i];
    x.dq = dq.ptr(); x.dk = dk.ptr(); x.dv = dv.ptr(); x.delta = delta;
    for (int i = 0; i < 3; ++i) { x.dq_s[i] = dq.s[i]; x.dk_s[i] = dk.s[i]; x.dv_s[i] = dv.s[i]; }
  };
  AttnParams bc = p, bg = p;
  set_bwd(bc, dq_ref, dk_ref, dv_ref, delta_ref.data());
  set_bwd(bg, dq_gpu, dk_gpu, dv_gpu, delta_gpu.data());
  cpu::attention_bwd(bc, dt);
  for (auto* t : {&dq_gpu, &dk_gpu, &dv_gpu}) std::fill(t->buf.begin(), t->buf.end(), nan_value<E>());
  vilg::cuda::attention_bwd(bg, dtype_of<E>(), 0, 0);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  Err eq = compare(dq_gpu, dq_ref), ek = compare(dk_gpu, dk_ref), ev = compare(dv_gpu, dv_ref);
  long pad_g = 0;
  if (mode == 2) pad_g = untouched_padding_violations(dq_gpu) + untouched_padding_violations(dk_gpu) +
                         untouched_padding_violations(dv_gpu);
  double delta_err = 0;
  for (size_t i = 0; i < delta_ref.size(); ++i) delta_err = std::max(delta_err, double(std::fabs(delta_gpu[i] - delta_ref[i])));

  const double tol = std::is_same_v<E, float> ? 1e-5 : std::is_same_v<E, f16_t> ? 3e-3 : 1.5e-2;
  const bool ok = eo.bad == 0 && eq.bad == 0 && ek.bad == 0 && ev.bad == 0 && lse_bad == 0 && pad_o == 0 &&
                  pad_g == 0 && eo.rel() <= tol && eq.rel() <= tol * 2 && ek.rel() <= tol * 2 &&
                  ev.rel() <= tol * 2 && lse_err < 1e-3 && delta_err < 1e-2;
  if (!ok) ++failures;
  const bool stop = !ok && std::getenv("VILG_EMU_FAIL_FAST");  // mutation testing: first failure
  if (std::getenv("REF64")) {
    Ref64 R = ref64(p, q, k, v, go);
    // backward of the GPU path ran on the CPU's o/lse; compare all against float64
    std::printf("  vs float64: o %.2e dq %.2e dk %.2e dv %.2e | cpu o %.2e dq %.2e\n", err64(o_gpu, R.o), err64(dq_gpu, R.dq),
                err64(dk_gpu, R.dk), err64(dv_gpu, R.dv), err64(o_ref, R.o), err64(dq_ref, R.dq));
  }
  std::printf("%-4s %-26s D=%3d mode=%d flags=%d | o %.2e lse %.1e (empty %ld) | dq %.2e dk %.2e dv %.2e delta %.1e | "
              "nan o/dq/dk/dv %ld/%ld/%ld/%ld lsebad %ld gaps %ld/%ld | %.1fs %s\n",
              std::is_same_v<E, float> ? "f32" : std::is_same_v<E, f16_t> ? "f16" : "bf16", name.c_str(), D, mode,
              flags, eo.rel(), lse_err, empty_rows, eq.rel(), ek.rel(), ev.rel(), delta_err, eo.bad, eq.bad,
              ek.bad, ev.bad, lse_bad, pad_o, pad_g, secs, ok ? "ok" : "FAIL");
  std::fflush(stdout);
  if (stop) std::exit(1);
}

template <typename E>
static void run_dims(const std::string& name, LayoutData& lay, int mode, int flags, uint32_t seed, int dims) {
  if (dims & 1) run_case<E, 32>(name, lay, mode, flags, seed);
  if (dims & 2) run_case<E, 64>(name, lay, mode, flags, seed + 1);
  if (dims & 4) run_case<E, 128>(name, lay, mode, flags, seed + 2);
}

int main(int argc, char** argv) {
  // usage: harness DIR dtype(f16|bf16|f32) dims_mask mode flags(CaseFlags) name...
  const std::string dir = argv[1], dt = argv[2];
  const int dims = std::atoi(argv[3]), mode = std::atoi(argv[4]);
  const int padded = std::atoi(argv[5]);
  uint32_t seed = 1;
  for (int i = 6; i < argc; ++i) {
    LayoutData lay = load_layout(dir + "/" + argv[i] + ".bin");
    if (dt == "f16") run_dims<f16_t>(argv[i], lay, mode, padded, seed, dims);
    else if (dt == "bf16") run_dims<bf16_t>(argv[i], lay, mode, padded, seed, dims);
    else run_dims<float>(argv[i], lay, mode, padded, seed, dims);
    seed += 10;
  }
  std::printf("%s\n", failures ? "FAILURES" : "all ok");
  return failures ? 1 : 0;
}
