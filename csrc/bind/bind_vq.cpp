// Python entry points of the VQ family: TensorRefs -> VqParams, checked, dispatched.
#include <limits>

#include "../cpu/vq.h"
#include "registry.h"

#ifdef VILG_WITH_CUDA
#include "../cuda/vq.h"
#endif

namespace vilg {
namespace {

bool is_float(DType t) { return t == DType::F32 || t == DType::F16 || t == DType::BF16; }

void check_rows(const TensorRef& t, const char* name) {
  check(is_float(t.dtype), std::string(name) + " must be float32, float16 or bfloat16");
  check(t.dim() == 2, std::string(name) + " must be 2-D");
  check(t.size(1) <= 1 || t.stride(1) == 1,
        std::string(name) + " must have a contiguous last dimension");
  check(t.ptr != 0 || t.numel() == 0, std::string(name) + " is a null buffer");
}

void check_codebook(const TensorRef& cb, const TensorRef& other) {
  check_rows(cb, "codebook");
  check(cb.device == other.device, "codebook is on another device");
  check(cb.size(0) >= 1 && cb.size(0) <= std::numeric_limits<int32_t>::max(),
        "codebook must have 1 .. 2^31-1 codes");
  check(cb.size(1) >= 1 && cb.size(1) <= (1 << 20), "code dimension must be in 1 .. 2^20");
}

void check_indices(const TensorRef& idx, int64_t n, int device) {
  check(idx.dtype == DType::I64 || idx.dtype == DType::I32, "indices must be int64 or int32");
  check(idx.dim() == 1 && idx.size(0) == n && idx.contiguous(),
        "indices must be a contiguous 1-D tensor of the right length");
  check(idx.device == device, "indices are on another device");
}

int64_t* err_buffer(const py::object& err, int device) {
  if (device < 0) return nullptr;
  const TensorRef* e = opt_ref(err);
  check(e != nullptr, "CUDA VQ ops need an error buffer");
  check_ref(*e, "err", DType::I64, 1);
  check(e->size(0) == 2 && e->contiguous() && e->device == device,
        "err must be a contiguous int64 [2] tensor on the device");
  return e->data<int64_t>();
}

int64_t workspace_floats(int64_t n, int k, int d, int device) {
  if (device >= 0) {
#ifdef VILG_WITH_CUDA
    return cuda::vq_workspace_floats(k, d);
#else
    no_cuda("vq_quantize");
#endif
  }
  return cpu::vq_workspace_floats(k, d);
}

void quantize(const TensorRef& x, const TensorRef& cb, const TensorRef& out, const TensorRef& ws,
              bool fast_fp32, uintptr_t stream) {
  check_rows(x, "x");
  check_codebook(cb, x);
  check(cb.dtype == x.dtype, "codebook dtype differs from x");
  check(cb.size(1) == x.size(1), "codebook and x differ in the code dimension");
  check_ref(out, "out", DType::I64, 1);
  check(out.size(0) == x.size(0) && out.contiguous() && out.device == x.device,
        "out must be a contiguous int64 [n] tensor on x's device");
  check_ref(ws, "workspace", DType::F32, 1);
  check(ws.contiguous() && ws.device == x.device &&
            ws.numel() >= workspace_floats(x.size(0), int(cb.size(0)), int(cb.size(1)), x.device),
        "workspace too small or on another device");
  VqParams p;
  p.n = x.size(0);
  p.k = int(cb.size(0));
  p.d = int(cb.size(1));
  p.x = (const void*)x.ptr;
  p.x_stride = x.stride(0);
  p.codebook = (const void*)cb.ptr;
  p.c_stride = cb.stride(0);
  p.out = out.data<int64_t>();
  p.ws = ws.data<float>();
  if (x.is_cuda()) {
#ifdef VILG_WITH_CUDA
    cuda::vq_quantize(p, x.dtype, fast_fp32, x.device, stream);
#else
    no_cuda("vq_quantize");
#endif
  } else {
    py::gil_scoped_release nogil;
    cpu::vq_quantize(p, x.dtype);
  }
}

void embed(const TensorRef& idx, const TensorRef& cb, const TensorRef& out,
           const py::object& err, uintptr_t stream) {
  check_codebook(cb, idx);
  const int64_t n = idx.dim() == 1 ? idx.size(0) : -1;
  check_indices(idx, n, cb.device);
  check(out.dtype == cb.dtype && out.dim() == 2 && out.size(0) == n &&
            out.size(1) == cb.size(1) && out.contiguous() && out.device == cb.device,
        "out must be a contiguous [n, d] tensor of the codebook's dtype and device");
  VqEmbedParams p;
  p.n = n;
  p.k = int(cb.size(0));
  p.d = int(cb.size(1));
  p.idx = (const void*)idx.ptr;
  p.idx64 = idx.dtype == DType::I64;
  p.codebook = (const void*)cb.ptr;
  p.c_stride = cb.stride(0);
  p.out = (void*)out.ptr;
  p.err = err_buffer(err, cb.device);
  if (cb.is_cuda()) {
#ifdef VILG_WITH_CUDA
    cuda::vq_embed(p, cb.dtype, cb.device, stream);
#else
    no_cuda("vq_embed");
#endif
  } else {
    py::gil_scoped_release nogil;
    cpu::vq_embed(p, cb.dtype);
  }
}

void code_stats(const TensorRef& idx, const TensorRef& x, const TensorRef& counts,
                const TensorRef& sums, const py::object& ws, const py::object& err,
                uintptr_t stream) {
  check_rows(x, "x");
  check(x.size(0) <= std::numeric_limits<int32_t>::max(), "at most 2^31-1 rows");
  check_indices(idx, x.size(0), x.device);
  check_ref(counts, "counts", DType::F32, 1);
  check_ref(sums, "sums", DType::F32, 2);
  const int64_t K = counts.size(0);
  check(K >= 1 && K <= std::numeric_limits<int32_t>::max(), "num_codes must be >= 1");
  check(counts.contiguous() && counts.device == x.device, "counts must be contiguous on x's device");
  check(sums.contiguous() && sums.size(0) == K && sums.size(1) == x.size(1) &&
            sums.device == x.device,
        "sums must be a contiguous float32 [num_codes, d] tensor on x's device");
  VqStatsParams p;
  p.n = x.size(0);
  p.k = int(K);
  p.d = int(x.size(1));
  p.idx = (const void*)idx.ptr;
  p.idx64 = idx.dtype == DType::I64;
  p.x = (const void*)x.ptr;
  p.x_stride = x.stride(0);
  p.counts = counts.data<float>();
  p.sums = sums.data<float>();
  p.err = err_buffer(err, x.device);
  if (x.is_cuda()) {
#ifdef VILG_WITH_CUDA
    cuda::vq_code_stats(p, x.dtype, x.device, stream);
#else
    no_cuda("vq_code_stats");
#endif
  } else {
    const TensorRef* w = opt_ref(ws);
    check(w != nullptr, "vq_code_stats needs an int32 workspace on the CPU");
    check_ref(*w, "workspace", DType::I32, 1);
    check(w->contiguous() && w->device < 0 && w->numel() >= p.n + K + 1,
          "workspace must be a contiguous int32 [n + num_codes + 1] host tensor");
    p.ws = w->data<int32_t>();
    py::gil_scoped_release nogil;
    cpu::vq_code_stats(p, x.dtype);
  }
}

void bind(py::module_& m) {
  m.def("vq_workspace_floats", &workspace_floats, "Float32 elements of the quantize workspace");
  m.def("vq_quantize", &quantize, "Nearest code (squared L2, ties to the lowest index)");
  m.def("vq_embed", &embed, "Gather codebook rows");
  m.def("vq_code_stats", &code_stats, "Per-code counts and sums of x");
}

const RegisterFamily reg(bind, {"vq_quantize", "vq_embed", "vq_code_stats"});

}  // namespace
}  // namespace vilg
