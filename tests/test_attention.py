import itertools

import numpy as np
import pytest
import torch
from reference import attention as ref_attention
from reference import rel_err

from vilg.layouts import KINDS, ernie_vilg
from vilg.ops import sparse_attention

DIRECTIONS = ("text2image", "image2text", "vqa")
TOL = {torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 1.5e-2}


def _inputs(gen, B, H, L, D, dtype=torch.float32):
    return [torch.randn(B, H, L, D, generator=gen).to(dtype).requires_grad_() for _ in range(3)]


def _segment(lay):
    return lay.text_segment


def _check(lay, q, k, v, text_lens=None, tol=1e-5):
    out = sparse_attention(q, k, v, lay, text_lens=text_lens)
    qd, kd, vd = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref = ref_attention(
        qd, kd, vd, lay.dense_mask(), text_lens=text_lens, text_segment=_segment(lay)
    )
    assert out.dtype == q.dtype and out.shape == q.shape
    assert torch.isfinite(out).all()
    assert rel_err(out, ref) < tol
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(7)).to(q.dtype)
    grads = torch.autograd.grad(out, (q, k, v), g)
    ref_grads = torch.autograd.grad(ref, (qd, kd, vd), g.double())
    for name, a, b in zip("qkv", grads, ref_grads):
        assert torch.isfinite(a).all(), name
        assert rel_err(a, b) < 2 * tol, (name, rel_err(a, b))


CASES = list(itertools.product(KINDS, DIRECTIONS, [(4, 4), (5, 7)], [False, True]))


@pytest.fixture(params=["fused", "tiles"])
def bwd(request, monkeypatch):
    """Both CPU backward schedules (the kernel picks one by batch x heads vs threads)."""
    monkeypatch.setenv("VILG_CPU_ATTN_BWD", request.param)
    return request.param


@pytest.mark.parametrize("kind,direction,grid,padded", CASES)
def test_matches_dense_fp32(gen, bwd, kind, direction, grid, padded):
    T = 6
    A = 5 if direction == "vqa" else 0
    lay = ernie_vilg(kind, T, grid, direction, window=3, block_size=16, answer_len=A)
    q, k, v = _inputs(gen, 3, 2, lay.seq_len, 24)
    lens = torch.tensor([T, 2, 5]) if padded else None
    _check(lay, q, k, v, lens)


@pytest.mark.parametrize("cache_mb", [None, "0"])
@pytest.mark.parametrize("grid", [(3, 3), (9, 9)])
def test_tile_cache_is_per_head(gen, bwd, monkeypatch, cache_mb, grid):
    """Converted K/V (and Q/dO) tiles are reused only within one (batch, head): a one-tile layout
    (the demo's 3x3 grid) over several heads, and the uncached path (no cache memory)."""
    if cache_mb is not None:
        monkeypatch.setenv("VILG_CPU_TILE_CACHE_MB", cache_mb)
    lay = ernie_vilg("row", 7, grid)
    q, k, v = _inputs(gen, 3, 3, lay.seq_len, 16)
    _check(lay, q, k, v, torch.tensor([7, 4, 0]))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind", KINDS)
def test_half_precision(gen, bwd, dtype, kind):
    lay = ernie_vilg(kind, 5, (6, 6), "text2image", window=5, block_size=32)
    q, k, v = _inputs(gen, 2, 2, lay.seq_len, 32, dtype)
    _check(lay, q, k, v, torch.tensor([5, 3]), TOL[dtype])


@pytest.mark.parametrize("kind", KINDS)
def test_backward_schedules_agree_bitwise(gen, monkeypatch, kind):
    lay = ernie_vilg(kind, 7, (9, 9), "text2image", window=5, block_size=16)
    q, k, v = _inputs(gen, 2, 3, lay.seq_len, 24)
    lens = torch.tensor([7, 4])
    g = torch.randn(q.shape, generator=gen)
    grads = {}
    for mode in ("fused", "tiles"):
        monkeypatch.setenv("VILG_CPU_ATTN_BWD", mode)
        out = sparse_attention(q, k, v, lay, text_lens=lens)
        grads[mode] = torch.autograd.grad(out, (q, k, v), g)
    for a, b in zip(grads["fused"], grads["tiles"]):
        assert torch.equal(a, b)  # same tile pairs, same accumulation order


@pytest.mark.parametrize("D", [32, 64, 128])
def test_head_dims_and_default_block(gen, D):
    lay = ernie_vilg("conv", 16, (10, 10), "text2image")  # 116 tokens: a ragged last tile
    q, k, v = _inputs(gen, 1, 2, lay.seq_len, D)
    _check(lay, q, k, v)


def test_ernie_vilg_size_row_and_column(gen):
    # the paper's setting: 64 text tokens + 32x32 image tokens
    for kind in ("row", "column"):
        lay = ernie_vilg(kind, 64, (32, 32))
        q, k, v = (torch.randn(1, 2, lay.seq_len, 64, generator=gen) for _ in range(3))
        out = sparse_attention(q, k, v, lay)
        ref = ref_attention(q, k, v, lay.dense_mask())
        assert rel_err(out, ref) < 1e-5


def test_lse_and_scale(gen):
    lay = ernie_vilg("row", 5, (4, 5), block_size=16)
    q, k, v = (torch.randn(2, 2, lay.seq_len, 16, generator=gen) for _ in range(3))
    out, lse = sparse_attention(q, k, v, lay, scale=0.3, return_lse=True)
    s = (q.double() @ k.double().transpose(-1, -2) * 0.3).masked_fill(
        ~lay.dense_mask(), float("-inf")
    )
    assert rel_err(lse, torch.logsumexp(s, -1)) < 1e-6
    assert rel_err(out, ref_attention(q, k, v, lay.dense_mask(), scale=0.3)) < 1e-5


def test_query_with_no_key_gives_zero_not_nan(gen):
    # text2image, caption length 0: text queries have nothing to attend
    lay = ernie_vilg("row", 4, (3, 3), block_size=16)
    q, k, v = _inputs(gen, 2, 1, lay.seq_len, 16)
    out, lse = sparse_attention(q, k, v, lay, text_lens=torch.tensor([0, 4]), return_lse=True)
    assert torch.all(out[0, :, :4] == 0) and torch.all(lse[0, :, :4] == float("-inf"))
    out.sum().backward()
    for t in (q, k, v):
        assert torch.isfinite(t.grad).all()


def test_strided_inputs(gen):
    # [B, L, H, D] storage viewed as [B, H, L, D]: the usual projection output layout
    lay = ernie_vilg("conv", 6, (5, 5), window=3, block_size=16)
    x = torch.randn(2, lay.seq_len, 3, 3, 16, generator=gen)
    q, k, v = (x[:, :, i].transpose(1, 2) for i in range(3))
    assert not q.is_contiguous()
    out = sparse_attention(q, k, v, lay)
    assert rel_err(out, ref_attention(q, k, v, lay.dense_mask())) < 1e-5


def test_numpy_arrays(gen):
    lay = ernie_vilg("row", 3, (3, 4), block_size=16)
    q, k, v = (torch.randn(1, 1, lay.seq_len, 8, generator=gen).numpy() for _ in range(3))
    out = sparse_attention(q, k, v, lay)
    assert isinstance(out, np.ndarray)
    ref = ref_attention(*map(torch.from_numpy, (q, k, v)), lay.dense_mask())
    assert rel_err(torch.from_numpy(out), ref) < 1e-5


def test_opcheck_and_compile(gen):
    lay = ernie_vilg("row", 4, (4, 4), block_size=16)
    q, k, v = _inputs(gen, 1, 2, lay.seq_len, 16)
    *arrays, perm = lay.kernel_arrays("cpu")
    torch.library.opcheck(
        torch.ops.vilg.sparse_attention_fwd.default,
        (
            q,
            k,
            v,
            list(arrays),
            perm,
            *(torch.tensor([n], dtype=torch.int32) for n in (1, 4)),
            16,
            0,
            4,
            0.25,
            2.0,
            torch.rand(1, 2, generator=gen),
        ),  # + key padding and modifiers
    )
    fn = torch.compile(
        lambda a, b, c: sparse_attention(a, b, c, lay).sum(), backend="aot_eager", fullgraph=True
    )
    fn(q, k, v).backward()
    assert rel_err(q.grad, torch.autograd.grad(sparse_attention(q, k, v, lay).sum(), q)[0]) < 1e-6


def test_bad_inputs(gen):
    lay = ernie_vilg("row", 4, (4, 4), block_size=16)
    L = lay.seq_len
    q = torch.randn(1, 2, L, 16, generator=gen)
    with pytest.raises(TypeError, match="float32"):
        sparse_attention(q.int(), q.int(), q.int(), lay)
    with pytest.raises(TypeError, match="share a dtype"):
        sparse_attention(q, q.half(), q, lay)
    with pytest.raises(ValueError, match="seq"):
        sparse_attention(q[0], q[0], q[0], lay)
    with pytest.raises(ValueError, match="layout"):
        sparse_attention(q[:, :, :-1], q[:, :, :-1], q[:, :, :-1], lay)
    with pytest.raises(ValueError, match="same shape"):
        sparse_attention(q, q[:, :1], q, lay)
    strided = torch.randn(1, 2, L, 32, generator=gen)[..., ::2]
    with pytest.raises(ValueError, match="contiguous"):
        sparse_attention(strided, strided, strided, lay)
    with pytest.raises(TypeError, match="Layout"):
        sparse_attention(q, q, q, lay.dense_mask())
    with pytest.raises(ValueError, match=r"\[0, 4\]"):
        sparse_attention(q, q, q, lay, text_lens=torch.tensor([5]))
    with pytest.raises(TypeError, match="integers"):
        sparse_attention(q, q, q, lay, text_lens=torch.tensor([2.0]))
    with pytest.raises(ValueError, match="shape"):
        sparse_attention(q, q, q, lay, text_lens=torch.tensor([2, 2]))
    meta = q.to("meta")
    with pytest.raises(ValueError, match="cpu or cuda"):
        sparse_attention(meta, meta, meta, lay)
    with pytest.raises(ValueError, match="finite"):
        sparse_attention(q, q, q, lay, scale=float("nan"))
    with pytest.raises(ValueError, match="no text segment"):
        sparse_attention(
            q, q, q, ernie_vilg("row", 0, (4, 5), block_size=16), text_lens=torch.tensor([1])
        )
