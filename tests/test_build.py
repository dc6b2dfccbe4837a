import shutil
import subprocess
import sys

import pytest

import vilg
from vilg import _C


def test_build_info_reports_kernels_per_device():
    info = vilg.build_info()
    assert info["version"] == vilg.__version__
    assert isinstance(info["openmp"], bool)
    for name in ("sparse_attention_fwd", "sparse_attention_bwd"):
        assert "cpu" in info["kernels"][name]
        assert ("cuda" in info["kernels"][name]) == info["cuda"]
    if info["cuda"]:
        assert "80" in info["cuda_archs"] and "90" in info["cuda_archs"]


def test_cli_info_prints_json():
    out = subprocess.run(
        [sys.executable, "-m", "vilg", "info"], capture_output=True, text=True, check=True
    )
    assert '"kernels"' in out.stdout and '"cuda"' in out.stdout


@pytest.mark.skipif(shutil.which("ldd") is None, reason="needs ldd")
def test_extension_links_neither_libtorch_nor_dynamic_cudart():
    # one wheel must serve any recent torch, and import on machines with no CUDA driver
    deps = subprocess.run(["ldd", _C.__file__], capture_output=True, text=True).stdout
    for lib in ("libtorch", "libc10", "libcudart.so", "libcuda.so"):
        assert lib not in deps, deps
