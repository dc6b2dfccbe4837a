"""Run Hugging Face transformers models on vilg's kernels.

    import vilg.integrations.transformers as vt
    from vilg.layouts import sliding_window
    vt.register("vilg", layout_fn=lambda n: sliding_window(n, 512))
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="vilg")

`register` adds an attention function (and a matching mask function) through transformers'
public `AttentionInterface` / `AttentionMaskInterface`. The layout decides which keys each
query sees, in place of the model's own mask (a `sliding_window` the model passes is not
read: give the layout); a 2-D padding `attention_mask`, left- or right-padded, becomes
per-sample key bounds (left padding needs the kernels' key_starts), and any other mask is an
error. Queries may be fewer than keys with a KV cache (chunked prefill: the layout of the key
length, its last rows; causal layouts only), but each new cache length builds a layout, so
decode in chunks, not token by token. GQA models pass fewer k/v heads, which the kernels read
without repeating them. Soft-capping models (Gemma 2 / 3 pass `softcap`) and an
`alibi_slopes` keyword ([heads] or [batch, heads]) reach the kernels' score modifiers.
"""

from __future__ import annotations

from vilg.layouts import Layout
from vilg.nn import LayoutCache, LayoutFn, padding_bounds
from vilg.ops.attention import sparse_attention


def _padding_mask(*args, attention_mask=None, **kwargs):
    """Mask function for the model's mask builder: instead of an L x L mask (the layout is
    the pattern), hand the 2-D padding mask through, or None without padding. Only
    attention_mask is read: transformers 4.x passes the rest by keyword without q_length,
    5.x with it."""
    return attention_mask


def make_attention_function(layout_fn: Layout | LayoutFn, cache_size: int = 8):
    """The attention function transformers calls: (module, query, key, value, attention_mask,
    scaling=None, dropout=0.0, **kwargs) -> (out [B, L, heads, D], None). Its `.layouts`
    is the LayoutCache (call `.layouts.get(seq_len)` before torch.compile)."""
    layouts = LayoutCache(layout_fn, cache_size)

    def vilg_attention(
        module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs
    ):
        if dropout:
            raise ValueError("vilg attention has no attention dropout; set it to 0")
        B, _, Lq, _ = query.shape
        L = key.shape[2]
        if Lq > L:
            raise ValueError(f"vilg attention needs at most as many queries as keys, got {Lq}, {L}")
        extra = {}
        lens = None
        if attention_mask is not None:
            starts, lens = padding_bounds(attention_mask, B, L)
            if starts is not None:
                extra["key_starts"] = starts
        softcap = kwargs.get("softcap")
        if softcap:  # Gemma 2 / 3: attn_logit_softcapping (None or 0: off)
            extra["softcap"] = float(softcap)
        if kwargs.get("alibi_slopes") is not None:
            extra["alibi_slopes"] = kwargs["alibi_slopes"]
        lay = layouts.get(L, query.device)  # fewer queries: sparse_attention takes its last rows
        out = sparse_attention(query, key, value, lay, scale=scaling, key_lens=lens, **extra)
        return out.transpose(1, 2), None

    vilg_attention.layouts = layouts
    return vilg_attention


def register(name: str = "vilg", layout_fn: Layout | LayoutFn | None = None, cache_size: int = 8):
    """Register vilg attention under `name` for `attn_implementation=name`; returns the
    attention function (its `.layouts` cache builds one Layout per sequence length)."""
    try:
        from transformers import AttentionInterface, AttentionMaskInterface
    except ImportError as e:  # an optional dependency
        raise ImportError("vilg.integrations.transformers needs `pip install transformers`") from e
    if layout_fn is None:
        raise ValueError("layout_fn is required (a Layout or a function seq_len -> Layout)")
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    fn = make_attention_function(layout_fn, cache_size)
    AttentionInterface.register(name, fn)
    AttentionMaskInterface.register(name, _padding_mask)
    return fn
