"""Fused decoding attention on the CPU against a float64 dense masked row and sparse_attention."""

from __future__ import annotations

import math

import pytest
import torch

import vilg.ops as O
from vilg.layouts import DIRECTIONS, KINDS, ernie_vilg

TEXT, GRID = 10, (5, 6)  # L = 40


def dense_row(q, k, v, layout, pos, text_lens=None, scale=None):
    """Row `pos` of dense attention under layout.dense_mask() and text padding, in float64."""
    B, H, D = q.shape
    S = k.shape[2]
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    allowed = torch.zeros(B, S, dtype=torch.bool)
    allowed[:, : layout.seq_len] = layout.dense_mask()[pos][None, :]
    t0, tl = layout.text_segment
    if text_lens is not None:
        for b in range(B):
            allowed[b, t0 + int(text_lens[b]) : t0 + tl] = False
    s = torch.einsum("bhd,bhsd->bhs", q.double(), k.double()) * scale
    s = s.masked_fill(~allowed[:, None, :], -math.inf)
    p = torch.softmax(s, dim=-1).nan_to_num(0.0)  # a row with no allowed key -> 0
    return torch.einsum("bhs,bhsd->bhd", p, v.double())


def rand(*shape, g, dtype=torch.float32):
    return torch.randn(*shape, generator=g).to(dtype)


@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("kind", KINDS)
def test_every_position_matches_dense_and_sparse(kind, direction):
    A = 7 if direction == "vqa" else 0
    layout = ernie_vilg(
        kind, TEXT, GRID, direction=direction, window=3, block_size=16, answer_len=A
    )
    L = layout.seq_len
    g = torch.Generator().manual_seed(hash((kind, direction)) % 2**31)
    B, H, D = 3, 2, 24
    q, k, v = (rand(B, H, L, D, g=g) for _ in range(3))
    lens = torch.tensor([TEXT, 4, 0])
    full = O.sparse_attention(q, k, v, layout, text_lens=lens)
    for pos in range(L):
        out = O.decode_attention(q[:, :, pos], k, v, layout, pos, text_lens=lens)
        assert out.shape == (B, H, D) and out.dtype == torch.float32
        ref = dense_row(q[:, :, pos], k, v, layout, pos, lens)
        torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out, full[:, :, pos], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind", ["row", "conv"])
def test_half_precision(dtype, kind):
    layout = ernie_vilg(kind, TEXT, GRID, window=5)
    g = torch.Generator().manual_seed(7)
    B, H, D = 2, 3, 64
    L = layout.seq_len
    q, k, v = (rand(B, H, L, D, g=g, dtype=dtype) for _ in range(3))
    lens = torch.tensor([7, TEXT])
    tol = 2e-3 if dtype == torch.float16 else 1.6e-2
    for pos in (0, TEXT - 1, TEXT, TEXT + 13, L - 1):
        out = O.decode_attention(q[:, :, pos], k, v, layout, pos, text_lens=lens)
        assert out.dtype == dtype
        ref = dense_row(q[:, :, pos], k, v, layout, pos, lens)
        torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol)


def test_strided_cache_longer_than_sequence_and_scale():
    layout = ernie_vilg("column", TEXT, GRID)
    g = torch.Generator().manual_seed(8)
    B, H, D, S = 2, 4, 16, 64  # preallocated cache longer than the layout
    kbuf = rand(B, S, H, 2 * D, g=g)  # [B, S, H, 2D]: strided heads, strided head_dim slice
    k = kbuf[..., :D].transpose(1, 2)
    v = kbuf[..., D:].transpose(1, 2)
    qbuf = rand(H, B, D + 3, g=g)
    q = qbuf[..., :D].transpose(0, 1)
    for pos in (3, 25, layout.seq_len - 1):
        out = O.decode_attention(q, k, v, layout, pos, scale=0.3)
        ref = dense_row(q, k, v, layout, pos, scale=0.3)
        torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
        out2 = O.decode_attention(
            q.contiguous(), k.contiguous(), v.contiguous(), layout, pos, scale=0.3
        )
        torch.testing.assert_close(out, out2)


def test_query_without_keys_gives_zero():
    layout = ernie_vilg("row", TEXT, GRID, direction="text2image")
    g = torch.Generator().manual_seed(9)
    q, k, v = rand(2, 1, 8, g=g), rand(2, 1, 40, 8, g=g), rand(2, 1, 40, 8, g=g)
    # a text query attends text keys only; with no real text it has nothing to attend
    out = O.decode_attention(q, k, v, layout, 3, text_lens=torch.tensor([0, 5]))
    assert torch.equal(out[0], torch.zeros(1, 8))
    assert out[1].abs().sum() > 0


def test_reads_only_the_allowed_keys():
    layout = ernie_vilg("row", TEXT, GRID, direction="text2image")
    g = torch.Generator().manual_seed(10)
    pos = layout.seq_len - 2
    q, k, v = rand(1, 2, 8, g=g), rand(1, 2, 40, 8, g=g), rand(1, 2, 40, 8, g=g)
    ref = O.decode_attention(q, k, v, layout, pos)
    keys = layout.keys_for_query(pos).long()
    other = torch.ones(40, dtype=torch.bool)
    other[keys] = False
    k2, v2 = k.clone(), v.clone()
    k2[:, :, other] = float("nan")
    v2[:, :, other] = float("nan")
    assert torch.equal(O.decode_attention(q, k2, v2, layout, pos), ref)


def test_numpy_inputs():
    layout = ernie_vilg("conv", TEXT, GRID)
    g = torch.Generator().manual_seed(11)
    q, k, v = rand(1, 2, 8, g=g), rand(1, 2, 40, 8, g=g), rand(1, 2, 40, 8, g=g)
    out = O.decode_attention(q.numpy(), k.numpy(), v.numpy(), layout, 20)
    torch.testing.assert_close(torch.from_numpy(out), O.decode_attention(q, k, v, layout, 20))


def test_bad_inputs():
    layout = ernie_vilg("row", TEXT, GRID, direction="image2text")
    L = layout.seq_len
    q, k, v = torch.randn(2, 2, 8), torch.randn(2, 2, L, 8), torch.randn(2, 2, L, 8)
    ok = dict(q=q, k_cache=k, v_cache=v, layout=layout, pos=5)

    def call(**kw):
        a = {**ok, **kw}
        return O.decode_attention(
            a["q"],
            a["k_cache"],
            a["v_cache"],
            a["layout"],
            a["pos"],
            **{n: a[n] for n in ("text_lens", "scale") if n in a},
        )

    call()
    for pos in (-1, L, 10**6):
        with pytest.raises(ValueError):
            call(pos=pos)
    with pytest.raises(TypeError):
        call(pos=5.0)
    with pytest.raises(ValueError):  # pos beyond a short cache
        call(k_cache=k[:, :, :4], v_cache=v[:, :, :4])
    with pytest.raises(ValueError, match="beyond the cache"):  # image2text: keys after pos
        call(pos=7, k_cache=k[:, :, :8], v_cache=v[:, :, :8])
    with pytest.raises(TypeError):
        call(q=q.half())
    with pytest.raises(TypeError):
        call(q=q.long(), k_cache=k.long(), v_cache=v.long())
    with pytest.raises(ValueError):
        call(q=torch.randn(2, 3, 8))
    with pytest.raises(ValueError):
        call(q=q[None])
    with pytest.raises(ValueError):
        call(k_cache=k[0])
    with pytest.raises(ValueError):
        call(v_cache=v[:, :, :-1])
    with pytest.raises(ValueError):  # non-contiguous head_dim
        call(k_cache=torch.randn(2, 2, 8, L).transpose(2, 3))
    with pytest.raises(TypeError):
        call(layout="row")
    with pytest.raises(ValueError):
        call(text_lens=torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError):
        call(text_lens=torch.tensor([1, TEXT + 1]))
    with pytest.raises(TypeError):
        call(text_lens=torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError):
        call(scale=float("nan"))
    with pytest.raises(ValueError):
        call(q=q.to("meta"), k_cache=k.to("meta"), v_cache=v.to("meta"))


def test_opcheck():
    layout = ernie_vilg("row", TEXT, GRID)
    keys = layout.keys_for_query(20)
    q, k, v = torch.randn(1, 2, 8), torch.randn(1, 2, 40, 8), torch.randn(1, 2, 40, 8)
    torch.library.opcheck(
        torch.ops.vilg.decode_attention.default,
        (q, k, v, keys, torch.tensor([3], dtype=torch.int32), 0, TEXT, 0.35),
        test_utils=("test_schema", "test_faketensor"),
    )
