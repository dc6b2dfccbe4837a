"""Cost of the score modifiers on the CPU kernels, and a check that they cost nothing when off.

Two builds side by side in one run: BASE (a vilg installed elsewhere, e.g. the commit before
the modifiers: `pip install --no-deps -t DIR` from a checkout of it) and this checkout. Each
round runs one worker process per build, in alternating order, timing the forward and the
forward + backward of the same inputs; the ratio this / base of the modifier-off rows is the
regression check. This build also times soft-capping, ALiBi, both, and left padding.

    OMP_NUM_THREADS=1 python bench/modifiers.py --base /tmp/base_site --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
VARIANTS = ("off", "softcap", "alibi", "softcap+alibi", "left_pad")


def worker(args) -> None:
    site = os.environ.get("VILG_BENCH_SITE")
    if site:  # the base build: ahead of this checkout, whose editable finder must step aside
        sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in type(f).__module__]
        sys.path.insert(0, site)
    import torch

    import vilg

    if site and not vilg.__file__.startswith(site):
        raise RuntimeError(f"the base worker imported {vilg.__file__}, not the build in {site}")
    from vilg.layouts import ernie_vilg
    from vilg.ops import sparse_attention

    torch.manual_seed(0)
    B, H, D = args.batch, args.heads, args.dim
    new = "key_starts" in sparse_attention.__wrapped__.__code__.co_varnames
    rows = []
    for kind in args.kinds:
        lay = ernie_vilg(kind, args.text, (args.grid, args.grid))
        L = lay.seq_len
        q, k, v = (torch.randn(B, H, L, D, requires_grad=True) for _ in "qkv")
        g = torch.randn(B, H, L, D)
        mods = {
            "off": {},
            "softcap": dict(softcap=30.0),
            "alibi": dict(alibi_slopes=torch.rand(H)),
            "softcap+alibi": dict(softcap=30.0, alibi_slopes=torch.rand(H)),
            "left_pad": dict(key_starts=torch.full((B,), args.text // 2)),
        }
        for name in [x for x in args.variants if new or x == "off"]:
            kw = mods[name]

            def fwd(kw=kw, q=q, k=k, v=v, lay=lay):
                with torch.no_grad():
                    sparse_attention(q, k, v, lay, **kw)

            def fwd_bwd(kw=kw, q=q, k=k, v=v, lay=lay, g=g):
                torch.autograd.grad(sparse_attention(q, k, v, lay, **kw), (q, k, v), g)

            for what, fn in (("fwd", fwd), ("fwd+bwd", fwd_bwd)):
                for _ in range(args.warmup):
                    fn()
                ts = []
                for _ in range(args.repeat):
                    t0 = time.perf_counter()
                    fn()
                    ts.append((time.perf_counter() - t0) * 1e3)
                rows.append(
                    dict(kind=kind, variant=name, pass_=what, ms=statistics.median(ts), all_ms=ts)
                )
    print(json.dumps(dict(vilg_file=vilg.__file__, threads=torch.get_num_threads(), rows=rows)))


def _run_worker(site: str | None, argv: list[str]) -> dict:
    env = dict(os.environ)
    env.pop("VILG_BENCH_SITE", None)
    if site:
        env["VILG_BENCH_SITE"] = site
    out = subprocess.run(
        [sys.executable, __file__, "--worker", *argv],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        cwd="/" if site else ROOT,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def driver(args, argv: list[str]) -> None:
    sys.path.insert(0, str(HERE))
    from common import machine

    builds = {"base": args.base, "this": None}
    rounds = []
    for r in range(args.rounds):
        order = ["base", "this"] if r % 2 == 0 else ["this", "base"]
        got = {}
        for name in order:
            load = machine.load_average()
            got[name] = _run_worker(builds[name], argv)
            got[name]["load_before"] = load
        rounds.append(got)
        base_off = {(x["kind"], x["pass_"]): x["ms"] for x in got["base"]["rows"]}
        ratios = [
            f"{x['kind']} {x['pass_']} {x['ms'] / base_off[(x['kind'], x['pass_'])]:.3f}"
            for x in got["this"]["rows"]
            if x["variant"] == "off"
        ]
        print(f"round {r}: this/base (modifiers off): " + ", ".join(ratios), flush=True)

    summary = []
    keys = [(x["kind"], x["variant"], x["pass_"]) for x in rounds[0]["this"]["rows"]]
    for kind, variant, what in keys:

        def ms(build, variant=variant, kind=kind, what=what):
            return [
                next(
                    x["ms"]
                    for x in rd[build]["rows"]
                    if (x["kind"], x["variant"], x["pass_"]) == (kind, variant, what)
                )
                for rd in rounds
            ]

        this, base = ms("this"), ms("base", "off")
        per_round = [a / b for a, b in zip(this, base)]

        # the fastest call of all rounds: what a call costs when nothing else interferes
        def fastest(build, variant=variant, kind=kind, what=what):
            return min(
                min(x["all_ms"])
                for rd in rounds
                for x in rd[build]["rows"]
                if (x["kind"], x["variant"], x["pass_"]) == (kind, variant, what)
            )

        this_min, base_min = fastest("this"), fastest("base", "off")
        summary.append(
            dict(
                kind=kind,
                variant=variant,
                pass_=what,
                this_ms_median=statistics.median(this),
                base_off_ms_median=statistics.median(base),
                ratio_vs_base_off_per_round=per_round,
                ratio_vs_base_off_median=statistics.median(per_round),
                this_ms_min=this_min,
                base_off_ms_min=base_min,
                ratio_of_mins=this_min / base_min,
            )
        )
        print(
            f"{kind:5s} {what:8s} {variant:14s} this {statistics.median(this):8.2f} ms  "
            f"base(off) {statistics.median(base):8.2f} ms  ratio {statistics.median(per_round):.3f}"
            f"  | fastest: {this_min:8.2f} / {base_min:8.2f} ms = {this_min / base_min:.3f}"
        )
    import torch

    doc = dict(
        benchmark="modifiers",
        device=machine.device_name(torch.device("cpu")),
        date=time.strftime("%Y-%m-%d"),
        commit=machine.git_commit(),
        base=dict(site=args.base, commit=args.base_commit),
        torch=torch.__version__,
        omp_num_threads=os.environ.get("OMP_NUM_THREADS"),
        load_average_end=machine.load_average(),
        timing="perf_counter, median of --repeat calls after --warmup, per worker process; "
        "base and this alternate in order round by round",
        config={k: v for k, v in vars(args).items() if k not in ("worker",)},
        summary=summary,
        rounds=rounds,
    )
    path = Path(args.out) if args.out else HERE / "results" / f"modifiers-cpu-{doc['date']}.json"
    path.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--base", help="site dir of the base build (PYTHONPATH for its workers)")
    ap.add_argument("--base-commit", default=None, help="recorded with the results")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--kinds", nargs="+", default=["row", "conv"])
    ap.add_argument("--grid", type=int, default=32)
    ap.add_argument("--text", type=int, default=64)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    if not args.base:
        ap.error("--base is required")
    argv = [a for a in sys.argv[1:] if a != "--worker"]
    driver(args, argv)


if __name__ == "__main__":
    main()
