"""The pattern library: each builder's mask against an independent element-by-element
construction (plain Python loops), its block-sparse form, and attention through it."""

import pytest
import torch
from reference import attention as ref_attention
from reference import rel_err
from test_layouts import _unpack

from vilg.layouts import (
    Layout,
    axial,
    block_diagonal,
    causal,
    document,
    neighborhood_2d,
    sliding_window,
)
from vilg.ops import sparse_attention


def _loops(L, allowed, prefix=0):
    """[prefix + L]^2 bool from allowed(i, j) over pattern positions, with `prefix` global
    tokens in front."""
    n = prefix + L
    m = torch.zeros(n, n, dtype=torch.bool)
    for i in range(n):
        for j in range(n):
            m[i, j] = i < prefix or j < prefix or bool(allowed(i - prefix, j - prefix))
    return m


def _natten_axis(n, k, d, is_causal):
    """Keys (coordinates) each coordinate attends along one axis, NATTEN's way: within the
    coordinates sharing i % d, take k consecutive ones centred on i, pushed back inside
    the axis at its ends; causal: the k ending at i (fewer near the start)."""
    out = []
    for i in range(n):
        group = list(range(i % d, n, d))
        idx = group.index(i)
        if is_causal:
            out.append(set(group[max(0, idx - k + 1) : idx + 1]))
            continue
        start = idx - k // 2
        start = max(0, min(start, len(group) - k))
        out.append(set(group[start : start + k]))
    return out


def _natten_2d(H, W, kh, kw, dh=1, dw=1, is_causal=False):
    rows, cols = _natten_axis(H, kh, dh, is_causal), _natten_axis(W, kw, dw, is_causal)
    return lambda i, j: (j // W in rows[i // W]) and (j % W in cols[i % W])


@pytest.mark.parametrize("L", [1, 17, 70])
@pytest.mark.parametrize("prefix", [0, 3])
def test_causal(L, prefix):
    lay = causal(L, prefix=prefix, block_size=16)
    assert torch.equal(lay.dense_mask(), _loops(L, lambda i, j: j <= i, prefix))


@pytest.mark.parametrize("window,is_causal", [(1, True), (5, True), (32, True), (7, False)])
@pytest.mark.parametrize("prefix", [0, 2])
def test_sliding_window(window, is_causal, prefix):
    L = 45
    lay = sliding_window(L, window, is_causal, prefix=prefix, block_size=16)
    if is_causal:
        want = _loops(L, lambda i, j: i - window < j <= i, prefix)
    else:
        want = _loops(L, lambda i, j: abs(i - j) <= window // 2, prefix)
    assert torch.equal(lay.dense_mask(), want)


NEIGHBORHOODS = [
    ((5, 7), 3, 1, False),
    ((6, 10), (3, 5), (1, 2), False),
    ((8, 8), 3, 2, False),
    ((9, 7), (5, 3), (1, 2), False),
    ((5, 7), 3, 1, True),
    ((8, 6), (3, 2), (2, 1), True),
    ((4, 4), 4, 1, False),  # window = grid: everyone sees everything
    ((16, 16), 5, 1, False),  # big enough for a patch-ordered tiling
]


@pytest.mark.parametrize("grid,window,dilation,is_causal", NEIGHBORHOODS)
@pytest.mark.parametrize("prefix", [0, 1])
def test_neighborhood_2d_is_natten(grid, window, dilation, is_causal, prefix):
    H, W = grid
    kh, kw = (window, window) if isinstance(window, int) else window
    dh, dw = (dilation, dilation) if isinstance(dilation, int) else dilation
    lay = neighborhood_2d(grid, window, is_causal, dilation, prefix=prefix, block_size=16)
    want = _loops(H * W, _natten_2d(H, W, kh, kw, dh, dw, is_causal), prefix)
    assert torch.equal(lay.dense_mask(), want)
    if not is_causal:  # NATTEN's defining property: every query sees exactly kh * kw keys
        assert (want[prefix:, prefix:].sum(1) == kh * kw).all()
    assert torch.equal(_unpack_seq(lay), want)


def test_neighborhood_interior_window_is_centred():
    lay = neighborhood_2d((9, 9), 3)
    m = lay.dense_mask()
    q = 4 * 9 + 4
    keys = {(int(k) // 9, int(k) % 9) for k in torch.nonzero(m[q]).flatten()}
    assert keys == {(r, c) for r in (3, 4, 5) for c in (3, 4, 5)}
    corner = {(int(k) // 9, int(k) % 9) for k in torch.nonzero(m[0]).flatten()}
    assert corner == {(r, c) for r in (0, 1, 2) for c in (0, 1, 2)}  # shifted inward


@pytest.mark.parametrize("axis", ["row", "column"])
@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("prefix", [0, 4])
def test_axial(axis, is_causal, prefix):
    H, W = 5, 7
    lay = axial((H, W), axis, is_causal, prefix=prefix, block_size=16)

    def ok(i, j):
        same = i // W == j // W if axis == "row" else i % W == j % W
        return same and (j <= i or not is_causal)

    want = _loops(H * W, ok, prefix)
    assert torch.equal(lay.dense_mask(), want)
    assert torch.equal(_unpack_seq(lay), want)


@pytest.mark.parametrize("is_causal", [False, True])
def test_document_and_block_diagonal(is_causal):
    lengths = [5, 1, 20, 13]
    ids = [d for d, n in enumerate(lengths) for _ in range(n)]
    want = _loops(len(ids), lambda i, j: ids[i] == ids[j] and (j <= i or not is_causal))
    assert torch.equal(block_diagonal(lengths, is_causal, block_size=16).dense_mask(), want)
    assert torch.equal(document(ids, is_causal, block_size=16).dense_mask(), want)
    scattered = [0, 1, 0, 2, 1, 0]  # equal ids need not be contiguous
    want = _loops(6, lambda i, j: scattered[i] == scattered[j])
    assert torch.equal(document(torch.tensor(scattered), block_size=16).dense_mask(), want)


def test_union_and_intersection():
    L = 40
    a = sliding_window(L, 4, block_size=16)
    b = document([0] * 25 + [1] * 15, block_size=32)
    am, bm = a.dense_mask(), b.dense_mask()
    u, n = a | b, a & b
    assert torch.equal(u.dense_mask(), am | bm) and torch.equal(n.dense_mask(), am & bm)
    assert u.block_size == 16 and "|" in repr(u) and "&" in repr(n)
    # permuted layouts combine too (the result runs in sequence order)
    c = axial((5, 8), "column", block_size=16)
    r = axial((5, 8), "row", block_size=16)
    assert torch.equal((c | r).dense_mask(), c.dense_mask() | r.dense_mask())
    assert torch.equal(_unpack_seq(c & r), torch.eye(L, dtype=torch.bool))
    with pytest.raises(ValueError, match="lengths"):
        a | causal(L + 1)


def _unpack_seq(lay: Layout) -> torch.Tensor:
    """The block-sparse arrays' mask mapped back to sequence order."""
    m = _unpack(lay)
    perm = lay.kernel_perm
    if perm is None:
        return m
    inv = torch.argsort(perm)
    return m[inv][:, inv]


def test_repr_reports_tile_fill():
    lay = sliding_window(256, 64)
    assert f"fill={lay.fill:.2f}" in repr(lay) and "sliding_window" in repr(lay)
    assert 0.5 < lay.fill <= 1.0
    # neighbourhoods order tokens patch-wise when that visits fewer tiles than raster order
    for grid, w, strictly in (((16, 64), 7, True), ((32, 32), 9, False)):
        nb = neighborhood_2d(grid, w)
        raster = Layout.from_mask_mod(nb.mask_mod, nb.seq_len)
        assert torch.equal(_unpack_seq(nb), raster.dense_mask())
        assert nb.num_tiles < raster.num_tiles if strictly else nb.num_tiles <= raster.num_tiles
    assert causal(1024).fill > 0.49


PATTERNS = [
    lambda: causal(37, prefix=2, block_size=16),
    lambda: sliding_window(50, 9, block_size=16),
    lambda: sliding_window(50, 9, False, prefix=3, block_size=16),
    lambda: neighborhood_2d((6, 7), 3, prefix=1, block_size=16),
    lambda: neighborhood_2d((8, 8), 3, True, 2, block_size=16),
    lambda: axial((5, 6), "column", True, prefix=2, block_size=16),
    lambda: block_diagonal([7, 20, 11], True, block_size=16),
    lambda: sliding_window(40, 5, block_size=16) | document([0] * 17 + [1] * 23, block_size=16),
]


@pytest.mark.parametrize("make", PATTERNS)
def test_attention_through_patterns(gen, make):
    lay = make()
    B, L = 2, lay.seq_len
    q = torch.randn(B, 4, L, 8, generator=gen, requires_grad=True)
    k, v = (torch.randn(B, 2, L, 8, generator=gen, requires_grad=True) for _ in "kv")
    seg = lay.text_segment
    lens = torch.tensor([seg[1], max(0, seg[1] - 1)]) if seg[1] else None
    out = sparse_attention(q, k, v, lay, text_lens=lens)
    qd, kd, vd = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref = ref_attention(
        qd,
        kd.repeat_interleave(2, 1),
        vd.repeat_interleave(2, 1),
        lay.dense_mask(),
        text_lens=lens,
        text_segment=seg,
    )
    assert rel_err(out, ref) < 1e-5
    g = torch.randn(out.shape, generator=gen)
    for a, b in zip(
        torch.autograd.grad(out, (q, k, v), g), torch.autograd.grad(ref, (qd, kd, vd), g.double())
    ):
        assert rel_err(a, b) < 2e-5


@pytest.mark.parametrize(
    "call",
    [
        lambda: causal(0),
        lambda: sliding_window(10, 0),
        lambda: sliding_window(10, 4, causal=False),
        lambda: neighborhood_2d((4, 4), 5),
        lambda: neighborhood_2d((8, 8), 3, dilation=3),
        lambda: neighborhood_2d((8, 8), (3, 3, 3)),
        lambda: neighborhood_2d((0, 8), 3),
        lambda: axial((4, 4), "diagonal"),
        lambda: block_diagonal([3, 0]),
        lambda: block_diagonal([]),
        lambda: document(torch.zeros(2, 3, dtype=torch.long)),
        lambda: causal(10, prefix=-1),
    ],
)
def test_bad_arguments(call):
    with pytest.raises(ValueError):
        call()


def test_document_ids_must_be_integers():
    with pytest.raises(TypeError, match="integers"):
        document(torch.zeros(4))


@pytest.mark.parametrize(
    "make",
    [
        lambda: sliding_window(333, 45),
        lambda: sliding_window(301, 41, causal=False, prefix=3),
        lambda: neighborhood_2d((24, 40), 7, prefix=1),
        lambda: neighborhood_2d((13, 17), (5, 3), causal=True, dilation=(2, 3), prefix=2),
        lambda: neighborhood_2d((16, 32), 5, block_size=32),
        lambda: axial((12, 20), "column", causal=True, prefix=5),
        lambda: axial((9, 30), "row"),
        lambda: sliding_window(200, 30) | axial((10, 20), "row"),
        lambda: sliding_window(200, 30) & causal(200),
        lambda: sliding_window(260, 33).last_queries(100),
    ],
)
def test_key_hint_only_speeds_up_the_build(make):
    """A pattern's key hint narrows the key tiles the build evaluates; the kernel arrays must be
    exactly those of a build that evaluates every key."""
    lay = make()
    assert lay.key_hint is not None
    full = Layout(
        lay.seq_len,
        lay.mask_mod,
        q_len=lay.q_len,
        perm=lay.kernel_perm,
        block_size=lay.block_size,
        text_segment=lay.text_segment if lay.text_segment[1] else None,
    )
    for a, b in zip(lay.kernel_arrays("cpu"), full.kernel_arrays("cpu")):
        assert (a is None and b is None) or torch.equal(a, b)
