"""flash-attn's Python API on vilg's kernels: switch a model with one import line,

    from vilg.flash_attn import flash_attn_func  # was: from flash_attn import flash_attn_func

on the CPU or a GPU. The functions take flash-attn's arguments, in its order, with its
semantics: tensors [batch, seqlen, heads, head_dim] (packed [total, heads, head_dim] for the
varlen forms), GQA / MQA by passing fewer k/v heads, `causal` aligned bottom-right when
seqlen_q < seqlen_k, `window_size=(left, right)` keeping keys in [i + Lk - Lq - left,
i + Lk - Lq + right] (-1: unbounded), `softcap` (0: off) and `alibi_slopes`. Each mask is a
vilg Layout (causal, sliding window, ...), built once per (seqlen_q, seqlen_k, window) and
kept in a small cache. What vilg cannot do raises a ValueError / NotImplementedError that says
so: dropout, returning the attention probabilities, a paged KV cache, rotary embedding inside
`flash_attn_with_kvcache`.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict

import torch

from vilg.layouts import Layout
from vilg.ops.attention import sparse_attention
from vilg.patterns import causal as causal_layout
from vilg.patterns import sliding_window

__all__ = [
    "flash_attn_func",
    "flash_attn_kvpacked_func",
    "flash_attn_qkvpacked_func",
    "flash_attn_varlen_func",
    "flash_attn_varlen_kvpacked_func",
    "flash_attn_varlen_qkvpacked_func",
    "flash_attn_with_kvcache",
]



# ---- layouts ----------------------------------------------------------------------------------
class _LayoutLRU:
    """(seqlen_q, seqlen_k, left, right) -> Layout, the `size` most recent kept."""

    def __init__(self, size: int = 64):
        self.size = size
        self._cache: OrderedDict[tuple, Layout] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple) -> Layout:
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        lay = _build_layout(*key)
        with self._lock:
            self._cache[key] = lay
            while len(self._cache) > self.size:
                self._cache.popitem(last=False)
        return lay

    def clear(self) -> None:
        with self._lock:
            self._cache.clear()


LAYOUTS = _LayoutLRU()


def _build_layout(lq: int, lk: int, left: int, right: int) -> Layout:
    """The layout of flash-attn's mask for lq queries (the last lq positions) against lk keys:
    key j allowed for the query at position p when p - left <= j <= p + right (-1: no bound)."""
    if lq == lk:  # the library's patterns where they are exactly this mask
        if left < 0 and right == 0:
            return causal_layout(lk)
        if left >= 0 and right == 0:
            return sliding_window(lk, left + 1)
        if left == right >= 0 and 2 * left + 1 <= 2 * lk:
            return sliding_window(lk, 2 * left + 1, causal=False)

    def mask_mod(q, k):
        ok = torch.ones_like(q, dtype=torch.bool) & torch.ones_like(k, dtype=torch.bool)
        if left >= 0:
            ok = ok & (k >= q - left)
        if right >= 0:
            ok = ok & (k <= q + right)
        return ok

    hint = None
    if left >= 0 or right >= 0:

        def hint(q):  # keys that the queries q may attend, a contiguous range
            lo = 0 if left < 0 else max(0, int(q.min()) - left)
            hi = lk - 1 if right < 0 else min(lk - 1, int(q.max()) + right)
            return torch.arange(lo, hi + 1)

    name = f"flash_attn(Lq={lq}, Lk={lk}, window=({left}, {right}))"
    return Layout(lk, mask_mod, q_len=lq, name=name, key_hint=hint, future_keys=right != 0)


def _window(window_size, causal: bool, lk: int) -> tuple[int, int]:
    """flash-attn's (left, right) after its own normalisation: causal sets right = 0, and a
    bound at or past the key length is no bound."""
    try:
        left, right = (int(w) for w in window_size)
    except (TypeError, ValueError):
        raise ValueError(f"window_size must be (left, right) ints, got {window_size!r}") from None
    if left < -1 or right < -1:
        raise ValueError(f"window_size entries must be >= -1 (-1: unbounded), got {window_size!r}")
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {causal!r}")
    if causal:
        right = 0
    left = -1 if left >= lk else left
    right = -1 if right >= lk else right
    return left, right


# ---- the shared core --------------------------------------------------------------------------
def _unsupported(dropout_p, return_attn_probs) -> None:
    if not isinstance(dropout_p, (int, float)) or isinstance(dropout_p, bool):
        raise TypeError(f"dropout_p must be a float, got {dropout_p!r}")
    if dropout_p != 0.0:
        raise ValueError(
            f"vilg has no attention dropout: dropout_p must be 0.0, got {dropout_p} (flash-attn "
            "users set it to 0.0 in evaluation; for training, drop out elsewhere)"
        )
    if return_attn_probs:
        raise ValueError(
            "vilg never forms the attention probabilities: return_attn_probs=True is not "
            "supported (flash-attn itself calls it a testing aid)"
        )


def _check_bshd(t, name: str, dims: int = 4) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != dims:
        want = "[batch, seqlen, heads, head_dim]" if dims == 4 else "[total, heads, head_dim]"
        raise ValueError(f"{name} must be {want}, got shape {list(t.shape)}")
    return t


def _softcap(softcap) -> float:
    if isinstance(softcap, bool) or not isinstance(softcap, (int, float)):
        raise TypeError(f"softcap must be a float (0.0: off), got {softcap!r}")
    if not math.isfinite(softcap):
        raise ValueError(f"softcap must be finite, got {softcap}")
    return float(softcap) if softcap > 0 else 0.0  # flash-attn: anything <= 0 is off


def _attend(
    q,
    k,
    v,
    *,
    scale,
    causal,
    window_size,
    softcap=0.0,
    alibi_slopes=None,
    key_lens=None,
    key_starts=None,
    return_lse=False,
):
    """q [B, Lq, H, D], k, v [B, Lk, Hk, D] -> out [B, Lq, H, D] (and lse [B, H, Lq])."""
    for n, t in (("q", q), ("k", k), ("v", v)):
        _check_bshd(t, n)
    if k.shape != v.shape:
        raise ValueError(f"k and v must have one shape, got {list(k.shape)}, {list(v.shape)}")
    # as flash-attn does: a last dimension that is not contiguous is copied
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    lq, lk = q.shape[1], k.shape[1]
    if lq < 1 or lk < 1:
        raise ValueError(f"seqlen_q and seqlen_k must be >= 1, got {lq}, {lk}")
    softcap = _softcap(softcap)
    left, right = _window(window_size, causal, max(lk, lq))
    if lq > lk:
        # More queries than keys: pad the keys to lq. Where the mask depends on where queries
        # sit (causal, a window, ALiBi) the padding goes on the left, masked by key_starts, so
        # that query i stays aligned with key i + Lk - Lq; otherwise on the right.
        pad = lq - lk
        aligned = left >= 0 or right >= 0 or alibi_slopes is not None
        if aligned:
            k, v = (torch.nn.functional.pad(t, (0, 0, 0, 0, pad, 0)) for t in (k, v))
            shift = torch.full((q.shape[0],), pad, dtype=torch.int32, device=q.device)
            key_starts = shift if key_starts is None else key_starts + pad
            key_lens = None if key_lens is None else key_lens + pad
        else:
            k, v = (torch.nn.functional.pad(t, (0, 0, 0, 0, 0, pad)) for t in (k, v))
            if key_lens is None:
                key_lens = torch.full((q.shape[0],), lk, dtype=torch.int32, device=q.device)
        lk = lq
    layout = LAYOUTS.get((lq, lk, left, right))
    extra = {}
    if softcap:
        extra["softcap"] = softcap
    if alibi_slopes is not None:
        extra["alibi_slopes"] = alibi_slopes
    if key_starts is not None:
        extra["key_starts"] = key_starts
    res = sparse_attention(
        q.transpose(1, 2),
        k.transpose(1, 2),
        v.transpose(1, 2),
        layout,
        scale=scale,
        key_lens=key_lens,
        return_lse=return_lse,
        **extra,
    )
    o, lse = res if return_lse else (res, None)
    o = o.transpose(1, 2)  # the kernels write o with q's strides: contiguous for a plain q
    if not o.is_contiguous():
        o = o.contiguous()
    return (o, lse) if return_lse else o


# ---- fixed-length batches ---------------------------------------------------------------------
def flash_attn_func(
    q,
    k,
    v,
    dropout_p=0.0,
    softmax_scale=None,
    causal=False,
    window_size=(-1, -1),
    softcap=0.0,
    alibi_slopes=None,
    deterministic=False,
    return_attn_probs=False,
):
    """softmax(q k^T * softmax_scale) v over flash-attn's mask, on vilg's kernels.

    q [batch, seqlen_q, heads, head_dim], k, v [batch, seqlen_k, kv_heads, head_dim] (heads a
    multiple of kv_heads); float32, float16 or bfloat16; differentiable. `deterministic` is
    accepted and has no effect (vilg's backward is deterministic). Returns out [batch,
    seqlen_q, heads, head_dim]; a query with no allowed key gets zeros."""
    _unsupported(dropout_p, return_attn_probs)
    return _attend(
        q,
        k,
        v,
        scale=softmax_scale,
        causal=causal,
        window_size=window_size,
        softcap=softcap,
        alibi_slopes=alibi_slopes,
    )


def flash_attn_qkvpacked_func(
    qkv,
    dropout_p=0.0,
    softmax_scale=None,
    causal=False,
    window_size=(-1, -1),
    softcap=0.0,
    alibi_slopes=None,
    deterministic=False,
    return_attn_probs=False,
):
    """`flash_attn_func` on qkv [batch, seqlen, 3, heads, head_dim] (read in place, no copy)."""
    _check_bshd(qkv, "qkv", 5)
    if qkv.shape[2] != 3:
        raise ValueError(f"qkv must be [batch, seqlen, 3, heads, head_dim], got {list(qkv.shape)}")
    q, k, v = qkv.unbind(2)
    return flash_attn_func(
        q, k, v, dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes,
        deterministic, return_attn_probs,
    )  # fmt: skip


def flash_attn_kvpacked_func(
    q,
    kv,
    dropout_p=0.0,
    softmax_scale=None,
    causal=False,
    window_size=(-1, -1),
    softcap=0.0,
    alibi_slopes=None,
    deterministic=False,
    return_attn_probs=False,
):
    """`flash_attn_func` on q and kv [batch, seqlen_k, 2, kv_heads, head_dim]."""
    _check_bshd(kv, "kv", 5)
    if kv.shape[2] != 2:
        raise ValueError(f"kv must be [batch, seqlen, 2, heads, head_dim], got {list(kv.shape)}")
    k, v = kv.unbind(2)
    return flash_attn_func(
        q, k, v, dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes,
        deterministic, return_attn_probs,
    )  # fmt: skip


# ---- variable-length (packed) batches ---------------------------------------------------------
def _cu_seqlens(cu, name: str, total: int) -> torch.Tensor:
    if not isinstance(cu, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(cu).__name__}")
    if cu.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"{name} must be int32 (or int64), got {cu.dtype}")
    if cu.dim() != 1 or cu.numel() < 2:
        raise ValueError(f"{name} must be [batch + 1], got shape {list(cu.shape)}")
    if not cu.is_cuda and not torch.compiler.is_compiling():  # values: eager CPU only
        lens = cu.diff()
        if int(cu[0]) != 0 or bool((lens < 0).any()) or int(cu[-1]) != total:
            raise ValueError(
                f"{name} must rise from 0 to the packed length {total}, got {cu.tolist()}"
            )
    return cu.long()


def _max_seqlen(n, name: str, lens: torch.Tensor) -> int:
    if isinstance(n, torch.Tensor) and n.numel() == 1:
        n = int(n)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"{name} must be a positive int, got {n!r}")
    if not lens.is_cuda and not torch.compiler.is_compiling() and int(lens.max()) > n:
        raise ValueError(f"{name} ({n}) is less than the longest sequence ({int(lens.max())})")
    return n


def _pad(x, cu, lens, width: int, left: bool):
    """Packed [total, H, D] -> [B, width, H, D], sample b in rows [0, len) (right padding) or
    [width - len, width) (left padding); the rest zeros."""
    r = torch.arange(width, device=x.device)
    first = (width - lens) if left else torch.zeros_like(lens)
    idx = r[None, :] - first[:, None]  # index inside the sample
    valid = (idx >= 0) & (idx < lens[:, None])
    src = (cu[:-1, None] + idx).clamp(0, max(x.shape[0] - 1, 0))
    return torch.where(valid[..., None, None], x[src], x.new_zeros(()))


def _rows(cu, lens, width: int, left: bool, total: int):
    """For each packed token: (sample, row in the padded batch)."""
    t = torch.arange(total, device=cu.device)
    b = torch.searchsorted(cu[1:], t, right=True)
    i = t - cu[b]
    return b, (i + width - lens[b]) if left else i


def flash_attn_varlen_func(
    q,
    k,
    v,
    cu_seqlens_q,
    cu_seqlens_k,
    max_seqlen_q,
    max_seqlen_k,
    dropout_p=0.0,
    softmax_scale=None,
    causal=False,
    window_size=(-1, -1),
    softcap=0.0,
    alibi_slopes=None,
    deterministic=False,
    return_attn_probs=False,
    block_table=None,
):
    """Attention over packed sequences: q [total_q, heads, head_dim], k, v [total_k, kv_heads,
    head_dim]; sample b is q[cu_seqlens_q[b]:cu_seqlens_q[b + 1]] against its own keys, with
    causal / window aligned bottom-right per sample. Returns out [total_q, heads, head_dim].

    vilg's kernels run a padded batch [batch, max_seqlen, ...] (one shared layout) and the
    result is packed again. Samples whose query and key lengths differ are left-padded under a
    causal / window / ALiBi mask (each then keeps its own alignment); otherwise right-padded."""
    _unsupported(dropout_p, return_attn_probs)
    if block_table is not None:
        raise NotImplementedError("vilg has no paged KV cache: block_table must be None")
    for n, t in (("q", q), ("k", k), ("v", v)):
        _check_bshd(t, n, 3)
    if k.shape != v.shape:
        raise ValueError(f"k and v must have one shape, got {list(k.shape)}, {list(v.shape)}")
    cu_q = _cu_seqlens(cu_seqlens_q, "cu_seqlens_q", q.shape[0])
    cu_k = _cu_seqlens(cu_seqlens_k, "cu_seqlens_k", k.shape[0])
    if cu_q.shape != cu_k.shape:
        raise ValueError(
            f"cu_seqlens_q and cu_seqlens_k must have one length, got {cu_q.numel()}, "
            f"{cu_k.numel()}"
        )
    lens_q, lens_k = cu_q.diff(), cu_k.diff()
    pq = _max_seqlen(max_seqlen_q, "max_seqlen_q", lens_q)
    pk = _max_seqlen(max_seqlen_k, "max_seqlen_k", lens_k)
    left, right = _window(window_size, causal, pk)
    same = cu_seqlens_q is cu_seqlens_k or torch.equal(cu_q, cu_k)
    aligned = left >= 0 or right >= 0 or alibi_slopes is not None
    left_pad = aligned and not same
    # Widths rounded up to a 64-key tile (the kernels' tile: no extra tiles visited): a batch
    # of a new max_seqlen then mostly finds its layout built. Alignment does not move, since
    # every sample sits at the same end of its rows (right padding of equal q / k lengths, or
    # left padding).
    width_q = -(-(pq if not same else max(pq, pk)) // 64) * 64
    width_k = max(-(-pk // 64) * 64, width_q)
    qp = _pad(q, cu_q, lens_q, width_q, left_pad)
    kp = _pad(k, cu_k, lens_k, width_k, left_pad)
    vp = _pad(v, cu_k, lens_k, width_k, left_pad)
    if left_pad:
        kw = dict(key_starts=(width_k - lens_k).to(torch.int32))
    else:
        kw = dict(key_lens=lens_k.to(torch.int32))
    o = _attend(
        qp,
        kp,
        vp,
        scale=softmax_scale,
        causal=causal,
        window_size=window_size,
        softcap=softcap,
        alibi_slopes=alibi_slopes,
        **kw,
    )
    b, row = _rows(cu_q, lens_q, width_q, left_pad, q.shape[0])
    return o[b, row]


def flash_attn_varlen_qkvpacked_func(
    qkv,
    cu_seqlens,
    max_seqlen,
    dropout_p=0.0,
    softmax_scale=None,
    causal=False,
    window_size=(-1, -1),
    softcap=0.0,
    alibi_slopes=None,
    deterministic=False,
    return_attn_probs=False,
):
    """`flash_attn_varlen_func` on qkv [total, 3, heads, head_dim]."""
    _check_bshd(qkv, "qkv", 4)
    if qkv.shape[1] != 3:
        raise ValueError(f"qkv must be [total, 3, heads, head_dim], got {list(qkv.shape)}")
    q, k, v = qkv.unbind(1)
    return flash_attn_varlen_func(
        q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, dropout_p, softmax_scale,
        causal, window_size, softcap, alibi_slopes, deterministic, return_attn_probs,
    )  # fmt: skip


def flash_attn_varlen_kvpacked_func(
    q,
    kv,
    cu_seqlens_q,
    cu_seqlens_k,
    max_seqlen_q,
    max_seqlen_k,
    dropout_p=0.0,
    softmax_scale=None,
    causal=False,
    window_size=(-1, -1),
    softcap=0.0,
    alibi_slopes=None,
    deterministic=False,
    return_attn_probs=False,
):
    """`flash_attn_varlen_func` on q and kv [total_k, 2, kv_heads, head_dim]."""
    _check_bshd(kv, "kv", 4)
    if kv.shape[1] != 2:
        raise ValueError(f"kv must be [total, 2, heads, head_dim], got {list(kv.shape)}")
    k, v = kv.unbind(1)
    return flash_attn_varlen_func(
        q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p,
        softmax_scale, causal, window_size, softcap, alibi_slopes, deterministic,
        return_attn_probs,
    )  # fmt: skip


# ---- decoding ---------------------------------------------------------------------------------
def flash_attn_with_kvcache(
    q,
    k_cache,
    v_cache,
    k=None,
    v=None,
    rotary_cos=None,
    rotary_sin=None,
    cache_seqlens=None,
    cache_batch_idx=None,
    cache_leftpad=None,
    block_table=None,
    softmax_scale=None,
    causal=False,
    window_size=(-1, -1),
    softcap=0.0,
    rotary_interleaved=True,
    alibi_slopes=None,
    num_splits=0,
    return_softmax_lse=False,
):
    """Attention of q [batch, seqlen_q, heads, head_dim] against a KV cache [batch_cache,
    seqlen_cache, kv_heads, head_dim], as flash-attn's: new k, v [batch, seqlen_new, kv_heads,
    head_dim] are first written into the cache in place at cache_seqlens (int or [batch]);
    sample b then attends its first cache_seqlens[b] (+ seqlen_new) keys, the queries being its
    last positions; cache_batch_idx picks cache rows, cache_leftpad masks keys before it.

    Forward only (like flash-attn's). The cache lengths are read on the host (one device sync
    on a GPU). When every query sees all its sample's keys (one query per sample, or no causal /
    window mask; no ALiBi) the batch runs as one kernel call with per-sample key lengths;
    otherwise samples of equal length run as one call each. `num_splits` is ignored.
    Returns out [batch, seqlen_q, heads, head_dim] (and the float32 lse [batch, heads,
    seqlen_q] with return_softmax_lse)."""
    if rotary_cos is not None or rotary_sin is not None:
        raise NotImplementedError(
            "vilg.flash_attn_with_kvcache applies no rotary embedding: rotate q and k before "
            "the call and pass rotary_cos = rotary_sin = None"
        )
    if block_table is not None:
        raise NotImplementedError("vilg has no paged KV cache: block_table must be None")
    _check_bshd(q, "q")
    _check_bshd(k_cache, "k_cache")
    _check_bshd(v_cache, "v_cache")
    if k_cache.shape != v_cache.shape:
        raise ValueError(
            f"k_cache and v_cache must have one shape, got {list(k_cache.shape)}, "
            f"{list(v_cache.shape)}"
        )
    B, lq = q.shape[:2]
    S = k_cache.shape[1]
    dev = k_cache.device
    if cache_batch_idx is None:
        if k_cache.shape[0] != B:
            raise ValueError(
                f"k_cache has {k_cache.shape[0]} rows for a batch of {B}: pass cache_batch_idx"
            )
        rows = list(range(B))
    else:
        rows = torch.as_tensor(cache_batch_idx).tolist()
        if len(rows) != B or any(not 0 <= r < k_cache.shape[0] for r in rows):
            raise ValueError(
                f"cache_batch_idx must hold {B} indices into the cache's {k_cache.shape[0]} rows"
            )
    if cache_seqlens is None:  # the whole cache
        if k is not None:
            raise ValueError("cache_seqlens is required when new k, v are appended")
        lens = [S] * B
    elif isinstance(cache_seqlens, int) and not isinstance(cache_seqlens, bool):
        lens = [cache_seqlens] * B
    else:
        t = torch.as_tensor(cache_seqlens)
        if t.dtype.is_floating_point or t.dim() != 1 or t.numel() != B:
            raise ValueError(f"cache_seqlens must be an int or [batch] integers, got {t!r}")
        lens = t.tolist()
    new = 0
    if (k is None) != (v is None):
        raise ValueError("pass both k and v (new keys and values) or neither")
    if k is not None:
        _check_bshd(k, "k")
        _check_bshd(v, "v")
        if k.shape != v.shape or k.shape[0] != B or k.shape[2:] != k_cache.shape[2:]:
            raise ValueError(
                f"k, v must be [batch, seqlen_new, kv_heads, head_dim] matching the cache, got "
                f"{list(k.shape)}, {list(v.shape)}"
            )
        new = k.shape[1]
    total = [n + new for n in lens]
    if any(n < 0 for n in lens) or any(n > S for n in total):
        raise ValueError(
            f"cache_seqlens {lens} (+ {new} new keys) must lie in [0, {S}], the cache's length"
        )
    if new:  # append in place, as flash-attn does
        idx = torch.tensor(rows, device=dev)[:, None]
        pos = torch.tensor(lens, device=dev)[:, None] + torch.arange(new, device=dev)[None, :]
        with torch.no_grad():
            k_cache[idx, pos] = k.to(k_cache.dtype)
            v_cache[idx, pos] = v.to(v_cache.dtype)
    starts = None
    if cache_leftpad is not None:
        starts = torch.as_tensor(cache_leftpad, device=dev).to(torch.int32)
    left, right = _window(window_size, causal, S)
    if alibi_slopes is None and left < 0 and (lq == 1 or right < 0):
        # Every query sees all its sample's keys (a single query is last, so causal cuts
        # nothing): one call over the cache's first keys, rounded up to a tile so that a
        # layout serves 64 decoding steps, with per-sample key lengths.
        n = min(S, max(64, -(-max(total) // 64) * 64))
        whole = rows == list(range(B))
        kc = k_cache[:, :n] if whole else k_cache[rows, :n]
        vc = v_cache[:, :n] if whole else v_cache[rows, :n]
        return _attend(
            q,
            kc,
            vc,
            scale=softmax_scale,
            causal=False,
            window_size=(-1, -1),
            softcap=softcap,
            key_lens=torch.tensor(total, dtype=torch.int32, device=dev),
            key_starts=starts,
            return_lse=return_softmax_lse,
        )
    alibi = alibi_slopes
    out = q.new_empty(q.shape)
    lse = q.new_empty((B, q.shape[2], lq), dtype=torch.float32) if return_softmax_lse else None
    for n in sorted(set(total)):  # one kernel call per distinct cache length
        sel = [b for b in range(B) if total[b] == n]
        if n == 0:
            out[sel] = 0
            if lse is not None:
                lse[sel] = float("-inf")
            continue
        whole = len(sel) == B and rows == list(range(B))
        kc = k_cache[:, :n] if whole else k_cache[[rows[b] for b in sel], :n]
        vc = v_cache[:, :n] if whole else v_cache[[rows[b] for b in sel], :n]
        qs = q if whole else q[sel]
        a = alibi
        if a is not None and a.dim() == 2 and not whole:
            a = a[sel]
        res = _attend(
            qs,
            kc,
            vc,
            scale=softmax_scale,
            causal=causal,
            window_size=window_size,
            softcap=softcap,
            alibi_slopes=a,
            key_starts=None if starts is None else (starts if whole else starts[sel]),
            return_lse=return_softmax_lse,
        )
        o, l_ = res if return_softmax_lse else (res, None)
        if whole:
            return (o, l_) if return_softmax_lse else o
        out[sel] = o
        if lse is not None:
            lse[sel] = l_
    return (out, lse) if return_softmax_lse else out
