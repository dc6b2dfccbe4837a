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


# Case flags of harness.cpp (CaseFlags): text padding, soft-cap, ALiBi, key_starts / key_lens.
TEXT_PAD, SOFTCAP, ALIBI, KEY_RANGE = 1, 2, 4, 8
MODS = SOFTCAP | ALIBI | KEY_RANGE


def _run(harness, dtype, mode, flags, names, dims=7):
    exe, out, _ = harness
    r = subprocess.run(
        [str(exe), str(out), dtype, str(dims), str(mode), str(int(flags)), *names],
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
    _run(harness, dtype, 0, TEXT_PAD, QUICK)


# Score modifiers and left + right key padding: permuted (column), chunk and GQA layouts.
QUICK_MODS = ["column_image2text_even", "random_40", "chunk_window_155_41", "gqa_causal_107"]


@pytest.mark.parametrize(
    "dtype,flags",
    [("bf16", MODS), pytest.param("f16", SOFTCAP | ALIBI | TEXT_PAD, marks=pytest.mark.slow)],
)
def test_emulated_modifiers_quick(harness, dtype, flags):
    _run(harness, dtype, 0, flags, QUICK_MODS, dims=1)  # head_dim 32


# Every layout with the modifiers: key_starts / key_lens at head_dim 64, text padding at 128
# (whose dK / dV pass walks the queries in 16-column steps: ALiBi's query positions there).
@pytest.mark.slow
@pytest.mark.parametrize(
    "dtype,flags,dims", [("bf16", MODS, 2), ("f16", SOFTCAP | ALIBI | TEXT_PAD, 4)]
)
def test_emulated_modifiers_all_layouts(harness, dtype, flags, dims):
    _run(harness, dtype, 1, flags, harness[2], dims=dims)


@pytest.mark.slow
def test_emulated_fp32_modifiers(harness):
    _run(harness, "f32", 2, MODS, ["random_40", "chunk_window_155_41"], dims=1)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["f16", "bf16"])
@pytest.mark.parametrize("mode", [0, 1, 2])  # contiguous, [B, L, H, D] view, misaligned rows
def test_emulated_kernels_all_layouts(harness, dtype, mode):
    _run(harness, dtype, mode, TEXT_PAD if mode else 0, harness[2])


@pytest.mark.slow
@pytest.mark.parametrize("mode", [1, 2])
def test_emulated_fp32_reference_path(harness, mode):
    _run(
        harness, "f32", mode, TEXT_PAD, ["full_text2image_odd", "conv_image2text_odd", "random_40"]
    )
