"""GPU twins of test_vq.py: CUDA VQ ops against float64 references and the CPU kernels."""

from __future__ import annotations

import pytest
import torch
from test_vq import DTYPES, assert_nearest, sqdist64

import vilg
import vilg.ops as O

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(
        not (torch.cuda.is_available() and vilg.build_info()["cuda"]),
        reason="needs a CUDA GPU and vilg built with CUDA",
    ),
]


def poison():
    """Fill the caching allocator's free blocks with 0xFF (NaN / -1), so that outputs the ops
    allocate start out as garbage rather than as zeros left over from earlier tensors."""
    junk = [torch.full((1 << 18,), 255, dtype=torch.uint8, device="cuda") for _ in range(32)]
    junk.append(torch.full((256 << 20,), 255, dtype=torch.uint8, device="cuda"))
    del junk
    torch.cuda.synchronize()


def agree_with_cpu(idx_gpu, x, cb):
    """Where CUDA and CPU pick different codes, the codes must tie in float64 within the
    rounding of float32 accumulation."""
    idx_cpu = O.vq_quantize(x, cb)
    diff = idx_gpu.cpu() != idx_cpu
    if diff.any():
        d = sqdist64(x[diff], cb)
        a = d.gather(1, idx_gpu.cpu()[diff][:, None])
        b = d.gather(1, idx_cpu[diff][:, None])
        scale = (x[diff].double() ** 2).sum(1, keepdim=True) + (cb.double() ** 2).sum(1).max()
        assert ((a - b).abs() <= 4e-6 * scale * max(1.0, x.shape[1] / 64)).all()
    assert diff.float().mean() < 0.03


@pytest.mark.parametrize(
    "dtype,fast",
    [
        (torch.float32, False),
        (torch.float32, True),
        (torch.float16, False),
        (torch.bfloat16, False),
    ],
)
@pytest.mark.parametrize("n,k,d", [(1000, 300, 64), (77, 5000, 256), (300, 129, 20), (5, 3, 3)])
def test_quantize(dtype, fast, n, k, d):
    g = torch.Generator().manual_seed(n + k + d)
    x = torch.randn(n, d, generator=g).to(dtype)
    cb = torch.randn(k, d, generator=g).to(dtype)
    poison()
    idx = O.vq_quantize(x.cuda(), cb.cuda(), fast_fp32=fast)
    assert idx.is_cuda and idx.dtype == torch.int64
    assert_nearest(idx.cpu(), x, cb)
    agree_with_cpu(idx, x, cb)


@pytest.mark.parametrize("dtype", DTYPES)
def test_quantize_misaligned_rows(dtype):
    g = torch.Generator().manual_seed(20)
    big = torch.randn(200, 70, generator=g).to(dtype).cuda()
    cbig = torch.randn(150, 66, generator=g).to(dtype).cuda()
    x, cb = big[:, 1:65], cbig[:, 1:65]  # base and row strides not 16-byte aligned
    poison()
    idx = O.vq_quantize(x, cb)
    assert torch.equal(idx, O.vq_quantize(x.contiguous(), cb.contiguous()))
    assert_nearest(idx.cpu(), x.cpu(), cb.cpu())


@pytest.mark.parametrize(
    "dtype,fast",
    [
        (torch.float32, False),
        (torch.float32, True),
        (torch.float16, False),
        (torch.bfloat16, False),
    ],
)
def test_quantize_exact_ties_across_tiles_and_splits(dtype, fast):
    g = torch.Generator().manual_seed(21)
    cb = torch.randn(3000, 32, generator=g)
    groups = [[3, 1500, 2999], [128, 127, 2000], [700, 701]]
    for grp in groups:
        for j in grp[1:]:
            cb[j] = cb[grp[0]]
    c = cb.to(dtype)
    rows, want = [], []
    for grp in groups:
        for j in grp:
            rows += [c[j].float(), c[j].float() + 0.01 * torch.randn(32, generator=g)]
            want += [min(grp)] * 2
    x = torch.stack(rows).to(dtype)
    poison()  # few rows, many codes: the codes are split across blocks
    assert O.vq_quantize(x.cuda(), c.cuda(), fast_fp32=fast).tolist() == want


@pytest.mark.parametrize("dtype", DTYPES)
def test_embed_and_stats(dtype):
    g = torch.Generator().manual_seed(22)
    K, D = 100, 24
    cb = torch.randn(K, D, generator=g).to(dtype).cuda()
    idx = torch.randint(0, K, (4, 300), generator=g).cuda()
    poison()
    out = O.vq_embed(idx, cb)
    assert torch.equal(out, cb[idx])
    assert torch.equal(O.vq_embed(idx.int(), cb[:, 1:]), cb[:, 1:][idx])  # unaligned rows
    x = torch.randn(4, 300, D, generator=g).to(dtype).cuda()
    poison()
    counts, sums = O.vq_code_stats(idx, x, K)
    flat = idx.reshape(-1).cpu()
    assert torch.equal(counts.cpu(), torch.bincount(flat, minlength=K).float())
    rows = x.reshape(-1, D).cpu().double()
    want = torch.zeros(K, D, dtype=torch.float64).index_add_(0, flat, rows)
    torch.testing.assert_close(sums.cpu().double(), want, rtol=1e-5, atol=1e-4)
    c_cpu, s_cpu = O.vq_code_stats(idx.cpu(), x.cpu(), K)
    assert torch.equal(counts.cpu(), c_cpu)
    torch.testing.assert_close(sums.cpu(), s_cpu, rtol=1e-5, atol=1e-4)
    O.vq_check_indices("cuda")  # nothing recorded


def test_bad_indices_raise_with_check():
    """check=True: a ValueError naming the index (without it, a device-side assertion, which
    ends the process's CUDA context: tests/test_device_checks_cuda.py runs that apart)."""
    cb = torch.randn(10, 8, device="cuda")
    O.vq_check_indices("cuda")
    with pytest.raises(ValueError, match=r"out of range.*e\.g\. 12"):
        O.vq_embed(torch.tensor([1, 12, 3], device="cuda"), cb, check=True)
    O.vq_check_indices("cuda")  # the record was cleared
    with pytest.raises(ValueError, match="out of range"):
        O.vq_embed(torch.tensor([-1], device="cuda"), cb, check=True)
    x = torch.randn(3, 8, device="cuda")
    with pytest.raises(ValueError, match="out of range"):
        O.vq_code_stats(torch.tensor([0, 10, 2], device="cuda"), x, 10, check=True)
    O.vq_check_indices("cuda")
    out = O.vq_embed(torch.tensor([1, 3], device="cuda"), cb, check=True)
    assert torch.equal(out, cb[[1, 3]])


def test_bad_inputs():
    x, cb = torch.randn(10, 8, device="cuda"), torch.randn(4, 8)
    with pytest.raises(ValueError):
        O.vq_quantize(x, cb)  # devices differ
    with pytest.raises(ValueError):
        O.vq_embed(torch.tensor([0]), cb.cuda())
