"""The CUDA attention kernels' own source, run on a CPU emulation of the warp instructions
(mma.sync, ldmatrix, cp.async, shuffles, barriers; csrc/cuda/emulate.cuh) through their real
launchers, against the CPU kernels. It checks fragment layouts, index math, bounds, masking and
synchronisation (races, reads of unwritten or in-flight shared memory) on machines without a
GPU. The other kernel families: tests/test_cuda_emulation_kernels.py. It is evidence, not
proof: the emulation encodes our reading of the PTX ISA, and says nothing of speed."""

import shutil
import subprocess
from pathlib import Path

import pytest

HERE = Path(__file__).parent / "cuda_emulation"
CXX = shutil.which("g++") or shutil.which("c++")
pytestmark = pytest.mark.skipif(CXX is None, reason="needs a C++ compiler")

QUICK = [
    "row_text2image_odd",
    "column_image2text_even",
    "conv_text2image_odd",
    "random_40",
    "holes_200",
    "chunk_causal_203_70",
    "gqa_chunk_window_199_130",
]


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    import sys

    sys.path.insert(0, str(HERE))
    from emu_build import build
    from layouts import write_all

    out = tmp_path_factory.mktemp("emu")
    names = write_all(out)
    return build("attention", out), out, names


def _run(harness, dtype, mode, padded, names):
    exe, out, _ = harness
    r = subprocess.run(
        [str(exe), str(out), dtype, "7", str(mode), str(int(padded)), *names],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0 and "all ok" in r.stdout, r.stdout[-4000:] + r.stderr[-2000:]


@pytest.mark.parametrize(
    "dtype",
    [
        "bf16",
        pytest.param("f16", marks=pytest.mark.slow),
        pytest.param("f32", marks=pytest.mark.slow),
    ],
)
def test_emulated_kernels_quick(harness, dtype):
    _run(harness, dtype, 0, True, QUICK)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["f16", "bf16"])
@pytest.mark.parametrize("mode", [0, 1, 2])  # contiguous, [B, L, H, D] view, misaligned rows
def test_emulated_kernels_all_layouts(harness, dtype, mode):
    _run(harness, dtype, mode, mode != 0, harness[2])


@pytest.mark.slow
@pytest.mark.parametrize("mode", [1, 2])
def test_emulated_fp32_reference_path(harness, mode):
    _run(harness, "f32", mode, True, ["full_text2image_odd", "conv_image2text_odd", "random_40"])

