"""Score modifiers (soft-capping, ALiBi) and left padding (key_starts) in the kernels, forward
and gradients, against an independent float64 reference (tests/reference.py) over every
pattern: ERNIE layouts (permuted column ones included), the pattern library, random masks,
chunks of queries against a longer KV cache, GQA."""

import functools
import os

import pytest
import torch
from reference import attention_mod, rel_err

from vilg.layouts import Layout, ernie_vilg
from vilg.nn import SparseAttention, SparseSelfAttention
from vilg.ops import sparse_attention
from vilg.patterns import axial, block_diagonal, causal, document, neighborhood_2d, sliding_window


def _random(L, p, seed):
    m = torch.rand(L, L, generator=torch.Generator().manual_seed(seed)) < p
    m[3, :] = False  # a query with no allowed key
    return Layout.from_dense(m, block_size=32)


BUILDERS = {
    "row_t2i": lambda: ernie_vilg("row", 7, (6, 9), block_size=16),
    "column_i2t": lambda: ernie_vilg("column", 9, (7, 8), "image2text", block_size=16),
    "conv_t2i": lambda: ernie_vilg("conv", 5, (8, 8), window=3, block_size=32),
    "vqa_full": lambda: ernie_vilg("full", 6, (4, 5), "vqa", answer_len=9, block_size=16),
    "causal": lambda: causal(150, prefix=5),
    "window": lambda: sliding_window(140, 33, block_size=32),
    "window_bidir": lambda: sliding_window(120, 21, causal=False, block_size=16),
    "neighborhood": lambda: neighborhood_2d((10, 12), 5, block_size=32),
    "axial_column": lambda: axial((9, 10), "column", block_size=16),
    "document": lambda: document([0] * 40 + [1] * 70 + [2] * 25, causal=True, block_size=32),
    "block_diagonal": lambda: block_diagonal([30, 50], block_size=16),
    "random": lambda: _random(100, 0.3, 3),
}


@functools.cache
def layout(name):
    return BUILDERS[name]()


SLOPES = {
    "head": lambda B, H: torch.tensor([0.5, 0.25, 0.125, 0.0625][:H]),
    "batch_head": lambda B, H: torch.rand(B, H, generator=torch.Generator().manual_seed(2)),
}


def _run(gen, lay, *, dtype=torch.float32, heads=4, kv_heads=2, q_len=None, D=32, softcap=0.0,
         alibi=None, bounds=None, text_lens=None, tol=1e-5):  # fmt: skip
    B, L = 2, lay.seq_len
    q_len = q_len or lay.q_len
    q = torch.randn(B, heads, q_len, D, generator=gen).to(dtype).requires_grad_()
    k, v = (torch.randn(B, kv_heads, L, D, generator=gen).to(dtype).requires_grad_() for _ in "kv")
    slopes = None if alibi is None else SLOPES[alibi](B, heads)
    starts, lens = bounds if bounds is not None else (None, None)
    out = sparse_attention(q, k, v, lay, softcap=softcap, alibi_slopes=slopes, key_starts=starts,
                           key_lens=lens, text_lens=text_lens)  # fmt: skip
    leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
    mask = lay.dense_mask() if q_len == lay.q_len else lay.last_queries(q_len).dense_mask()
    ref = attention_mod(*leaves, mask, softcap=softcap, alibi=slopes, key_starts=starts,
                        key_lens=lens, text_lens=text_lens,
                        text_segment=lay.text_segment)  # fmt: skip
    assert rel_err(out, ref) < tol, rel_err(out, ref)
    g = torch.randn(out.shape, generator=gen)
    got = torch.autograd.grad(out, (q, k, v), g.to(dtype))
    want = torch.autograd.grad(ref, leaves, g.double())
    for name, a, b in zip("qkv", got, want):
        assert rel_err(a, b) < 2 * tol, (name, rel_err(a, b))


MODS = {
    "softcap": dict(softcap=2.0),
    "alibi_head": dict(alibi="head"),
    "alibi_batch_head_softcap": dict(alibi="batch_head", softcap=5.0),
    "left_right_pad": "pad",
}


def _mods(name, L):
    m = MODS[name]
    if m == "pad":  # left padding on sample 0, both on sample 1
        return dict(bounds=(torch.tensor([L // 3, 5]), torch.tensor([L, L - 17])))
    return m


# The default run takes one modifier per pattern family; the slow set takes the full matrix.
QUICK = {
    ("column_i2t", "alibi_batch_head_softcap"),
    ("conv_t2i", "left_right_pad"),
    ("window", "softcap"),
    ("neighborhood", "alibi_head"),
    ("random", "alibi_batch_head_softcap"),
}


@pytest.mark.parametrize(
    "pattern,mod",
    [
        pytest.param(p, m, marks=() if (p, m) in QUICK else pytest.mark.slow)
        for p in BUILDERS
        for m in MODS
    ],
)
def test_every_pattern_fp32(gen, pattern, mod):
    lay = layout(pattern)
    _run(gen, lay, **_mods(mod, lay.seq_len))


@pytest.mark.parametrize(
    "pattern",
    [
        "column_i2t",
        *(pytest.param(p, marks=pytest.mark.slow) for p in ("row_t2i", "window", "axial_column")),
    ],
)
def test_all_at_once_bf16(gen, pattern):
    lay = layout(pattern)
    L = lay.seq_len
    bounds = (torch.tensor([4, 0]), torch.tensor([L, L - 9]))
    _run(gen, lay, dtype=torch.bfloat16, softcap=3.0, alibi="batch_head", bounds=bounds, tol=2e-2)


@pytest.mark.parametrize(
    "heads,kv_heads", [(4, 1), pytest.param(4, 4, marks=pytest.mark.slow), (6, 3)]
)
def test_gqa_with_modifiers(gen, heads, kv_heads):
    slopes = "head" if heads == 4 else None
    _run(gen, layout("window"), heads=heads, kv_heads=kv_heads, softcap=4.0, alibi=slopes)


@pytest.mark.parametrize(
    "pattern,q_len",
    [
        ("causal", 70),
        *(pytest.param(*c, marks=pytest.mark.slow) for c in (("window", 41), ("document", 64))),
    ],
)
def test_chunk_layouts_align_bottom_right(gen, pattern, q_len):
    # the q_len queries are the last positions: ALiBi's i is seq - q_len + row
    lay = layout(pattern)
    L = lay.seq_len
    bounds = (torch.tensor([9, 0]), torch.tensor([L, L - 3]))
    _run(gen, lay, q_len=q_len, softcap=3.0, alibi="batch_head", bounds=bounds)


def test_alibi_uses_caller_positions_on_permuted_layouts(gen):
    # column attention runs on the transposed grid; the bias must follow the caller's order
    lay = layout("column_i2t")
    assert lay.kernel_perm is not None
    _run(gen, lay, alibi="head", text_lens=torch.tensor([9, 2]))
    _run(gen, lay, alibi="batch_head", softcap=1.5)


def test_text_lens_with_modifiers(gen):
    _run(gen, layout("row_t2i"), softcap=2.5, alibi="head", text_lens=torch.tensor([0, 4]))


@pytest.mark.parametrize("schedule", ["fused", "tiles"])
def test_backward_bitwise_deterministic(gen, monkeypatch, schedule):
    monkeypatch.setenv("VILG_CPU_ATTN_BWD", schedule)
    lay = layout("conv_t2i")
    q, k, v = (torch.randn(3, 4, lay.seq_len, 32, generator=gen, requires_grad=True) for _ in "qkv")
    slopes = torch.rand(3, 4, generator=gen)
    kw = dict(softcap=2.0, alibi_slopes=slopes, key_starts=torch.tensor([0, 7, 30]))
    g = torch.randn(q.shape, generator=gen)
    runs = [
        torch.autograd.grad(sparse_attention(q, k, v, lay, **kw), (q, k, v), g) for _ in range(2)
    ]
    for a, b in zip(*runs):
        assert torch.equal(a, b)
    assert os.environ["VILG_CPU_ATTN_BWD"] == schedule


def test_modifiers_off_equal_plain_call(gen):
    lay = layout("window")
    q, k, v = (torch.randn(2, 2, lay.seq_len, 32, generator=gen) for _ in "qkv")
    assert torch.equal(sparse_attention(q, k, v, lay), sparse_attention(q, k, v, lay, softcap=0.0))


def test_errors(gen):
    lay = layout("causal")
    q = torch.randn(2, 4, lay.seq_len, 32, generator=gen)
    L = lay.seq_len
    with pytest.raises(ValueError, match="softcap must be finite and >= 0"):
        sparse_attention(q, q, q, lay, softcap=-1.0)
    with pytest.raises(ValueError, match="softcap must be finite"):
        sparse_attention(q, q, q, lay, softcap=float("inf"))
    with pytest.raises(TypeError, match="softcap must be a number"):
        sparse_attention(q, q, q, lay, softcap="1")
    with pytest.raises(TypeError, match="alibi_slopes must be float32"):
        sparse_attention(q, q, q, lay, alibi_slopes=torch.ones(4, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"alibi_slopes must be \[heads\]"):
        sparse_attention(q, q, q, lay, alibi_slopes=torch.ones(3))
    with pytest.raises(ValueError, match=r"alibi_slopes must be \[heads\]"):
        sparse_attention(q, q, q, lay, alibi_slopes=torch.ones(3, 4))
    with pytest.raises(ValueError, match="alibi_slopes must be finite"):
        sparse_attention(q, q, q, lay, alibi_slopes=torch.tensor([1.0, float("nan"), 1, 1]))
    with pytest.raises(ValueError, match=rf"key_starts values must lie in \[0, {L}\]"):
        sparse_attention(q, q, q, lay, key_starts=torch.tensor([-1, 0]))
    with pytest.raises(ValueError, match=rf"key_starts values must lie in \[0, {L}\]"):
        sparse_attention(q, q, q, lay, key_starts=torch.tensor([L + 1, 0]))
    with pytest.raises(ValueError, match=r"key_starts must have shape \[2\]"):
        sparse_attention(q, q, q, lay, key_starts=torch.tensor([1, 2, 3]))
    with pytest.raises(TypeError, match="key_starts must hold integers"):
        sparse_attention(q, q, q, lay, key_starts=torch.tensor([1.0, 2.0]))
    two, three = torch.tensor([1, 2]), torch.tensor([5, 9])
    with pytest.raises(ValueError, match="key_starts must not exceed key_lens"):
        sparse_attention(q, q, q, lay, key_starts=three, key_lens=torch.tensor([9, 8]))
    with pytest.raises(ValueError, match="give text_lens or key_starts / key_lens, not both"):
        sparse_attention(q, q, q, lay, key_starts=two, text_lens=two)


def test_empty_key_range_gives_zero(gen):
    # key_starts == key_lens: nothing to attend, output 0 and lse -inf, gradients 0
    lay = layout("window_bidir")
    q = torch.randn(2, 2, lay.seq_len, 32, generator=gen, requires_grad=True)
    out, lse = sparse_attention(q, q, q, lay, key_starts=torch.tensor([50, 0]),
                                key_lens=torch.tensor([50, 120]), return_lse=True,
                                alibi_slopes=torch.ones(2))  # fmt: skip
    assert torch.equal(out[0], torch.zeros_like(out[0])) and bool(torch.isinf(lse[0]).all())
    assert torch.isfinite(out[1]).all()


@pytest.mark.slow
def test_compile_fullgraph_with_modifiers(gen):
    lay = layout("axial_column").sequence_order() and layout("axial_column")
    lay.sequence_order()  # key bounds on a permuted layout run its twin, built before compiling
    q, k, v = (torch.randn(2, 4, lay.seq_len, 32, generator=gen, requires_grad=True) for _ in "qkv")
    kw = dict(softcap=3.0, alibi_slopes=torch.rand(2, 4, generator=gen),
              key_starts=torch.tensor([3, 0]), key_lens=torch.tensor([90, 80]))  # fmt: skip
    fn = torch.compile(lambda q, k, v: sparse_attention(q, k, v, lay, **kw), fullgraph=True)
    out = fn(q, k, v)
    want = sparse_attention(q, k, v, lay, **kw)
    assert rel_err(out, want) < 1e-6
    gq = torch.autograd.grad(out.sum(), q)[0]
    assert rel_err(gq, torch.autograd.grad(want.sum(), q)[0]) < 1e-6


def test_nn_modules(gen):
    lay = layout("causal")
    slopes = torch.tensor([0.5, 0.25, 0.125, 0.0625])
    mod = SparseAttention(lay, softcap=4.0, alibi_slopes=slopes)
    q, k, v = (torch.randn(2, 4, lay.seq_len, 32, generator=gen) for _ in "qkv")
    starts = torch.tensor([0, 11])
    want = sparse_attention(q, k, v, lay, softcap=4.0, alibi_slopes=slopes, key_starts=starts)
    assert torch.equal(mod(q, k, v, key_starts=starts), want)
    assert mod.to(torch.bfloat16).alibi_slopes.dtype == torch.bfloat16  # cast back in forward
    other = torch.rand(2, 4, generator=gen)
    assert torch.equal(
        mod.float()(q, k, v, alibi_slopes=other),
        sparse_attention(q, k, v, lay, softcap=4.0, alibi_slopes=other),
    )
    blk = SparseSelfAttention(64, 4, 2, lay, softcap=2.0, alibi_slopes=slopes)
    x = torch.randn(2, lay.seq_len, 64, generator=gen)
    y = blk(x, key_starts=starts, key_lens=torch.tensor([150, 140]))
    assert y.shape == x.shape and torch.isfinite(y).all()
    with pytest.raises(ValueError, match=r"alibi_slopes must be \[heads\]"):
        SparseSelfAttention(64, 4, 2, lay, alibi_slopes=torch.ones(3))


# ---- CUDA (a real GPU; the emulation covers the same source without one) -------------------
CUDA_CASES = {
    "column_i2t": lambda: ernie_vilg("column", 9, (7, 8), "image2text"),
    "window": lambda: sliding_window(300, 77),
    "random": lambda: Layout.from_dense(
        torch.rand(200, 200, generator=torch.Generator().manual_seed(4)) < 0.3
    ),
}


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("pattern", list(CUDA_CASES))
@pytest.mark.parametrize("D", [32, 128])
def test_cuda_modifiers(pattern, dtype, D):
    gen = torch.Generator().manual_seed(11)
    lay = CUDA_CASES[pattern]()
    L, B, H, Hk = lay.seq_len, 2, 4, 2
    q_len = 70 if pattern == "window" else L  # a chunk against the cache
    q = torch.randn(B, H, q_len, D, generator=gen)
    k, v = (torch.randn(B, Hk, L, D, generator=gen) for _ in "kv")
    slopes = torch.rand(B, H, generator=gen)
    kw = dict(softcap=3.0, key_starts=torch.tensor([L // 4, 0]), key_lens=torch.tensor([L, L - 9]))
    leaves = [t.cuda().to(dtype).requires_grad_() for t in (q, k, v)]
    cuda_kw = {n: t.cuda() for n, t in kw.items() if isinstance(t, torch.Tensor)}
    out = sparse_attention(*leaves, lay, softcap=3.0, alibi_slopes=slopes.cuda(), **cuda_kw)
    ref_leaves = [t.detach().cpu().double().requires_grad_() for t in leaves]
    mask = lay.dense_mask() if q_len == L else lay.last_queries(q_len).dense_mask()
    ref = attention_mod(*ref_leaves, mask, alibi=slopes, **kw)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert rel_err(out.cpu(), ref) < tol
    g = torch.randn(out.shape, generator=gen)
    got = torch.autograd.grad(out, leaves, g.cuda().to(dtype))
    want = torch.autograd.grad(ref, ref_leaves, g.double())
    for name, a, b in zip("qkv", got, want):
        assert rel_err(a.cpu(), b) < 2 * tol, name
