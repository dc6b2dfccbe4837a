"""Benchmark the VQ ops against their torch anchors, on the CPU or a CUDA GPU.

    python bench/vq.py                      # default sizes for the device found
    python bench/vq.py --device cpu --sizes 4096x1024x256

vq_quantize is timed against torch.cdist(x, codebook).argmin(1) (which materialises the
N x K distances); vq_embed against codebook[indices]; vq_code_stats against bincount +
index_add_. Median of repeats after warm-up, with inputs rotated between calls; CUDA events on
the GPU, perf_counter on the CPU. Prints a table and writes bench/results/vq_<device>.json.
On a CPU shared with other jobs, pin the thread count (OMP_NUM_THREADS=1 python bench/vq.py):
an OpenMP team waits for its slowest thread, and a descheduled one costs a whole time slice.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

import torch

import vilg
import vilg.ops as O

HERE = Path(__file__).resolve().parent


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or "cpu"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model} ({torch.get_num_threads()} threads, OpenMP {os.cpu_count()} cpus)"


def load_average() -> list[float] | None:
    """The machine's 1/5/15-minute load (a CPU shared with other jobs times badly)."""
    try:
        return [float(v) for v in open("/proc/loadavg").read().split()[:3]]
    except OSError:
        return None


def git_commit() -> str:
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=HERE,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=HERE,
            capture_output=True,
            text=True,
        ).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def timeit(fn, args_list, device, warmup=2, reps=7) -> float:
    """Median seconds of fn(*args), cycling through args_list."""
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


def cdist_argmin(x, cb):
    if x.device.type == "cpu" and x.dtype != torch.float32:
        x, cb = x.float(), cb.float()  # torch's CPU cdist has no half kernels
    return torch.cdist(x, cb).argmin(1)


def bench_quantize(n, k, d, dtype, device, reps, fast=False):
    g = torch.Generator().manual_seed(0)
    cb = torch.randn(k, d, generator=g).to(dtype).to(device)
    xs = [(torch.randn(n, d, generator=g).to(dtype).to(device), cb) for _ in range(2)]
    ours = timeit(lambda x, c: O.vq_quantize(x, c, fast_fp32=fast), xs, device, reps=reps)
    try:
        anchor = timeit(cdist_argmin, xs, device, reps=reps)
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
        vilg_ms=ours * 1e3,
        anchor="cdist+argmin",
        anchor_ms=anchor * 1e3,
        speedup=anchor / ours,
        vilg_tflops=flops / ours / 1e12,
        agree_with_anchor=float(agree),
    )


def bench_embed_stats(n, k, d, dtype, device, reps):
    g = torch.Generator().manual_seed(1)
    cb = torch.randn(k, d, generator=g).to(dtype).to(device)
    args = [(torch.randint(0, k, (n,), generator=g).to(device), cb) for _ in range(2)]
    emb = timeit(O.vq_embed, args, device, reps=reps)
    emb_t = timeit(lambda i, c: c[i], args, device, reps=reps)
    x = torch.randn(n, d, generator=g).to(dtype).to(device)
    sargs = [(i, x) for i, _ in args]
    st = timeit(lambda i, xx: O.vq_code_stats(i, xx, k), sargs, device, reps=reps)

    def torch_stats(i, xx):
        counts = torch.bincount(i, minlength=k).float()
        sums = torch.zeros(k, d, device=xx.device).index_add_(0, i, xx.float())
        return counts, sums

    st_t = timeit(torch_stats, sargs, device, reps=reps)
    dt = str(dtype).replace("torch.", "")
    return [
        dict(
            op="vq_embed",
            n=n,
            k=k,
            d=d,
            dtype=dt,
            vilg_ms=emb * 1e3,
            anchor="codebook[idx]",
            anchor_ms=emb_t * 1e3,
            speedup=emb_t / emb,
        ),
        dict(
            op="vq_code_stats",
            n=n,
            k=k,
            d=d,
            dtype=dt,
            vilg_ms=st * 1e3,
            anchor="bincount+index_add_",
            anchor_ms=st_t * 1e3,
            speedup=st_t / st,
        ),
    ]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--sizes", nargs="*", help="NxKxD for vq_quantize (default per device)")
    ap.add_argument("--reps", type=int, default=0, help="timed repeats (default per device)")
    ap.add_argument("--out", default=None, help="JSON path (default bench/results/vq_<dev>.json)")
    args = ap.parse_args()
    device = torch.device(args.device)
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
    result = dict(
        benchmark="vq",
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
        results=rows,
    )
    out = Path(args.out) if args.out else HERE / "results" / f"vq_{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
