"""bench/gpu_session.sh --dry-run: the GPU script's CPU-side steps, so it is known to work before
a lent GPU's minutes are spent on it."""

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_dry_run_writes_every_result(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path), PYTHON=sys.executable, OMP_NUM_THREADS="1")
    run = subprocess.run(
        ["bash", "bench/gpu_session.sh", "--dry-run"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    summary = (tmp_path / "summary.txt").read_text()
    steps = dict(line.split()[:2] for line in summary.splitlines())
    # every step ran and passed; the sanitizer case exits 2 by design without a CUDA build
    assert steps.pop("sanitize-case") == "rc=2"
    assert set(steps.values()) == {"rc=0"}, summary
    assert {"build", "pytest-cuda", "bench-attention", "profile-all", "roofline"} <= set(steps)
    with tarfile.open(tmp_path / "results.tgz") as tar:
        names = {Path(n).name for n in tar.getnames()}
    assert {"attention.json", "vq.json", "decode.json", "profile.json", "roofline.png"} <= names
