"""Static checks of the built CUDA kernels' machine code (scripts/kernel_resources.py): no
spills, registers and shared memory within each launch's assumptions, and the intended
tensor-core / ldmatrix / cp.async instructions in the SASS. Runs on any CUDA build (CI builds
sm_80 + sm_90 with nvcc), no GPU needed; skips on a CPU-only build or without cuobjdump."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from collections import Counter
from pathlib import Path

import pytest

import vilg

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location(
    "kernel_resources", ROOT / "scripts/kernel_resources.py"
)
kr = importlib.util.module_from_spec(_spec)
sys.modules["kernel_resources"] = kr  # dataclasses look their module up
_spec.loader.exec_module(kr)


def _good_fwd(**over) -> kr.Kernel:
    k = kr.Kernel(
        "sm_80",
        "m",
        name="attn_fwd_kernel<__half, 64>",
        base="attn_fwd_kernel",
        targs=("__half", "64"),
        regs=166,
        stack=0,
        shared=1024,
        local=0,
        max_threads=128,
    )
    k.sass = Counter(
        {"HMMA.16816.F32": 64, "LDSM.16.M88.4": 20, "LDSM.16.MT88.4": 16, "LDGSTS.E.BYPASS.128": 20}
    )
    for name, value in over.items():
        setattr(k, name, value)
    return k


def test_checks_catch_each_kind_of_problem():
    assert kr.check([_good_fwd()]) == []
    bad = {
        "spill": _good_fwd(local=16),
        "LDL": _good_fwd(sass=_good_fwd().sass + Counter({"STL.64": 2})),
        "launch bounds": _good_fwd(max_threads=256),
        "blocks per SM": _good_fwd(
            name="vq", base="vq_mma_kernel", targs=("__half", "true"), regs=200, max_threads=256
        ),
        "opt-in limit": _good_fwd(targs=("__half", "128"), shared=20 * 1024),
        "HMMA": _good_fwd(
            sass=Counter(
                {
                    "LDSM.16.M88.4": 1,
                    "LDSM.16.MT88.4": 1,
                    "LDGSTS.E.BYPASS.128": 1,
                    "HMMA.16816.F32.BF16": 1,
                }
            )
        ),
        "LDGSTS": _good_fwd(
            sass=Counter({"HMMA.16816.F32": 1, "LDSM.16.M88.4": 1, "LDSM.16.MT88.4": 1})
        ),
        "no launch entry": _good_fwd(base="new_kernel"),
    }
    for what, k in bad.items():
        problems = kr.check([k])
        assert len(problems) >= 1, what


def _cuda_build() -> bool:
    return bool(vilg.build_info()["cuda"])


@pytest.mark.slow
@pytest.mark.skipif(not _cuda_build(), reason="vilg built without CUDA (VILG_CUDA=OFF): no SASS")
def test_built_kernels_static_resources():
    cuobjdump = kr.find_cuobjdump()
    if cuobjdump is None or shutil.which("c++filt") is None:
        pytest.skip("needs cuobjdump (pip install nvidia-cuda-cuobjdump) and c++filt")
    kernels = kr.analyse(kr.extension_path(), cuobjdump)
    info = vilg.build_info()
    archs = {f"sm_{a}" for a in info["cuda_archs"].split(",")}
    assert {k.arch for k in kernels} == archs
    for arch in archs:  # every kernel template of every family, for every architecture
        assert {k.base for k in kernels if k.arch == arch} == set(kr.LAUNCHES), arch
    assert kr.check(kernels) == []
    # the committed table is this build's, when the build is the one it was made from
    doc = (ROOT / "docs/kernel-resources.md").read_text()
    made = f"(CUDA {info['cuda_compiler']}, architectures {info['cuda_archs']};"
    if made in doc:
        fresh = kr.table(kernels, kr.extension_path(), cuobjdump)
        rows = [line for line in fresh.splitlines() if line.startswith("| sm_")]
        assert rows == [line for line in doc.splitlines() if line.startswith("| sm_")], (
            "run: python scripts/kernel_resources.py --write docs/kernel-resources.md"
        )
