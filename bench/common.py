"""Timing and result-file helpers shared by the benchmarks.

On a CPU shared with other jobs, pin the thread count (OMP_NUM_THREADS=1 python bench/...):
an OpenMP team waits for its slowest thread, and a descheduled one costs a whole time slice.
Result files record the thread count, OMP_NUM_THREADS and the machine's load average.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from vilg.profile import machine

RESULTS = Path(__file__).resolve().parent / "results"


def device_name(device: torch.device) -> str:
    name = machine.device_name(device)
    if device.type == "cuda":
        return name
    return f"{name} ({torch.get_num_threads()} threads of {os.cpu_count()} cpus)"


def thread_note(device: torch.device) -> None:
    """On the CPU without OMP_NUM_THREADS, print (to stderr) why one may want to pin it."""
    if device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        print(
            f"note: timing with {torch.get_num_threads()} threads; on a shared CPU pin them "
            "(OMP_NUM_THREADS=1): an OpenMP team waits for its slowest thread",
            file=sys.stderr,
        )


def _build_info() -> dict | None:
    try:
        import vilg

        return vilg.build_info()
    except Exception as e:  # noqa: BLE001 - results are still worth writing without it
        return {"error": f"{type(e).__name__}: {e}"}


def bench(fn, inputs: list, device: torch.device, warmup: int = 3, repeat: int = 10) -> float:
    """Median milliseconds of fn(*inputs[i]) rotating over input sets; CUDA events on GPU."""
    for i in range(warmup):
        fn(*inputs[i % len(inputs)])
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for i in range(repeat):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn(*inputs[i % len(inputs)])
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
    else:
        for i in range(repeat):
            t0 = time.perf_counter()
            fn(*inputs[i % len(inputs)])
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def write_results(
    name: str,
    device: torch.device,
    config: dict,
    rows: list[dict],
    path: str | Path | None = None,
) -> Path:
    """Write bench/results/<name>-<cpu|cuda>-<date>.json (or path) and return its path."""
    stamp = _dt.datetime.now().strftime("%Y-%m-%d")
    tag = "cuda" if device.type == "cuda" else "cpu"
    path = Path(path) if path else RESULTS / f"{name}-{tag}-{stamp}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    timer = "CUDA events" if device.type == "cuda" else "perf_counter"
    doc = {
        "benchmark": name,
        "device": device_name(device),
        "date": stamp,
        "commit": machine.git_commit(),
        "torch": torch.__version__,
        "vilg": _build_info(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "load_average": machine.load_average(),
        "timing": f"{timer}, median after warm-up, rotating inputs",
        "config": config,
        "rows": rows,
    }
    path.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    return path


def print_table(rows: list[dict], cols: list[str]) -> None:
    widths = [max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in cols]
    print("  ".join(c.rjust(w) for c, w in zip(cols, widths)))
    for r in rows:
        print("  ".join(_fmt(r.get(c)).rjust(w) for c, w in zip(cols, widths)))


def _fmt(x) -> str:
    if isinstance(x, float):
        return f"{x:.3g}" if abs(x) < 1000 else f"{x:.0f}"
    return "-" if x is None else str(x)
