"""A small CUDA workload of every kernel family for compute-sanitizer (not collected by pytest).

    compute-sanitizer --tool memcheck  --error-exitcode 1 python tests/cuda_sanitize_case.py
    (likewise racecheck, synccheck, initcheck; bench/gpu_session.sh runs all four)
    python tests/cuda_sanitize_case.py --family vq   # one family: attention, decode, vq, sampling

attention: forward and backward of every dtype x head_dim on a permuted layout (column
attention) of L = 131 (last tile partial: 3 rows), with padded text and both the aligned
(cp.async) and the misaligned (element-wise) load paths, against the float64 reference.
decode: the decode kernel (and its split-K combine, at few (batch, head) pairs) of every dtype
at head dims 64 / 256, first / tile-edge / last positions, padded text, against the CPU op.
vq: quantize (fp32 SIMT, fp32 split-TF32, f16 / bf16 tensor cores; aligned and odd-dim rows,
codes not a multiple of the tile), embed, code statistics, against the CPU ops.
sampling: greedy, top-k, top-p, CFG draws at vocabularies below 48 KiB of staged logits, above
it (shared-memory opt-in) and past the opt-in limit (unstaged), against the CPU sampler.
Each case prints ok / FAILED; exits 1 on a mismatch, 2 without a usable GPU build.
"""

from __future__ import annotations

import argparse
import os
import sys
from functools import partial

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import test_attention_cuda as t  # noqa: E402

import vilg.ops as O  # noqa: E402
from vilg.layouts import ernie_vilg  # noqa: E402

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
TOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def attention():
    layout = ernie_vilg("column", 11, (8, 15), direction="text2image", window=5)  # L = 131
    lens = t.text_lens(layout, True, "cuda")
    for dtype in t.DTYPES:
        for head_dim in t.HEAD_DIMS:
            for storage in ("contiguous", "misaligned"):
                name = f"attention {str(dtype):15} D={head_dim:3} {storage}"
                yield (
                    name,
                    partial(
                        t.check_case, "cuda", layout, dtype, head_dim, lens, 1, storage=storage
                    ),
                )


def _decode_case(dtype, D, B, H):
    layout = ernie_vilg("row", 16, (8, 8), direction="text2image", window=5)
    L = layout.seq_len
    g = torch.Generator().manual_seed(D + B)
    q, k, v = (torch.randn(B, H, L, D, generator=g).to(dtype) for _ in range(3))
    lens = torch.tensor([16, 5, 0][:B] + [9] * max(0, B - 3))
    kc, vc, lc = k.cuda(), v.cuda(), lens.cuda()
    for pos in (0, 15, 16, 63, 64, L - 1):
        out = O.decode_attention(q[:, :, pos].cuda(), kc, vc, layout, pos, text_lens=lc)
        cpu = O.decode_attention(q[:, :, pos], k, v, layout, pos, text_lens=lens)
        tol = TOL[dtype]
        torch.testing.assert_close(out.cpu().float(), cpu.float(), rtol=tol, atol=tol)


def decode():
    for dtype in DTYPES:
        for D in (64, 256):
            for B, H in ((3, 2), (1, 1)):  # (1, 1): split-K plus the combine kernel
                name = f"decode {str(dtype):15} D={D:3} B={B} H={H}"
                yield name, partial(_decode_case, dtype, D, B, H)


def _vq_case(dtype, n, k, d, fast):
    g = torch.Generator().manual_seed(n + k + d)
    x = torch.randn(n, d, generator=g).to(dtype)
    cb = torch.randn(k, d, generator=g).to(dtype)
    got = O.vq_quantize(x.cuda(), cb.cuda(), fast_fp32=fast).cpu()
    want = O.vq_quantize(x, cb)
    # near-ties may resolve differently in float32: the chosen codes must be as near
    dist = ((x.double()[:, None] - cb.double()[None]) ** 2).sum(-1)
    gap = dist.gather(1, got[:, None]) - dist.gather(1, want[:, None])
    assert (gap.abs() <= 1e-3 * dist.max()).all(), "quantize"
    idx = want.cuda()
    emb = O.vq_embed(idx, cb.cuda(), check=True)
    assert torch.equal(emb.cpu(), cb[want]), "embed"
    counts, sums = O.vq_code_stats(idx, x.cuda(), k, check=True)
    c_cpu, s_cpu = O.vq_code_stats(want, x, k)
    assert torch.equal(counts.cpu(), c_cpu), "code_stats counts"
    torch.testing.assert_close(sums.cpu(), s_cpu, rtol=1e-4, atol=1e-3)


def vq():
    for dtype in DTYPES:
        for n, k, d in ((300, 200, 64), (7, 1000, 256), (65, 33, 24), (1, 5, 9)):
            fasts = (False, True) if dtype == torch.float32 else (False,)
            for fast in fasts:
                name = f"vq {str(dtype):15} N={n} K={k} D={d}{' fast_fp32' if fast else ''}"
                yield name, partial(_vq_case, dtype, n, k, d, fast)


def _sampling_case(dtype, V, kw):
    g = torch.Generator().manual_seed(V)
    c = (2 * torch.randn(4, V, generator=g)).to(dtype)
    u = (2 * torch.randn(4, V, generator=g)).to(dtype)
    for uncond in (None, u):
        args = dict(kw, uncond=uncond, cfg_scale=3.0 if uncond is not None else 1.0)
        for seed, offset in ((0, 0), (7, 11)):
            got = O.sample(
                c.cuda(),
                **{**args, "uncond": None if uncond is None else uncond.cuda()},
                seed=seed,
                offset=offset,
            )
            assert torch.equal(got.cpu(), O.sample(c, **args, seed=seed, offset=offset))


def sampling():
    options = (dict(temperature=0.0), dict(temperature=0.7, top_k=40), dict(top_p=0.9))
    for dtype in DTYPES:
        for V in (1000, 70000, 300000):  # staged < 48 KiB, opt-in, unstaged
            for kw in options:
                yield f"sampling {str(dtype):15} V={V} {kw}", partial(_sampling_case, dtype, V, kw)


FAMILIES = {"attention": attention, "decode": decode, "vq": vq, "sampling": sampling}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="CUDA kernels under compute-sanitizer")
    ap.add_argument("--family", choices=sorted(FAMILIES), action="append")
    args = ap.parse_args(argv)
    if not t._cuda_ready():
        print("no CUDA device or vilg built without CUDA")
        return 2
    torch.cuda.init()
    failures = runs = 0
    for family in args.family or list(FAMILIES):
        for name, case in FAMILIES[family]():
            runs += 1
            try:
                case()
                status = "ok"
            except AssertionError as e:
                failures += 1
                status = f"FAILED: {e}"
            print(f"{name} {status}", flush=True)
    torch.cuda.synchronize()
    print(f"{runs - failures} passed, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
