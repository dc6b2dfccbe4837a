"""GPU twins of test_decode.py: CUDA decoding attention against float64 rows and the CPU."""

from __future__ import annotations

import pytest
import torch
from test_decode import dense_row, rand
from test_vq_cuda import poison

import vilg
import vilg.ops as O
from vilg.layouts import DIRECTIONS, KINDS, ernie_vilg

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(
        not (torch.cuda.is_available() and vilg.build_info()["cuda"]),
        reason="needs a CUDA GPU and vilg built with CUDA",
    ),
]

TOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("kind", KINDS)
def test_matches_dense_and_cpu(kind, direction, dtype):
    answer = 9 if direction == "vqa" else 0
    layout = ernie_vilg(kind, 16, (8, 8), direction=direction, window=5, answer_len=answer)
    L = layout.seq_len
    g = torch.Generator().manual_seed(30)
    B, H, D = 3, 2, 64
    q, k, v = (rand(B, H, L, D, g=g, dtype=dtype) for _ in range(3))
    lens = torch.tensor([16, 5, 0])
    qc, kc, vc, lc = q.cuda(), k.cuda(), v.cuda(), lens.cuda()
    for pos in list(range(0, L, 7)) + [15, 16, L - 1]:
        poison()
        out = O.decode_attention(qc[:, :, pos], kc, vc, layout, pos, text_lens=lc)
        assert out.is_cuda and out.dtype == dtype and out.shape == (B, H, D)
        ref = dense_row(q[:, :, pos], k, v, layout, pos, lens)
        t = TOL[dtype]
        torch.testing.assert_close(out.cpu().double(), ref, rtol=t, atol=t)
        cpu = O.decode_attention(q[:, :, pos], k, v, layout, pos, text_lens=lens)
        torch.testing.assert_close(out.cpu().float(), cpu.float(), rtol=t, atol=t)


@pytest.mark.parametrize("D", [32, 128, 256])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_head_dims_split_k_and_strided_cache(D, dtype):
    layout = ernie_vilg("full", 64, (32, 32))  # 1088 keys at the last position
    L = layout.seq_len
    g = torch.Generator().manual_seed(31)
    for B, H in ((1, 1), (2, 3), (16, 16)):  # few (batch, head) pairs -> split-K
        buf = rand(B, L + 8, H, 2 * D, g=g, dtype=dtype).cuda()
        k = buf[:, :, :, :D].transpose(1, 2)
        v = buf[:, :, :, D:].transpose(1, 2)
        q = rand(B, H, D, g=g, dtype=dtype).cuda()
        for pos in (L - 1, 700, 3):
            poison()
            out = O.decode_attention(q, k, v, layout, pos)
            ref = dense_row(q.cpu(), k.cpu(), v.cpu(), layout, pos)
            t = TOL[dtype]
            torch.testing.assert_close(out.cpu().double(), ref, rtol=t, atol=t)


def test_no_key_gives_zero_and_bad_inputs():
    layout = ernie_vilg("row", 8, (4, 4))
    q, k, v = (
        torch.randn(2, 2, 64, device="cuda"),
        torch.randn(2, 2, 24, 64, device="cuda"),
        torch.randn(2, 2, 24, 64, device="cuda"),
    )
    poison()
    out = O.decode_attention(q, k, v, layout, 3, text_lens=torch.tensor([0, 8], device="cuda"))
    assert torch.equal(out[0], torch.zeros(2, 64, device="cuda"))
    assert torch.isfinite(out).all()
    with pytest.raises(ValueError, match="head_dim"):
        O.decode_attention(q[..., :48], k[..., :48], v[..., :48], layout, 3)
    with pytest.raises(ValueError, match="16 bytes"):
        misaligned = torch.randn(2, 2, 24, 66, device="cuda")[..., 1:65]
        O.decode_attention(q, misaligned, v, layout, 3)
    with pytest.raises(ValueError):
        O.decode_attention(q.cpu(), k, v, layout, 3)
