// Python entry points of block-sparse attention: TensorRefs -> AttnParams, checked, dispatched.
#include "../common/attention_params.h"
#include "../cpu/kernels.h"
#include "registry.h"

#ifdef VILG_WITH_CUDA
#include "../cuda/kernels.h"
#endif

namespace vilg {
namespace {

// The layout's kernel arrays, by name (vilg.layouts.Layout._KERNEL_NAMES): a dict of
// TensorRefs, perm None for sequence order. q_len: query rows, seq_len: keys (equal unless the
// layout is rectangular).
BlockSparse make_layout(const py::dict& arrays, int q_len, int seq_len, int block,
                        int text_start, int text_len, int device) {
  auto ref = [&](const char* name, DType dt) -> const TensorRef* {
    check(arrays.contains(name), std::string("layout: missing array ") + name);
    const TensorRef* r = opt_ref(arrays[name]);
    if (!r) return nullptr;
    check_ref(*r, name, dt, dt == DType::I64 ? 3 : 1);
    check(r->contiguous(), std::string("layout: ") + name + " must be contiguous");
    check(r->device == device, std::string("layout: ") + name + " is on another device");
    return r;
  };
  check(block > 0 && block % 16 == 0, "layout: block size must be a positive multiple of 16");
  BlockSparse ls;
  check(q_len > 0 && seq_len > 0 && q_len <= seq_len,
        "layout: need 0 < query length <= key length");
  ls.seq_len = seq_len;
  ls.q_len = q_len;
  ls.block = block;
  ls.num_q_blocks = (q_len + block - 1) / block;
  ls.num_k_blocks = (seq_len + block - 1) / block;
  const TensorRef* q_ptr = ref("q_ptr", DType::I32);
  const TensorRef* q_kv = ref("q_kv", DType::I32);
  const TensorRef* q_mask = ref("q_mask", DType::I32);
  const TensorRef* k_ptr = ref("k_ptr", DType::I32);
  const TensorRef* k_q = ref("k_q", DType::I32);
  const TensorRef* k_mask = ref("k_mask", DType::I32);
  const TensorRef* masks = ref("masks", DType::I64);
  const TensorRef* perm = ref("perm", DType::I32);
  check(q_ptr && q_kv && q_mask && k_ptr && k_q && k_mask && masks, "layout: missing arrays");
  check(q_ptr->size(0) == ls.num_q_blocks + 1 && k_ptr->size(0) == ls.num_k_blocks + 1,
        "layout: block pointer arrays do not match the sequence length");
  check(masks->size(1) == block, "layout: mask tiles do not match the block size");
  check(!perm || perm->size(0) == seq_len, "layout: permutation length differs from L");
  check(!perm || q_len == seq_len, "layout: a rectangular layout cannot permute");
  check(text_start >= 0 && text_len >= 0 && text_start + text_len <= seq_len,
        "layout: text segment outside the sequence");
  ls.q_ptr = q_ptr->data<int32_t>();
  ls.q_kv = q_kv->data<int32_t>();
  ls.q_mask = q_mask->data<int32_t>();
  ls.k_ptr = k_ptr->data<int32_t>();
  ls.k_q = k_q->data<int32_t>();
  ls.k_mask = k_mask->data<int32_t>();
  ls.masks = masks->data<uint64_t>();
  ls.mask_words = int(masks->size(2));
  ls.perm = perm ? perm->data<int32_t>() : nullptr;
  ls.text_start = text_start;
  ls.text_len = text_len;
  return ls;
}

// t must be [batch, heads, L, head_dim] like q, with `heads` heads.
void check_bhld(const TensorRef& t, const char* name, const TensorRef& q, int L, int64_t heads) {
  check(t.dim() == 4, std::string(name) + " must be [batch, heads, seq, head_dim]");
  check(t.dtype == q.dtype, std::string(name) + " dtype differs from q");
  check(t.device == q.device, std::string(name) + " is on another device than q");
  check(t.size(0) == q.size(0) && t.size(1) == heads && t.size(3) == q.size(3),
        std::string(name) + " shape differs from q");
  check(t.size(2) == L, std::string(name) + " sequence length differs from the layout");
  check(t.stride(3) == 1, std::string(name) + " must have a contiguous last dimension");
}

void set_strides(int64_t* s, const TensorRef& t) {
  for (int i = 0; i < 3; ++i) s[i] = t.stride(i);
}

// Optional per-sample int32 [batch] array on q's device (key padding bounds).
const int32_t* opt_lens(const py::object& obj, const char* name, const TensorRef& q) {
  const TensorRef* t = opt_ref(obj);
  if (!t) return nullptr;
  check_ref(*t, name, DType::I32, 1);
  check(t->size(0) == q.size(0) && t->device == q.device && t->contiguous(),
        std::string(name) + " must be a contiguous int32 [batch] tensor on q's device");
  return t->data<int32_t>();
}

// Soft-cap and ALiBi slopes (float32 [heads] or [batch, heads] on q's device, or None).
ScoreMods make_mods(float softcap, const py::object& alibi, const TensorRef& q) {
  ScoreMods m;
  check(softcap >= 0.f && softcap < __builtin_inff(), "softcap must be finite and >= 0");
  m.softcap = softcap;
  if (const TensorRef* a = opt_ref(alibi)) {
    check(a->dtype == DType::F32, "alibi_slopes must be float32");
    const bool per_batch = a->dim() == 2;
    check((a->dim() == 1 && a->size(0) == q.size(1)) ||
              (per_batch && a->size(0) == q.size(0) && a->size(1) == q.size(1)),
          "alibi_slopes must be [heads] or [batch, heads]");
    check(a->contiguous() && a->device == q.device,
          "alibi_slopes must be contiguous and on q's device");
    check(a->ptr != 0 || a->numel() == 0, "alibi_slopes is a null buffer");
    m.alibi = a->data<float>();
    m.alibi_batch_stride = per_batch ? q.size(1) : 0;
  }
  return m;
}

AttnParams make_params(const TensorRef& q, const TensorRef& k, const TensorRef& v,
                       const TensorRef& o, const TensorRef& lse, const BlockSparse& ls,
                       const py::object& keep_lo, const py::object& keep_hi, float scale,
                       float softcap, const py::object& alibi) {
  check(q.dtype == DType::F32 || q.dtype == DType::F16 || q.dtype == DType::BF16,
        "attention supports float32, float16 and bfloat16");
  check(q.dim() == 4 && k.dim() == 4, "q, k must be [batch, heads, seq, head_dim]");
  const int64_t H = q.size(1), Hk = k.size(1);
  check(Hk >= 1 && H % Hk == 0, "q heads must be a multiple of k/v heads");
  check_bhld(q, "q", q, ls.q_len, H);
  check_bhld(o, "out", q, ls.q_len, H);
  check_bhld(k, "k", q, ls.seq_len, Hk);
  check_bhld(v, "v", q, ls.seq_len, Hk);
  check_ref(lse, "lse", DType::F32, 3);
  check(lse.contiguous() && lse.size(0) == q.size(0) && lse.size(1) == q.size(1) &&
            lse.size(2) == ls.q_len && lse.device == q.device,
        "lse must be a contiguous float32 [batch, heads, seq] buffer on q's device");
  AttnParams p;
  p.ls = ls;
  p.batch = int(q.size(0));
  p.heads = int(q.size(1));
  p.head_dim = int(q.size(3));
  p.kv_group = int(H / Hk);
  p.scale = scale;
  check(p.head_dim > 0 && p.head_dim <= 256, "head_dim must be in 1..256");
  p.keep_lo = opt_lens(keep_lo, "keep_lo", q);
  p.keep_hi = opt_lens(keep_hi, "keep_hi", q);
  p.mods = make_mods(softcap, alibi, q);
  p.q = (const void*)q.ptr;
  p.k = (const void*)k.ptr;
  p.v = (const void*)v.ptr;
  p.o = (void*)o.ptr;
  p.lse = lse.data<float>();
  set_strides(p.q_s, q);
  set_strides(p.k_s, k);
  set_strides(p.v_s, v);
  set_strides(p.o_s, o);
  return p;
}

void attention_fwd(const TensorRef& q, const TensorRef& k, const TensorRef& v,
                   const TensorRef& o, const TensorRef& lse, const py::dict& layout,
                   int q_len, int seq_len, int block, int text_start, int text_len,
                   const py::object& keep_lo, const py::object& keep_hi, float scale,
                   float softcap, const py::object& alibi, uintptr_t stream) {
  const BlockSparse ls =
      make_layout(layout, q_len, seq_len, block, text_start, text_len, q.device);
  const AttnParams p =
      make_params(q, k, v, o, lse, ls, keep_lo, keep_hi, scale, softcap, alibi);
  if (q.is_cuda()) {
#ifdef VILG_WITH_CUDA
    cuda::attention_fwd(p, q.dtype, q.device, stream);
#else
    (void)stream;
    no_cuda("sparse_attention");
#endif
  } else {
    py::gil_scoped_release nogil;
    cpu::attention_fwd(p, q.dtype);
  }
}

void attention_bwd(const TensorRef& dout, const TensorRef& q, const TensorRef& k,
                   const TensorRef& v, const TensorRef& o, const TensorRef& lse,
                   const TensorRef& dq, const TensorRef& dk, const TensorRef& dv,
                   const TensorRef& delta, const py::dict& layout, int q_len, int seq_len,
                   int block, int text_start, int text_len, const py::object& keep_lo,
                   const py::object& keep_hi, float scale, float softcap,
                   const py::object& alibi, uintptr_t stream) {
  const BlockSparse ls =
      make_layout(layout, q_len, seq_len, block, text_start, text_len, q.device);
  AttnParams p = make_params(q, k, v, o, lse, ls, keep_lo, keep_hi, scale, softcap, alibi);
  check_bhld(dout, "grad_out", q, q_len, q.size(1));
  check_bhld(dq, "dq", q, q_len, q.size(1));
  check_bhld(dk, "dk", q, seq_len, k.size(1));
  check_bhld(dv, "dv", q, seq_len, k.size(1));
  check_ref(delta, "delta", DType::F32, 3);
  check(delta.contiguous() && delta.numel() == lse.numel() && delta.device == q.device,
        "delta must be a contiguous float32 workspace shaped like lse");
  p.dout = (const void*)dout.ptr;
  p.dq = (void*)dq.ptr;
  p.dk = (void*)dk.ptr;
  p.dv = (void*)dv.ptr;
  p.delta = delta.data<float>();
  set_strides(p.do_s, dout);
  set_strides(p.dq_s, dq);
  set_strides(p.dk_s, dk);
  set_strides(p.dv_s, dv);
  if (q.is_cuda()) {
#ifdef VILG_WITH_CUDA
    cuda::attention_bwd(p, q.dtype, q.device, stream);
#else
    (void)stream;
    no_cuda("sparse_attention backward");
#endif
  } else {
    py::gil_scoped_release nogil;
    cpu::attention_bwd(p, q.dtype);
  }
}

void bind(py::module_& m) {
  m.def("attention_fwd", &attention_fwd, "Block-sparse attention forward (writes o and lse)");
  m.def("attention_bwd", &attention_bwd, "Block-sparse attention backward (writes dq, dk, dv)");
}

const RegisterFamily reg(bind, {"sparse_attention_fwd", "sparse_attention_bwd"});

}  // namespace
}  // namespace vilg
