// Python entry points of the fused sampler, plus the raw Philox4x32-10 for known-answer tests.
#include <cmath>

#include "../common/philox.h"
#include "../cpu/sampling.h"
#include "registry.h"

#ifdef VILG_WITH_CUDA
#include "../cuda/sampling.h"
#endif

namespace vilg {
namespace {

void sample(const TensorRef& logits, const py::object& uncond_obj, const TensorRef& out,
            float cfg, float temperature, int64_t top_k, double top_p, uint64_t seed,
            uint64_t offset, uintptr_t stream) {
  check(logits.dtype == DType::F32 || logits.dtype == DType::F16 || logits.dtype == DType::BF16,
        "sample supports float32, float16 and bfloat16 logits");
  check(logits.dim() == 2, "logits must be [batch, vocab]");
  const int64_t B = logits.size(0), V = logits.size(1);
  check(V >= 1 && V <= kMaxVocab, "vocab size must be in 1 .. 2^23");
  check(B <= (int64_t(1) << 31) - 1, "too many rows");
  check(V == 1 || logits.stride(1) == 1, "logits must have a contiguous last dimension");
  check(logits.ptr != 0 || logits.numel() == 0, "logits is a null buffer");
  SampleParams p;
  if (const TensorRef* u = opt_ref(uncond_obj)) {
    check(u->dtype == logits.dtype && u->dim() == 2 && u->size(0) == B && u->size(1) == V &&
              (V == 1 || u->stride(1) == 1) && u->device == logits.device,
          "uncond must match logits in dtype, shape, device and have a contiguous last dim");
    p.uncond = (const void*)u->ptr;
    p.u_stride = u->stride(0);
  }
  check_ref(out, "out", DType::I64, 1);
  check(out.size(0) == B && out.contiguous() && out.device == logits.device,
        "out must be a contiguous int64 [batch] tensor on the logits' device");
  check(std::isfinite(cfg), "cfg_scale must be finite");
  check(!std::isnan(temperature), "temperature must not be nan");
  check(top_k >= 0, "top_k must be >= 0");
  check(top_p > 0.0 && top_p <= 1.0, "top_p must be in (0, 1]");
  p.batch = int(B);
  p.vocab = V;
  p.logits = (const void*)logits.ptr;
  p.l_stride = logits.stride(0);
  p.out = out.data<int64_t>();
  p.cfg = cfg;
  p.greedy = !(temperature > 0.f);
  p.inv_t = p.greedy ? 1.f : float(1.0 / double(temperature));
  check(std::isfinite(p.inv_t), "temperature too small (1/temperature overflows)");
  p.top_k = top_k;
  p.top_p = top_p;
  p.seed = seed;
  p.offset = offset;
  if (B == 0) return;
  if (logits.is_cuda()) {
#ifdef VILG_WITH_CUDA
    cuda::sample(p, logits.dtype, logits.device, stream);
#else
    (void)stream;
    no_cuda("sample");
#endif
  } else {
    py::gil_scoped_release nogil;
    cpu::sample(p, logits.dtype);
  }
}

py::tuple philox(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0, uint32_t k1) {
  const Philox4 r = philox4x32_10(Philox4{{c0, c1, c2, c3}}, k0, k1);
  return py::make_tuple(r.v[0], r.v[1], r.v[2], r.v[3]);
}

void bind(py::module_& m) {
  m.def("sample", &sample, "Fused CFG + temperature + top-k + top-p sampler");
  m.def("philox4x32_10", &philox, "Philox4x32-10 of (counter[4], key[2]) (for tests)");
}

const RegisterFamily reg(bind, {"sample"});

}  // namespace
}  // namespace vilg
