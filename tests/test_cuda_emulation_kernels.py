"""decode.cu, vq.cu and sampling.cu (every CUDA kernel family besides attention, which
tests/test_cuda_emulation.py covers) run on the CPU emulation of the warp instructions
(csrc/cuda/emulate.cuh, emulate_api.cuh) through their real host launchers, against the CPU
kernels and float64 references (tests/cuda_emulation/harness_*.cpp list the cases). A quick set
of each family runs by default, the full matrix and an AddressSanitizer + UBSan build in the
slow set. Evidence, not proof: the emulation encodes our reading of the PTX ISA and of CUDA's
execution model, and says nothing of speed."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent / "cuda_emulation"
CXX = shutil.which("g++") or shutil.which("c++")
pytestmark = pytest.mark.skipif(CXX is None, reason="needs a C++ compiler")
FAMILIES = ["decode", "vq", "sampling"]


def _build(tmp_path_factory, family, sanitize=False):
    sys.path.insert(0, str(HERE))
    from emu_build import build

    return build(family, tmp_path_factory.mktemp(f"emu_{family}"), sanitize=sanitize)


def _run(exe, mode):
    r = subprocess.run([str(exe), mode], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0 and r.stdout.rstrip().endswith("all ok"), (
        r.stdout[-4000:] + r.stderr[-3000:]
    )
    return r.stdout


@pytest.mark.parametrize("family", FAMILIES)
def test_emulated_quick(tmp_path_factory, family):
    out = _run(_build(tmp_path_factory, family), "quick")
    assert out.count(" ok") >= 4  # the cases ran


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_emulated_full(tmp_path_factory, family):
    _run(_build(tmp_path_factory, family), "full")


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_emulated_sanitized(tmp_path_factory, family):
    # AddressSanitizer: out-of-bounds global memory; UBSan: misaligned plain vector accesses
    _run(_build(tmp_path_factory, family, sanitize=True), "quick")


def test_translate_rewrites_launches_and_shared():
    sys.path.insert(0, str(HERE))
    from translate import translate

    src = (
        "__global__ void k(int a) {\n"
        "  __shared__ __align__(16) float s[2][8], t[4];\n"
        "  extern __shared__ float dyn[];\n"
        "}\n"
        "void f(int n, cudaStream_t st) {\n"
        "  const dim3 grid{unsigned(n), 2u, 1u};\n"
        "  k2<float, 4><<<grid, 128, 0, st>>>(n, (n + 1) * 2);\n"
        "  k<<<unsigned(n), 64>>>(n);\n"
        "}\n"
    )
    got = translate(src)
    assert "<<<" not in got and "__shared__" not in got
    assert "float (&s)[2][8] = ::vilg::cuda::emu::static_shared<float[2][8]>(0);" in got
    assert "float (&t)[4] = ::vilg::cuda::emu::static_shared<float[4]>(1);" in got
    assert "float* dyn = reinterpret_cast<float*>(::vilg::cuda::emu::dyn_smem());" in got
    assert (
        "launch_kernel(::vilg::cuda::emu::kernel_id(k2<float, 4>), dim3(grid), dim3(128), "
        "size_t(0), st, [&] { k2<float, 4>(n, (n + 1) * 2); })" in got
    )
    assert "dim3(unsigned(n)), dim3(64), size_t(0), nullptr, [&] { k(n); })" in got
