"""Fewer queries than keys: a chunk of new queries against a longer KV cache (chunked prefill),
bottom-right aligned (query r of the chunk is sequence position k_len - q_len + r), through
Layout.last_queries / sparse_attention, against float64 dense attention on masks built here
element by element from the spec's rules."""

import pytest
import torch
from reference import rel_err
from torch._dynamo.testing import CompileCounterWithBackend

from vilg.layouts import (
    Layout,
    axial,
    causal,
    document,
    ernie_vilg,
    neighborhood_2d,
    sliding_window,
)
from vilg.ops import sparse_attention


def _spec_mask(rule, q_len, k_len, prefix=0):
    """[q_len, k_len] bool from a rule on sequence positions (i query, j key), plus a prefix of
    global tokens, written out in plain Python."""
    m = torch.zeros(q_len, k_len, dtype=torch.bool)
    for r in range(q_len):
        i = k_len - q_len + r
        for j in range(k_len):
            if i < prefix or j < prefix:
                m[r, j] = True
            else:
                m[r, j] = rule(i - prefix, j - prefix)
    return m


def _reference(q, k, v, mask, key_lens=None):
    """float64 dense attention, k/v repeated per GQA group, padded keys removed."""
    g = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
    m = mask.expand(q.shape[0], *mask.shape).clone()
    if key_lens is not None:
        for b, n in enumerate(key_lens.tolist()):
            m[b, :, n:] = False
    s = (q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5).masked_fill(~m[:, None], float("-inf"))
    return torch.softmax(s, -1).nan_to_num(0.0) @ v


def _inputs(gen, B, H, Hk, q_len, k_len, D, dtype=torch.float32):
    q = torch.randn(B, H, q_len, D, generator=gen).to(dtype).requires_grad_()
    k, v = (torch.randn(B, Hk, k_len, D, generator=gen).to(dtype).requires_grad_() for _ in "kv")
    return q, k, v


def _check(gen, lay, mask, q_len, heads=4, kv_heads=2, key_lens=None, D=24, tol=1e-5):
    B, k_len = 2 if key_lens is None else len(key_lens), lay.seq_len
    q, k, v = _inputs(gen, B, heads, kv_heads, q_len, k_len, D)
    out = sparse_attention(q, k, v, lay, key_lens=key_lens)
    assert out.shape == q.shape
    leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
    ref = _reference(*leaves, mask, key_lens)
    assert rel_err(out, ref) < tol
    g = torch.randn(out.shape, generator=gen)
    got = torch.autograd.grad(out, (q, k, v), g)
    want = torch.autograd.grad(ref, leaves, g.double())
    for name, a, b in zip("qkv", got, want):
        assert a.shape == b.shape
        assert rel_err(a, b) < 2 * tol, (name, rel_err(a, b))


CASES = [  # (builder, rule on pattern positions, prefix)
    (lambda L: causal(L), lambda i, j: j <= i, 0),
    (lambda L: sliding_window(L, 37), lambda i, j: i - 37 < j <= i, 0),
    (lambda L: sliding_window(L - 5, 20, prefix=5), lambda i, j: i - 20 < j <= i, 5),
    (lambda L: causal(L, block_size=32), lambda i, j: j <= i, 0),
]


@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("k_len,q_len", [(203, 70), (130, 1), (131, 64), (97, 96), (150, 129)])
def test_chunk_matches_dense(gen, case, k_len, q_len):
    make, rule, prefix = CASES[case]
    lay = make(k_len)
    if q_len > k_len - prefix:  # the chunk would hold global tokens, which see later keys
        with pytest.raises(ValueError, match="defined only for causal patterns"):
            lay.last_queries(q_len)
        return
    mask = _spec_mask(rule, q_len, k_len, prefix)
    chunk = lay.last_queries(q_len)
    assert torch.equal(chunk.dense_mask(), mask)
    _check(gen, lay, mask, q_len)  # square layout in: sparse_attention derives the chunk
    _check(gen, chunk, mask, q_len, heads=3, kv_heads=3)  # the rectangular layout itself


@pytest.mark.parametrize("heads,kv_heads", [(4, 1), (6, 3)])
def test_chunk_with_key_lens_and_gqa(gen, heads, kv_heads):
    # padding: the cache of sample b holds key_lens[b] real keys (the chunk's own keys included)
    k_len, q_len = 181, 45
    lay = sliding_window(k_len, 50)
    mask = _spec_mask(lambda i, j: i - 50 < j <= i, q_len, k_len)
    lens = torch.tensor([181, 160, 140])  # sample 2: the chunk's first rows see fewer keys
    _check(gen, lay, mask, q_len, heads, kv_heads, key_lens=lens)


def test_chunk_equals_rows_of_full_attention(gen):
    """Chunked prefill: the last q_len rows of the full-sequence result, computed from the
    chunk's queries alone (forward, and dK / dV of those rows)."""
    L, n = 211, 67
    lay = sliding_window(L, 64)
    q, k, v = _inputs(gen, 2, 4, 2, L, L, 32)
    full = sparse_attention(q, k, v, lay)[:, :, -n:]
    part = sparse_attention(q[:, :, -n:], k, v, lay)
    assert rel_err(part, full) < 1e-6
    g = torch.randn(part.shape, generator=gen)
    a = torch.autograd.grad(full, (k, v), g)
    b = torch.autograd.grad(part, (k, v), g)
    for x, y in zip(a, b):
        assert rel_err(x, y) < 1e-6


@pytest.mark.parametrize(
    "make",
    [
        lambda: causal(100, prefix=3),
        lambda: neighborhood_2d((10, 10), 3, causal=True),
        lambda: axial((10, 10), "row", causal=True),
        lambda: document([0] * 40 + [1] * 60, causal=True),
        lambda: ernie_vilg("row", 4, (8, 12)),  # text2image: causal over the image
    ],
)
def test_other_causal_patterns_define_chunks(gen, make):
    lay = make()
    n = 33
    full = lay.dense_mask()[-n:]
    chunk = lay.last_queries(n)
    assert torch.equal(chunk.dense_mask(), full)
    assert chunk.kernel_perm is None  # a rectangular layout runs in sequence order
    _check(gen, lay, full, n, D=16)


@pytest.mark.parametrize(
    "make,n",
    [
        (lambda: sliding_window(100, 9, causal=False), 30),
        (lambda: neighborhood_2d((10, 10), 3), 30),
        (lambda: axial((10, 10), "column"), 30),
        (lambda: causal(100, prefix=10), 105),  # the chunk holds prefix tokens, which see all
        (lambda: ernie_vilg("row", 4, (8, 12), direction="image2text"), 20),
    ],
)
def test_non_causal_patterns_refuse_chunks(gen, make, n):
    lay = make()
    with pytest.raises(ValueError, match="defined only for causal patterns"):
        lay.last_queries(n)
    q, k, v = _inputs(gen, 1, 2, 2, n, lay.seq_len, 16)
    with pytest.raises(ValueError, match="defined only for causal patterns"):
        sparse_attention(q, k, v, lay)


def test_chunk_errors_and_repr(gen):
    lay = causal(100)
    chunk = lay.last_queries(40)
    assert chunk is lay.last_queries(40)  # built once
    assert lay.last_queries(100) is lay
    assert "q_len=40" in repr(chunk) and chunk.dense_mask().shape == (40, 100)
    for bad in (0, 101, 2.5, True):
        with pytest.raises(ValueError, match="q_len must be an int"):
            lay.last_queries(bad)
    with pytest.raises(ValueError, match="already has 40 queries"):
        chunk.last_queries(20)
    with pytest.raises(ValueError, match="square layouts"):
        _ = chunk | lay
    q, k, v = _inputs(gen, 1, 2, 2, 40, 100, 16)
    with pytest.raises(ValueError, match="q has 30 positions, the layout 40 queries"):
        sparse_attention(q[:, :, :30], k, v, chunk)
    with pytest.raises(ValueError, match="q has 120 positions"):
        sparse_attention(torch.randn(1, 2, 120, 16), k, v, lay)
    with pytest.raises(ValueError, match="cannot permute"):
        Layout(16, lambda q, k: k <= q, q_len=8, perm=torch.arange(16), block_size=16)


def test_chunk_compiles_fullgraph(gen):
    lay = sliding_window(150, 40)
    chunk = lay.last_queries(50)  # built before compiling
    cc = CompileCounterWithBackend("aot_eager")
    fn = torch.compile(lambda q, k, v: sparse_attention(q, k, v, chunk), backend=cc, fullgraph=True)
    q, k, v = _inputs(gen, 2, 4, 2, 50, 150, 16)
    out = fn(q, k, v)
    want = sparse_attention(q, k, v, chunk)
    assert rel_err(out, want) < 1e-6
    g = torch.autograd.grad(out.sum(), (q, k, v))
    assert all(torch.isfinite(t).all() for t in g)
    # the square layout with a shorter q: its chunk layout exists (built above), so it is used
    square = torch.compile(
        lambda q, k, v: sparse_attention(q, k, v, lay), backend="aot_eager", fullgraph=True
    )
    assert rel_err(square(q, k, v), want) < 1e-6
    # a chunk never built is not built inside the graph: a clear error
    fresh = causal(150)
    bad = torch.compile(
        lambda q, k, v: sparse_attention(q, k, v, fresh), backend="aot_eager", fullgraph=True
    )
    with pytest.raises(Exception, match=r"last_queries\(50\)"):
        bad(q, k, v)
