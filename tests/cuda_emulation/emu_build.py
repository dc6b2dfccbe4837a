"""Builds the emulation harnesses: translate the .cu files (translate.py), then compile one
harness per kernel family with the CPU kernels it compares against. Used by the tests and by
scripts/mutation_test.py (which points `csrc` at a mutated copy)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

HERE = Path(__file__).parent
ROOT = HERE.parents[1]
CXX = shutil.which("g++") or shutil.which("c++")

# family -> (harness source, translated .cu files, CPU sources, optimisation)
FAMILIES = {
    "attention": (
        "harness.cpp",
        ["attention_fwd", "attention_bwd", "attention_simt"],
        ["attention_fwd.cpp", "attention_bwd.cpp", "tile_math.cpp"],
        "-O2",
    ),
    "decode": ("harness_decode.cpp", ["decode"], ["decode.cpp"], "-O1"),
    "vq": ("harness_vq.cpp", ["vq"], ["vq.cpp"], "-O1"),
    "sampling": ("harness_sampling.cpp", ["sampling"], ["sampling.cpp"], "-O1"),
}

SANITIZE = [
    "-g",
    "-fsanitize=address,undefined",
    "-fno-sanitize-recover=undefined",
    "-fno-omit-frame-pointer",
]


def build(
    family: str,
    out: Path,
    csrc: Path | None = None,
    sanitize: bool = False,
    cpu_objects: dict[str, Path] | None = None,
    opt: str | None = None,
) -> Path:
    """Compile `family`'s harness into `out` (a directory) from the .cu files under `csrc`
    (default: the repository's). Returns the executable."""
    import sys

    sys.path.insert(0, str(HERE))
    from translate import translate

    csrc = csrc or ROOT / "csrc"
    harness, cus, cpus, default_opt = FAMILIES[family]
    opt = opt or default_opt
    out.mkdir(parents=True, exist_ok=True)
    for cu in cus:
        src = csrc / "cuda" / f"{cu}.cu"
        (out / f"{cu}.emu.cpp").write_text(translate(src.read_text(), str(src)))
    exe = out / (f"harness_{family}" + ("_asan" if sanitize else ""))
    cpu = [
        str(cpu_objects[c]) if cpu_objects and c in cpu_objects else str(ROOT / "csrc/cpu" / c)
        for c in cpus
    ]
    cmd = [
        CXX,
        opt,
        "-std=c++17",
        "-fopenmp",
        "-Wno-psabi",
        "-Wno-unknown-pragmas",
        *(SANITIZE if sanitize else []),
        f"-I{csrc / 'cuda'}",
        f"-I{ROOT / 'csrc'}",
        f"-I{HERE / 'include'}",
        f"-I{out}",
        f"-I{HERE}",
        str(HERE / harness),
        *cpu,
        "-o",
        str(exe),
    ]
    subprocess.run(cmd, check=True)
    return exe


def cpu_objects(family: str, out: Path) -> dict[str, Path]:
    """The family's CPU kernels compiled once (the mutation script reuses them per mutant)."""
    _, _, cpus, opt = FAMILIES[family]
    out.mkdir(parents=True, exist_ok=True)
    objs = {}
    for c in cpus:
        o = out / (Path(c).stem + ".o")
        subprocess.run(
            [
                CXX,
                opt,
                "-std=c++17",
                "-fopenmp",
                "-Wno-psabi",
                "-c",
                f"-I{ROOT / 'csrc'}",
                str(ROOT / "csrc/cpu" / c),
                "-o",
                str(o),
            ],
            check=True,
        )
        objs[c] = o
    return objs
