"""Benchmark one decoding step (vilg.ops.decode_attention) and the fused sampler.

    python bench/decode.py                  # defaults for the device found
    python bench/decode.py --device cpu --batch 4 --heads 8

Decode: the query at position t (default 1000) of an ERNIE-ViLG layout (text 64 + 32 x 32
image grid, L = 1088) against a KV cache of L positions, for each layer kind. Anchor: a dense
KV-cache step, torch scaled_dot_product_attention over the t + 1 cached keys with the layout's
mask row (what a decoder without sparse kernels does). Reported: time, speedup, and the bytes
the vilg kernel must read (K and V rows of the allowed keys) per second.
Sampler: vilg.ops.sample (CFG + temperature + top-k + top-p + draw) against the same pipeline
in torch ops (topk, sort, cumsum, softmax, multinomial).
Median of repeats after warm-up with rotating inputs; CUDA events on the GPU, perf_counter on
the CPU. Prints tables and writes bench/results/decode_<device>.json. On a CPU shared with
other jobs, pin the thread count (OMP_NUM_THREADS=1), as for bench/vq.py.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import vilg
import vilg.ops as O
from vilg.layouts import KINDS, ernie_vilg

HERE = Path(__file__).resolve().parent

try:  # shared helpers of bench/vq.py (same folder)
    from vq import device_name, git_commit, load_average
except ImportError:  # pragma: no cover - run from elsewhere
    import sys

    sys.path.insert(0, str(HERE))
    from vq import device_name, git_commit, load_average


def timeit(fn, args_list, device, warmup=3, reps=20) -> float:
    n = len(args_list)
    for i in range(warmup):
        fn(*args_list[i % n])
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for i in range(reps):
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            fn(*args_list[i % n])
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
    else:
        for i in range(reps):
            t0 = time.perf_counter()
            fn(*args_list[i % n])
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_decode(kind, B, H, D, dtype, pos, device, reps, text=64, grid=(32, 32)):
    layout = ernie_vilg(kind, text, grid)
    L = layout.seq_len
    g = torch.Generator().manual_seed(0)
    sets = []
    for _ in range(3):  # rotate caches so nothing stays in cache between calls
        k = torch.randn(B, H, L, D, generator=g).to(dtype).to(device)
        v = torch.randn(B, H, L, D, generator=g).to(dtype).to(device)
        q = torch.randn(B, H, D, generator=g).to(dtype).to(device)
        sets.append((q, k, v))
    lens = torch.full((B,), text, dtype=torch.int32, device=device)
    keys = layout.keys_for_query(pos)
    nkeys = keys.numel()
    mask = layout.dense_mask()[pos, : pos + 1][None, :].to(device)  # [1, t + 1]

    def ours(q, k, v):
        return O.decode_attention(q, k, v, layout, pos, text_lens=lens)

    def dense(q, k, v):
        return F.scaled_dot_product_attention(
            q[:, :, None], k[:, :, : pos + 1], v[:, :, : pos + 1], attn_mask=mask
        )[:, :, 0]

    err = (ours(*sets[0]).float() - dense(*sets[0]).float()).abs().max().item()
    t_ours = timeit(ours, sets, device, reps=reps)
    t_dense = timeit(dense, sets, device, reps=reps)
    esize = torch.tensor([], dtype=dtype).element_size()
    moved = 2.0 * B * H * nkeys * D * esize + 2.0 * B * H * D * esize  # K, V rows + q, out
    return dict(
        op="decode_attention",
        kind=kind,
        batch=B,
        heads=H,
        head_dim=D,
        dtype=str(dtype).replace("torch.", ""),
        pos=pos,
        seq_len=L,
        keys=nkeys,
        vilg_ms=t_ours * 1e3,
        anchor="dense SDPA over t+1 cached keys",
        anchor_ms=t_dense * 1e3,
        speedup=t_dense / t_ours,
        vilg_gbps=moved / t_ours / 1e9,
        max_abs_diff_vs_anchor=err,
    )


def torch_sampler(logits, uncond, cfg, temperature, top_k, top_p):
    lg = (uncond + cfg * (logits - uncond)).float() / temperature
    vals, idx = lg.topk(top_k, dim=1)
    probs = torch.softmax(vals, dim=1)
    cum = probs.cumsum(1)
    drop = cum - probs >= top_p
    probs = probs.masked_fill(drop, 0.0)
    pick = torch.multinomial(probs, 1)
    return idx.gather(1, pick).squeeze(1)


def bench_sampler(B, V, dtype, device, reps):
    g = torch.Generator().manual_seed(1)
    sets = [
        (
            (torch.randn(B, V, generator=g) * 3).to(dtype).to(device),
            (torch.randn(B, V, generator=g) * 3).to(dtype).to(device),
        )
        for _ in range(3)
    ]
    kw = dict(cfg_scale=3.0, temperature=0.9, top_k=400, top_p=0.9)
    t_ours = timeit(lambda c, u: O.sample(c, uncond=u, seed=1, **kw), sets, device, reps=reps)
    t_torch = timeit(lambda c, u: torch_sampler(c, u, 3.0, 0.9, 400, 0.9), sets, device, reps=reps)
    return dict(
        op="sample",
        batch=B,
        vocab=V,
        dtype=str(dtype).replace("torch.", ""),
        options=kw,
        vilg_ms=t_ours * 1e3,
        anchor="torch topk+softmax+cumsum+multinomial",
        anchor_ms=t_torch * 1e3,
        speedup=t_torch / t_ours,
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, nargs="*", default=None)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--pos", type=int, default=1000, help="decoding position t")
    ap.add_argument("--reps", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    reps = args.reps or (50 if gpu else 10)
    batches = args.batch or ([8, 64] if gpu else [4])
    dtypes = [torch.float16, torch.bfloat16, torch.float32] if gpu else [torch.float32]
    rows = []
    for B in batches:
        for dtype in dtypes:
            for kind in KINDS:
                rows.append(
                    bench_decode(kind, B, args.heads, args.head_dim, dtype, args.pos, device, reps)
                )
    samp = [
        bench_sampler(B, V, torch.float32 if not gpu else torch.float16, device, reps)
        for B, V in ((8, 16384), (64, 16384))
    ]

    print(f"\nvilg decode_attention at t={args.pos} on {device_name(device)}")
    print(
        f"{'kind':7} {'B':>3} {'H':>3} {'D':>4} {'dtype':9} {'keys':>5} {'vilg ms':>9} "
        f"{'dense ms':>9} {'speedup':>8} {'GB/s':>8} {'max|diff|':>10}"
    )
    for r in rows:
        print(
            f"{r['kind']:7} {r['batch']:3d} {r['heads']:3d} {r['head_dim']:4d} "
            f"{r['dtype']:9} {r['keys']:5d} {r['vilg_ms']:9.4f} {r['anchor_ms']:9.4f} "
            f"{r['speedup']:7.2f}x {r['vilg_gbps']:8.2f} {r['max_abs_diff_vs_anchor']:10.2e}"
        )
    print("\nvilg sample (cfg 3, temperature 0.9, top-k 400, top-p 0.9)")
    print(f"{'B':>4} {'V':>6} {'dtype':9} {'vilg ms':>9} {'torch ms':>9} {'speedup':>8}")
    for r in samp:
        print(
            f"{r['batch']:4d} {r['vocab']:6d} {r['dtype']:9} {r['vilg_ms']:9.4f} "
            f"{r['anchor_ms']:9.4f} {r['speedup']:7.2f}x"
        )
    result = dict(
        benchmark="decode",
        device=device_name(device),
        device_type=device.type,
        date=datetime.datetime.now().isoformat(timespec="seconds"),
        git_commit=git_commit(),
        torch=torch.__version__,
        vilg=vilg.build_info(),
        reps=reps,
        load_average=load_average(),
        timing=("CUDA events" if gpu else "perf_counter")
        + ", median after warm-up, rotating inputs",
        layout=dict(text=64, grid=[32, 32], window=11, seq_len=64 + 32 * 32),
        results=rows,
        sampler=samp,
    )
    out = Path(args.out) if args.out else HERE / "results" / f"decode_{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"\nwrote {out}")
    assert all(math.isfinite(r["vilg_ms"]) for r in rows)


if __name__ == "__main__":
    main()
