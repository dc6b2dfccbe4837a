"""Writes docs/verification.md: per CUDA kernel family, what has been verified and how, gathered
from the repository itself rather than stated by hand.

    python scripts/verification_report.py            # print
    python scripts/verification_report.py --write    # docs/verification.md

Sources: which csrc/cuda/*.cu files the CPU emulation harness (tests/cuda_emulation) builds, the
emulation tests pytest collects (default run / slow set), the static machine-code table
docs/kernel-resources.md (scripts/kernel_resources.py), the newest mutation report
bench/results/mutation*.json when one exists, the compute-sanitizer case
(tests/cuda_sanitize_case.py), and bench/results/ for any result measured on a GPU.
"""

from __future__ import annotations

import argparse
import glob
import json
import re
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

FAMILIES = {  # family -> (sources, kernel templates)
    "attention": (
        ("attention_fwd.cu", "attention_bwd.cu", "attention_simt.cu"),
        (
            "attn_fwd_kernel",
            "attn_bwd_dq_kernel",
            "attn_bwd_dkdv_kernel",
            "attn_delta_kernel",
            "simt_fwd_kernel",
            "simt_dq_kernel",
            "simt_dkdv_kernel",
        ),
    ),
    "decode": (("decode.cu",), ("decode_kernel", "decode_combine_kernel")),
    "vq": (
        ("vq.cu",),
        (
            "vq_mma_kernel",
            "vq_simt_kernel",
            "code_norms_kernel",
            "unpack_index_kernel",
            "embed_kernel",
            "code_stats_kernel",
        ),
    ),
    "sampling": (("sampling.cu",), ("sample_kernel",)),
}

# What the Python layer rejects before or after each family's kernels, on each device (the
# CUDA column without a host sync: a device-side assertion, see vilg/ops/_validate.py).
REJECTS = {
    "attention": "text_lens / key_lens outside [0, segment]: ValueError on the CPU, a "
    "device-side assertion on CUDA and under torch.compile (the kernels used to clamp them)",
    "decode": "text_lens outside [0, text segment]: as for attention",
    "vq": "indices outside [0, num_codes): ValueError on the CPU; on CUDA the kernels record "
    "them and a device-side assertion reads the record (check=True: a ValueError, synchronising)",
    "sampling": "rows of logits that are all NaN (after guidance): ValueError on the CPU, a "
    "device-side assertion on CUDA and under torch.compile",
}


def emulated_sources() -> dict[str, list[str]]:
    """csrc/cuda .cu file -> the tests/cuda_emulation files that name it (include or build)."""
    found = defaultdict(list)
    cu_files = sorted(Path(p).name for p in glob.glob(str(ROOT / "csrc/cuda/*.cu")))
    for path in sorted((ROOT / "tests/cuda_emulation").glob("*")):
        if path.suffix not in (".cpp", ".h", ".cuh", ".py") or not path.is_file():
            continue
        text = path.read_text(errors="replace")
        for cu in cu_files:
            stem = re.escape(cu[: -len(".cu")])  # x.cu, x.emu.cpp (translated), "x" (build list)
            if re.search(rf"(^|[/\"' ]){stem}(\.cu\b|\.emu\.cpp|\")", text, re.M):
                found[cu].append(path.name)
    return found


def emulation_tests() -> dict[str, tuple[int, int]]:
    """test file -> (tests in the default run, tests in the slow set) of the emulation."""
    files = sorted(glob.glob(str(ROOT / "tests/test_cuda_emulation*.py")))
    counts = {}
    for f in files:
        row = []
        for mark in ("not slow", "slow"):
            out = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pytest",
                    "--collect-only",
                    "-q",
                    "-p",
                    "no:cacheprovider",
                    "-m",
                    mark,
                    f,
                ],
                cwd=ROOT,
                capture_output=True,
                text=True,
            ).stdout
            row.append(sum(1 for line in out.splitlines() if "::" in line))
        counts[Path(f).name] = tuple(row)
    return counts


def static_table() -> dict[str, dict]:
    """family -> summary of docs/kernel-resources.md (generated from the machine code)."""
    path = ROOT / "docs/kernel-resources.md"
    out: dict[str, dict] = {}
    if not path.exists():
        return out
    text = path.read_text()
    header = re.search(r"CUDA ([\d.]+), architectures ([\d,]+)", text)
    for line in text.splitlines():
        m = re.match(r"\| (sm_\d+) \| `(\w+)\\?<?[^`]*` \| (\d+) \| (\d+) \| (\d+) \+ ", line)
        if not m:
            continue
        arch, base, regs, local, _ = m.groups()
        fam = next((f for f, (_, ks) in FAMILIES.items() if base in ks), None)
        if fam is None:
            continue
        s = out.setdefault(fam, {"n": 0, "archs": set(), "regs": 0, "local": 0, "tc": Counter()})
        s["n"] += 1
        s["archs"].add(arch)
        s["regs"] = max(s["regs"], int(regs))
        s["local"] += int(local)
        cells = [c.strip() for c in line.strip("|").split("|")]
        for name, cell in zip(("HMMA", "LDSM", "LDGSTS"), cells[7:10]):
            if cell:
                s["tc"][name] += 1
    for s in out.values():
        s["cuda"] = header.group(1) if header else "?"
    return out


def mutation_scores(results: Path | None = None) -> tuple[str | None, dict[str, tuple[int, int]]]:
    """(report file, family -> (caught, valid mutants)) from the newest
    bench/results/mutation*.json (scripts/mutation_test.py's report: "families" maps a family,
    or a part of one such as "attention fwd", to its counts; mutants that do not compile are
    left out); ({} when the shape is not that)."""
    results = results or ROOT / "bench/results"
    files = sorted(results.glob("mutation*.json"), key=lambda p: p.stat().st_mtime)
    if not files:
        return None, {}
    data = json.loads(files[-1].read_text())
    acc: dict[str, list[int]] = {}
    fams = data.get("families") if isinstance(data, dict) else None
    for name, v in (fams or {}).items():
        fam = next((f for f in FAMILIES if str(name).startswith(f)), None)
        if fam is None or not isinstance(v, dict):
            continue
        caught, total = v.get("caught"), v.get("mutants", v.get("total"))
        if not isinstance(caught, int) or not isinstance(total, int):
            continue
        a = acc.setdefault(fam, [0, 0])
        a[0] += caught
        a[1] += total - int(v.get("invalid", 0))
    try:
        shown = files[-1].relative_to(ROOT).as_posix()
    except ValueError:
        shown = str(files[-1])
    return shown, {f: (c, t) for f, (c, t) in acc.items()}


def gpu_results() -> list[str]:
    """Results files measured on a GPU (a name with cuda / gpu, or a JSON saying cuda)."""
    hits = []
    for path in sorted((ROOT / "bench/results").glob("*")):
        if re.search(r"(cuda|gpu|h100|h200|a100)", path.name, re.I):
            hits.append(path.name)
        elif path.suffix == ".json":
            try:
                head = path.read_text()[:4000]
            except OSError:
                continue
            if re.search(r'"device":\s*"cuda', head):
                hits.append(path.name)
    return hits


def sanitize_families() -> list[str]:
    text = (ROOT / "tests/cuda_sanitize_case.py").read_text()
    m = re.search(r"FAMILIES = \{([^}]*)\}", text)
    return re.findall(r'"(\w+)":', m.group(1)) if m else []


def render() -> str:
    emu = emulated_sources()
    tests = emulation_tests()
    static = static_table()
    mut_file, mut = mutation_scores()
    gpu = gpu_results()
    sanitize = sanitize_families()
    L = [
        "# What is verified, per CUDA kernel family",
        "",
        "Generated by `python scripts/verification_report.py --write` from the repository (the",
        "emulation harness, the collected tests, [kernel-resources.md](kernel-resources.md), the",
        "mutation report, bench/results/); do not edit by hand.",
        "",
    ]
    if gpu:
        L += [f"GPU results in bench/results/: {', '.join(gpu)}.", ""]
    else:
        L += [
            "**Not run on a GPU.** No kernel of any family has executed on a GPU yet (no result",
            "in bench/results/ was measured on one). Everything below is evidence gathered",
            "without one: the kernels' own source on a CPU emulation of the warp instructions,",
            "their compiled machine code read statically, and the Python layer's checks.",
            "",
        ]
    L += [
        "| family | sources | runs on the CPU emulation | static machine-code checks | "
        "mutation score | compute-sanitizer case |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for fam, (sources, _) in FAMILIES.items():
        on_emu = [s for s in sources if s in emu]
        emu_cell = (
            "all"
            if len(on_emu) == len(sources)
            else ", ".join(on_emu) + " (not " + ", ".join(s for s in sources if s not in emu) + ")"
            if on_emu
            else "**no**"
        )
        s = static.get(fam)
        static_cell = (
            f"{s['n']} instantiations ({', '.join(sorted(s['archs']))}), no spills, max "
            f"{s['regs']} regs"
            if s
            else "no table"
        )
        if s and s["tc"]:
            static_cell += ", tensor-core instructions present"
        if fam in mut:
            c, t = mut[fam]
            mut_cell = f"{c}/{t} caught ({100 * c / t:.0f}%)" if t else "no mutants"
        else:
            mut_cell = "not measured"
        san = "in the case, not run (needs a GPU)" if fam in sanitize else "**no**"
        src = ", ".join(f"`{s}`" for s in sources)
        L.append(f"| {fam} | {src} | {emu_cell} | {static_cell} | {mut_cell} | {san} |")
    L += ["", "## CPU emulation", ""]
    L += [
        "The unmodified kernel source, compiled for the host against `csrc/cuda/emulate.cuh`",
        "(fibers for threads; mma / ldmatrix / cp.async / shuffles computed from all lanes with",
        "the PTX layouts; shared memory poisoned and checked for unwritten and racing reads),",
        "compared with the CPU kernels and a float64 reference. It encodes our reading of the",
        "PTX ISA: evidence, not proof. Harness files naming each source:",
        "",
    ]
    for fam, (sources, _) in FAMILIES.items():
        for src in sources:
            who = ", ".join(f"`{h}`" for h in emu.get(src, [])) or "none"
            L.append(f"* {fam}: `csrc/cuda/{src}`: {who}")
    L += ["", "Emulation tests (default run / slow set, CI runs both):", ""]
    for f, (quick, slow) in tests.items():
        L.append(f"* `tests/{f}`: {quick} / {slow}")
    L += ["", "## Static checks of the machine code", ""]
    if static:
        cuda = next(iter(static.values()))["cuda"]
        L += [
            f"From the SASS and resource usage of a CUDA {cuda} build "
            "([kernel-resources.md](kernel-resources.md), checked on every CUDA build by",
            "`tests/test_kernel_resources.py`): no local memory (spills) in any kernel,",
            "launch bounds equal to the launchers' block sizes, registers and shared memory",
            "within each launch's occupancy and opt-in assumptions, and HMMA (f16 / bf16",
            "m16n8k16, TF32 m16n8k8), LDSM (ldmatrix) and LDGSTS (cp.async) where the inline",
            "PTX asks for them.",
            "",
        ]
    else:
        L += [
            "No table yet: run `python scripts/kernel_resources.py --write "
            "docs/kernel-resources.md` on a CUDA build.",
            "",
        ]
    L += ["## Mutation testing", ""]
    if mut_file:
        L.append(
            f"Newest report: `{mut_file}`"
            + (
                " (see [verification-mutation.md](verification-mutation.md))."
                if (ROOT / "docs/verification-mutation.md").exists()
                else "."
            )
        )
        if not mut:
            L.append("Its per-family scores could not be read here; see the file.")
    else:
        L.append("No mutation report yet (bench/results/mutation*.json).")
    L += [
        "",
        "## Bad values rejected on every device",
        "",
        "What the CPU path rejects, the CUDA path rejects too, without a host sync and inside",
        "a captured CUDA graph (the assertion fires at replay); on CUDA a device-side",
        "assertion ends the process's CUDA context, like an out-of-range index in torch.",
        "Tests: `tests/test_device_checks.py` (CPU, the same assertion path),",
        "`tests/test_device_checks_cuda.py` (GPU, one process per case).",
        "",
    ]
    for fam, text in REJECTS.items():
        L.append(f"* {fam}: {text}.")
    L += [
        "",
        "## Needs a GPU",
        "",
        "`bench/gpu_session.sh` on a lent GPU: every `cuda` test (the step fails unless all",
        "collected ones ran and passed), compute-sanitizer memcheck, racecheck, synccheck and",
        f"initcheck on `tests/cuda_sanitize_case.py` ({', '.join(sanitize)}), the benchmarks.",
        "What only hardware can tell: tensor-core rounding, `ex2.approx` / `lg2.approx`",
        "accuracy, the shared-memory opt-in on each GPU, and every performance number.",
        "",
    ]
    return "\n".join(L)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--write", action="store_true", help="write docs/verification.md")
    args = ap.parse_args(argv)
    text = render()
    if args.write:
        (ROOT / "docs/verification.md").write_text(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
