"""GPU twins of test_sampling.py: the CUDA sampler draws what the CPU sampler draws."""

from __future__ import annotations

import math

import pytest
import torch
from test_sampling import reference_sample
from test_vq_cuda import poison

import vilg
import vilg.ops as O

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(
        not (torch.cuda.is_available() and vilg.build_info()["cuda"]),
        reason="needs a CUDA GPU and vilg built with CUDA",
    ),
]

OPTIONS = [
    dict(temperature=0.0),
    dict(),
    dict(temperature=0.7, top_k=40),
    dict(top_p=0.9),
    dict(temperature=1.2, top_k=100, top_p=0.8),
    dict(top_k=1),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("V", [7, 1000, 16384, 70000, 300000])  # the last two: > 48 / 227 KiB
@pytest.mark.parametrize("kw", OPTIONS)
def test_same_tokens_as_cpu(kw, V, dtype):
    g = torch.Generator().manual_seed(V)
    B = 8 if V > 20000 else 32
    logits = (2 * torch.randn(B, V, generator=g)).to(dtype)
    for seed, offset in ((0, 0), (12345, 77)):
        poison()
        got = O.sample(logits.cuda(), seed=seed, offset=offset, **kw)
        assert got.is_cuda and got.dtype == torch.int64
        assert torch.equal(got.cpu(), O.sample(logits, seed=seed, offset=offset, **kw))


def test_cfg_and_reference():
    g = torch.Generator().manual_seed(40)
    c, u = torch.randn(64, 500, generator=g), torch.randn(64, 500, generator=g)
    for kw in (dict(temperature=0), dict(temperature=0.8, top_p=0.9, seed=3)):
        got = O.sample(c.cuda(), uncond=u.cuda(), cfg_scale=3.0, **kw)
        assert torch.equal(got.cpu(), O.sample(c, uncond=u, cfg_scale=3.0, **kw))
    got = O.sample(c.cuda(), top_k=30, top_p=0.7, seed=9, offset=2)
    assert torch.equal(got.cpu(), reference_sample(c, top_k=30, top_p=0.7, seed=9, offset=2))


def test_special_rows():
    rows = torch.tensor(
        [
            [3.0, 1.0, 3.0, 2.0, 3.0, 0.0],
            [math.nan, 1.0, math.nan, 0.5, -1.0, -2.0],
            [-math.inf] * 6,
            [0.0, math.inf, 2.0, math.inf, 0.0, 0.0],
        ]
    )
    for seed in range(50):
        for kw in (dict(top_k=2), dict(), dict(temperature=0)):
            got = O.sample(rows.cuda(), seed=seed, **kw).cpu()
            assert torch.equal(got, O.sample(rows, seed=seed, **kw))


def test_reproducible_on_device():
    logits = torch.randn(16, 32000, device="cuda")
    a = O.sample(logits, seed=5, offset=1, top_p=0.95)
    for _ in range(3):
        assert torch.equal(a, O.sample(logits, seed=5, offset=1, top_p=0.95))
