"""Speedup of vilg over each anchor vs sequence length, from bench/attention.py JSON files.

python bench/plot.py bench/results/attention-cpu-2026-11-23.json -o speedup.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def plot(paths: list[Path], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    docs = [json.loads(p.read_text()) for p in paths]
    modes = sorted({r["mode"] for d in docs for r in d["rows"]})
    fig, axes = plt.subplots(1, len(modes), figsize=(6 * len(modes), 4.2), squeeze=False)
    for ax, mode in zip(axes[0], modes):
        for doc in docs:
            rows = [r for r in doc["rows"] if r["mode"] == mode]
            anchors = sorted({k[3:] for r in rows for k in r if k.startswith("vs_")})
            for kind in sorted({r["kind"] for r in rows}):
                for anchor in anchors:
                    pts = sorted((r["L"], r[f"vs_{anchor}"]) for r in rows if r["kind"] == kind)
                    ax.plot(*zip(*pts), marker="o", label=f"{kind} vs {anchor} ({doc['device']})")
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax.set(
            title=f"vilg sparse attention, {mode}",
            xlabel="sequence length L",
            ylabel="speedup (anchor time / vilg time)",
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("json", nargs="+", type=Path)
    p.add_argument("-o", "--out", type=Path, default=Path("speedup.png"))
    args = p.parse_args(argv)
    plot(args.json, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
