"""The fused sampler on the CPU: Philox known answers, argmax mode, top-k / top-p exclusion,
empirical frequencies, reproducibility, CFG, and an independent float64 re-implementation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import vilg.ops as O
from vilg._ext import C

M32 = 0xFFFFFFFF

# Random123 tests/kat_vectors, philox4x32 10: counter[4], key[2] -> output[4]
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((M32,) * 4, (M32, M32), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    (
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
]


def philox_py(c, k):
    c, (k0, k1) = list(c), k
    for _ in range(10):
        p0, p1 = 0xD2511F53 * c[0], 0xCD9E8D57 * c[2]
        c = [((p1 >> 32) ^ c[1] ^ k0) & M32, p1 & M32, ((p0 >> 32) ^ c[3] ^ k1) & M32, p0 & M32]
        k0, k1 = (k0 + 0x9E3779B9) & M32, (k1 + 0xBB67AE85) & M32
    return tuple(c)


@pytest.mark.parametrize("ctr,key,want", KAT)
def test_philox_known_answers(ctr, key, want):
    assert tuple(C().philox4x32_10(*ctr, *key)) == want
    assert philox_py(ctr, key) == want


def reference_sample(
    logits, uncond=None, cfg=1.0, temperature=1.0, top_k=0, top_p=1.0, seed=0, offset=0
):
    """The documented algorithm in float64 / Python integers (exact exp, no shared code)."""
    c = logits.double()
    mixed = c if uncond is None else uncond.double() + cfg * (c - uncond.double())
    out = []
    for b in range(logits.shape[0]):
        l32 = mixed[b].float()
        if temperature <= 0:
            out.append(int(torch.argmax(l32)))
            continue
        z = (l32 * torch.tensor(1.0 / temperature, dtype=torch.float32)).double()
        z = torch.where(torch.isnan(z), -math.inf, z).tolist()
        V, m = len(z), max(z)
        tau = -math.inf
        if 0 < top_k < V:
            tau = sorted(z, reverse=True)[top_k - 1]

        def weight(v, m=m):
            e = 1.0 if v == m else math.exp(v - m)
            return int(e * 2.0**40)

        w = [weight(v) if v >= tau else 0 for v in z]
        total = sum(w)
        if top_p < 1.0:
            need = min(max(int(top_p * float(total)), 1), total)
            cum = 0
            for v in sorted({v for v, wi in zip(z, w, strict=True) if wi > 0}, reverse=True):
                cum += sum(wi for zi, wi in zip(z, w, strict=True) if zi == v)
                if cum >= need:
                    tau, total = v, cum
                    break
            w = [wi if v >= tau else 0 for v, wi in zip(z, w, strict=True)]
        s, o = seed % 2**64, offset % 2**64
        x = philox_py((o & M32, o >> 32, b & M32, b >> 32), (s & M32, s >> 32))
        target = ((((x[0] << 32) | x[1]) >> 11) * total) >> 53
        cum = 0
        for i, wi in enumerate(w):
            cum += wi
            if cum > target:
                out.append(i)
                break
    return torch.tensor(out)


@pytest.mark.parametrize(
    "kw",
    [
        {},
        dict(temperature=0.7),
        dict(top_k=5),
        dict(top_p=0.8, temperature=1.3),
        dict(top_k=20, top_p=0.6, temperature=0.9),
        dict(cfg=3.0, temperature=0.8, top_p=0.9),
        dict(cfg=-0.5, top_k=3),
    ],
)
def test_matches_independent_reference(kw):
    g = torch.Generator().manual_seed(12)
    B, V = 64, 300
    logits = 2 * torch.randn(B, V, generator=g)
    cfg = kw.pop("cfg", None)
    uncond = torch.randn(B, V, generator=g) if cfg is not None else None
    extra = dict(uncond=uncond, cfg_scale=cfg) if cfg is not None else {}
    for seed, offset in ((0, 0), (7, 3), (2**63 + 5, 2**40)):
        got = O.sample(logits, seed=seed, offset=offset, **extra, **kw)
        want = reference_sample(logits, uncond, cfg or 1.0, seed=seed, offset=offset, **kw)
        assert got.dtype == torch.int64
        assert torch.equal(got, want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_argmax_mode(dtype):
    g = torch.Generator().manual_seed(13)
    logits = torch.randn(16, 1000, generator=g).to(dtype)
    want = torch.argmax(logits.float(), dim=1)
    assert torch.equal(O.sample(logits, temperature=0.0, seed=5), want)
    ties = torch.zeros(3, 10, dtype=dtype)
    ties[0, [2, 5, 7]] = 4
    ties[1, [9, 0]] = 1
    ties[2] = -math.inf
    assert O.sample(ties, temperature=0).tolist() == [2, 0, 0]
    u = torch.randn(16, 1000, generator=g).to(dtype)
    mix = u.double() + 2.5 * (logits.double() - u.double())
    assert torch.equal(O.sample(logits, uncond=u, cfg_scale=2.5, temperature=0), mix.argmax(1))


def test_top_k_never_picks_excluded_tokens():
    g = torch.Generator().manual_seed(14)
    logits = torch.randn(8, 500, generator=g)
    kth = logits.topk(10, dim=1).values[:, -1:]
    for seed in range(150):
        tok = O.sample(logits, top_k=10, temperature=1.5, seed=seed)
        assert (logits.gather(1, tok[:, None]) >= kth).all()
    # ties at the cut are all kept
    row = torch.tensor([[3.0, 1.0, 3.0, 2.0, 3.0, 0.0]])
    seen = {int(O.sample(row, top_k=2, seed=s)) for s in range(200)}
    assert seen == {0, 2, 4}


def test_top_p_never_picks_excluded_tokens():
    g = torch.Generator().manual_seed(15)
    logits = 1.5 * torch.randn(8, 200, generator=g)
    p = torch.softmax(logits.double(), dim=1)
    for top_p in (0.3, 0.75):
        for seed in range(100):
            tok = O.sample(logits, top_p=top_p, seed=seed)
            pt = p.gather(1, tok[:, None])
            above = torch.where(p > pt, p, 0.0).sum(1)  # mass of strictly more likely tokens
            assert (above < top_p + 1e-6).all()


def filtered_probs(z: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    z = z.double()
    keep = torch.ones_like(z, dtype=torch.bool)
    if top_k:
        keep &= z >= z.topk(top_k).values[-1]
    p = torch.softmax(z.masked_fill(~keep, -math.inf), 0)
    if top_p < 1:
        order = p.argsort(descending=True)
        cum = p[order].cumsum(0)
        last = int((cum < top_p).sum())
        keep &= z >= z[order[last]]
        p = torch.softmax(z.masked_fill(~keep, -math.inf), 0)
    return p


@pytest.mark.parametrize("top_k,top_p", [(0, 1.0), (6, 1.0), (0, 0.85), (8, 0.9)])
def test_frequencies_match_filtered_softmax(top_k, top_p):
    g = torch.Generator().manual_seed(16)
    V, n, T = 12, 40000, 0.8
    logits = torch.randn(V, generator=g)
    tok = O.sample(logits.expand(n, V), temperature=T, top_k=top_k, top_p=top_p, seed=99)
    freq = torch.bincount(tok, minlength=V).double()
    p = filtered_probs(logits / T, top_k, top_p)
    assert (freq[p == 0] == 0).all()
    expect = p * n
    live = expect > 0
    chi2 = (((freq - expect) ** 2)[live] / expect[live]).sum().item()
    df = int(live.sum()) - 1
    assert chi2 < df + 6 * math.sqrt(2 * df) + 10, (chi2, df)


def test_reproducible_and_offset_changes_draws():
    g = torch.Generator().manual_seed(17)
    logits = 0.1 * torch.randn(32, 5000, generator=g)  # flat: draws vary a lot
    a = O.sample(logits, seed=3, offset=10)
    assert torch.equal(a, O.sample(logits, seed=3, offset=10))
    assert torch.equal(a, O.sample(logits.clone(), seed=3 + 2**64, offset=10))
    assert (a != O.sample(logits, seed=3, offset=11)).sum() > 20
    assert (a != O.sample(logits, seed=4, offset=10)).sum() > 20
    # each row has its own counter: identical rows draw differently
    rows = O.sample(logits[:1].expand(32, -1), seed=3)
    assert len(set(rows.tolist())) > 20


def test_cfg_mix_equals_formula():
    g = torch.Generator().manual_seed(18)
    c, u = torch.randn(64, 400, generator=g), torch.randn(64, 400, generator=g)
    for cfg in (0.0, 1.0, 4.0):
        mix = (u.double() + cfg * (c.double() - u.double())).float()
        for kw in (dict(temperature=0), dict(temperature=0.9, top_k=50, seed=1)):
            got = O.sample(c, uncond=u, cfg_scale=cfg, **kw)
            assert torch.equal(got, O.sample(mix, **kw))
    assert torch.equal(O.sample(c, uncond=u, cfg_scale=0.0, temperature=0), u.argmax(1))


def test_nan_and_inf_rows():
    row = torch.tensor([[float("nan"), 1.0, float("nan"), 0.5]])
    assert {int(O.sample(row, seed=s)) for s in range(100)} <= {1, 3}
    allneg = torch.full((1, 5), -math.inf)
    assert {int(O.sample(allneg, seed=s)) for s in range(200)} == set(range(5))
    inf = torch.tensor([[0.0, math.inf, 2.0, math.inf]])
    assert {int(O.sample(inf, seed=s)) for s in range(100)} == {1, 3}


def test_all_nan_rows_and_negative_temperature_raise():
    lg = torch.randn(5, 8, generator=torch.Generator().manual_seed(3))
    lg[1] = float("nan")
    lg[3] = float("nan")
    with pytest.raises(ValueError, match=r"rows \[1, 3\] are all NaN"):
        O.sample(lg)
    with pytest.raises(ValueError, match=r"rows \[1, 3\]"):
        O.sample(lg, temperature=0)  # argmax of nothing is no better
    good = torch.randn(5, 8)
    u = good.clone()
    u[4] = float("nan")
    with pytest.raises(ValueError, match=r"rows \[4\].*guidance"):
        O.sample(good, uncond=u, cfg_scale=2.0)
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        O.sample(good, temperature=-1.0)
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        O.sample(good, temperature=-1e-9)
    lg[1, 0] = 0.0  # one finite entry: the row has a distribution again (NaN counts as -inf)
    with pytest.raises(ValueError, match=r"rows \[3\] are all NaN \(1 of 5\)"):
        O.sample(lg)
    lg[3, 7] = 0.0
    assert O.sample(lg, temperature=0)[1].item() == 0


def test_dtypes_and_numpy():
    g = torch.Generator().manual_seed(19)
    logits = torch.randn(4, 64, generator=g)
    for dtype in (torch.float16, torch.bfloat16):
        lo = logits.to(dtype)
        assert torch.equal(O.sample(lo, seed=2, top_k=8), O.sample(lo.float(), seed=2, top_k=8))
    out = O.sample(logits.numpy(), seed=2)
    assert isinstance(out, np.ndarray) and np.array_equal(out, O.sample(logits, seed=2).numpy())
    strided = torch.randn(4, 100, generator=g)[:, 10:74]
    assert torch.equal(O.sample(strided, seed=1), O.sample(strided.contiguous(), seed=1))


def test_bad_inputs():
    lg = torch.randn(2, 10)
    for kw in (
        dict(temperature=float("nan")),
        dict(top_k=-1),
        dict(top_p=0.0),
        dict(top_p=1.5),
        dict(top_p=float("nan")),
        dict(cfg_scale=float("inf")),
        dict(temperature=float("inf")),
        dict(temperature=1e-40),
    ):
        with pytest.raises(ValueError):
            O.sample(lg, **kw)
    for kw in (dict(top_k=2.0), dict(top_k=True), dict(seed=1.0), dict(temperature="1")):
        with pytest.raises(TypeError):
            O.sample(lg, **kw)
    with pytest.raises(TypeError):
        O.sample(lg.long())
    with pytest.raises(ValueError):
        O.sample(torch.randn(10))
    with pytest.raises(ValueError):
        O.sample(torch.randn(2, 0))
    with pytest.raises(ValueError):
        O.sample(torch.randn(10, 2).t())
    with pytest.raises(ValueError):
        O.sample(lg, uncond=torch.randn(2, 11))
    with pytest.raises(TypeError):
        O.sample(lg, uncond=lg.half())
    with pytest.raises(ValueError):
        O.sample(torch.zeros(1, 2**23 + 1))


def test_opcheck():
    lg = torch.randn(3, 50)
    torch.library.opcheck(
        torch.ops.vilg.sample.default,
        (lg, None, 1.0, 0.8, 5, 0.9, 1, 2),
        test_utils=("test_schema", "test_faketensor"),
    )
