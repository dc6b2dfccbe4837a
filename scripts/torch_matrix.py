#!/usr/bin/env python3
"""The torch x Python x NumPy matrix of one vilg wheel per CPython (a release check).

Each cell is a fresh venv (no compiler on its PATH, run outside the source tree) with torch
from the package index, the built wheel and the matching transformers, where
tests/wheel_check.py runs (every op forward + backward against float64, torch.compile
fullgraph where this torch and Python support it, the transformers route), once with the
NumPy pip picks (2.x) and once with NumPy 1.x where a 1.x wheel exists for that Python. The
venv is deleted after the cell. Results go to one JSON file; scripts/render_compat.py turns it
into the table of docs/compatibility.md.

    scripts/build_wheels.sh --variants cpu --out wheelhouse
    python scripts/torch_matrix.py --wheelhouse wheelhouse [--torch "2.4.1 2.15.0"] [--resume]
        [--pythons "3.10:2.13.0 3.13:2.5.1"] [--jobs 2] [--out bench/results/torch-matrix-DATE.json]

Default cells: every torch minor from pyproject's floor to the newest release on the index
(its newest patch; one `pip index versions torch` query) on CPython 3.11, and CPython 3.10,
3.12 and 3.13 with one torch (TORCH_FOR_PYTHONS). The cpu wheel variant keeps builds short: the
Python side and the op registration, which is what differs between torch versions, is the same
in every variant, and torch's PyPI builds carry CUDA either way (the kernels run on the CPU).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAIN_PYTHON = "3.11"
TORCH_FOR_PYTHONS = "2.13.0"
PYTHONS = ("3.10", "3.11", "3.12", "3.13")
NUMPY1 = "numpy>=1.24,<2"


def floor_from_pyproject() -> tuple[int, int]:
    text = (ROOT / "pyproject.toml").read_text()
    m = re.search(r'"torch>=(\d+)\.(\d+)', text)
    if not m:
        raise SystemExit("pyproject.toml declares no torch>=X.Y")
    return int(m[1]), int(m[2])


def newest_patch_per_minor(floor: tuple[int, int]) -> list[str]:
    """The newest release of each torch minor from the floor on, asked of the index once."""
    out = subprocess.run(
        [sys.executable, "-m", "pip", "index", "versions", "torch"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("Available versions:"))
    best: dict[tuple[int, int], tuple[int, int, int]] = {}
    for v in line.split(":", 1)[1].split(","):
        m = re.fullmatch(r"(\d+)\.(\d+)\.(\d+)", v.strip())  # releases only, no +cpu / rc
        if m:
            t = tuple(map(int, m.groups()))
            if t[:2] >= floor and t > best.get(t[:2], (0, 0, -1)):
                best[t[:2]] = t
    return [".".join(map(str, best[k])) for k in sorted(best)]


def python_for(ver: str) -> str:
    """python3.X from pyenv (newest patch), else from the PATH (as build_wheels.sh finds it)."""
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    cands = sorted(
        root.glob(f"{ver}.*/bin/python{ver}"),
        key=lambda p: tuple(int(x) for x in p.parts[-3].split(".") if x.isdigit()),
    )
    found = str(cands[-1]) if cands else shutil.which(f"python{ver}")
    if not found:
        raise SystemExit(f"python{ver} not found")
    return found


def transformers_spec(torch_version: str) -> str:
    # transformers 5 refuses torch < 2.6 at import; 4.56-4.57 is what vilg supports there
    major_minor = tuple(int(x) for x in torch_version.split(".")[:2])
    return "transformers>=4.56,<5" if major_minor < (2, 6) else "transformers>=4.56"


def run(cmd, log: list, **kw) -> subprocess.CompletedProcess:
    t0 = time.monotonic()
    out = subprocess.run(cmd, capture_output=True, text=True, **kw)
    log.append({"cmd": " ".join(map(str, cmd)), "rc": out.returncode,
                "s": round(time.monotonic() - t0, 1)})  # fmt: skip
    return out


def tail(out: subprocess.CompletedProcess, n: int = 2500) -> str:
    return (out.stdout[-n // 2 :] + "\n" + out.stderr[-n:]).strip()


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def check(venv: Path, env: dict, log: list) -> dict:
    out = run([venv / "bin/python", venv / "wheel_check.py", "cpu"], log, env=env, cwd=venv)
    if out.returncode != 0:
        return {"outcome": "fail", "error": tail(out)}
    try:
        res = json.loads(out.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return {"outcome": "fail", "error": "no JSON line from wheel_check.py\n" + tail(out)}
    return {"outcome": "pass", **{k: res[k] for k in ("torch", "numpy", "checked", "skipped")}}


def cell(python: str, torch_version: str, wheel: Path, transformers: bool, workdir: Path) -> dict:
    """One fresh venv: install, wheel check with NumPy 2.x, then with NumPy 1.x."""
    t0 = time.monotonic()
    res = {"python": python, "torch": torch_version, "wheel": wheel.name, "steps": []}
    log = res["steps"]
    venv = Path(tempfile.mkdtemp(prefix=f"py{python}-torch{torch_version}-", dir=workdir))
    try:
        out = run([python_for(python), "-m", "venv", venv], log)
        if out.returncode != 0:
            res.update(outcome="fail", error=tail(out))
            return res
        # --no-compile: no .pyc for torch's thousands of modules (CPU time, not needed here)
        pip = [venv / "bin/python", "-m", "pip", "install", "-q", "--no-compile"]
        pkgs = [f"torch=={torch_version}", str(wheel)]
        if transformers:
            pkgs.append(transformers_spec(torch_version))
        out = run([*pip, *pkgs], log)
        if out.returncode != 0:
            res.update(outcome="install failed", error=tail(out))
            return res
        res["venv_bytes"] = du(venv)
        shutil.copy(ROOT / "tests/wheel_check.py", venv / "wheel_check.py")
        keep = ("HOME", "LANG", "LC_ALL", "TMPDIR")
        env = {k: v for k, v in os.environ.items() if k in keep}
        env["PATH"] = str(venv / "bin")  # no compiler: the wheel must not need one
        runs = [check(venv, env, log)]
        if python != "3.13":  # NumPy 1.x has no CPython 3.13 wheels
            out = run([*pip, NUMPY1], log)
            runs.append(
                check(venv, env, log)
                if out.returncode == 0
                else {"outcome": "install failed", "error": tail(out)}
            )
        res["runs"] = runs
        res["outcome"] = "pass" if all(r["outcome"] == "pass" for r in runs) else "fail"
        if transformers:
            v = run([venv / "bin/python", "-c", "import transformers as t; print(t.__version__)"],
                    log, env=env, cwd=venv)  # fmt: skip
            res["transformers"] = v.stdout.strip() or None
        return res
    finally:
        shutil.rmtree(venv, ignore_errors=True)
        res["seconds"] = round(time.monotonic() - t0, 1)
        print(f"py{python} torch {torch_version}: {res.get('outcome')} ({res['seconds']} s)",
              flush=True)  # fmt: skip


def git(*args) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()


def machine() -> dict:
    mem = Path("/proc/meminfo").read_text().split("\n")[0].split()[1]
    return {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "mem_gib": round(int(mem) / 2**20, 1),
        "pip_constraint": os.environ.get("PIP_CONSTRAINT"),  # a local cap on torch, lifted?
    }


def merge(out: Path, others: list[Path]) -> int:
    """Passed cells of `others` into `out`, each wheel checked to be the same file."""
    report = json.loads(out.read_text())
    have = {(c["python"], c["torch"]) for c in report["cells"] if c["outcome"] == "pass"}
    report["cells"] = [c for c in report["cells"] if c["outcome"] == "pass"]
    for path in others:
        other = json.loads(path.read_text())
        for py, w in other["wheels"].items():
            if report["wheels"].get(py) != w:
                raise SystemExit(f"{path}: its cp{py} wheel is not the one in {out}")
        new = [c for c in other["cells"] if c["outcome"] == "pass"]
        new = [c for c in new if (c["python"], c["torch"]) not in have]
        report["cells"] += new
        have |= {(c["python"], c["torch"]) for c in new}
        meta = ("commit", "dirty", "date", "load_avg_at_start", "jobs")
        report.setdefault("merged", []).append({k: other.get(k) for k in meta})
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {out}: {len(report['cells'])} cells")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wheelhouse", type=Path, required=True, help="cpu wheels, one per CPython")
    ap.add_argument("--torch", help="torch versions on CPython 3.11 (default: every minor)")
    ap.add_argument("--pythons", help="python:torch cells (default: 3.10, 3.12, 3.13 with "
                    f"torch {TORCH_FOR_PYTHONS})")  # fmt: skip
    ap.add_argument("--jobs", type=int, default=1, help="cells at once (each up to ~6 GB disk)")
    ap.add_argument("--no-transformers", action="store_true")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--resume", action="store_true", help="keep the passed cells of --out "
                    "(same wheels) and run the others")  # fmt: skip
    ap.add_argument("--merge", nargs="+", type=Path, help="add these results files' passed "
                    "cells to --out (a run split across processes or machines)")  # fmt: skip
    args = ap.parse_args(argv)
    if args.merge:
        return merge(args.out, args.merge)

    floor = floor_from_pyproject()
    torches = args.torch.split() if args.torch is not None else newest_patch_per_minor(floor)
    if args.pythons is not None:
        cells = [tuple(c.split(":")) for c in args.pythons.split()]
    else:
        cells = [(p, TORCH_FOR_PYTHONS) for p in PYTHONS if p != MAIN_PYTHON]
    cells += [(MAIN_PYTHON, t) for t in torches]  # the other CPythons first: fewer of them
    wheels = {}
    for py, _ in cells:
        tag = "cp" + py.replace(".", "")
        found = sorted(args.wheelhouse.glob(f"vilg-*-{tag}-{tag}-*.whl"))
        if not found:
            raise SystemExit(
                f"no {tag} wheel in {args.wheelhouse} (build_wheels.sh --variants cpu)"
            )
        wheels[py] = found[-1]

    started = dt.datetime.now(dt.timezone.utc)
    load = Path("/proc/loadavg").read_text().split()[:3]
    out = args.out or ROOT / f"bench/results/torch-matrix-{started:%Y-%m-%d}.json"
    report = {
        "what": "vilg cpu wheel x torch x CPython x NumPy: tests/wheel_check.py in fresh venvs",
        "commit": git("rev-parse", "HEAD"),
        "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "date": started.isoformat(timespec="seconds"),
        "machine": machine(),
        "load_avg_at_start": load,
        "jobs": args.jobs,
        "torch_floor": ".".join(map(str, floor)),
        "wheels": {
            py: {"name": w.name, "sha256": hashlib.sha256(w.read_bytes()).hexdigest()}
            for py, w in sorted(wheels.items())
        },
    }
    done: dict[int, dict] = {}
    if args.resume and out.exists():
        old = json.loads(out.read_text())
        if old["wheels"] != report["wheels"]:
            raise SystemExit(f"--resume: {out} was made with other wheels")
        this = {k: report[k] for k in ("commit", "dirty", "date", "load_avg_at_start", "jobs")}
        report.update({k: old[k] for k in this})  # the first run's; the same wheels
        report["resumed"] = old.get("resumed", []) + [this]
        kept = {(c["python"], c["torch"]): c for c in old["cells"] if c["outcome"] == "pass"}
        done = {i: kept[c] for i, c in enumerate(cells) if c in kept}
    lock = threading.Lock()

    def write(final: bool) -> None:  # after every cell, so a stopped run keeps what it had
        report["seconds"] = round((dt.datetime.now(dt.timezone.utc) - started).total_seconds())
        report["complete"] = final
        report["cells"] = [done[i] for i in sorted(done)]
        out.write_text(json.dumps(report, indent=1) + "\n")

    workdir = Path(tempfile.mkdtemp(prefix="vilg-torch-matrix-"))
    # one download cache for the run: torch versions share their nvidia-* / triton packages
    os.environ["PIP_CACHE_DIR"] = str(workdir / "pip-cache")

    def one(i: int) -> None:
        py, tv = cells[i]
        res = cell(py, tv, wheels[py], not args.no_transformers, workdir)
        with lock:
            done[i] = res
            write(False)

    try:
        with ThreadPoolExecutor(args.jobs) as pool:
            list(pool.map(one, [i for i in range(len(cells)) if i not in done]))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    write(True)
    results = report["cells"]
    print(f"wrote {out}")
    return 0 if all(c["outcome"] == "pass" for c in results) else 1


if __name__ == "__main__":
    sys.exit(main())
