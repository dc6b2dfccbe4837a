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
    assert {
        "build",
        "pytest-cuda",
        "pytest-cuda-count",
        "bench-attention",
        "profile-all",
        "roofline",
    } <= set(steps)
    with tarfile.open(tmp_path / "results.tgz") as tar:
        names = {Path(n).name for n in tar.getnames()}
    assert {"attention.json", "vq.json", "decode.json", "profile.json", "roofline.png"} <= names


def test_a_failed_step_fails_the_script(tmp_path):
    """Every step fails at once with a Python that is not one: the script goes on past each
    and exits 1, naming them (a lent GPU's run cannot pass quietly)."""
    env = dict(os.environ, OUT=str(tmp_path), PYTHON="false")
    run = subprocess.run(
        ["bash", "bench/gpu_session.sh", "--dry-run"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 1, run.stdout[-3000:] + run.stderr[-3000:]
    assert "FAILED steps: info pytest-cuda pytest-cuda-count" in run.stdout
    steps = dict(line.split()[:2] for line in (tmp_path / "summary.txt").read_text().splitlines())
    assert steps["build"] == "rc=0" and steps["info"] == "rc=1"


def test_count_check(tmp_path):
    """check_test_counts: all passed on a GPU; all skipped is a failure there, and the norm in
    the dry run; a short report (the run stopped) fails both."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("ctc", ROOT / "bench/check_test_counts.py")
    ctc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ctc)

    def report(passed, skipped):
        cases = ["<testcase name='p'/>"] * passed + [
            "<testcase name='s'><skipped message='needs a CUDA GPU'/></testcase>"
        ] * skipped
        path = tmp_path / "r.xml"
        path.write_text(f"<testsuites><testsuite>{''.join(cases)}</testsuite></testsuites>")
        return str(path)

    n = ["--collected", "3", "--min-collected", "3"]
    assert ctc.main([report(3, 0), *n]) == 0
    assert ctc.main([report(0, 3), *n]) == 1
    assert ctc.main([report(2, 1), *n]) == 1
    assert ctc.main([report(0, 3), *n, "--expect-skipped"]) == 0
    assert ctc.main([report(0, 2), *n, "--expect-skipped"]) == 1
    assert ctc.main([report(3, 0), "--collected", "3"]) == 1  # below the floor


def test_checks_only_leaves_out_the_benchmarks(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path), PYTHON="false")
    run = subprocess.run(
        ["bash", "bench/gpu_session.sh", "--dry-run", "--checks-only"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 1  # the fake Python fails its steps
    steps = [line.split()[0] for line in (tmp_path / "summary.txt").read_text().splitlines()]
    assert steps == ["build", "info", "pytest-cuda", "pytest-cuda-count", "sanitize-case"]
