// The sampler on the CPU, one row per task, following the algorithm in sampling.h with the
// bit-exact helpers of ../common/philox.h (the CUDA kernel finds the same thresholds by radix
// select; here nth_element and a sort give the same values).
#include "sampling.h"

#include <algorithm>
#include <functional>
#include <cmath>
#include <utility>
#include <vector>

#include "../common/macros.h"
#include "../common/philox.h"
#include "../common/tensor_ref.h"

namespace vilg::cpu {
namespace {

template <typename T>
VILG_CPU_CLONES void row_logits(const SampleParams& p, int b, float* z) {
  const T* c = (const T*)p.logits + b * p.l_stride;
  const T* u = p.uncond ? (const T*)p.uncond + b * p.u_stride : nullptr;
  for (int64_t i = 0; i < p.vocab; ++i) {
    const float uf = u ? to_float(u[i]) : 0.f;
    z[i] = sampler_logit(to_float(c[i]), u ? &uf : nullptr, p.cfg, p.inv_t);
  }
}

// Clones: the shared helpers inline here, so the AVX2 clone gets hardware fma (the portable
// clone calls libm's fma, which is correct but slow).
VILG_CPU_CLONES int64_t sample_row(const SampleParams& p, int b, const float* z, uint64_t* w,
                                   std::vector<float>& zs,
                                   std::vector<std::pair<float, uint64_t>>& tmp) {
  const int64_t V = p.vocab;
  int64_t best = 0;
  for (int64_t i = 1; i < V; ++i)
    if (z[i] > z[best]) best = i;  // strict: the lowest index among equal maxima
  if (p.greedy) return best;
  const float m = z[best];
  float tau = -INFINITY;
  if (p.top_k > 0 && p.top_k < V) {
    zs.assign(z, z + V);
    std::nth_element(zs.begin(), zs.begin() + (p.top_k - 1), zs.end(), std::greater<float>());
    tau = zs[p.top_k - 1];
  }
  uint64_t total = 0;
  for (int64_t i = 0; i < V; ++i) {
    w[i] = z[i] >= tau ? sampler_weight(z[i], m) : 0;
    total += w[i];
  }
  if (p.top_p < 1.0) {
    const uint64_t need = top_p_need(p.top_p, total);
    tmp.clear();
    for (int64_t i = 0; i < V; ++i)
      if (w[i] > 0) tmp.emplace_back(z[i], w[i]);  // zero weights cannot move the cut
    std::sort(tmp.begin(), tmp.end(),
              [](const auto& a, const auto& c) { return a.first > c.first; });
    uint64_t cum = 0;
    for (size_t e = 0; e < tmp.size();) {
      const float v = tmp[e].first;
      for (; e < tmp.size() && tmp[e].first == v; ++e) cum += tmp[e].second;
      if (cum >= need) {
        tau = v;
        total = cum;
        break;
      }
    }
  }
  const uint64_t target = scale_draw(sample_bits53(p.seed, p.offset, uint64_t(b)), total);
  uint64_t cum = 0;
  for (int64_t i = 0; i < V; ++i) {
    if (!(z[i] >= tau)) continue;
    cum += w[i];
    if (cum > target) return i;
  }
  return best;  // unreachable: target < total
}

template <typename T>
void sample_impl(const SampleParams& p) {
  // Small calls stay on the calling thread: waking a team costs more than it saves.
#pragma omp parallel if (p.batch > 1 && int64_t(p.batch) * p.vocab >= (1 << 15))
  {
    std::vector<float> z(p.vocab);
    std::vector<uint64_t> w(p.vocab);
    std::vector<float> zs;
    std::vector<std::pair<float, uint64_t>> tmp;
#pragma omp for schedule(dynamic, 1)
    for (int b = 0; b < p.batch; ++b) {
      row_logits<T>(p, b, z.data());
      p.out[b] = sample_row(p, b, z.data(), w.data(), zs, tmp);
    }
  }
}

}  // namespace

void sample(const SampleParams& p, DType dtype) {
  switch (dtype) {
    case DType::F32: return sample_impl<float>(p);
    case DType::F16: return sample_impl<f16_t>(p);
    case DType::BF16: return sample_impl<bf16_t>(p);
    default: fail("sample: unsupported dtype");
  }
}

}  // namespace vilg::cpu
