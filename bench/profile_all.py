"""Every kernel through `vilg profile`, in one run: each ERNIE-ViLG pattern's forward and
forward+backward, the VQ lookup, a decode step and the sampler, each against a roofline probe
measured right beside it. Writes one JSON (bench/results/profile-<cpu|cuda>-<date>.json) for
`bench/plot.py --roofline`.

    python bench/profile_all.py                                   # CPU, fp32, B=1, 8 heads
    python bench/profile_all.py --device cuda --dtype bfloat16 --batch 8 --heads 16
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
from pathlib import Path

import torch

from vilg.profile import parser as profile_parser
from vilg.profile.measure import format_table, profile

RESULTS = Path(__file__).resolve().parent / "results"


def plan(a) -> list[list[str]]:
    common = ["--device", a.device, "--dtype", a.dtype, "--iters", str(a.iters)]
    common += ["--probe-seconds", str(a.probe_seconds)]
    shape = ["--batch", str(a.batch), "--heads", str(a.heads), "--text", "64", "--grid", "32", "32"]
    runs = [
        ["attention", "--kind", kind, "--mode", mode, *shape]
        for kind in ("row", "column", "conv", "full")
        for mode in ("fwd", "fwdbwd")
    ]
    runs += [["decode", "--kind", kind, "--pos", "1000", *shape] for kind in ("row", "conv")]
    gpu = a.device.startswith("cuda")
    runs.append(["vq", "--tokens", "65536" if gpu else "16384", "--codes", "1024", "--dim", "64"])
    runs.append(["sample", "--batch", str(max(a.batch, 8)), "--vocab", "8192", "--top-k", "64"])
    return [r + common for r in runs]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--probe-seconds", type=float, default=0.3)
    p.add_argument("--label", default="", help="what this run measures (e.g. a kernel version)")
    p.add_argument("-o", "--out", type=Path, default=None)
    a = p.parse_args(argv)
    docs = []
    for argv_one in plan(a):
        doc = profile(profile_parser().parse_args(argv_one))
        print(format_table(doc), flush=True)
        docs.append(doc)
    stamp = _dt.date.today().isoformat()
    tag = "cuda" if a.device.startswith("cuda") else "cpu"
    out = a.out or RESULTS / f"profile-{tag}-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    summary = {"label": a.label, "torch_threads": torch.get_num_threads(), "profiles": docs}
    out.write_text(json.dumps(summary, indent=1, default=str) + "\n")
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
