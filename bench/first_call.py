"""Time to the first vilg attention call of a fresh process, nothing warm: `import vilg`, the
layout build and the first sparse_attention call (forward, and forward+backward), each in a
new interpreter, for the drop-in benchmark's two layouts (bench/dropin.py):

  llama: sliding_window(4096, 512), q 8 heads / k, v 2 heads, head_dim 64
  vit:   neighborhood_2d((64, 64), 7, prefix=1) (CLS + 64x64 patches), 6 heads, head_dim 64

`import torch` is timed too but reported apart: any torch model pays it. The second call is
shown for comparison (a first call that costs no more than it is not paying for warm-up).

    OMP_NUM_THREADS=2 python bench/first_call.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table, thread_note, write_results  # noqa: E402

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import torch
t1 = time.perf_counter()
import vilg
from vilg.layouts import neighborhood_2d, sliding_window
from vilg.ops import sparse_attention
t2 = time.perf_counter()
model, backward = sys.argv[1], sys.argv[2] == "1"
if model == "vit":
    lay, H, Hk = neighborhood_2d((64, 64), 7, prefix=1), 6, 6
else:
    lay, H, Hk = sliding_window(4096, 512), 8, 2
t3 = time.perf_counter()
L, D = lay.seq_len, 64
g = torch.Generator().manual_seed(0)
q = torch.randn(1, H, L, D, generator=g, requires_grad=backward)
k, v = (torch.randn(1, Hk, L, D, generator=g, requires_grad=backward) for _ in "kv")


def call():
    t = time.perf_counter()
    if backward:
        sparse_attention(q, k, v, lay).sum().backward()
    else:
        with torch.no_grad():
            sparse_attention(q, k, v, lay)
    return time.perf_counter() - t


first, second = call(), call()
print(json.dumps(dict(import_torch_s=t1 - t0, import_vilg_s=t2 - t1, layout_s=t3 - t2,
                      first_call_s=first, second_call_s=second,
                      dynamo_imported="torch._dynamo" in sys.modules)))
"""


def run_child(model: str, backward: bool) -> dict:
    r = subprocess.run(
        [sys.executable, "-c", CHILD, model, "1" if backward else "0"],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="llama,vit")
    ap.add_argument("--repeat", type=int, default=3, help="fresh processes per case (medians)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    thread_note(torch.device("cpu"))
    rows = []
    for model in args.models.split(","):
        for backward in (False, True):
            runs = [run_child(model, backward) for _ in range(args.repeat)]
            row = {"model": model, "mode": "fwd_bwd" if backward else "fwd"}
            for key in runs[0]:
                vals = [r[key] for r in runs]
                row[key] = statistics.median(vals) if key.endswith("_s") else any(vals)
            row["vilg_total_s"] = row["import_vilg_s"] + row["layout_s"] + row["first_call_s"]
            rows.append(row)
    cols = ["model", "mode", "import_torch_s", "import_vilg_s", "layout_s", "first_call_s"]
    cols += ["second_call_s", "vilg_total_s", "dynamo_imported"]
    print_table(rows, cols)
    config = {k: v for k, v in vars(args).items() if k != "out"}
    path = write_results("first-call", torch.device("cpu"), config, rows, args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
