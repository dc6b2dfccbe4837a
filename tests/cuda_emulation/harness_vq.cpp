// csrc/cuda/vq.cu (mma and SIMT quantize, code norms, index unpack, embed, code stats) on the
// host emulation, through its real entry points (vq_quantize, vq_embed, vq_code_stats), against
// the CPU kernels and float64 references. Usage: harness_vq quick|full.
#include "vq.emu.cpp"  // csrc/cuda/vq.cu after translate.py

#include <algorithm>

#include "cpu/vq.h"
#include "harness_util.h"

using namespace emu_test;
using vilg::VqEmbedParams;
using vilg::VqParams;
using vilg::VqStatsParams;

struct VqCase {
  int64_t n = 300;
  int k = 300, d = 64;
  int pad = 0;         // extra elements per row (strided x and codebook)
  int offset = 0;      // elements before x's first row (misaligned when odd)
  bool fast = false;   // fast_fp32 (split TF32 on tensor cores)
  bool ties = false;   // duplicated codes, rows equal to a duplicated code
};

template <typename E>
static void quantize(const std::string& tag, const VqCase& c, uint32_t seed) {
  Report rep;
  char nm[200];
  std::snprintf(nm, sizeof nm, "vq quantize %s%s %s n=%ld k=%d d=%d", dtype_str<E>(),
                c.fast ? "/tf32" : "", tag.c_str(), long(c.n), c.k, c.d);
  rep.name = nm;
  std::mt19937 rng(seed);
  const int64_t xs = c.d + c.pad, cs = c.d + c.pad;
  std::vector<E> xb(size_t(c.offset + c.n * xs), poison<E>()), cb(size_t(c.k * cs), poison<E>());
  E* x = xb.data() + c.offset;
  std::normal_distribution<float> nd(0.f, 1.f);
  for (int j = 0; j < c.k; ++j)
    for (int e = 0; e < c.d; ++e) cb[j * cs + e] = vilg::from_float<E>(nd(rng));
  std::vector<int> tie_rows;
  if (c.ties) {  // code j + 129 (another code tile) and j + 1 (same lanes' neighbour) copy j
    for (int j = 0; j + 129 < c.k; j += 17)
      for (int e = 0; e < c.d; ++e) cb[(j + 129) * cs + e] = cb[(j + 1) * cs + e] = cb[j * cs + e];
  }
  for (int64_t i = 0; i < c.n; ++i)
    for (int e = 0; e < c.d; ++e) x[i * xs + e] = vilg::from_float<E>(nd(rng));
  if (c.ties)
    for (int64_t i = 0; i < c.n; i += 3) {
      const int j = int((i / 3 * 17) % std::max(1, c.k - 129)) / 17 * 17;
      for (int e = 0; e < c.d; ++e) x[i * xs + e] = cb[j * cs + e];
      tie_rows.push_back(int(i));
    }

  VqParams p;
  p.n = c.n; p.k = c.k; p.d = c.d; p.x = x; p.x_stride = xs; p.codebook = cb.data();
  p.c_stride = cs;
  std::vector<int64_t> out_cpu(size_t(c.n), -7), out_gpu(size_t(c.n), -7);
  std::vector<float> ws_cpu(size_t(vilg::cpu::vq_workspace_floats(c.k, c.d)));
  std::vector<float> ws_gpu(size_t(vilg::cuda::vq_workspace_floats(c.k, c.d)), std::nanf(""));
  VqParams pc = p;
  pc.out = out_cpu.data(); pc.ws = ws_cpu.data();
  vilg::cpu::vq_quantize(pc, dtype_of<E>());
  VqParams pg = p;
  pg.out = out_gpu.data(); pg.ws = ws_gpu.data();
  vilg::cuda::vq_quantize(pg, dtype_of<E>(), c.fast, 0, 0);

  // float64 distances from the stored values; a row's answer must be within the float32
  // scoring error of the true minimum (exact ties: the lowest index, exactly)
  std::vector<double> cn(size_t(c.k));
  double norm_err = 0;
  for (int j = 0; j < c.k; ++j) {
    double s = 0;
    for (int e = 0; e < c.d; ++e) s += double(vilg::to_float(cb[j * cs + e])) * vilg::to_float(cb[j * cs + e]);
    cn[size_t(j)] = s;
    norm_err = std::max(norm_err, std::fabs(ws_gpu[size_t(j)] - s) / (s + 1e-30));
  }
  long bad = 0, bad_cpu = 0, bad_tie = 0, out_of_range = 0;
  for (int64_t i = 0; i < c.n; ++i) {
    std::vector<double> dist(size_t(c.k));
    double xx = 0;
    for (int e = 0; e < c.d; ++e) xx += double(vilg::to_float(x[i * xs + e])) * vilg::to_float(x[i * xs + e]);
    int best = 0;
    for (int j = 0; j < c.k; ++j) {
      double dot = 0;
      for (int e = 0; e < c.d; ++e) dot += double(vilg::to_float(x[i * xs + e])) * vilg::to_float(cb[j * cs + e]);
      dist[size_t(j)] = cn[size_t(j)] - 2 * dot;
      if (dist[size_t(j)] < dist[size_t(best)]) best = j;
    }
    const int64_t g = out_gpu[size_t(i)];
    if (g < 0 || g >= c.k) { ++out_of_range; continue; }
    const double tol = 3e-6 * (xx + cn[size_t(g)] + cn[size_t(best)]) * std::sqrt(double(c.d));
    if (dist[size_t(g)] - dist[size_t(best)] > tol) ++bad;
    if (g != out_cpu[size_t(i)] &&
        dist[size_t(out_cpu[size_t(i)])] - dist[size_t(best)] <= tol && dist[size_t(g)] - dist[size_t(best)] > tol)
      ++bad_cpu;
    if (std::find(tie_rows.begin(), tie_rows.end(), int(i)) != tie_rows.end() && g != best) ++bad_tie;
  }
  rep.require(out_of_range == 0, "%ld indices out of range (unwritten)", out_of_range);
  rep.require(bad == 0, "%ld rows not nearest", bad);
  rep.require(bad_cpu == 0, "%ld rows worse than the cpu's", bad_cpu);
  rep.require(bad_tie == 0, "%ld exact ties not to the lowest index", bad_tie);
  rep.require(norm_err < 1e-5, "code norms off by %.1e", norm_err);
}

template <typename E>
static void embed_and_stats(const std::string& tag, int64_t n, int k, int d, int pad, bool idx64,
                            uint32_t seed) {
  Report rep;
  char nm[200];
  std::snprintf(nm, sizeof nm, "vq embed+stats %s %s n=%ld k=%d d=%d idx%d", dtype_str<E>(),
                tag.c_str(), long(n), k, d, idx64 ? 64 : 32);
  rep.name = nm;
  std::mt19937 rng(seed);
  const int64_t cs = d + pad;
  std::vector<E> cb(size_t(k * cs), poison<E>()), x(size_t(n * cs), poison<E>());
  std::normal_distribution<float> nd(0.f, 1.f);
  for (int j = 0; j < k; ++j)
    for (int e = 0; e < d; ++e) cb[j * cs + e] = vilg::from_float<E>(nd(rng));
  for (int64_t i = 0; i < n; ++i)
    for (int e = 0; e < d; ++e) x[i * cs + e] = vilg::from_float<E>(nd(rng));
  std::vector<int64_t> idx(static_cast<size_t>(n));
  std::uniform_int_distribution<int> ud(0, k - 1);
  for (auto& v : idx) v = ud(rng);
  std::vector<int32_t> idx32(idx.begin(), idx.end());
  const void* ip = idx64 ? static_cast<const void*>(idx.data()) : idx32.data();

  // valid indices: equal to the CPU gather, bit for bit
  std::vector<E> out_cpu(size_t(n * d)), out_gpu(size_t(n * d) + 8, poison<E>());
  VqEmbedParams ep;
  ep.n = n; ep.k = k; ep.d = d; ep.idx = ip; ep.idx64 = idx64; ep.codebook = cb.data();
  ep.c_stride = cs;
  int64_t err[2] = {0, 0};
  VqEmbedParams ec = ep;
  ec.out = out_cpu.data();
  vilg::cpu::vq_embed(ec, dtype_of<E>());
  VqEmbedParams eg = ep;
  eg.out = out_gpu.data(); eg.err = err;
  vilg::cuda::vq_embed(eg, dtype_of<E>(), 0, 0);
  long diff = 0;
  for (size_t i = 0; i < out_cpu.size(); ++i) diff += std::memcmp(&out_cpu[i], &out_gpu[i], sizeof(E)) != 0;
  long tail = 0;
  for (size_t i = out_cpu.size(); i < out_gpu.size(); ++i) tail += !is_poison(out_gpu[i]);
  rep.require(diff == 0 && tail == 0, "embed: %ld differ from cpu, %ld written past the end", diff, tail);
  rep.require(err[0] == 0, "embed: %ld false bad indices", long(err[0]));

  // out-of-range indices: zero rows, counted, one of them recorded
  std::vector<int64_t> badi = idx;
  badi[0] = -1;
  badi[size_t(n - 1)] = k;
  std::vector<int32_t> badi32(badi.begin(), badi.end());
  eg.idx = idx64 ? static_cast<const void*>(badi.data()) : badi32.data();
  std::fill(out_gpu.begin(), out_gpu.end(), poison<E>());
  vilg::cuda::vq_embed(eg, dtype_of<E>(), 0, 0);
  long nonzero = 0;
  for (int e = 0; e < d; ++e)
    nonzero += vilg::to_float(out_gpu[size_t(e)]) != 0.f ||
               vilg::to_float(out_gpu[size_t((n - 1) * d + e)]) != 0.f;
  rep.require(nonzero == 0, "embed: rows of bad indices not zero");
  rep.require(err[0] == 2 && (err[1] == -1 || err[1] == k), "embed: err = (%ld, %ld)", long(err[0]),
              long(err[1]));

  // code stats vs float64 (float atomics: not bit-reproducible, compare with a tolerance)
  std::vector<float> cnt_cpu(static_cast<size_t>(k)), sum_cpu(size_t(k * d)), cnt(size_t(k), 5.f), sum(size_t(k * d), 5.f);
  std::vector<int32_t> sws(size_t(n + k + 1));
  VqStatsParams sp;
  sp.n = n; sp.k = k; sp.d = d; sp.idx = ip; sp.idx64 = idx64; sp.x = x.data(); sp.x_stride = cs;
  VqStatsParams sc = sp;
  sc.counts = cnt_cpu.data(); sc.sums = sum_cpu.data(); sc.ws = sws.data();
  vilg::cpu::vq_code_stats(sc, dtype_of<E>());
  VqStatsParams sg = sp;
  err[0] = err[1] = 0;
  sg.counts = cnt.data(); sg.sums = sum.data(); sg.err = err;
  vilg::cuda::vq_code_stats(sg, dtype_of<E>(), 0, 0);
  std::vector<double> c64(static_cast<size_t>(k)), s64(size_t(k * d));
  for (int64_t i = 0; i < n; ++i) {
    c64[size_t(idx[size_t(i)])] += 1;
    for (int e = 0; e < d; ++e) s64[size_t(idx[size_t(i)] * d + e)] += vilg::to_float(x[i * cs + e]);
  }
  double ec64 = 0, es64 = 0, escpu = 0;
  for (int j = 0; j < k; ++j) {
    ec64 = std::max(ec64, std::fabs(cnt[size_t(j)] - c64[size_t(j)]) + std::fabs(cnt_cpu[size_t(j)] - c64[size_t(j)]));
    for (int e = 0; e < d; ++e) {
      es64 = std::max(es64, std::fabs(sum[size_t(j * d + e)] - s64[size_t(j * d + e)]));
      escpu = std::max(escpu, double(std::fabs(sum[size_t(j * d + e)] - sum_cpu[size_t(j * d + e)])));
    }
  }
  rep.require(ec64 == 0, "stats: counts off by %.1f", ec64);
  rep.require(es64 < 1e-4 && escpu < 1e-4, "stats: sums off by %.1e (cpu %.1e)", es64, escpu);
  rep.require(err[0] == 0, "stats: %ld false bad indices", long(err[0]));
  sg.idx = eg.idx;
  err[0] = err[1] = 0;
  vilg::cuda::vq_code_stats(sg, dtype_of<E>(), 0, 0);
  double cn = 0;
  for (float v : cnt) cn += v;
  rep.require(err[0] == 2 && cn == double(n - 2), "stats: bad indices not skipped (err %ld, rows %.0f)",
              long(err[0]), cn);
}

int main(int argc, char** argv) {
  const bool full = argc > 1 && std::string(argv[1]) == "full";
  uint32_t s = 1;
  VqCase c;  // K = 300: not a multiple of the 128-code tile; N = 300: nor of the 128-row tile
  quantize<f16_t>("ties", VqCase{300, 300, 64, 0, 0, false, true}, s++);
  quantize<bf16_t>("d=256", VqCase{130, 300, 256, 0, 0, false, false}, s++);
  quantize<float>("simt ties", VqCase{300, 300, 64, 0, 0, false, true}, s++);
  quantize<float>("tf32 n=1", VqCase{1, 300, 64, 0, 0, true, false}, s++);
  quantize<f16_t>("odd d, strided", VqCase{200, 150, 37, 3, 1, false, false}, s++);
  quantize<f16_t>("misaligned x", VqCase{100, 130, 64, 8, 1, false, false}, s++);
  embed_and_stats<f16_t>("aligned", 100, 50, 64, 0, true, s++);
  embed_and_stats<float>("odd d", 70, 20, 37, 2, false, s++);
  if (full) {
    for (int d : {64, 256, 37}) {
      for (bool ties : {false, true}) {
        quantize<f16_t>("full", VqCase{300, 300, d, 0, 0, false, ties}, s++);
        quantize<bf16_t>("full", VqCase{300, 300, d, 0, 0, false, ties}, s++);
        quantize<float>("simt", VqCase{300, 300, d, 0, 0, false, ties}, s++);
        quantize<float>("tf32", VqCase{300, 300, d, 0, 0, true, ties}, s++);
      }
      quantize<float>("simt n=1 strided", VqCase{1, 129, d, 1, 1, false, false}, s++);
      quantize<bf16_t>("n=1 k=1", VqCase{1, 1, d, 0, 0, false, false}, s++);
      quantize<float>("tf32 strided", VqCase{257, 257, d, 4, 4, true, false}, s++);
    }
    quantize<f16_t>("many tiles", VqCase{40, 1100, 64, 0, 0, false, true}, s++);
    for (bool i64 : {false, true}) {
      embed_and_stats<bf16_t>("odd d", 33, 9, 37, 0, i64, s++);
      embed_and_stats<float>("aligned", 300, 40, 256, 0, i64, s++);
      embed_and_stats<f16_t>("strided", 64, 64, 64, 3, i64, s++);
    }
  }
  return finish();
}
