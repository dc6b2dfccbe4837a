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


def _fwd_impl(q, k, v, layout, perm, text_lens, block, text_start, text_len, scale):
    B, H, L, _ = q.shape
    o = torch.empty_like(q)
    lse = torch.empty(B, H, L, dtype=torch.float32, device=q.device)
    C().attention_fwd(
        ref(q),
        ref(k),
        ref(v),
        ref(o),
        ref(lse),
        (*map(ref, layout), ref(perm)),
        L,
        k.shape[2],
        block,
        text_start,
        text_len,
        ref(text_lens),
        scale,
        stream_of(q),
    )
    return o, lse


# The schema is written out: torch before 2.7 cannot infer it from string annotations
# (tests/test_torch_compat.py checks it against the inferred one).
@torch.library.custom_op(
    "vilg::sparse_attention_fwd",
    mutates_args=(),
    schema=(
        "(Tensor q, Tensor k, Tensor v, Tensor[] layout, Tensor? perm, "
        "Tensor? text_lens, SymInt block, SymInt text_start, SymInt text_len, "
        "float scale) -> (Tensor, Tensor)"
    ),
)
def _fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: list[torch.Tensor],
    perm: torch.Tensor | None,
    text_lens: torch.Tensor | None,
    block: int,
    text_start: int,
    text_len: int,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    return _fwd_impl(q, k, v, layout, perm, text_lens, block, text_start, text_len, scale)


@_fwd.register_fake
def _(q, k, v, layout, perm, text_lens, block, text_start, text_len, scale):
    B, H, L, _ = q.shape
    return torch.empty_like(q), q.new_empty(B, H, L, dtype=torch.float32)


def _bwd_impl(
    grad_out, q, k, v, o, lse, layout, perm, text_lens, block, text_start, text_len, scale
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
        (*map(ref, layout), ref(perm)),
        q.shape[2],
        k.shape[2],
        block,
        text_start,
        text_len,
        ref(text_lens),
        scale,
        stream_of(q),
    )
    return dq, dk, dv


@torch.library.custom_op(
    "vilg::sparse_attention_bwd",
    mutates_args=(),
    schema=(
        "(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor o, Tensor lse, "
        "Tensor[] layout, Tensor? perm, Tensor? text_lens, SymInt block, "
        "SymInt text_start, SymInt text_len, float scale) -> (Tensor, Tensor, Tensor)"
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
    text_lens: torch.Tensor | None,
    block: int,
    text_start: int,
    text_len: int,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _bwd_impl(
        grad_out, q, k, v, o, lse, layout, perm, text_lens, block, text_start, text_len, scale
    )


@_bwd.register_fake
def _(grad_out, q, k, v, o, lse, layout, perm, text_lens, block, text_start, text_len, scale):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx, inputs, output):
    q, k, v, layout, perm, text_lens, block, text_start, text_len, scale = inputs
    o, lse = output
    ctx.save_for_backward(q, k, v, o, lse, perm, text_lens, *layout)
    ctx.args = (block, text_start, text_len, scale)
    ctx.mark_non_differentiable(lse)


def _backward(ctx, grad_out, _grad_lse):
    q, k, v, o, lse, perm, text_lens, *layout = ctx.saved_tensors
    dq, dk, dv = _bwd(grad_out, q, k, v, o, lse, layout, perm, text_lens, *ctx.args)
    return dq, dk, dv, [None] * len(layout), None, None, None, None, None, None


_fwd.register_autograd(_backward, setup_context=_setup_context)


class _EagerAttention(torch.autograd.Function):
    """The custom op's forward and backward, for plain eager calls (see the module doc)."""

    @staticmethod
    def forward(ctx, q, k, v, layout, perm, text_lens, block, text_start, text_len, scale):
        with profiled("vilg::sparse_attention_fwd"):
            o, lse = _fwd_impl(q, k, v, layout, perm, text_lens, block, text_start, text_len, scale)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.extra = (layout, perm, text_lens, block, text_start, text_len, scale)
        ctx.mark_non_differentiable(lse)
        return o, lse

    @staticmethod
    def backward(ctx, grad_out, _grad_lse):
        q, k, v, o, lse = ctx.saved_tensors
        with profiled("vilg::sparse_attention_bwd"):
            dq, dk, dv = _bwd_impl(grad_out, q, k, v, o, lse, *ctx.extra)
        return dq, dk, dv, None, None, None, None, None, None, None


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
    text_lens [batch]: real lengths of the layout's text segment (its padded keys are masked).
    key_lens [batch]: keys at positions >= key_lens[b] are masked (padding, any layout; a
    permuted one runs as its `sequence_order()` twin, built once). At most one of the two.
    Their values are checked on the eager CPU path only (under torch.compile the kernels clamp
    them).
    Returns out [batch, heads, seq, head_dim] and, with return_lse, the float32 log-sum-exp
    [batch, heads, seq] (-inf for a query with no allowed key, whose output is 0).
    Works under torch.compile(fullgraph=True).
    """
    layout = _validate.chunk_layout(q, k, layout)
    _validate.attention(q, k, v, layout)
    B = q.shape[0]
    if scale is None:  # int(): the head dim is static even under dynamic shapes
        scale = 1.0 / math.sqrt(int(q.shape[3]))
    elif not math.isfinite(float(scale)):
        raise ValueError(f"scale must be finite, got {scale}")
    scale = float(scale)
    if key_lens is not None:
        if text_lens is not None:
            raise ValueError("give text_lens or key_lens, not both")
        layout = _validate.key_order_layout(layout)  # key lengths cut the sequence order
        text_start, text_len = 0, layout.seq_len  # the "text" segment is then the whole sequence
        lens = _validate.key_lens(key_lens, B, layout, q.device)
    else:
        text_start, text_len = layout.kernel_text_segment
        lens = _validate.text_lens(text_lens, B, text_len, q.device)
    *arrays, perm = layout.kernel_arrays(q.device)
    arrays = list(arrays)

    args = (q, k, v, arrays, perm, lens, layout.block_size, text_start, text_len, scale)
    o, lse = _EagerAttention.apply(*args) if _plain_eager(q, k, v) else _fwd(*args)
    return (o, lse) if return_lse else o
