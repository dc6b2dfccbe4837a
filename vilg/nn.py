"""Drop-in attention modules on vilg's block-sparse kernels.

`SparseAttention(layout_fn)` computes attention of given q, k, v; `SparseSelfAttention(dim,
heads, kv_heads, layout_fn)` is a whole self-attention block (fused q/k/v projection, GQA,
output projection). `layout_fn` is a fixed `Layout` or a function seq_len -> Layout; its
layouts are built once per length and kept in a small LRU cache.

torch.compile(fullgraph=True): building a layout is Python work that cannot be traced, so a
compiled call must find its layout built. Call the module once eagerly per sequence length or
`prepare(*seq_lens)` before compiling (a fixed Layout needs neither).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import nn

from vilg.layouts import Layout
from vilg.ops.attention import sparse_attention

LayoutFn = Callable[[int], Layout]

def padding_bounds(
    attention_mask: torch.Tensor, batch: int, length: int
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """A 2-D padding mask [batch, length] (nonzero / True = a real token) -> (key_starts,
    key_lens): sample b's real keys are positions [key_starts[b], key_lens[b]). Left, right or
    both-sided padding; any other mask (a gap inside the real tokens) is a ValueError, checked
    on every device (on a GPU a sync; not under torch.compile). key_starts is None when no
    sample is left-padded."""
    m = attention_mask
    if not isinstance(m, torch.Tensor):
        raise TypeError(f"attention_mask must be a torch.Tensor, got {type(m).__name__}")
    if m.dim() != 2 or m.shape[0] != batch or m.shape[1] != length:
        raise ValueError(
            f"attention_mask must be a 2-D [batch, seq] = [{batch}, {length}] padding mask "
            f"(the layout is the pattern), got shape {list(m.shape)}; 4-D masks are not supported"
        )
    m = m if m.dtype == torch.bool else m != 0
    count = m.sum(-1)
    first = torch.where(count > 0, m.to(torch.uint8).argmax(-1), 0)
    end = first + count
    if torch.compiler.is_compiling():  # no data-dependent checks or branches in a graph
        return first.to(torch.int32), end.to(torch.int32)
    pos = torch.arange(length, device=m.device)[None, :]
    if not torch.equal(m, (pos >= first[:, None]) & (pos < end[:, None])):
        raise ValueError(
            "vilg takes padding masks whose real tokens are one contiguous run (left and / or "
            "right padding); this mask has gaps inside a sample"
        )
    if not bool((first > 0).any()):
        return None, end.to(torch.int32)
    return first.to(torch.int32), end.to(torch.int32)


class LayoutCache:
    """seq_len -> Layout, built by `layout_fn` on first use, the `size` most recent kept."""

    def __init__(self, layout_fn: Layout | LayoutFn, size: int = 8):
        if not isinstance(layout_fn, Layout) and not callable(layout_fn):
            raise TypeError(f"layout_fn must be a Layout or callable(seq_len), got {layout_fn!r}")
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"cache size must be a positive int, got {size!r}")
        self.fixed = layout_fn if isinstance(layout_fn, Layout) else None
        self.layout_fn = layout_fn
        self.size = size
        self._cache: OrderedDict[int, Layout] = OrderedDict()

    def get(self, seq_len: int, device: torch.device | None = None) -> Layout:
        if self.fixed is not None:
            if seq_len != self.fixed.seq_len:
                raise ValueError(
                    f"sequence length {seq_len} differs from the layout's {self.fixed.seq_len}"
                )
            return self.fixed
        seq_len = int(seq_len)
        hit = self._cache.get(seq_len)
        if hit is not None:
            if not torch.compiler.is_compiling():  # no cache mutation inside a traced call
                self._cache.move_to_end(seq_len)
            return hit
        if torch.compiler.is_compiling():
            raise RuntimeError(
                f"vilg: no layout built yet for sequence length {seq_len} inside torch.compile; "
                "run the model once eagerly at this length, or call prepare(seq_len), first"
            )
        lay = self.layout_fn(seq_len)
        if not isinstance(lay, Layout) or lay.seq_len != seq_len:
            raise ValueError(
                f"layout_fn({seq_len}) must return a Layout of length {seq_len}, got {lay!r}"
            )
        if device is not None:
            lay.to(device)
        self._cache[seq_len] = lay
        while len(self._cache) > self.size:
            self._cache.popitem(last=False)
        return lay


class SparseAttention(nn.Module):
    """out = softmax(q k^T * scale, restricted to the layout) v, on vilg's kernels.

    forward(q, k, v, *, text_lens=None, key_lens=None, attention_mask=None): q [B, heads, Lq,
    D], k, v [B, kv_heads, L, D] (heads a multiple of kv_heads) -> [B, heads, Lq, D]. The
    layout is the key length's; Lq < L (a chunk of queries against a KV cache, causal
    layouts) takes its last Lq rows. attention_mask: a 2-D [B, L] padding mask, left- or
    right-padded (see `padding_bounds`), in place of key_starts / key_lens (left / right
    padding, see `vilg.ops.sparse_attention`).

    softcap (> 0) and alibi_slopes ([heads] or [B, heads] float32, a buffer that moves with
    the module) modify the scores as in flash-attn (they need the kernels' modifiers);
    forward's alibi_slopes overrides the module's for one call."""

    def __init__(
        self,
        layout_fn: Layout | LayoutFn,
        *,
        scale: float | None = None,
        cache_size: int = 8,
        softcap: float = 0.0,
        alibi_slopes: torch.Tensor | None = None,
    ):
        super().__init__()
        self.layouts = LayoutCache(layout_fn, cache_size)
        self.scale = scale
        if isinstance(softcap, bool) or not isinstance(softcap, (int, float)) or softcap < 0:
            raise ValueError(f"softcap must be a float >= 0 (0: off), got {softcap!r}")
        self.softcap = float(softcap)
        self.register_buffer(
            "alibi_slopes",
            None if alibi_slopes is None else torch.as_tensor(alibi_slopes, dtype=torch.float32),
        )

    def prepare(self, *seq_lens: int, device=None) -> SparseAttention:
        """Build (and move to `device`) the layouts for these lengths now, e.g. before
        torch.compile; returns self."""
        for n in seq_lens:
            self.layouts.get(n, device)
        return self

    def layout(self, seq_len: int) -> Layout:
        return self.layouts.get(seq_len)

    def forward(self, q, k, v, *, text_lens=None, key_lens=None, attention_mask=None,
                key_starts=None, alibi_slopes=None):  # fmt: skip
        lay = self.layouts.get(k.shape[2], k.device)
        extra = {}
        if attention_mask is not None:
            if key_lens is not None or key_starts is not None:
                raise ValueError("give key_starts / key_lens or attention_mask, not both")
            key_starts, key_lens = padding_bounds(attention_mask, k.shape[0], k.shape[2])
        if key_starts is not None:
            extra["key_starts"] = key_starts
        if self.softcap:
            extra["softcap"] = self.softcap
        if alibi_slopes is None and self.alibi_slopes is not None:
            alibi_slopes = self.alibi_slopes.float()  # a module-wide .to(dtype) may cast it
        if alibi_slopes is not None:  # the call's ([heads] or [B, heads]) over the module's
            extra["alibi_slopes"] = alibi_slopes
        return sparse_attention(
            q, k, v, lay, scale=self.scale, text_lens=text_lens, key_lens=key_lens, **extra
        )


class SparseSelfAttention(nn.Module):
    """Multi-head self-attention with grouped k/v heads over a block-sparse layout.

    x [B, L, dim] -> [B, L, dim]. One fused projection makes q (heads), k and v (kv_heads
    each); the kernels read them as strided views of its output, with no copy."""

    def __init__(
        self,
        dim: int,
        heads: int,
        kv_heads: int | None = None,
        layout_fn: Layout | LayoutFn | None = None,
        *,
        head_dim: int | None = None,
        bias: bool = False,
        scale: float | None = None,
        cache_size: int = 8,
        softcap: float = 0.0,
        alibi_slopes: torch.Tensor | None = None,
    ):
        super().__init__()
        kv_heads = heads if kv_heads is None else kv_heads
        for name, val in (("dim", dim), ("heads", heads), ("kv_heads", kv_heads)):
            if isinstance(val, bool) or not isinstance(val, int) or val < 1:
                raise ValueError(f"{name} must be a positive int, got {val!r}")
        if heads % kv_heads:
            raise ValueError(f"heads ({heads}) must be a multiple of kv_heads ({kv_heads})")
        if head_dim is None:
            if dim % heads:
                raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")
            head_dim = dim // heads
        if layout_fn is None:
            raise ValueError("layout_fn is required (a Layout or a function seq_len -> Layout)")
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.qkv = nn.Linear(dim, (heads + 2 * kv_heads) * head_dim, bias=bias)
        self.out = nn.Linear(heads * head_dim, dim, bias=bias)
        if alibi_slopes is not None and torch.as_tensor(alibi_slopes).shape != (heads,):
            raise ValueError(f"alibi_slopes must be [heads] = [{heads}]")
        self.attn = SparseAttention(
            layout_fn, scale=scale, cache_size=cache_size, softcap=softcap,
            alibi_slopes=alibi_slopes,
        )  # fmt: skip

    def prepare(self, *seq_lens: int, device=None) -> SparseSelfAttention:
        self.attn.prepare(*seq_lens, device=device)
        return self

    def forward(self, x, *, text_lens=None, key_lens=None, attention_mask=None, key_starts=None):
        if x.dim() != 3:
            raise ValueError(f"x must be [batch, seq, dim], got {list(x.shape)}")
        B, L, _ = x.shape
        H, G, D = self.heads, self.kv_heads, self.head_dim
        qkv = self.qkv(x).view(B, L, H + 2 * G, D).transpose(1, 2)  # [B, H + 2G, L, D] view
        q, k, v = qkv[:, :H], qkv[:, H : H + G], qkv[:, H + G :]
        o = self.attn(
            q, k, v, text_lens=text_lens, key_lens=key_lens, attention_mask=attention_mask,
            key_starts=key_starts,
        )  # fmt: skip
        return self.out(o.transpose(1, 2).reshape(B, L, H * D))
