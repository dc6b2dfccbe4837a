"""Static check of every CUDA kernel instantiation in a built vilg extension, from its machine
code (what the CPU emulation cannot see): resources against what each launch assumes, and the
instructions the inline-PTX wrappers must become.

    python scripts/kernel_resources.py                 # check; print the table
    python scripts/kernel_resources.py --write docs/kernel-resources.md

Per (architecture, kernel): no local memory (LOCAL = STACK = 0 and no LDL / STL in the SASS:
no register spills), registers and shared memory within what the launch needs (the
__launch_bounds__ block size and minimum blocks per SM fit the register file, static plus the
launcher's dynamic shared memory fit the per-block opt-in limit of every GPU the SASS runs on),
the launch bounds equal the launcher's block size, and the tensor-core kernels hold HMMA of the
right type (f16 / bf16 m16n8k16, TF32 m16n8k8), LDSM (ldmatrix, .trans where used) and LDGSTS
(cp.async). Needs cuobjdump (the CUDA toolkit's, or the nvidia-cuda-cuobjdump wheel) and
c++filt. Exit 0: all hold; 1: a check failed; 2: nothing to check (no CUDA code, no tools).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shutil
import subprocess
import sys
from collections import Counter

# What each launcher in csrc/cuda/*.cu assumes, by kernel template (kept beside the launchers'
# own constants: a launcher that changes its block size or shared memory must change this too,
# and the launch-bounds check below catches a block size that drifted from the kernel's).
TILE = 64  # attention tile rows (attention_tiles.cuh kTile)
SAMPLE_SHARED = 2336  # sizeof(Shared) in sampling.cu, which the staged launch subtracts


def _tile_bytes(d: int) -> int:
    return TILE * d * 2  # one 64 x D 16-bit tile


@dataclasses.dataclass(frozen=True)
class Launch:
    threads: int  # block size the launcher uses
    min_blocks: int = 1  # second __launch_bounds__ argument (blocks per SM it is built for)
    dyn_smem: object = 0  # bytes, a function of the template arguments, or "runtime"
    needs: tuple[str, ...] = ()  # SASS mnemonics that must occur (exact, e.g. "LDSM.16.MT88.4")


def _hmma(dtype: str) -> str:
    return {"__half": "HMMA.16816.F32", "__nv_bfloat16": "HMMA.16816.F32.BF16"}[dtype]


def _attn(tiles: int, extra: int = 0):
    def launch(targs):
        dtype, d = targs[0], int(targs[1])
        needs = (_hmma(dtype), "LDSM.16.M88.4", "LDSM.16.MT88.4", "LDGSTS.E.BYPASS.128")
        return Launch(128, 1, tiles * _tile_bytes(d) + extra, needs)

    return launch


def _vq_mma(targs):
    # VEC (16-byte aligned rows): cp.async tile loads, else element-wise ones
    cp_async = ("LDGSTS.E.BYPASS.128",) if targs[1] == "true" else ()
    if targs[0] == "float":  # split-TF32 on tensor cores, no ldmatrix (32-bit elements)
        return Launch(256, 1, 0, ("HMMA.1688.F32.TF32", *cp_async))
    return Launch(256, 2, 0, (_hmma(targs[0]), "LDSM.16.M88.4", *cp_async))


LAUNCHES = {
    "attn_fwd_kernel": _attn(5),
    "attn_bwd_dq_kernel": _attn(6),
    "attn_bwd_dkdv_kernel": _attn(6, 4 * TILE * 4),
    "attn_delta_kernel": lambda t: Launch(256),
    "simt_fwd_kernel": lambda t: Launch(128, 1),
    "simt_dq_kernel": lambda t: Launch(128, 1),
    "simt_dkdv_kernel": lambda t: Launch(128, 1),
    "decode_kernel": lambda t: Launch(128),
    "decode_combine_kernel": lambda t: Launch(128),
    "sample_kernel": lambda t: Launch(512, 1, "runtime" if t[1] == "true" else 0),
    "vq_mma_kernel": _vq_mma,
    "vq_simt_kernel": lambda t: Launch(256, 2 if t[0] == "true" else 1),
    "code_norms_kernel": lambda t: Launch(256),
    "unpack_index_kernel": lambda t: Launch(256),
    "embed_kernel": lambda t: Launch(256),
    "code_stats_kernel": lambda t: Launch(256),
}

# Per-SM register file and the per-block shared-memory opt-in limit of every GPU that runs an
# architecture's SASS (sm_80 SASS also runs on sm_86 / sm_89, whose limit is 99 KiB).
REGS_PER_SM = 65536
SMEM_LIMIT = {"sm_80": 99 * 1024, "sm_86": 99 * 1024, "sm_89": 99 * 1024, "sm_90": 227 * 1024}


@dataclasses.dataclass
class Kernel:
    arch: str
    mangled: str
    name: str = ""  # demangled, namespace stripped
    base: str = ""  # template name
    targs: tuple[str, ...] = ()
    regs: int = -1
    stack: int = -1
    shared: int = -1
    local: int = -1
    max_threads: int | None = None
    sass: Counter = dataclasses.field(default_factory=Counter)

    @property
    def key(self):
        return (self.arch, self.mangled)


def find_cuobjdump() -> str | None:
    found = shutil.which("cuobjdump")
    if found:
        return found
    roots = [os.environ.get("CUDA_HOME", ""), "/usr/local/cuda"]
    try:  # the nvidia-cuda-cuobjdump wheel (nvidia/cu13/bin/cuobjdump)
        import nvidia

        roots += [os.path.join(p, sub) for p in nvidia.__path__ for sub in ("cu13", "cu12")]
    except ImportError:
        pass
    for root in roots:
        path = os.path.join(root, "bin", "cuobjdump") if root else ""
        if path and os.access(path, os.X_OK):
            return path
    return None


def extension_path() -> str:
    import vilg

    return vilg.build_info()["extension"]


def _run(*cmd: str) -> str:
    # cuobjdump -sass calls nvdisasm, which the nvidia-cuda-nvdisasm wheel puts beside the
    # nvidia-cuda-cuobjdump wheel's cuobjdump: look there first
    env = dict(os.environ, PATH=os.pathsep.join([os.path.dirname(cmd[0]), os.environ["PATH"]]))
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({out.returncode}): {out.stderr.strip()}")
    return out.stdout


def _demangle(names: list[str]) -> list[str]:
    out = subprocess.run(
        ["c++filt"], input="\n".join(names), check=True, capture_output=True, text=True
    ).stdout.splitlines()
    return [re.sub(r"vilg::cuda::(\(anonymous namespace\)::)?", "", s) for s in out]


def _split_targs(inner: str) -> tuple[str, ...]:
    parts, depth, cur = [], 0, ""
    for ch in inner:
        depth += ch == "<"
        depth -= ch == ">"
        if ch == "," and depth == 0:
            parts.append(cur.strip())
            cur = ""
        else:
            cur += ch
    parts.append(cur.strip())
    return tuple(p for p in parts if p)


def _sections(text: str):
    """Yield (arch, line) for the ELF (SASS) parts of cuobjdump's output; PTX parts skipped."""
    arch, elf = None, False
    for line in text.splitlines():
        if line.startswith("Fatbin "):
            elf, arch = line.startswith("Fatbin elf"), None
        elif line.startswith("arch = "):
            arch = line.split("=")[1].strip()
        elif elf and arch:
            yield arch, line


def analyse(so: str, cuobjdump: str) -> list[Kernel]:
    kernels: dict[tuple[str, str], Kernel] = {}

    def get(arch, mangled):
        return kernels.setdefault((arch, mangled), Kernel(arch, mangled))

    cur = None
    for arch, line in _sections(_run(cuobjdump, "-res-usage", so)):
        m = re.match(r"\s*Function (\S+):$", line)
        if m:
            cur = get(arch, m.group(1))
            continue
        m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", line)
        if m and cur is not None:
            cur.regs, cur.stack, cur.shared, cur.local = map(int, m.groups())
    cur, attr = None, None
    for arch, line in _sections(_run(cuobjdump, "-elf", so)):
        if line.startswith(".nv.info."):
            cur = get(arch, line[len(".nv.info.") :].strip())
        elif "Attribute:" in line:
            attr = line.split()[-1]
        elif cur is not None and attr == "EIATTR_MAX_THREADS" and "Value:" in line:
            vals = [int(v, 16) for v in line.split()[1:]]
            cur.max_threads = vals[0] * vals[1] * vals[2]
            attr = None
    cur = None
    for arch, line in _sections(_run(cuobjdump, "-sass", so)):
        m = re.match(r"\s*Function : (\S+)", line)
        if m:
            cur = get(arch, m.group(1))
            continue
        m = re.match(r"\s*/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)", line)
        if m and cur is not None:
            cur.sass[m.group(1)] += 1
    ks = [k for k in kernels.values() if k.regs >= 0]
    for k, name in zip(ks, _demangle([k.mangled for k in ks])):
        name = re.sub(r"^void ", "", name)
        k.name = re.sub(r"\(.*\)$", "", name)
        m = re.match(r"(\w+)(?:<(.*)>)?$", k.name)
        k.base = m.group(1) if m else k.name
        k.targs = _split_targs(m.group(2) or "") if m else ()
    return sorted(ks, key=lambda k: (k.arch, k.base, k.targs))


def launch_of(k: Kernel) -> Launch | None:
    f = LAUNCHES.get(k.base)
    return f(k.targs) if f else None


def dyn_bytes(k: Kernel, launch: Launch) -> int:
    """The dynamic shared memory the launch requests (the staged sampler: the most it may)."""
    if launch.dyn_smem == "runtime":
        return SMEM_LIMIT[k.arch] - SAMPLE_SHARED - 1024
    return int(launch.dyn_smem)


def blocks_by_regs(k: Kernel, threads: int) -> int:
    per_warp = -(-k.regs * 32 // 256) * 256  # allocated per warp in units of 256 registers
    return REGS_PER_SM // (per_warp * -(-threads // 32))


def check(kernels: list[Kernel]) -> list[str]:
    problems = []
    for k in kernels:
        where = f"{k.arch} {k.name}"
        launch = launch_of(k)
        if launch is None:
            problems.append(f"{where}: no launch entry in scripts/kernel_resources.py LAUNCHES")
            continue
        if k.local or k.stack:
            problems.append(f"{where}: local memory {k.local} B, stack {k.stack} B (spills)")
        spills = {op: n for op, n in k.sass.items() if op.split(".")[0] in ("LDL", "STL")}
        if spills:
            problems.append(f"{where}: local loads / stores in the SASS: {spills}")
        if k.max_threads is not None and k.max_threads != launch.threads:
            problems.append(
                f"{where}: __launch_bounds__ {k.max_threads} threads, launched with "
                f"{launch.threads}"
            )
        if blocks_by_regs(k, launch.threads) < launch.min_blocks:
            problems.append(
                f"{where}: {k.regs} registers x {launch.threads} threads fit "
                f"{blocks_by_regs(k, launch.threads)} blocks per SM, the launch bounds ask for "
                f"{launch.min_blocks}"
            )
        if launch.dyn_smem == "runtime":  # the launcher keeps sizeof(Shared) + 1 KiB free
            if k.shared > SAMPLE_SHARED + 1024:
                problems.append(f"{where}: static shared {k.shared} B > the launcher's reserve")
        else:
            total = k.shared + dyn_bytes(k, launch)
            limit = SMEM_LIMIT.get(k.arch)
            if limit is None:
                problems.append(f"{where}: no shared-memory limit known for {k.arch}")
            elif total > limit:
                problems.append(f"{where}: {total} B shared memory > the {limit} B opt-in limit")
            if k.shared > 48 * 1024:
                problems.append(f"{where}: static shared {k.shared} B > 48 KiB")
        for op in launch.needs:
            if not k.sass.get(op):
                problems.append(
                    f"{where}: no {op} in the SASS (the PTX wrapper compiled to something else)"
                )
    return problems


def table(kernels: list[Kernel], so: str, cuobjdump: str) -> str:
    import vilg

    info = vilg.build_info()
    m = re.search(r"release ([\d.]+)", _run(cuobjdump, "--version"))
    tool = m.group(1) if m else "?"
    lines = [
        "# CUDA kernel resources",
        "",
        "Generated by `python scripts/kernel_resources.py --write docs/kernel-resources.md` from",
        f"the machine code of a vilg build (CUDA {info.get('cuda_compiler')}, architectures "
        f"{info.get('cuda_archs')}; cuobjdump {tool}); do not edit by hand.",
        "`tests/test_kernel_resources.py` runs the same checks on every CUDA build (CI's is",
        "sm_80 + sm_90), so a kernel that spills, outgrows its launch or loses its tensor-core",
        "instructions fails.",
        "",
        "Columns: registers per thread; local memory (spills) in bytes; static shared memory as",
        "the ELF reports it (sm_90 code reports 1 KiB even for kernels that declare none: the",
        "block's reserved shared memory; the check counts it) plus the dynamic bytes the",
        "launcher requests (the staged sampler: up to its vocabulary, within the opt-in limit);",
        "block size; blocks per SM the",
        "registers allow (the launch bounds' minimum in brackets); instruction counts in the",
        "SASS of HMMA (tensor-core mma), LDSM (ldmatrix; .trans in brackets) and LDGSTS",
        "(cp.async). Checked for every row: no spills, launch bounds = the launcher's block",
        "size, registers fit the minimum blocks, shared memory within the opt-in limit of every",
        "GPU the SASS runs on (sm_80 SASS: 99 KiB, the sm_86 / sm_89 limit; sm_90: 227 KiB),",
        "and the tensor-core kernels hold HMMA of their type, LDSM and LDGSTS.",
        "",
        "| arch | kernel | regs | local | shared (static + dynamic) | threads | blocks/SM "
        "(min) | HMMA | LDSM (.trans) | LDGSTS |",
        "| --- | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for k in kernels:
        launch = launch_of(k)
        hmma = sum(n for op, n in k.sass.items() if op.startswith("HMMA"))
        ldsm = sum(n for op, n in k.sass.items() if op.startswith("LDSM"))
        ldsm_t = sum(n for op, n in k.sass.items() if op.startswith("LDSM.16.MT"))
        ldgsts = sum(n for op, n in k.sass.items() if op.startswith("LDGSTS"))
        if launch is None:
            dyn, threads, occ = "?", "?", "?"
        else:
            dyn = "vocab x 4" if launch.dyn_smem == "runtime" else str(dyn_bytes(k, launch))
            threads = launch.threads
            occ = f"{blocks_by_regs(k, launch.threads)} ({launch.min_blocks})"
        name = k.name.replace("__nv_bfloat16", "bf16").replace("__half", "f16")
        lines.append(
            f"| {k.arch} | `{name}` | {k.regs} | {k.local} | {k.shared} + {dyn} | {threads} | "
            f"{occ} | {hmma or ''} | {f'{ldsm} ({ldsm_t})' if ldsm else ''} | {ldgsts or ''} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--so", help="the extension (default: the installed vilg's _C)")
    ap.add_argument("--write", help="write the Markdown table to this file")
    args = ap.parse_args(argv)
    so = args.so or extension_path()
    cuobjdump = find_cuobjdump()
    if cuobjdump is None or shutil.which("c++filt") is None:
        print("cuobjdump or c++filt not found (pip install nvidia-cuda-cuobjdump)")
        return 2
    kernels = analyse(so, cuobjdump)
    if not kernels:
        print(f"{so} holds no CUDA machine code (built with VILG_CUDA=OFF?)")
        return 2
    problems = check(kernels)
    text = table(kernels, so, cuobjdump)
    if args.write:
        with open(args.write, "w") as f:
            f.write(text)
    else:
        print(text)
    archs = sorted({k.arch for k in kernels})
    print(f"{len(kernels)} kernel instantiations ({', '.join(archs)}): {len(problems)} problems")
    for p in problems:
        print("  " + p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
