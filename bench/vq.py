"""Benchmark the VQ ops against their torch anchors, on the CPU or a CUDA GPU.

    python bench/vq.py                      # default sizes for the device found
    python bench/vq.py --device cpu --sizes 4096x1024x256

vq_quantize is timed against torch.cdist(x, codebook).argmin(1) (which materialises the
N x K distances); vq_embed against codebook[indices]; vq_code_stats against bincount +
index_add_. Median of repeats after warm-up, with inputs rotated between calls; CUDA events on
the GPU, perf_counter on the CPU (bench/common.py). Prints a table and writes
bench/results/vq-<cpu|cuda>-<date>.json. On a CPU shared with other jobs, pin the thread count
(OMP_NUM_THREADS=1 python bench/vq.py); see bench/common.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import bench, device_name, thread_note, write_results  # noqa: E402

import vilg.ops as O  # noqa: E402

WARMUP = 2  # untimed calls before the timed repeats


def cdist_argmin(x, cb):
    if x.device.type == "cpu" and x.dtype != torch.float32:
        x, cb = x.float(), cb.float()  # torch's CPU cdist has no half kernels
    return torch.cdist(x, cb).argmin(1)


def bench_quantize(n, k, d, dtype, device, reps, fast=False):
    g = torch.Generator().manual_seed(0)
    cb = torch.randn(k, d, generator=g).to(dtype).to(device)
    xs = [(torch.randn(n, d, generator=g).to(dtype).to(device), cb) for _ in range(2)]
    ours = bench(lambda x, c: O.vq_quantize(x, c, fast_fp32=fast), xs, device, WARMUP, reps)
    try:
        anchor = bench(cdist_argmin, xs, device, WARMUP, reps)
    except (RuntimeError, torch.OutOfMemoryError) as e:  # e.g. no half cdist kernel
        print(f"  cdist anchor failed for {dtype}: {type(e).__name__}: {str(e)[:80]}")
        anchor = float("nan")
    agree = (O.vq_quantize(*xs[0], fast_fp32=fast) == cdist_argmin(*xs[0])).float().mean()
    flops = 2.0 * n * k * d
    return dict(
        op="vq_quantize",
        n=n,
        k=k,
        d=d,
        dtype=str(dtype).replace("torch.", ""),
        mode="fast_fp32" if fast else "default",
        vilg_ms=ours,
        anchor="cdist+argmin",
        anchor_ms=anchor,
        speedup=anchor / ours,
        vilg_tflops=flops / ours / 1e9,
        agree_with_anchor=float(agree),
    )


def bench_embed_stats(n, k, d, dtype, device, reps):
    g = torch.Generator().manual_seed(1)
    cb = torch.randn(k, d, generator=g).to(dtype).to(device)
    args = [(torch.randint(0, k, (n,), generator=g).to(device), cb) for _ in range(2)]
    emb = bench(O.vq_embed, args, device, WARMUP, reps)
    emb_t = bench(lambda i, c: c[i], args, device, WARMUP, reps)
    x = torch.randn(n, d, generator=g).to(dtype).to(device)
    sargs = [(i, x) for i, _ in args]
    st = bench(lambda i, xx: O.vq_code_stats(i, xx, k), sargs, device, WARMUP, reps)

    def torch_stats(i, xx):
        counts = torch.bincount(i, minlength=k).float()
        sums = torch.zeros(k, d, device=xx.device).index_add_(0, i, xx.float())
        return counts, sums

    st_t = bench(torch_stats, sargs, device, WARMUP, reps)
    dt = str(dtype).replace("torch.", "")
    return [
        dict(
            op="vq_embed",
            n=n,
            k=k,
            d=d,
            dtype=dt,
            vilg_ms=emb,
            anchor="codebook[idx]",
            anchor_ms=emb_t,
            speedup=emb_t / emb,
        ),
        dict(
            op="vq_code_stats",
            n=n,
            k=k,
            d=d,
            dtype=dt,
            vilg_ms=st,
            anchor="bincount+index_add_",
            anchor_ms=st_t,
            speedup=st_t / st,
        ),
    ]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--sizes", nargs="*", help="NxKxD for vq_quantize (default per device)")
    ap.add_argument("--reps", type=int, default=0, help="timed repeats (default per device)")
    ap.add_argument(
        "--out",
        default=None,
        help="JSON path (default bench/results/vq-<dev>-<date>.json)",
    )
    args = ap.parse_args()
    device = torch.device(args.device)
    thread_note(device)
    gpu = device.type == "cuda"
    reps = args.reps or (20 if gpu else 5)
    if args.sizes:
        sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes]
    else:
        sizes = (
            [(65536, 8192, 256), (16384, 1024, 64)]
            if gpu
            else [(4096, 1024, 256), (16384, 512, 64)]
        )
    dtypes = [torch.float32, torch.float16, torch.bfloat16]
    rows = []
    for n, k, d in sizes:
        for dtype in dtypes:
            rows.append(bench_quantize(n, k, d, dtype, device, reps))
            if gpu and dtype == torch.float32:
                rows.append(bench_quantize(n, k, d, dtype, device, reps, fast=True))
            if not gpu and (n, k, d) != sizes[0]:
                break  # on the CPU the half types only for the first size
    n, k, d = sizes[0]
    rows += bench_embed_stats(n, k, d, torch.float32, device, reps)

    print(f"\nvilg VQ on {device_name(device)}")
    print(
        f"{'op':14} {'N x K x D':>20} {'dtype':9} {'mode':10} {'vilg ms':>9} "
        f"{'anchor ms':>10} {'speedup':>8}  note"
    )
    for r in rows:
        shape = f"{r['n']}x{r['k']}x{r['d']}"
        note = r["anchor"]
        if "vilg_tflops" in r:
            note += f", {r['vilg_tflops'] * 1e3:.1f} GFLOP/s, agree {r['agree_with_anchor']:.4f}"
        print(
            f"{r['op']:14} {shape:>20} {r['dtype']:9} {r.get('mode', ''):10} "
            f"{r['vilg_ms']:9.3f} {r['anchor_ms']:10.3f} {r['speedup']:7.2f}x  {note}"
        )
    config = dict(
        vars(args),
        sizes=[list(s) for s in sizes],
        dtypes=[str(t).replace("torch.", "") for t in dtypes],
        reps=reps,
        warmup=WARMUP,
    )
    out = write_results("vq", device, config, rows, args.out)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
