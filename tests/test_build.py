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
    for lib in ("libtorch", "libc10", "libcudart.so", "libcuda.so", "libstdc++"):
        assert lib not in deps, deps


def _openmp_libs() -> set[str]:
    with open("/proc/self/maps") as f:
        return {ln.split()[-1] for ln in f if "gomp" in ln.split()[-1]}


@pytest.mark.skipif(not vilg.build_info()["openmp"], reason="built without OpenMP")
def test_one_openmp_runtime_shared_with_torch():
    # vilg's kernels must run on torch's OpenMP pool (no second runtime, no oversubscription)
    import torch

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        assert _C.build_info()["openmp_max_threads"] == 3
    finally:
        torch.set_num_threads(before)
    assert len(_openmp_libs()) == 1, _openmp_libs()


@pytest.mark.skipif(not vilg.build_info()["cuda"], reason="built without CUDA kernels")
def test_too_old_driver_raises_naming_both(monkeypatch):
    from vilg.ops import _validate

    info = vilg.build_info()
    need = info["cuda_min_driver"]  # "CUDA 13.0 (r580 or newer)"
    monkeypatch.setenv("VILG_FAKE_CUDA_DRIVER", "12040")  # a CUDA 12.4 driver (r550)
    with pytest.raises(RuntimeError) as e:
        _C.cuda_require_driver()
    assert need in str(e.value) and "supports CUDA 12.4" in str(e.value), e.value
    assert vilg.build_info()["cuda_devices"] == 0
    _validate._require_driver.cache_clear()
    with pytest.raises(RuntimeError, match="supports CUDA 12.4"):
        _validate.cuda_built()  # what every op on CUDA tensors calls first
    monkeypatch.setenv("VILG_FAKE_CUDA_DRIVER", "0")
    with pytest.raises(RuntimeError, match="no NVIDIA driver was found"):
        _C.cuda_require_driver()
    major = int(info["cuda_runtime"].split(".")[0])
    monkeypatch.setenv("VILG_FAKE_CUDA_DRIVER", str(major * 1000))
    _C.cuda_require_driver()  # the oldest driver of the runtime's major version is enough
    _validate._require_driver.cache_clear()


def test_build_info_says_how_it_was_built():
    info = vilg.build_info()
    assert info["build_kind"] in ("editable", "wheel")
    assert info["cxx_compiler"] and info["extension"].endswith(".so")
    if info["cuda"]:
        assert info["cuda_ptx"] == "compute_90" and info["cuda_runtime"].endswith("(static)")
