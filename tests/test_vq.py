"""VQ ops on the CPU against float64 references: vq_quantize, vq_embed, vq_code_stats."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import vilg.ops as O

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def sqdist64(x: torch.Tensor, cb: torch.Tensor) -> torch.Tensor:
    """Squared distances [N, K] in float64 (inputs as stored; float64 rounding is ~1e-16,
    far below the float32 tolerance the tests allow)."""
    x, cb = x.double(), cb.double()
    return (x * x).sum(1, keepdim=True) + (cb * cb).sum(1)[None, :] - 2.0 * x @ cb.T


def assert_nearest(idx: torch.Tensor, x: torch.Tensor, cb: torch.Tensor) -> None:
    """idx is the float64 argmin, or a code whose float64 distance ties the minimum within the
    rounding of float32 accumulation of ||c||^2 - 2 x.c."""
    assert idx.dtype == torch.int64 and idx.shape == x.shape[:1]
    d = sqdist64(x, cb)
    best = d.min(1).values
    chosen = d.gather(1, idx[:, None]).squeeze(1)
    scale = (x.double() ** 2).sum(1) + (cb.double() ** 2).sum(1).max()
    tol = 4e-6 * scale * max(1.0, x.shape[1] / 64)
    bad = chosen - best > tol
    assert not bad.any(), f"{int(bad.sum())} rows not nearest: {(chosen - best)[bad][:5]}"
    exact = (idx == d.argmin(1)).float().mean().item()
    assert exact > 0.97, f"only {exact:.3f} of the rows match the float64 argmin"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,k,d", [(300, 77, 20), (129, 300, 64), (70, 5, 3), (1, 1, 1)])
def test_quantize_matches_float64(dtype, n, k, d):
    g = torch.Generator().manual_seed(n * 1000 + k + d)
    x = torch.randn(n, d, generator=g).to(dtype)
    cb = torch.randn(k, d, generator=g).to(dtype)
    assert_nearest(O.vq_quantize(x, cb), x, cb)


def test_quantize_near_codes_and_leading_dims():
    g = torch.Generator().manual_seed(1)
    cb = torch.randn(256, 32, generator=g)
    which = torch.randint(0, 256, (4, 6, 7), generator=g)
    x = cb[which] + 0.05 * torch.randn(4, 6, 7, 32, generator=g)
    idx = O.vq_quantize(x, cb)
    assert idx.shape == (4, 6, 7)
    assert torch.equal(idx, which)


def test_quantize_exact_ties_go_to_lowest_index():
    g = torch.Generator().manual_seed(2)
    cb = torch.randn(300, 24, generator=g)
    # duplicate groups, some across the 128-code tiles
    groups = [[7, 40, 41], [5, 130, 299], [200, 129], [150, 20]]
    for grp in groups:
        for j in grp[1:]:
            cb[j] = cb[grp[0]]
    for dtype in DTYPES:
        c = cb.to(dtype)
        rows, want = [], []
        for grp in groups:
            for j in grp:  # query from every member of the group, exactly and perturbed
                rows.append(c[j].float())
                rows.append(c[j].float() + 0.01 * torch.randn(24, generator=g))
                want += [min(grp)] * 2
        x = torch.stack(rows).to(dtype)
        assert O.vq_quantize(x, c).tolist() == want


def test_quantize_strided_rows_and_numpy():
    g = torch.Generator().manual_seed(3)
    big = torch.randn(90, 50, generator=g)
    cbig = torch.randn(40, 70, generator=g)
    x, cb = big[:, 5:37], cbig[:, 10:42]  # row strides 50 / 70, unit last stride
    idx = O.vq_quantize(x, cb)
    assert torch.equal(idx, O.vq_quantize(x.contiguous(), cb.contiguous()))
    assert_nearest(idx, x, cb)
    out = O.vq_quantize(x.contiguous().numpy(), cb.contiguous().numpy())
    assert isinstance(out, np.ndarray) and np.array_equal(out, idx.numpy())


def test_quantize_empty_rows():
    idx = O.vq_quantize(torch.randn(0, 8), torch.randn(4, 8))
    assert idx.shape == (0,) and idx.dtype == torch.int64


def test_quantize_bad_inputs():
    x, cb = torch.randn(10, 8), torch.randn(4, 8)
    with pytest.raises(TypeError):
        O.vq_quantize(x, cb.half())
    with pytest.raises(TypeError):
        O.vq_quantize(x.long(), cb.long())
    with pytest.raises(TypeError):
        O.vq_quantize([[1.0]], cb)
    with pytest.raises(ValueError):
        O.vq_quantize(x[:, :6], cb)
    with pytest.raises(ValueError):
        O.vq_quantize(torch.randn(8), cb)
    with pytest.raises(ValueError):
        O.vq_quantize(x, torch.randn(2, 4, 8))
    with pytest.raises(ValueError):
        O.vq_quantize(x, torch.randn(0, 8))
    with pytest.raises(ValueError):  # non-contiguous last dim
        O.vq_quantize(torch.randn(8, 10).t(), cb)
    with pytest.raises(ValueError):
        O.vq_quantize(x, torch.randn(8, 4).t())
    with pytest.raises(ValueError):
        O.vq_quantize(x.to("meta"), cb.to("meta"))


# ---- embed ----------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_embed_matches_indexing(dtype):
    g = torch.Generator().manual_seed(4)
    cb = torch.randn(50, 13, generator=g).to(dtype)
    idx = torch.randint(0, 50, (3, 7, 5), generator=g)
    out = O.vq_embed(idx, cb)
    assert out.shape == (3, 7, 5, 13) and out.dtype == dtype
    assert torch.equal(out, cb[idx])
    assert torch.equal(O.vq_embed(idx.int(), cb), cb[idx])
    strided = torch.randn(50, 40, generator=g).to(dtype)[:, 3:16]
    assert torch.equal(O.vq_embed(idx, strided), strided[idx])


def test_embed_gradient():
    g = torch.Generator().manual_seed(5)
    cb = torch.randn(20, 6, generator=g, requires_grad=True)
    idx = torch.randint(0, 20, (30,), generator=g)
    w = torch.randn(30, 6, generator=g)
    (O.vq_embed(idx, cb) * w).sum().backward()
    want = torch.zeros(20, 6, dtype=torch.float64).index_add_(0, idx, w.double())
    torch.testing.assert_close(cb.grad.double(), want, rtol=1e-5, atol=1e-6)


def test_embed_bad_inputs():
    cb = torch.randn(10, 4)
    for bad in (10, -1, 1000):
        with pytest.raises(ValueError, match="out of range"):
            O.vq_embed(torch.tensor([0, bad, 3]), cb)
    with pytest.raises(TypeError):
        O.vq_embed(torch.tensor([0.0, 1.0]), cb)
    with pytest.raises(TypeError):
        O.vq_embed(torch.tensor([True]), cb)
    with pytest.raises(ValueError):
        O.vq_embed(torch.tensor([0]), torch.randn(4, 10).t())
    with pytest.raises(TypeError):
        O.vq_embed(torch.tensor([0]), cb.long())


# ---- code statistics ------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_code_stats_matches_bincount(dtype):
    g = torch.Generator().manual_seed(6)
    K, D = 37, 19
    x = torch.randn(2, 500, D, generator=g).to(dtype)
    idx = torch.randint(0, K - 5, (2, 500), generator=g)  # the last codes stay unused
    counts, sums = O.vq_code_stats(idx, x, K)
    assert counts.dtype == sums.dtype == torch.float32
    assert counts.shape == (K,) and sums.shape == (K, D)
    flat = idx.reshape(-1)
    assert torch.equal(counts, torch.bincount(flat, minlength=K).float())
    want = torch.zeros(K, D, dtype=torch.float64).index_add_(0, flat, x.reshape(-1, D).double())
    torch.testing.assert_close(sums.double(), want, rtol=1e-6, atol=1e-6)
    assert (counts[-5:] == 0).all() and (sums[-5:] == 0).all()
    # deterministic: the same bits every time
    c2, s2 = O.vq_code_stats(idx.int(), x, K)
    assert torch.equal(counts, c2) and torch.equal(sums, s2)


def test_code_stats_bad_inputs():
    x = torch.randn(10, 4)
    idx = torch.randint(0, 5, (10,))
    with pytest.raises(ValueError, match="out of range"):
        O.vq_code_stats(torch.tensor([0, 5] + [0] * 8), x, 5)
    with pytest.raises(ValueError):
        O.vq_code_stats(idx[:9], x, 5)
    with pytest.raises(ValueError):
        O.vq_code_stats(idx, x, 0)
    with pytest.raises(TypeError):
        O.vq_code_stats(idx, x, 5.0)
    with pytest.raises(TypeError):
        O.vq_code_stats(idx.float(), x, 5)
    with pytest.raises(TypeError):
        O.vq_code_stats(idx, x.long(), 5)
    with pytest.raises(ValueError):
        O.vq_code_stats(idx, torch.randn(4, 10).t(), 5)


def test_ops_pass_opcheck():
    x, cb = torch.randn(33, 8), torch.randn(9, 8)
    idx = torch.randint(0, 9, (33,))
    utils = ("test_schema", "test_faketensor")
    torch.library.opcheck(torch.ops.vilg.vq_quantize.default, (x, cb, False), test_utils=utils)
    torch.library.opcheck(torch.ops.vilg.vq_embed.default, (idx, cb, True), test_utils=utils)
    torch.library.opcheck(torch.ops.vilg.vq_code_stats.default, (idx, x, 9, True), test_utils=utils)
