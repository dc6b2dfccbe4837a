// csrc/cuda/decode.cu (decode + split-K combine) on the host emulation, through its real entry
// points (decode_splits, decode_workspace_floats, decode_attention), against the CPU kernel and
// a float64 reference. Cache rows the key list does not name hold NaN, so reading one shows.
// Built and driven by tests/test_cuda_emulation_kernels.py; usage: harness_decode quick|full.
#include "decode.emu.cpp"  // csrc/cuda/decode.cu after translate.py

#include "cpu/decode.h"
#include "harness_util.h"

using namespace emu_test;
using vilg::DecodeParams;

struct DecodeCase {
  int B = 2, H = 2, D = 64, S = 100;
  int pos = 99;        // query position; keys are those the pattern allows at pos
  int window = 0;      // 0: causal (all keys <= pos), else the last `window` keys and the text
  int text_start = 0, text_len = 0;
  bool padded = false;  // per-sample text lengths (sample 0 all padded when text_len > 0)
  bool csr = false;     // key_ptr / pos in memory (the CUDA-graph path)
  int splits = 0;       // 0: what decode_splits picks
  bool shared_kv = false;  // every head reads head 0's cache (zero head stride: multi-query)
  bool strided = false;    // q / out / caches with padded rows and a [B, S, H, D] cache
  bool wild_lens = false;  // text lengths outside [0, text_len] (the kernels clamp them)
};

static std::vector<int32_t> keys_at(const DecodeCase& c, int pos) {
  std::vector<int32_t> keys;
  for (int j = 0; j <= pos && j < c.S; ++j) {
    const bool text = j >= c.text_start && j < c.text_start + c.text_len;
    if (c.window == 0 || text || j > pos - c.window) keys.push_back(j);
  }
  return keys;
}

template <typename E>
static void run(const std::string& tag, const DecodeCase& c, uint32_t seed) {
  Report rep;
  char nm[200];
  std::snprintf(nm, sizeof nm, "decode %s %s D=%d B=%d H=%d S=%d pos=%d", dtype_str<E>(),
                tag.c_str(), c.D, c.B, c.H, c.S, c.pos);
  rep.name = nm;
  std::mt19937 rng(seed);
  const int B = c.B, H = c.H, D = c.D, S = c.S, Hk = c.shared_kv ? 1 : H;
  const int dpad = c.strided ? 8 : 0;  // row padding (keeps 16-byte rows for every dtype)
  // caches: [B, Hk, S, D] or, strided, [B, S, Hk, D + pad]
  const int64_t row = D + dpad;
  int64_t ks[3];
  if (c.strided) { ks[2] = Hk * row; ks[1] = row; ks[0] = S * ks[2]; }
  else { ks[2] = row; ks[1] = S * row; ks[0] = Hk * ks[1]; }
  const size_t csize = size_t(B) * ks[0];
  std::vector<E> k(csize, poison<E>()), v(csize, poison<E>());
  std::vector<E> q(size_t(B) * H * row, poison<E>());
  std::vector<int32_t> lens;
  if (c.padded) {
    for (int b = 0; b < B; ++b) lens.push_back(b == 0 ? 0 : (c.text_len * b) / B + (b & 1));
    if (c.wild_lens)
      for (int b = 1; b < B; ++b) lens[size_t(b)] = b % 2 ? c.text_len + 4 : -3;
  }
  // per-position key lists (CSR) for the csr mode, the list at pos otherwise
  std::vector<int32_t> key_ptr{0}, keys;
  if (c.csr) {
    for (int i = 0; i < S; ++i) {
      const auto ki = keys_at(c, i);
      keys.insert(keys.end(), ki.begin(), ki.end());
      key_ptr.push_back(int32_t(keys.size()));
    }
  } else {
    keys = keys_at(c, c.pos);
  }
  const std::vector<int32_t> listed = (c.pos >= 0 && c.pos < S) ? keys_at(c, c.pos)
                                                                : std::vector<int32_t>{};
  std::normal_distribution<float> nd(0.f, 1.f);
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < Hk; ++h)
      for (int j : listed)
        for (int d = 0; d < D; ++d) {
          k[b * ks[0] + h * ks[1] + j * ks[2] + d] = vilg::from_float<E>(nd(rng));
          v[b * ks[0] + h * ks[1] + j * ks[2] + d] = vilg::from_float<E>(nd(rng));
        }
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < H; ++h)
      for (int d = 0; d < D; ++d) q[(size_t(b) * H + h) * row + d] = vilg::from_float<E>(nd(rng));

  DecodeParams p;
  p.batch = B; p.heads = H; p.head_dim = D; p.cache_len = S;
  p.scale = 1.5f / std::sqrt(float(D));
  p.q = q.data(); p.q_s[0] = int64_t(H) * row; p.q_s[1] = row;
  p.k = k.data(); p.v = v.data();
  for (int i = 0; i < 3; ++i) p.k_s[i] = p.v_s[i] = ks[i];
  if (c.shared_kv) p.k_s[1] = p.v_s[1] = 0;
  p.keys = keys.data();
  p.num_keys = int(keys.size());
  int64_t pos64 = c.pos;
  if (c.csr) { p.key_ptr = key_ptr.data(); p.pos = &pos64; p.key_rows = S; }
  p.text_start = c.text_start; p.text_len = c.text_len;
  p.text_lens = lens.empty() ? nullptr : lens.data();
  p.o_s[0] = int64_t(H) * row; p.o_s[1] = row;

  // float64 reference
  std::vector<double> ref(size_t(B) * H * D, 0.0);
  for (int b = 0; b < B; ++b) {
    const int tv = lens.empty() ? c.text_len : std::min(std::max(lens[b], 0), c.text_len);
    for (int h = 0; h < H; ++h) {
      const int hk = c.shared_kv ? 0 : h;
      std::vector<double> s;
      std::vector<int> js;
      for (int j : listed) {
        if (j >= c.text_start + tv && j < c.text_start + c.text_len) continue;
        double acc = 0;
        for (int d = 0; d < D; ++d)
          acc += double(vilg::to_float(q[(size_t(b) * H + h) * row + d])) *
                 vilg::to_float(k[b * ks[0] + hk * ks[1] + j * ks[2] + d]);
        s.push_back(acc * p.scale);
        js.push_back(j);
      }
      if (s.empty()) continue;
      double mx = -INFINITY, sum = 0;
      for (double x : s) mx = std::max(mx, x);
      for (double& x : s) sum += (x = std::exp(x - mx));
      for (size_t i = 0; i < s.size(); ++i)
        for (int d = 0; d < D; ++d)
          ref[(size_t(b) * H + h) * D + d] +=
              s[i] / sum * vilg::to_float(v[b * ks[0] + hk * ks[1] + js[i] * ks[2] + d]);
    }
  }

  std::vector<E> out_cpu(q.size(), poison<E>()), out_gpu(q.size(), poison<E>());
  DecodeParams pc = p;
  pc.o = out_cpu.data();
  vilg::cpu::decode_attention(pc, dtype_of<E>());

  DecodeParams pg = p;
  pg.o = out_gpu.data();
  pg.splits = c.splits ? c.splits : vilg::cuda::decode_splits(B, H, int(listed.size()), 0);
  std::vector<float> ws(size_t(vilg::cuda::decode_workspace_floats(B, H, D, pg.splits)),
                        std::nanf(""));
  pg.ws = ws.empty() ? nullptr : ws.data();
  vilg::cuda::decode_attention(pg, dtype_of<E>(), 0, 0);

  double e64 = 0, ecpu = 0, cpu64 = 0;
  long unwritten = 0, gaps = 0;
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < H; ++h)
      for (int d = 0; d < row; ++d) {
        const size_t i = (size_t(b) * H + h) * row + d;
        if (d >= D) { gaps += !is_poison(out_gpu[i]); continue; }
        const double g = vilg::to_float(out_gpu[i]), x = vilg::to_float(out_cpu[i]);
        const double r = ref[(size_t(b) * H + h) * D + d];
        if (!std::isfinite(g)) { ++unwritten; continue; }
        e64 = std::max(e64, std::fabs(g - r));
        ecpu = std::max(ecpu, std::fabs(g - x));
        cpu64 = std::max(cpu64, std::fabs(x - r));
      }
  const double tol = 4 * eps<E>() + 2e-6;
  rep.require(unwritten == 0, "%ld outputs NaN or unwritten", unwritten);
  rep.require(gaps == 0, "%ld row-padding elements written", gaps);
  rep.require(e64 <= tol, "vs float64 %.2e > %.1e", e64, tol);
  rep.require(ecpu <= 2 * tol, "vs cpu %.2e", ecpu);
  rep.require(cpu64 <= tol, "cpu vs float64 %.2e", cpu64);
  char buf[120];
  std::snprintf(buf, sizeof buf, " splits=%d | f64 %.1e cpu %.1e", pg.splits, e64, ecpu);
  rep.name += buf;
}

template <typename E>
static void family(bool full, uint32_t& seed) {
  const int dims[] = {32, 64, 128, 256};
  for (int D : dims) {
    if (!full && D != (std::is_same_v<E, float> ? 32 : std::is_same_v<E, f16_t> ? 256 : 128))
      continue;
    DecodeCase c;
    c.D = D;
    c.S = 150; c.text_start = 0; c.text_len = 21; c.padded = true;
    c.pos = 149;  // last position, real split count
    run<E>("last+pad", c, seed++);
    c.pos = 0;  // first position: one key
    c.padded = false;
    run<E>("first", c, seed++);
    if (!full) continue;
    for (int n : {63, 64, 65, 127, 128, 129}) {  // tile edges of the key loop / splits
      DecodeCase e = c;
      e.pos = n - 1;
      e.text_len = 0;
      e.splits = 1;
      run<E>("edge", e, seed++);
      e.splits = 0;
      run<E>("edge+split", e, seed++);
    }
  }
}

int main(int argc, char** argv) {
  const bool full = argc > 1 && std::string(argv[1]) == "full";
  uint32_t seed = 1;
  family<f16_t>(full, seed);
  family<bf16_t>(full, seed);
  family<float>(full, seed);
  // windowed key lists with a text prefix, the CSR path, uneven and empty splits, multi-query
  // caches, strided tensors, padding that covers the whole text, an out-of-range position
  DecodeCase w;
  w.D = 64; w.S = 300; w.pos = 290; w.window = 70; w.text_start = 0; w.text_len = 37;
  w.padded = true; w.csr = true;
  run<f16_t>("window+csr+pad", w, seed++);
  DecodeCase m = w;
  m.csr = false; m.shared_kv = true; m.H = 4; m.strided = true; m.splits = 3;
  run<bf16_t>("mqa+strided+3splits", m, seed++);
  // sample 0: every key of the first three splits is padded text; samples 1, 2: text lengths
  // above and below the segment, which the kernels clamp
  DecodeCase f;
  f.B = 3; f.D = 32; f.S = 200; f.pos = 199; f.window = 3; f.text_len = 37; f.padded = true;
  f.wild_lens = true; f.splits = 4;
  run<float>("padded-splits+wild-lens", f, seed++);
  DecodeCase g = f;  // keys before the text segment: a negative length must not mask them
  g.S = 60; g.pos = 59; g.window = 0; g.text_start = 4; g.text_len = 20; g.splits = 0;
  run<bf16_t>("wild-lens+prefix", g, seed++);
  DecodeCase e;
  e.D = 128; e.S = 40; e.pos = 4; e.splits = 8; e.B = 1; e.H = 3;  // more splits than keys
  run<float>("empty-splits", e, seed++);
  if (full) {
    DecodeCase o = w;
    o.pos = 300;  // outside the CSR rows: attends nothing, output 0
    run<f16_t>("pos-out-of-range", o, seed++);
    DecodeCase t = w;
    t.pos = 20; t.window = 4; t.text_start = 3; t.text_len = 30;  // all keys are text
    run<bf16_t>("text-only+pad", t, seed++);
    DecodeCase big = w;
    big.B = 1; big.H = 1; big.S = 2100; big.pos = 2099; big.window = 0;  // 32 splits
    run<f16_t>("long", big, seed++);
    DecodeCase gq = m;
    gq.D = 256; gq.splits = 0; gq.strided = false;
    run<f16_t>("mqa-256", gq, seed++);
  }
  // a head_dim the launcher does not support must raise, not launch
  try {
    DecodeParams p;
    p.batch = 1; p.heads = 1; p.head_dim = 48;
    vilg::cuda::decode_attention(p, DType::F16, 0, 0);
    Report r; r.name = "decode head_dim 48 rejected"; r.require(false, "no exception");
  } catch (const std::invalid_argument&) {
    Report r; r.name = "decode head_dim 48 rejected";
  }
  return finish();
}
