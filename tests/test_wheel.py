"""The cp311 wheel as users get it: repaired by auditwheel, installed into a fresh venv whose
PATH has no compiler, run from outside the source tree (slow).

VILG_TEST_WHEEL=path/to/vilg*-cp311-*.whl reuses a wheel built by scripts/build_wheels.sh (CI
builds once and passes it here); without it the test builds one (cu13 when nvcc is on the
PATH, else cpu). VILG_TEST_TORCH picks the torch the venv gets (default 2.13.0).
test_oldest_torch installs the oldest supported torch (TORCH_FLOOR, from the package index)
beside the same wheel, with NumPy 1.x and then 2.x."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from tests_support import ROOT, TORCH_FLOOR

pytestmark = [
    pytest.mark.slow,
    pytest.mark.xdist_group("wheel"),  # one worker, one venv (CI: -n 2 --dist loadgroup)
    pytest.mark.skipif(sys.version_info[:2] != (3, 11), reason="the cp311 wheel needs Python 3.11"),
    pytest.mark.skipif(shutil.which("readelf") is None, reason="needs binutils"),
]
TAG = "manylinux_2_28"
GLIBC_MAX = (2, 28)


def run(cmd, **kw) -> str:
    out = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert out.returncode == 0, f"{cmd}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    given = os.environ.get("VILG_TEST_WHEEL")
    if given:
        return Path(given)
    out = tmp_path_factory.mktemp("wheelhouse")
    variant = "cu13" if shutil.which("nvcc") else "cpu"
    run(
        [
            "bash",
            str(ROOT / "scripts/build_wheels.sh"),
            "--out",
            str(out),
            "--pythons",
            "3.11",
            "--variants",
            variant,
        ]
    )
    return next(out.glob("*-cp311-*.whl"))


def fresh_venv(d: Path, *pkgs: str) -> dict:
    """A fresh venv with `pkgs`; env whose PATH holds the venv's bin/ only."""
    run([sys.executable, "-m", "venv", str(d)])
    run([str(d / "bin/pip"), "install", "-q", "--no-cache-dir", "--no-compile", *pkgs])
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "CC", "CXX", "CUDACXX", "VIRTUAL_ENV")
    }
    env["PATH"] = str(d / "bin")
    for tool in ("gcc", "cc", "g++", "c++", "nvcc"):
        assert shutil.which(tool, path=env["PATH"]) is None, tool
    return {"dir": d, "python": str(d / "bin/python"), "env": env, "cwd": str(d)}


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> dict:
    torch_pin = "torch==" + os.environ.get("VILG_TEST_TORCH", "2.13.0")
    return fresh_venv(tmp_path_factory.mktemp("venv"), torch_pin, str(wheel))


def wheel_check(venv, devices=("cpu",)) -> dict:
    # a copy outside the source tree, so `import vilg` can only find the installed wheel
    check = shutil.copy(ROOT / "tests/wheel_check.py", venv["dir"] / "wheel_check.py")
    res = json.loads(run([venv["python"], check, *devices], env=venv["env"], cwd=venv["cwd"]))
    assert res["vilg"].startswith(str(venv["dir"])), res["vilg"]
    # every check ran: 7 kernels, NumPy arrays (CPU), torch.compile of the ops; transformers
    # is not installed here (scripts/torch_matrix.py covers that route)
    assert set(res["skipped"]) == {f"{d}: transformers" for d in devices}, res["skipped"]
    assert len(res["checked"]) == 10 * ("cpu" in devices) + 9 * ("cuda" in devices), res
    return res


def so_path(venv) -> Path:
    code = "import vilg._ext as e; print(e.C().__file__)"
    return Path(run([venv["python"], "-c", code], env=venv["env"], cwd=venv["cwd"]).strip())


def test_wheel_is_manylinux_and_small(wheel):
    assert TAG in wheel.name, wheel.name
    assert wheel.stat().st_size <= 25 * 2**20, wheel.stat().st_size
    names = zipfile.ZipFile(wheel).namelist()
    assert not [n for n in names if "libgomp" in n], "a second OpenMP runtime was vendored"


def test_info_from_installed_wheel(venv):
    out = run([str(venv["dir"] / "bin/vilg"), "info"], env=venv["env"], cwd=venv["cwd"])
    info = json.loads(out)
    assert info["build_kind"] == "wheel" and not info["install"]["editable"]
    assert any(TAG in t for t in info["install"]["wheel_tags"]), info["install"]
    assert str(venv["dir"]) in info["extension"]
    if info["cuda"]:
        assert info["cuda_archs"] == "80,90" and info["cuda_ptx"] == "compute_90"
        assert info["cuda_min_driver"].startswith("CUDA ")


def test_every_kernel_from_installed_wheel(venv):
    devices = ["cpu"]
    code = "import torch, vilg; print(torch.cuda.is_available() and vilg.build_info()['cuda'])"
    if run([venv["python"], "-c", code], env=venv["env"], cwd=venv["cwd"]).strip() == "True":
        devices.append("cuda")
    res = wheel_check(venv, devices)
    assert "torch/lib/libgomp" in res["openmp"]["libgomp"], res["openmp"]


@pytest.mark.xdist_group("wheel-floor")  # its own worker: a download of ~2.5 GB
def test_oldest_torch(wheel, tmp_path):
    """The floor made true on every run: the oldest supported torch (a CUDA build from the
    package index, as users get it) beside the release wheel, every op, NumPy 1.x then 2.x."""
    try:
        v = fresh_venv(tmp_path / "venv", f"torch=={TORCH_FLOOR}", str(wheel), "numpy<2")
        res = wheel_check(v)
        assert res["torch"].split("+")[0] == TORCH_FLOOR and res["numpy"].startswith("1."), res
        run([str(v["dir"] / "bin/pip"), "install", "-q", "--no-cache-dir", "numpy>=2"])
        res = wheel_check(v)
        assert res["numpy"].startswith("2."), res
    finally:
        shutil.rmtree(tmp_path / "venv", ignore_errors=True)  # ~5 GB


def test_extension_dependencies(venv):
    so = so_path(venv)
    needed = re.findall(r"\(NEEDED\).*\[(.+)\]", run(["readelf", "-d", str(so)]))
    for lib in needed:
        assert not lib.startswith(("libtorch", "libc10", "libcudart", "libcuda.", "libstdc++")), (
            needed
        )
    assert "libgomp.so.1" in needed or not needed  # torch's copy serves it
    versions = run(["readelf", "-V", "--wide", str(so)])
    glibc = [tuple(map(int, v.split("."))) for v in re.findall(r"GLIBC_([0-9.]+)", versions)]
    assert glibc and max(glibc) <= GLIBC_MAX, sorted(set(glibc))[-3:]
    assert "GLIBCXX_" not in versions and "CXXABI_" not in versions  # libstdc++ is static


def test_cuda_driver_error_is_clear(venv):
    env = dict(venv["env"], VILG_FAKE_CUDA_DRIVER="12040")
    code = (
        "import vilg, vilg._ext as e\n"
        "if not vilg.build_info()['cuda']: print('no cuda'); raise SystemExit\n"
        "import torch\n"
        "from vilg.ops import sparse_attention\n"
        "from vilg.layouts import ernie_vilg\n"
        "x = torch.randn(1, 1, 80, 16)\n"
        "sparse_attention(x, x, x, ernie_vilg('row', 16, (8, 8)))  # CPU still works\n"
        "try:\n"
        "    e.C().cuda_require_driver()\n"
        "except RuntimeError as err:\n"
        "    print(err)\n"
    )
    out = run([venv["python"], "-c", code], env=env, cwd=venv["cwd"])
    if out.strip() != "no cuda":
        assert "supports CUDA 12.4" in out and "or newer" in out, out
