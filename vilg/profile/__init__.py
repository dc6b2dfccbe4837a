"""`vilg profile`: time one kernel, count the work it does, and place it against the limits of
the machine it runs on.

    vilg profile attention --kind row --grid 32 32 --mode fwd
    vilg profile attention --kind conv --mode fwdbwd --device cuda --dtype bfloat16 --batch 8
    vilg profile vq --tokens 65536 --codes 8192 --dim 256
    vilg profile decode --kind row --pos 1000
    vilg profile sample --batch 64 --vocab 8192 --top-k 64

The limits are measured on the spot by a short roofline probe (a dense GEMM through torch in
the op's dtype for compute, a large copy for memory), so "% of limit" means the same on every
machine; on a GPU the datasheet peak is reported beside it. Attention FLOPs are counted twice:
*useful* (allowed query-key entries only, text padding removed) and *computed* (every entry of
the 64x64 tiles the kernels visit). `--trace` writes a Chrome / Perfetto trace with a named
range per launch (NVTX ranges on the GPU, so Nsight Systems sees the names too); `--ncu` runs
exactly one launch after warm-up between cudaProfilerStart/Stop for
`ncu --profile-from-start off --set full`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

OPS = ("attention", "vq", "decode", "sample")
MODES = ("fwd", "bwd", "fwdbwd")


def parser(p: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = p or argparse.ArgumentParser(
        prog="vilg profile",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("op", choices=OPS)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--kind", default="row", help="attention / decode: full|row|column|conv")
    p.add_argument("--direction", default="text2image")
    p.add_argument("--mode", default="fwd", choices=MODES, help="attention: fwd|bwd|fwdbwd")
    p.add_argument("--text", type=int, default=64, help="text tokens")
    p.add_argument("--grid", type=int, nargs=2, default=[32, 32], metavar=("H", "W"))
    p.add_argument(
        "--text-lens",
        type=int,
        nargs="+",
        default=None,
        help="real caption length per sample (one value: the same for all)",
    )
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--pos", type=int, default=1000, help="decode: query position")
    p.add_argument("--tokens", type=int, default=16384, help="vq: vectors to quantise")
    p.add_argument("--codes", type=int, default=1024, help="vq: codebook size")
    p.add_argument("--dim", type=int, default=64, help="vq: vector size")
    p.add_argument("--vocab", type=int, default=8192, help="sample: logits per row")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--probe-seconds", type=float, default=0.3, help="time for each roofline probe")
    p.add_argument("--json", help="write the profile here as JSON")
    p.add_argument("--trace", help="write a Chrome / Perfetto trace here")
    p.add_argument(
        "--ncu",
        action="store_true",
        help="one launch after warm-up between cudaProfilerStart/Stop, for "
        "`ncu --profile-from-start off --set full vilg profile ... --ncu`",
    )
    return p


def _check(a) -> None:
    for name in ("batch", "heads", "head_dim", "iters", "tokens", "codes", "dim", "vocab"):
        if getattr(a, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be positive")
    if a.ncu and not a.device.startswith("cuda"):
        raise ValueError("--ncu needs --device cuda")
    if a.probe_seconds <= 0:
        raise ValueError("--probe-seconds must be positive")
    if a.warmup < 0 or min(a.grid) < 1 or a.text < 0:
        raise ValueError("--warmup, --text must be >= 0 and --grid positive")
    if a.text_lens is not None and len(a.text_lens) not in (1, a.batch):
        raise ValueError("--text-lens takes one value or one per sample")


def run(a) -> dict:
    _check(a)
    from vilg.profile.measure import format_table, profile

    doc = profile(a)
    if a.ncu:
        print("profiled one launch (cudaProfilerStart/Stop)")
        return doc
    print(format_table(doc))
    if a.json:
        path = Path(a.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc, indent=1, default=str) + "\n")
        print(f"wrote {path}")
    if a.trace:
        print(f"wrote {a.trace}")
    return doc


def main(argv=None) -> int:
    a = parser().parse_args(argv)
    try:
        run(a)
    except ValueError as e:
        print(f"vilg profile: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
