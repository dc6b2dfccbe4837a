"""A library of attention patterns as `Layout`s (all re-exported by `vilg.layouts`).

Every builder returns a Layout whose dense mask is the pattern exactly; `prefix=N` prepends N
global tokens (a CLS token, a text prompt) that every query sees and that see everything, and
`text_lens` then pads them per sample. Tiles are 64 x 64 by default (the CUDA kernels need 64,
and the CPU kernels spend the least per visited entry there, their microkernels being cut for
it); what each pattern chooses is the *order* of tokens inside the tiles, so that visited tiles
are as full as possible (`Layout.fill`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from vilg.layout import Layout

__all__ = [
    "axial",
    "block_diagonal",
    "causal",
    "document",
    "neighborhood_2d",
    "sliding_window",
]


def _pos_int(x, name: str, minimum: int = 1) -> int:
    if isinstance(x, bool) or not isinstance(x, int) or x < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {x!r}")
    return x


def grid_shape(grid) -> tuple[int, int]:
    """(H, W) of an image-token grid, or a ValueError saying what is wrong."""
    try:
        H, W = (int(g) for g in grid)
    except (TypeError, ValueError):
        raise ValueError(f"grid must be (H, W), got {grid!r}") from None
    if H < 1 or W < 1:
        raise ValueError(f"grid must be positive, got {grid!r}")
    return H, W


def _make(
    n: int,
    mask_mod: Callable,
    name: str,
    *,
    prefix: int,
    block_size: int | None,
    perm: torch.Tensor | None = None,
    grid: bool = False,
    key_hint: Callable | None = None,
):
    """Layout over [prefix | n pattern tokens]; `mask_mod`, `perm` and `key_hint` (see
    vilg.layouts.KeyHint: the pattern positions its queries may attend, a superset) index the
    pattern part."""
    prefix = _pos_int(prefix, "prefix", 0)
    bs = 64 if block_size is None else block_size
    if prefix:
        base = mask_mod
        if key_hint is not None:
            inner_hint = key_hint

            def key_hint(q):  # global queries see every key; the others the prefix, and more
                if bool((q < prefix).any()):
                    return torch.arange(n + prefix)
                return torch.cat([torch.arange(prefix), inner_hint(q - prefix) + prefix])

        def mask_mod(q, k):
            glob = (q < prefix) | (k < prefix)
            return glob | base((q - prefix).clamp(min=0), (k - prefix).clamp(min=0))

        if grid:  # kernel order [grid | prefix]: the grid's tiles stay aligned to its rows
            inner = torch.arange(n) if perm is None else perm
            perm = torch.cat([inner + prefix, torch.arange(prefix)])
        elif perm is not None:
            perm = torch.cat([torch.arange(prefix), perm + prefix])
        name = f"{name} + prefix {prefix}"
    return Layout(
        n + prefix,
        mask_mod,
        block_size=bs,
        perm=perm,
        text_segment=(0, prefix) if prefix else None,
        name=name,
        key_hint=key_hint,
    )


def _span(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Positions min(lo) .. max(hi) (a key hint's range)."""
    return torch.arange(min(lo.tolist()), max(hi.tolist()) + 1)


def causal(seq_len: int, *, prefix: int = 0, block_size: int | None = None) -> Layout:
    """Query i attends keys j <= i."""
    L = _pos_int(seq_len, "seq_len")
    return _make(L, lambda q, k: k <= q, f"causal(L={L})", prefix=prefix, block_size=block_size)


def sliding_window(
    seq_len: int,
    window: int,
    causal: bool = True,
    *,
    prefix: int = 0,
    block_size: int | None = None,
) -> Layout:
    """causal: query i attends the `window` keys i - window < j <= i (transformers'
    sliding_window convention). causal=False: |i - j| <= window // 2 (window odd)."""
    L, w = _pos_int(seq_len, "seq_len"), _pos_int(window, "window")
    if causal:
        fn = lambda q, k: (k <= q) & (q - k < w)  # noqa: E731
        hint = lambda q: _span(q - w + 1, q)  # noqa: E731
    else:
        if w % 2 == 0:
            raise ValueError(f"a bidirectional window must be odd (centred), got {w}")
        fn = lambda q, k: (q - k).abs() <= w // 2  # noqa: E731
        hint = lambda q: _span(q - w // 2, q + w // 2)  # noqa: E731
    name = f"sliding_window(L={L}, window={w}{'' if causal else ', bidirectional'})"
    return _make(L, fn, name, prefix=prefix, block_size=block_size, key_hint=hint)


def _window_bounds(n: int, window: int, dilation: int, causal: bool) -> torch.Tensor:
    """[n, 2]: for each coordinate i, the first and last index *within its dilation group*
    (coordinates with i % dilation equal, indexed by i // dilation) that it attends.

    NATTEN's rule: a centred window of `window` group members, shifted inward at the borders
    so that it always holds exactly `window` of them; causal: the `window` members ending at i
    (fewer near the start)."""
    i = torch.arange(n)
    gi = i // dilation
    if causal:
        lo = (gi - window + 1).clamp(min=0)
        return torch.stack([lo, gi], 1)
    group_len = (n - i % dilation + dilation - 1) // dilation
    lo = torch.minimum((gi - window // 2).clamp(min=0), group_len - window)
    return torch.stack([lo, lo + window - 1], 1)


def _span_tiles(bounds: torch.Tensor, d: int, n: int, p: int) -> list[int]:
    """For each run of p coordinates (a patch side), how many runs its keys touch. (Plain
    Python: a few hundred numbers, where tensor ops cost more than they compute.)"""
    b = bounds.tolist()
    lo = [b[i][0] * d + i % d for i in range(n)]  # first / last key coordinate of each query
    hi = [b[i][1] * d + i % d for i in range(n)]
    return [max(hi[j : j + p]) // p - min(lo[j : j + p]) // p + 1 for j in range(0, n, p)]


def _patch_order(H: int, W: int, ph: int, pw: int) -> torch.Tensor | None:
    """Raster positions ordered patch by patch (ph x pw patches, row-major inside); None when
    that is raster order itself (one-row patches)."""
    if ph == 1:
        return None
    r, c = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    key = (((r // ph) * (W // pw) + c // pw) * ph + r % ph) * pw + c % pw
    return torch.argsort(key.flatten())


def neighborhood_2d(
    grid: Sequence[int],
    window: int | Sequence[int],
    causal: bool = False,
    dilation: int | Sequence[int] = 1,
    *,
    prefix: int = 0,
    block_size: int | None = None,
) -> Layout:
    """2-D neighbourhood attention over an H x W grid in raster order (NATTEN semantics):
    each query attends a window[0] x window[1] neighbourhood (every dilation-th row / column),
    clamped at the borders by shifting it inward, so every query sees exactly window^2 keys;
    causal=True: only keys at or above-left on both axes (the window ends at the query).

    The tokens inside each tile are ordered raster-wise or patch-wise (2 x 32, 4 x 16 or
    8 x 8 patches of the grid), whichever visits fewest tiles; the layout's permutation
    handles it, callers keep raster order."""
    H, W = grid_shape(grid)
    ks = (window, window) if isinstance(window, int) else tuple(window)
    ds = (dilation, dilation) if isinstance(dilation, int) else tuple(dilation)
    if len(ks) != 2 or len(ds) != 2:
        raise ValueError(f"window and dilation take one int or two, got {window!r}, {dilation!r}")
    for k, d, n, axis in zip(ks, ds, (H, W), ("rows", "columns")):
        _pos_int(k, "window")
        _pos_int(d, "dilation")
        if k * d > n:
            raise ValueError(f"window {k} x dilation {d} exceeds the grid's {n} {axis}")
    (kh, kw), (dh, dw) = ks, ds
    rows = _window_bounds(H, kh, dh, causal)
    cols = _window_bounds(W, kw, dw, causal)

    def axis_table(n, bounds, d):  # [n, n] bool: coordinate i may attend coordinate j
        i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
        return (j % d == i % d) & (j // d >= bounds[:, :1]) & (j // d <= bounds[:, 1:])

    row_ok, col_ok = axis_table(H, rows, dh), axis_table(W, cols, dw)

    def fn(q, k):
        q, k = torch.as_tensor(q), torch.as_tensor(k)
        if q.dim() == 2 and k.dim() == 2 and q.shape[1] == 1 and k.shape[0] == 1:
            # the build's [queries, 1] x [1, keys] call: row gathers, no 2-D index math
            q, k = q[:, 0], k[0]
            return row_ok[q // W][:, k // W] & col_ok[q % W][:, k % W]
        return row_ok[q // W, k // W] & col_ok[q % W, k % W]

    def hint(q):  # the bounding box of the queries' windows
        r, c = q // W, q % W
        rr, cc = (
            _span(rows[r, 0] * dh + r % dh, rows[r, 1] * dh + r % dh),
            _span(cols[c, 0] * dw + c % dw, cols[c, 1] * dw + c % dw),
        )
        return (rr[:, None] * W + cc[None, :]).flatten()

    name = f"neighborhood_2d(grid=({H}, {W}), window=({kh}, {kw})"
    name += (f", dilation=({dh}, {dw})" if (dh, dw) != (1, 1) else "") + (
        ", causal)" if causal else ")"
    )
    # tile shape: the ph x (bs / ph) patch whose key neighbourhoods touch the fewest tiles
    # (bounding-box estimate; correctness never depends on it, only speed)
    bs = 64 if block_size is None else block_size
    best, perm = None, None
    for ph in (1, 2, 4, 8):
        pw = bs // ph
        if H % ph or W % pw:
            continue
        cost = sum(_span_tiles(rows, dh, H, ph)) * sum(_span_tiles(cols, dw, W, pw))
        if best is None or cost < best:
            best, perm = cost, _patch_order(H, W, ph, pw)
    return _make(
        H * W, fn, name, prefix=prefix, block_size=block_size, perm=perm, grid=True, key_hint=hint
    )


def axial(
    grid: Sequence[int],
    axis: str = "row",
    causal: bool = False,
    *,
    prefix: int = 0,
    block_size: int | None = None,
) -> Layout:
    """Axial attention over an H x W grid in raster order: each query attends its row
    (axis="row") or its column ("column"); causal: only keys at or before it on that axis.
    Column attention runs on the transposed grid (a permutation), where it is row attention."""
    H, W = grid_shape(grid)
    if axis not in ("row", "column"):
        raise ValueError(f"axis must be 'row' or 'column', got {axis!r}")
    perm = None
    if axis == "row":
        fn = lambda q, k: (q // W == k // W) & ((k <= q) if causal else True)  # noqa: E731
        hint = lambda q: _span(q // W * W, q // W * W + W - 1)  # noqa: E731
    else:
        fn = lambda q, k: (q % W == k % W) & ((k <= q) if causal else True)  # noqa: E731
        perm = torch.arange(H * W).reshape(H, W).t().flatten()

        def hint(q):  # the queries' columns, every row
            return (torch.arange(H)[:, None] * W + torch.unique(q % W)[None, :]).flatten()

    name = f"axial(grid=({H}, {W}), {axis}{', causal' if causal else ''})"
    return _make(
        H * W, fn, name, prefix=prefix, block_size=block_size, perm=perm, grid=True, key_hint=hint
    )


def document(
    doc_ids, causal: bool = False, *, prefix: int = 0, block_size: int | None = None
) -> Layout:
    """Packed sequences: a query attends keys with the same document id (causal: and j <= i).
    `doc_ids` [L] integers; equal ids need not be contiguous."""
    ids = torch.as_tensor(doc_ids)
    if ids.dim() != 1 or ids.numel() < 1:
        raise ValueError(f"doc_ids must be a non-empty 1-D sequence, got shape {list(ids.shape)}")
    if ids.dtype.is_floating_point or ids.dtype == torch.bool or ids.is_complex():
        raise TypeError(f"doc_ids must hold integers, got {ids.dtype}")
    ids = ids.detach().cpu().long()
    L = ids.numel()
    if causal:
        fn = lambda q, k: (ids[q] == ids[k]) & (k <= q)  # noqa: E731
    else:
        fn = lambda q, k: ids[q] == ids[k]  # noqa: E731
    n_docs = int(torch.unique(ids).numel())
    name = f"document(L={L}, docs={n_docs}{', causal' if causal else ''})"
    return _make(L, fn, name, prefix=prefix, block_size=block_size)


def block_diagonal(
    lengths: Sequence[int], causal: bool = False, *, prefix: int = 0, block_size: int | None = None
) -> Layout:
    """Packed sequences of the given lengths, back to back: `document` with ids 0, 1, ..."""
    lengths = list(lengths)
    if not lengths or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in lengths):
        raise ValueError(f"lengths must be positive ints, got {lengths!r}")
    ids = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    return document(ids, causal, prefix=prefix, block_size=block_size)
