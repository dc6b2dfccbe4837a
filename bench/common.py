"""Timing and result-file helpers shared by the benchmarks."""

from __future__ import annotations

import datetime as _dt
import json
import platform
import statistics
import subprocess
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
            check=True,
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
        )
        return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


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


def write_results(name: str, device: torch.device, config: dict, rows: list[dict]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now().strftime("%Y-%m-%d")
    tag = "cuda" if device.type == "cuda" else "cpu"
    path = RESULTS / f"{name}-{tag}-{stamp}.json"
    doc = {
        "benchmark": name,
        "device": device_name(device),
        "date": stamp,
        "commit": git_commit(),
        "torch": torch.__version__,
        "config": config,
        "rows": rows,
    }
    path.write_text(json.dumps(doc, indent=1) + "\n")
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
