"""Fused decoding attention: one generation step over a KV cache, restricted to a layout."""

from __future__ import annotations

import math

import torch

from vilg._ext import C
from vilg.layouts import Layout
from vilg.ops import _validate
from vilg.ops._arrays import accepts_arrays
from vilg.ops._buffers import ref, stream_of


@torch.library.custom_op("vilg::decode_attention", mutates_args=())
def _decode(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    keys: torch.Tensor,
    text_lens: torch.Tensor | None,
    text_start: int,
    text_len: int,
    scale: float,
) -> torch.Tensor:
    B, H, D = q.shape
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    ws, splits = None, 1
    if q.is_cuda:
        splits = C().decode_splits(B, H, keys.numel(), q.device.index)
        if splits > 1:
            n = C().decode_workspace_floats(B, H, D, splits)
            ws = torch.empty(n, dtype=torch.float32, device=q.device)
    C().decode_attention(
        ref(q),
        ref(k_cache),
        ref(v_cache),
        ref(keys),
        ref(out),
        ref(ws),
        splits,
        ref(text_lens),
        text_start,
        text_len,
        scale,
        stream_of(q),
    )
    return out


@_decode.register_fake
def _(q, k_cache, v_cache, keys, text_lens, text_start, text_len, scale):
    return torch.empty_like(q, memory_format=torch.contiguous_format)


@accepts_arrays
def decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    layout: Layout,
    pos: int,
    *,
    scale: float | None = None,
    text_lens: torch.Tensor | None = None,
) -> torch.Tensor:
    """One decoding step: the query at sequence position `pos` attends exactly the keys
    `layout.keys_for_query(pos)` of the cache (the others are never read), with text keys at
    offset >= text_lens[b] inside the layout's text segment masked. Equal to row `pos` of
    `sparse_attention` on the full sequence; a query with no allowed key gets 0.

    q: [batch, heads, head_dim]; k_cache, v_cache: [batch, heads, S, head_dim] in sequence
    order, S > pos and S > every allowed key (last dim contiguous, other strides free);
    float32 / float16 / bfloat16. Returns [batch, heads, head_dim] in q's dtype. Inference only.
    """
    pos = _validate.decode(q, k_cache, v_cache, layout, pos)
    B, _, D = q.shape
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    if not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale}")
    text_start, text_len = layout.text_segment
    lens = _validate.text_lens(text_lens, B, text_len, q.device)
    _validate.decode_keys(layout.keys_for_query(pos), k_cache.shape[2], pos)
    keys = layout.keys_for_query(pos, q.device)
    return _decode(q, k_cache, v_cache, keys, lens, text_start, text_len, scale)
