"""Speedup of vilg over each anchor vs sequence length, from bench/attention.py JSON files;
with --roofline, every kernel of `vilg profile` / bench/profile_all.py JSON files on the
roofline of the machine it ran on (the probe's GEMM rate and copy bandwidth).

python bench/plot.py bench/results/attention-cpu-2026-11-23.json -o speedup.png
python bench/plot.py --roofline bench/results/profile-cpu-*.json -o roofline.png
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


def _profiles(path: Path) -> tuple[str, list[dict]]:
    doc = json.loads(path.read_text())
    profiles = doc["profiles"] if "profiles" in doc else [doc]
    return doc.get("label") or path.stem, profiles


def _point_label(d: dict) -> str:
    pat = d.get("pattern", {})
    if d["op"] == "attention":
        return f"{pat['kind']} {pat['mode']}"
    return d["op"] + (f" {pat['kind']}" if "kind" in pat else "")


def plot_roofline(paths: list[Path], out: Path) -> None:
    """Useful GFLOP/s against arithmetic intensity; the roof of each file's first probe."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    markers = "os^Dv<>"
    for i, path in enumerate(paths):
        label, profiles = _profiles(path)
        pts = [d for d in profiles if d.get("flops_useful")]
        if not pts:
            continue
        lim = pts[0]["limit"]
        xs = [d["intensity_flop_per_byte"] for d in pts]
        lo, hi = min(xs) / 4, max(xs) * 4
        ridge = lim["gemm_gflops"] / lim["copy_gbs"]
        grid = sorted({lo, hi, ridge} | {lo * (hi / lo) ** (k / 50) for k in range(51)})
        roof = [min(lim["gemm_gflops"], x * lim["copy_gbs"]) for x in grid]
        line = ax.plot(grid, roof, lw=1.2, label=f"roof: {label} ({pts[0]['device_name']})")[0]
        last = i == len(paths) - 1  # earlier files (a "before") as hollow, unlabelled points
        for d in pts:
            x, y = d["intensity_flop_per_byte"], d["gflops_useful"]
            color = line.get_color()
            face = color if last else "none"
            ax.scatter(x, y, edgecolors=color, facecolors=face, marker=markers[i % 7], s=28)
            if not last:
                continue
            ax.annotate(
                f"{_point_label(d)} {d['pct_of_roofline']:.0f}%",
                (x, y),
                fontsize=7,
                xytext=(4, 2),
                textcoords="offset points",
            )
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="arithmetic intensity (useful FLOP / compulsory byte)",
        ylabel="useful GFLOP/s",
        title="vilg kernels on the roofline (% = of the roof at that intensity)",
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("json", nargs="+", type=Path)
    p.add_argument("-o", "--out", type=Path, default=None)
    p.add_argument("--roofline", action="store_true", help="profile JSON -> roofline plot")
    args = p.parse_args(argv)
    if args.roofline:
        args.out = args.out or Path("roofline.png")
        plot_roofline(args.json, args.out)
    else:
        args.out = args.out or Path("speedup.png")
        plot(args.json, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
