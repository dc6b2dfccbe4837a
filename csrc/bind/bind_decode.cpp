// Python entry point of fused decoding attention: TensorRefs -> DecodeParams, checked,
// dispatched.
#include "../cpu/decode.h"
#include "registry.h"

#ifdef VILG_WITH_CUDA
#include "../cuda/decode.h"
#endif

namespace vilg {
namespace {

int splits_for(int batch, int heads, int num_keys, int device) {
  if (device < 0) return 1;
#ifdef VILG_WITH_CUDA
  return cuda::decode_splits(batch, heads, num_keys, device);
#else
  no_cuda("decode_attention");
#endif
}

int64_t workspace_floats(int batch, int heads, int head_dim, int splits) {
#ifdef VILG_WITH_CUDA
  return cuda::decode_workspace_floats(batch, heads, head_dim, splits);
#else
  return 0;
#endif
}

void decode(const TensorRef& q, const TensorRef& k, const TensorRef& v, const TensorRef& keys,
            const TensorRef& out, const py::object& ws, int splits, const py::object& text_lens,
            int text_start, int text_len, float scale, uintptr_t stream, const py::object& key_ptr,
            const py::object& pos) {
  check(q.dtype == DType::F32 || q.dtype == DType::F16 || q.dtype == DType::BF16,
        "decode_attention supports float32, float16 and bfloat16");
  check(q.dim() == 3, "q must be [batch, heads, head_dim]");
  const int64_t B = q.size(0), H = q.size(1), D = q.size(2);
  check(D >= 1 && D <= 256, "head_dim must be in 1..256");
  check(q.stride(2) == 1 || D == 1, "q must have a contiguous last dimension");
  for (auto [t, n] : {std::pair{&k, "k_cache"}, {&v, "v_cache"}}) {
    const std::string name(n);
    check(t->dim() == 4, name + " must be [batch, heads, seq, head_dim]");
    check(t->dtype == q.dtype, name + " dtype differs from q");
    check(t->device == q.device, name + " is on another device than q");
    check(t->size(0) == B && t->size(1) == H && t->size(3) == D,
          name + " shape does not match q");
    check(t->stride(3) == 1 || D == 1, name + " must have a contiguous last dimension");
    check(t->ptr != 0 || t->numel() == 0, name + " is a null buffer");
  }
  check(k.size(2) == v.size(2), "k_cache and v_cache differ in length");
  check(out.dtype == q.dtype && out.dim() == 3 && out.size(0) == B && out.size(1) == H &&
            out.size(2) == D && (out.stride(2) == 1 || D == 1) && out.device == q.device,
        "out must be a [batch, heads, head_dim] tensor like q");
  check_ref(keys, "keys", DType::I32, 1);
  check(keys.contiguous() && keys.device == q.device, "keys must be contiguous on q's device");
  const int64_t S = k.size(2);
  DecodeParams p;
  p.batch = int(B);
  p.heads = int(H);
  p.head_dim = int(D);
  p.cache_len = S;
  p.scale = scale;
  p.q = (const void*)q.ptr;
  p.q_s[0] = q.stride(0);
  p.q_s[1] = q.stride(1);
  p.k = (const void*)k.ptr;
  p.v = (const void*)v.ptr;
  for (int i = 0; i < 3; ++i) {
    p.k_s[i] = k.stride(i);
    p.v_s[i] = v.stride(i);
  }
  p.o = (void*)out.ptr;
  p.o_s[0] = out.stride(0);
  p.o_s[1] = out.stride(1);
  p.keys = keys.data<int32_t>();
  p.num_keys = int(keys.size(0));
  const TensorRef* kp = opt_ref(key_ptr);
  const TensorRef* pp = opt_ref(pos);
  check((kp == nullptr) == (pp == nullptr), "key_ptr and pos go together");
  if (kp != nullptr) {
    check_ref(*kp, "key_ptr", DType::I32, 1);
    check_ref(*pp, "pos", DType::I64, 1);
    check(kp->size(0) >= 1 && kp->contiguous() && kp->device == q.device,
          "key_ptr must be a contiguous int32 [positions + 1] tensor on q's device");
    check(pp->size(0) == 1 && pp->device == q.device, "pos must be an int64 [1] tensor on q's device");
    p.key_ptr = kp->data<int32_t>();
    p.pos = pp->data<int64_t>();
    p.key_rows = int(kp->size(0) - 1);
  }
  check(text_start >= 0 && text_len >= 0, "bad text segment");
  p.text_start = text_start;
  p.text_len = text_len;
  if (const TensorRef* tl = opt_ref(text_lens)) {
    check_ref(*tl, "text_lens", DType::I32, 1);
    check(tl->size(0) == B && tl->device == q.device && tl->contiguous(),
          "text_lens must be a contiguous int32 [batch] tensor on q's device");
    p.text_lens = tl->data<int32_t>();
  }
  if (q.is_cuda()) {
#ifdef VILG_WITH_CUDA
    check(splits >= 1, "splits must be >= 1");
    p.splits = splits;
    if (splits > 1) {
      const TensorRef* w = opt_ref(ws);
      check(w != nullptr, "decode_attention: split-K needs a workspace");
      check_ref(*w, "workspace", DType::F32, 1);
      check(w->contiguous() && w->device == q.device &&
                w->numel() >= cuda::decode_workspace_floats(p.batch, p.heads, p.head_dim, splits),
            "workspace too small or on another device");
      p.ws = w->data<float>();
    }
    cuda::decode_attention(p, q.dtype, q.device, stream);
#else
    (void)ws;
    (void)stream;
    no_cuda("decode_attention");
#endif
  } else {
    // On the CPU the keys about to be read are checked here; on a GPU the caller checks the
    // whole list once (vilg.ops.DecodePlan), as the position may only be known on the device.
    const KeySpan span = key_span(p);
    check(span.count >= 0 && span.keys >= p.keys && span.keys + span.count <= p.keys + p.num_keys,
          "key_ptr points outside keys");
    for (int j = 0; j < span.count; ++j)
      check(span.keys[j] >= 0 && span.keys[j] < S,
            "key position " + std::to_string(span.keys[j]) + " outside the cache of length " +
                std::to_string(S));
    py::gil_scoped_release nogil;
    cpu::decode_attention(p, q.dtype);
  }
}

void bind(py::module_& m) {
  m.def("decode_splits", &splits_for, "Blocks per (batch, head) of a CUDA decode launch");
  m.def("decode_workspace_floats", &workspace_floats, "Float32 elements of the split-K workspace");
  m.def("decode_attention", &decode, "One decoding step of layout-restricted attention",
        py::arg("q"), py::arg("k_cache"), py::arg("v_cache"), py::arg("keys"), py::arg("out"),
        py::arg("ws"), py::arg("splits"), py::arg("text_lens"), py::arg("text_start"),
        py::arg("text_len"), py::arg("scale"), py::arg("stream"), py::arg("key_ptr") = py::none(),
        py::arg("pos") = py::none());
}

const RegisterFamily reg(bind, {"decode_attention"});

}  // namespace
}  // namespace vilg
