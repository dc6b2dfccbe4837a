"""Block-sparse attention as a torch custom op (autograd, torch.compile, fake tensors), and an
eager fast path around it.

The custom ops are what torch.compile, fake tensors, torch.func and dispatch modes see. Plain
eager calls take `_EagerAttention` instead, an autograd.Function over the same kernel calls:
a torch.library custom op enters torch._dynamo's import on its first call (seconds, paid by
the first attention call of every process), and it adds dispatcher layers to every call.
"""

from __future__ import annotations

import math

import torch

from vilg._ext import C
from vilg.layouts import Layout
from vilg.ops import _validate
from vilg.ops._arrays import accepts_arrays
from vilg.ops._buffers import profiled, ref, stream_of


# The kernels' arguments after q, k, v (and o, lse in the backward), in this order:
#   layout      the layout's kernel arrays but perm (Layout.kernel_arrays(), a list: what a
#               custom op can take), handed to C++ by name (_layout_refs)
#   perm        its permutation (None: sequence order)
#   keep_lo, keep_hi   per-sample key padding: sample b keeps the padded segment's keys
#               [keep_lo[b], keep_hi[b]) (int32 [batch] or None: 0 / the whole segment)
#   block, seg_start, seg_len   tile size and the padded segment in kernel order
#   scale, softcap, alibi       score scale, soft-cap (0: off), ALiBi slopes (or None)
def _layout_refs(layout: list[torch.Tensor], perm: torch.Tensor | None) -> dict:
    """The layout's kernel arrays as the named views the kernels read."""
    return dict(zip(Layout._KERNEL_NAMES, map(ref, (*layout, perm)), strict=True))


def _fwd_impl(
    q, k, v, layout, perm, keep_lo, keep_hi, block, seg_start, seg_len, scale, softcap, alibi
):
    B, H, L, _ = q.shape
    o = torch.empty_like(q)
    lse = torch.empty(B, H, L, dtype=torch.float32, device=q.device)
    C().attention_fwd(
        ref(q),
        ref(k),
        ref(v),
        ref(o),
        ref(lse),
        _layout_refs(layout, perm),
        L,
        k.shape[2],
        block,
        seg_start,
        seg_len,
        ref(keep_lo),
        ref(keep_hi),
        scale,
        softcap,
        ref(alibi),
        stream_of(q),
    )
    return o, lse


# The schema is written out: torch before 2.7 cannot infer it from string annotations
# (tests/test_torch_compat.py checks it against the inferred one).
@torch.library.custom_op(
    "vilg::sparse_attention_fwd",
    mutates_args=(),
    schema=(
        "(Tensor q, Tensor k, Tensor v, Tensor[] layout, Tensor? perm, Tensor? keep_lo, "
        "Tensor? keep_hi, SymInt block, SymInt seg_start, SymInt seg_len, float scale, "
        "float softcap, Tensor? alibi) -> (Tensor, Tensor)"
    ),
)
def _fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: list[torch.Tensor],
    perm: torch.Tensor | None,
    keep_lo: torch.Tensor | None,
    keep_hi: torch.Tensor | None,
    block: int,
    seg_start: int,
    seg_len: int,
    scale: float,
    softcap: float,
    alibi: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    return _fwd_impl(
        q, k, v, layout, perm, keep_lo, keep_hi, block, seg_start, seg_len, scale, softcap, alibi
    )


@_fwd.register_fake
def _(q, k, v, layout, perm, keep_lo, keep_hi, block, seg_start, seg_len, scale, softcap, alibi):
    B, H, L, _ = q.shape
    return torch.empty_like(q), q.new_empty(B, H, L, dtype=torch.float32)


def _bwd_impl(
    grad_out,
    q,
    k,
    v,
    o,
    lse,
    layout,
    perm,
    keep_lo,
    keep_hi,
    block,
    seg_start,
    seg_len,
    scale,
    softcap,
    alibi,
):
    if grad_out.stride(-1) != 1:
        grad_out = grad_out.contiguous()
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    delta = torch.empty_like(lse)
    C().attention_bwd(
        ref(grad_out),
        ref(q),
        ref(k),
        ref(v),
        ref(o),
        ref(lse),
        ref(dq),
        ref(dk),
        ref(dv),
        ref(delta),
        _layout_refs(layout, perm),
        q.shape[2],
        k.shape[2],
        block,
        seg_start,
        seg_len,
        ref(keep_lo),
        ref(keep_hi),
        scale,
        softcap,
        ref(alibi),
        stream_of(q),
    )
    return dq, dk, dv


@torch.library.custom_op(
    "vilg::sparse_attention_bwd",
    mutates_args=(),
    schema=(
        "(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor o, Tensor lse, "
        "Tensor[] layout, Tensor? perm, Tensor? keep_lo, Tensor? keep_hi, SymInt block, "
        "SymInt seg_start, SymInt seg_len, float scale, float softcap, Tensor? alibi) "
        "-> (Tensor, Tensor, Tensor)"
    ),
)
def _bwd(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    o: torch.Tensor,
    lse: torch.Tensor,
    layout: list[torch.Tensor],
    perm: torch.Tensor | None,
    keep_lo: torch.Tensor | None,
    keep_hi: torch.Tensor | None,
    block: int,
    seg_start: int,
    seg_len: int,
    scale: float,
    softcap: float,
    alibi: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _bwd_impl(
        grad_out, q, k, v, o, lse, layout, perm, keep_lo, keep_hi, block, seg_start, seg_len,
        scale, softcap, alibi,
    )  # fmt: skip


@_bwd.register_fake
def _(grad_out, q, k, v, o, lse, *_args):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx, inputs, output):
    q, k, v, layout, perm, keep_lo, keep_hi, block, seg_start, seg_len, scale, softcap, alibi = (
        inputs
    )
    o, lse = output
    ctx.save_for_backward(q, k, v, o, lse, perm, keep_lo, keep_hi, alibi, *layout)
    ctx.args = (block, seg_start, seg_len, scale, softcap)
    ctx.mark_non_differentiable(lse)


def _backward(ctx, grad_out, _grad_lse):
    q, k, v, o, lse, perm, keep_lo, keep_hi, alibi, *layout = ctx.saved_tensors
    block, seg_start, seg_len, scale, softcap = ctx.args
    dq, dk, dv = _bwd(
        grad_out, q, k, v, o, lse, layout, perm, keep_lo, keep_hi, block, seg_start, seg_len,
        scale, softcap, alibi,
    )  # fmt: skip
    return dq, dk, dv, [None] * len(layout), *([None] * 9)


_fwd.register_autograd(_backward, setup_context=_setup_context)


class _EagerAttention(torch.autograd.Function):
    """The custom op's forward and backward, for plain eager calls (see the module doc)."""

    @staticmethod
    def forward(ctx, q, k, v, *args):
        with profiled("vilg::sparse_attention_fwd"):
            o, lse = _fwd_impl(q, k, v, *args)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.extra = args
        ctx.mark_non_differentiable(lse)
        return o, lse

    @staticmethod
    def backward(ctx, grad_out, _grad_lse):
        q, k, v, o, lse = ctx.saved_tensors
        with profiled("vilg::sparse_attention_bwd"):
            dq, dk, dv = _bwd_impl(grad_out, q, k, v, o, lse, *ctx.extra)
        return dq, dk, dv, *([None] * len(ctx.extra))


def _plain_eager(*ts: torch.Tensor) -> bool:
    """Plain tensors, no compile, no torch-function or dispatch mode, no functorch transform:
    the fast path (anything that intercepts ops sees the custom op instead)."""
    return (
        not torch.compiler.is_compiling()
        and all(type(t) is torch.Tensor for t in ts)
        and not torch._C._is_torch_function_mode_enabled()
        and torch._C._len_torch_dispatch_stack() == 0
        and not torch._C._are_functorch_transforms_active()
    )


@accepts_arrays
def sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: Layout,
    *,
    scale: float | None = None,
    text_lens: torch.Tensor | None = None,
    key_lens: torch.Tensor | None = None,
    key_starts: torch.Tensor | None = None,
    softcap: float = 0.0,
    alibi_slopes: torch.Tensor | None = None,
    return_lse: bool = False,
):
    """Softmax attention restricted to `layout`: equal to dense attention with
    `layout.dense_mask()` (plus padded keys masked per sample), computed over the allowed
    tiles only.

    q: [batch, heads, q_len, head_dim]; k, v: [batch, kv_heads, seq, head_dim] with heads a
    multiple of kv_heads (GQA / MQA: q head h reads k/v head h // (heads // kv_heads), in the
    kernels, no copies); float32 / float16 / bfloat16, last dim contiguous (NumPy / CuPy arrays
    answer in kind). q_len = seq (layout.seq_len) or, for a causal layout, fewer: the queries
    are then the last q_len positions (a chunk against a KV cache, see Layout.last_queries;
    derived and cached on the eager path, pass layout.last_queries(q_len) under torch.compile).

    Padding (per sample, int [batch]): text_lens, the real lengths of an ERNIE layout's text
    segment (its padded keys are masked); or key_starts / key_lens, for any layout: sample b
    attends only keys at sequence positions [key_starts[b], key_lens[b]) (left / right
    padding; a permuted layout runs as its `sequence_order()` twin, built once). Not both
    kinds. Their values must lie in [0, segment length] (and starts <= lens): eager CPU values
    raise ValueError, CUDA ones (and any under torch.compile) fail a device-side assertion,
    with no device sync.

    Score modifiers, on the scaled score s = scale * q.k in flash-attn's order: softcap > 0
    gives s = softcap * tanh(s / softcap); alibi_slopes (float32 [heads] or [batch, heads])
    adds -slope * |i - j|, i the query's sequence position (a q_len chunk's row r is position
    seq - q_len + r), j the key's (the caller's order, also for a permuted layout).

    Returns out [batch, heads, seq, head_dim] and, with return_lse, the float32 log-sum-exp
    [batch, heads, seq] (-inf for a query with no allowed key, whose output is 0).
    Works under torch.compile(fullgraph=True).
    """
    if (
        isinstance(layout, Layout)
        and all(isinstance(t, torch.Tensor) and t.dim() == 4 for t in (q, k))
        and k.shape[2] == layout.seq_len  # else validation names the mismatch
    ):
        by_position = key_lens is not None or key_starts is not None  # cut the sequence order
        layout = layout.for_call(q.shape[2], sequence_order=by_position)
    _validate.attention(q, k, v, layout)
    B, H = q.shape[0], q.shape[1]
    if scale is None:  # int(): the head dim is static even under dynamic shapes
        scale = 1.0 / math.sqrt(int(q.shape[3]))
    elif not math.isfinite(float(scale)):
        raise ValueError(f"scale must be finite, got {scale}")
    scale = float(scale)
    softcap = _validate.softcap(softcap)
    alibi = _validate.alibi_slopes(alibi_slopes, B, H, q.device)
    if key_lens is not None or key_starts is not None:
        if text_lens is not None:
            raise ValueError("give text_lens or key_starts / key_lens, not both")
        seg_start, seg_len = 0, layout.seq_len  # the padded segment is the whole sequence
        keep_lo, keep_hi = _validate.key_bounds(key_starts, key_lens, B, layout, q.device)
    else:
        seg_start, seg_len = layout.kernel_text_segment
        keep_lo, keep_hi = None, _validate.text_lens(text_lens, B, seg_len, q.device)
    *arrays, perm = layout.kernel_arrays(q.device)
    arrays = list(arrays)

    args = (q, k, v, arrays, perm, keep_lo, keep_hi, layout.block_size, seg_start, seg_len)
    args += (scale, softcap, alibi)
    o, lse = _EagerAttention.apply(*args) if _plain_eager(q, k, v) else _fwd(*args)
    return (o, lse) if return_lse else o
