"""A small CUDA attention workload for compute-sanitizer (not collected by pytest).

    compute-sanitizer --tool memcheck  python tests/cuda_sanitize_case.py
    compute-sanitizer --tool racecheck python tests/cuda_sanitize_case.py
    compute-sanitizer --tool synccheck python tests/cuda_sanitize_case.py
    compute-sanitizer --tool initcheck python tests/cuda_sanitize_case.py

Forward and backward of every dtype x head_dim on a permuted layout (column attention) of
L = 131 (last tile partial: 3 rows), with padded text and both the aligned (cp.async) and the
misaligned (element-wise) load paths, each checked against the float64 reference. Exits 1 on a
mismatch, 2 without a usable GPU build.
"""

from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import test_attention_cuda as t  # noqa: E402

from vilg.layouts import ernie_vilg  # noqa: E402


def main() -> int:
    if not t._cuda_ready():
        print("no CUDA device or vilg built without CUDA")
        return 2
    torch.cuda.init()
    layout = ernie_vilg("column", 11, (8, 15), direction="text2image", window=5)  # L = 131
    lens = t.text_lens(layout, True, "cuda")
    failures = runs = 0
    for dtype in t.DTYPES:
        for head_dim in t.HEAD_DIMS:
            for storage in ("contiguous", "misaligned"):
                runs += 1
                try:
                    t.check_case("cuda", layout, dtype, head_dim, lens, 1, storage=storage)
                    status = "ok"
                except AssertionError as e:
                    failures += 1
                    status = f"FAILED: {e}"
                print(f"{str(dtype):15} D={head_dim:3} {storage:10} {status}", flush=True)
    torch.cuda.synchronize()
    print(f"{runs - failures} passed, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
