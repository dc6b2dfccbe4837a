// csrc/cuda/sampling.cu (the radix-select sampler, staged and unstaged) on the host emulation,
// through its real entry point (sample: dtype dispatch, the shared-memory budget and opt-in),
// against the CPU sampler (the same token for the same (seed, offset)), a reference of the
// algorithm of common/sampling_params.h written with sorts instead of radix selects, and the
// float64 distribution (every drawn token is in the float64 top-k / top-p set; frequencies over
// many rows match the float64 probabilities). Usage: harness_sampling quick|full.
#include "sampling.emu.cpp"  // csrc/cuda/sampling.cu after translate.py

#include <algorithm>
#include <numeric>

#include "cpu/sampling.h"
#include "harness_util.h"

using namespace emu_test;
using vilg::SampleParams;

struct SampleCase {
  int batch = 3;
  int64_t vocab = 1000;  // not a multiple of the 512-thread block
  int64_t top_k = 0;
  double top_p = 1.0;
  float temperature = 1.f;  // 0: greedy
  float cfg = 0.f;          // 0: no unconditional logits
  int ties = 0;  // 1: many equal logits, 2: every logit equal, 3: three values
  double neg_inf = 0;       // fraction of -inf entries
  bool same_rows = false;   // every row the same logits (frequency test)
  int optin_kib = 227;      // the emulated device's shared-memory opt-in
};

// The algorithm of sampling_params.h with sorts (the spec, not the kernel's radix select).
static int64_t spec_token(const std::vector<float>& z, const SampleCase& c, uint64_t seed,
                          uint64_t offset, uint64_t row) {
  const int64_t V = int64_t(z.size());
  int64_t arg = 0;
  for (int64_t i = 1; i < V; ++i)
    if (z[size_t(i)] > z[size_t(arg)]) arg = i;
  if (c.temperature <= 0) return arg;
  const float m = z[size_t(arg)];
  std::vector<float> sorted(z);
  std::sort(sorted.begin(), sorted.end(), std::greater<float>());
  float tau = -INFINITY;
  if (c.top_k > 0 && c.top_k < V) tau = sorted[size_t(c.top_k - 1)];
  auto weight = [&](float v) { return v >= tau ? vilg::sampler_weight(v, m) : 0ull; };
  uint64_t W = 0;
  for (float v : z) W += weight(v);
  if (c.top_p < 1.0) {
    const uint64_t need = vilg::top_p_need(c.top_p, W);
    uint64_t cum = 0;
    for (size_t i = 0; i < sorted.size(); ++i) {
      cum += weight(sorted[i]);
      const bool last_of_value = i + 1 == sorted.size() || sorted[i + 1] != sorted[i];
      if (last_of_value && cum >= need) {
        tau = std::max(tau, sorted[i]);
        break;
      }
    }
    W = 0;
    for (float v : z) W += weight(v);
  }
  const uint64_t t = vilg::scale_draw(vilg::sample_bits53(seed, offset, row), W);
  uint64_t cum = 0;
  for (int64_t i = 0; i < V; ++i) {
    cum += weight(z[size_t(i)]);
    if (cum > t) return i;
  }
  return -1;
}

template <typename E>
static void run(const std::string& tag, const SampleCase& c, uint32_t seed) {
  Report rep;
  char nm[200];
  std::snprintf(nm, sizeof nm, "sample %s %s V=%ld k=%ld p=%.2f T=%.1f cfg=%.1f", dtype_str<E>(),
                tag.c_str(), long(c.vocab), long(c.top_k), c.top_p, c.temperature, c.cfg);
  rep.name = nm;
  std::mt19937 rng(seed);
  const int64_t V = c.vocab, ls = V + 3;  // padded rows
  std::vector<E> lg(size_t(c.batch * ls), poison<E>()), un;
  std::normal_distribution<float> nd(0.f, 2.f);
  std::uniform_real_distribution<double> ud(0, 1);
  for (int b = 0; b < c.batch; ++b)
    for (int64_t i = 0; i < V; ++i) {
      float v = nd(rng);
      if (c.ties == 1) v = std::round(v);  // a few distinct values, many repeats
      if (c.ties == 2) v = 0.5f;
      // three values; the middle one's key bytes are as large as they go below 1.0's top byte,
      // so a radix select that steps past an exact count keeps it
      if (c.ties == 3) v = (i % 3 == 0) ? 1.f : (i % 3 == 1) ? 0.49999997f : -1.f;
      if (ud(rng) < c.neg_inf) v = -INFINITY;
      if (c.same_rows && b > 0) lg[size_t(b * ls + i)] = lg[size_t(i)];
      else lg[size_t(b * ls + i)] = vilg::from_float<E>(v);
    }
  if (c.cfg != 0.f) {
    un.assign(lg.size(), poison<E>());
    for (int b = 0; b < c.batch; ++b)
      for (int64_t i = 0; i < V; ++i)
        un[size_t(b * ls + i)] = c.same_rows && b > 0 ? un[size_t(i)] : vilg::from_float<E>(nd(rng));
  }
  int64_t top_k = c.top_k;
  if (top_k < 0) {  // -1: the k that ends exactly at a value (every row the same logits)
    top_k = 0;
    for (int64_t i = 0; i < V; ++i) top_k += vilg::to_float(lg[size_t(i)]) >= 1.f;
  }
  SampleCase ck = c;
  ck.top_k = top_k;
  SampleParams p;
  p.batch = c.batch; p.vocab = V; p.logits = lg.data(); p.l_stride = ls;
  p.uncond = un.empty() ? nullptr : un.data(); p.u_stride = ls;
  p.cfg = c.cfg == 0.f ? 1.f : c.cfg;
  p.greedy = c.temperature <= 0;
  p.inv_t = p.greedy ? 1.f : 1.f / c.temperature;
  p.top_k = top_k; p.top_p = c.top_p; p.seed = 0x1234567890abull + seed;
  vilg::cuda::emu::device().smem_optin = c.optin_kib * 1024;

  long differ_cpu = 0, differ_spec = 0, outside64 = 0, unwritten = 0;
  std::vector<long> freq(size_t(V), 0);
  std::vector<double> prob64(size_t(V), 0);
  std::vector<char> kept64;
  for (uint64_t offset : {uint64_t(0), uint64_t(7), uint64_t(1) << 40}) {
    p.offset = offset;
    std::vector<int64_t> out_cpu(size_t(c.batch), -5), out_gpu(size_t(c.batch), -5);
    SampleParams pc = p;
    pc.out = out_cpu.data();
    vilg::cpu::sample(pc, dtype_of<E>());
    SampleParams pg = p;
    pg.out = out_gpu.data();
    vilg::cuda::sample(pg, dtype_of<E>(), 0, 0);
    for (int b = 0; b < c.batch; ++b) {
      std::vector<float> z(static_cast<size_t>(V));
      std::vector<double> z64(static_cast<size_t>(V));
      for (int64_t i = 0; i < V; ++i) {
        const float l = vilg::to_float(lg[size_t(b * ls + i)]);
        const float u = un.empty() ? 0.f : vilg::to_float(un[size_t(b * ls + i)]);
        z[size_t(i)] = vilg::sampler_logit(l, un.empty() ? nullptr : &u, p.cfg, p.inv_t);
        double v = un.empty() ? l : double(u) + double(p.cfg) * (double(l) - u);
        if (std::isnan(v)) v = -INFINITY;
        z64[size_t(i)] = p.greedy ? v : v / c.temperature;
      }
      const int64_t g = out_gpu[size_t(b)];
      if (g < 0 || g >= V) { ++unwritten; continue; }
      differ_cpu += g != out_cpu[size_t(b)];
      differ_spec += g != spec_token(z, ck, p.seed, offset, uint64_t(b));
      // the float64 kept set (top-k, then top-p over the float64 probabilities)
      std::vector<int64_t> order(static_cast<size_t>(V));
      std::iota(order.begin(), order.end(), 0);
      std::stable_sort(order.begin(), order.end(),
                       [&](int64_t a, int64_t b2) { return z64[size_t(a)] > z64[size_t(b2)]; });
      const double mx = z64[size_t(order[0])];
      std::vector<char> keep(size_t(V), 0);
      if (p.greedy) {
        keep[size_t(order[0])] = 1;
      } else {
        int64_t nk = (top_k > 0 && top_k < V) ? top_k : V;
        while (nk < V && z64[size_t(order[size_t(nk)])] == z64[size_t(order[size_t(nk - 1)])]) ++nk;
        double tot = 0;
        std::vector<double> w(size_t(V), 0);
        for (int64_t r = 0; r < nk; ++r) {
          const int64_t i = order[size_t(r)];
          w[size_t(i)] = mx == -INFINITY ? 1.0 : std::exp(z64[size_t(i)] - mx);
          tot += w[size_t(i)];
        }
        double cum = 0;
        for (int64_t r = 0; r < nk; ++r) {
          const int64_t i = order[size_t(r)];
          keep[size_t(i)] = 1;
          cum += w[size_t(i)];
          const bool last = r + 1 == nk || z64[size_t(order[size_t(r + 1)])] != z64[size_t(i)];
          if (last && cum >= c.top_p * tot * (1 - 1e-6)) break;
        }
        double kt = 0;
        for (int64_t i = 0; i < V; ++i) kt += keep[size_t(i)] ? w[size_t(i)] : 0;
        if (b == 0 && offset == 0)
          for (int64_t i = 0; i < V; ++i) prob64[size_t(i)] = keep[size_t(i)] ? w[size_t(i)] / kt : 0;
      }
      outside64 += !keep[size_t(g)];
      if (c.same_rows) ++freq[size_t(g)];
    }
  }
  rep.require(unwritten == 0, "%ld rows without a token", unwritten);
  rep.require(differ_cpu == 0, "%ld tokens differ from the cpu sampler", differ_cpu);
  rep.require(differ_spec == 0, "%ld tokens differ from the sorted reference", differ_spec);
  rep.require(outside64 == 0, "%ld tokens outside the float64 top-k / top-p set", outside64);
  if (c.same_rows && !p.greedy) {  // 3 * batch draws of one distribution
    const double n = 3.0 * c.batch;
    double worst = 0;
    for (int64_t i = 0; i < V; ++i) {
      const double pr = prob64[size_t(i)], f = freq[size_t(i)] / n;
      worst = std::max(worst, std::fabs(f - pr) / (5 * std::sqrt(pr * (1 - pr) / n) + 2 / n));
    }
    rep.require(worst <= 1, "frequencies off the float64 probabilities (%.2f)", worst);
  }
}

int main(int argc, char** argv) {
  const bool full = argc > 1 && std::string(argv[1]) == "full";
  uint32_t s = 1;
  auto C = [](auto f) { SampleCase c; f(c); return c; };
  run<float>("top-k+top-p", C([](SampleCase& c) { c.top_k = 50; c.top_p = 0.9; }), s++);
  run<bf16_t>("cfg ties -inf", C([](SampleCase& c) { c.cfg = 3; c.ties = 1; c.neg_inf = 0.3; c.top_p = 0.8; }), s++);
  run<f16_t>("greedy equal", C([](SampleCase& c) { c.temperature = 0; c.ties = 2; }), s++);
  // just above the staging budget: staging would need more than the device's shared memory
  run<float>("budget edge", C([](SampleCase& c) { c.vocab = 3900; c.optin_kib = 16; c.batch = 1; }), s++);
  run<float>("top-k at a value edge", C([](SampleCase& c) { c.top_k = -1; c.ties = 3; c.same_rows = true; c.batch = 8; }), s++);
  run<float>("unstaged", C([](SampleCase& c) { c.vocab = 5000; c.optin_kib = 16; c.top_k = 40; c.top_p = 0.5; c.batch = 2; }), s++);
  if (full) {
    run<f16_t>("staged opt-in", C([](SampleCase& c) { c.vocab = 13001; c.top_k = 1000; c.batch = 2; }), s++);
    run<bf16_t>("plain", C([](SampleCase& c) { c.vocab = 511; }), s++);
    run<float>("top-k=1", C([](SampleCase& c) { c.top_k = 1; }), s++);
    run<float>("top-k=V-1", C([](SampleCase& c) { c.top_k = 999; c.temperature = 0.7f; }), s++);
    run<f16_t>("top-p small", C([](SampleCase& c) { c.top_p = 0.05; c.cfg = 1.5; }), s++);
    run<float>("all equal", C([](SampleCase& c) { c.ties = 2; c.top_k = 10; c.top_p = 0.5; }), s++);
    run<float>("mostly -inf", C([](SampleCase& c) { c.neg_inf = 0.995; c.top_p = 0.7; }), s++);
    run<bf16_t>("all -inf", C([](SampleCase& c) { c.neg_inf = 1.0; }), s++);
    run<float>("greedy -inf cfg", C([](SampleCase& c) { c.temperature = 0; c.neg_inf = 0.5; c.cfg = 2; c.ties = 1; }), s++);
    run<float>("greedy unstaged", C([](SampleCase& c) { c.temperature = 0; c.vocab = 3000; c.optin_kib = 8; }), s++);
    run<f16_t>("frequencies", C([](SampleCase& c) { c.vocab = 40; c.same_rows = true; c.batch = 64; c.top_k = 20; c.top_p = 0.95; }), s++);
    run<float>("frequencies T", C([](SampleCase& c) { c.vocab = 700; c.same_rows = true; c.batch = 48; c.temperature = 2.5f; c.ties = 1; }), s++);
  } else {
    run<f16_t>("frequencies", C([](SampleCase& c) { c.vocab = 40; c.same_rows = true; c.batch = 24; c.top_k = 20; c.top_p = 0.95; }), s++);
  }
  return finish();
}
