"""Turn a .cu file written against plain CUDA into C++ for the host emulation
(csrc/cuda/emulate_api.cuh), changing only what C++ cannot spell:

* ``kernel<<<grid, block, smem, stream>>>(args)`` becomes
  ``emu::launch_kernel(kernel_id(kernel), grid, block, smem, stream, [&] { kernel(args); })``,
  so the host launcher around it runs as written;
* ``__shared__ T name[...]`` becomes a reference to the block's instance of that variable, and
  ``extern __shared__ T name[]`` a pointer to the block's dynamic shared memory.

Usage: python translate.py SRC.cu OUT.cpp
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

EMU = "::vilg::cuda::emu::"


def _split_top(s: str) -> list[str]:
    out, depth, cur = [], 0, ""
    for ch in s:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    out.append(cur.strip())
    return out


def _kernel_start(src: str, end: int) -> int:
    """Start of the kernel expression ending at src[end - 1] (a name, maybe with <...>)."""
    i = end
    while i > 0 and src[i - 1].isspace():
        i -= 1
    if src[i - 1] == ">":
        depth = 0
        while True:
            i -= 1
            if src[i] == ">":
                depth += 1
            elif src[i] == "<":
                depth -= 1
                if depth == 0:
                    break
    while i > 0 and (src[i - 1].isalnum() or src[i - 1] in "_:"):
        i -= 1
    return i


def _launches(src: str) -> str:
    while (at := src.find("<<<")) >= 0:
        start = _kernel_start(src, at)
        kernel = src[start:at].strip()
        close = src.index(">>>", at)
        cfg = _split_top(src[at + 3 : close])
        if not 2 <= len(cfg) <= 4:
            raise ValueError(f"launch configuration {cfg}")
        cfg += ["0", "nullptr"][len(cfg) - 2 :]
        j = close + 3
        while src[j].isspace():
            j += 1
        if src[j] != "(":
            raise ValueError(f"no argument list after launch of {kernel}")
        depth, k = 0, j
        while True:
            depth += {"(": 1, ")": -1}.get(src[k], 0)
            if depth == 0:
                break
            k += 1
        args = src[j : k + 1]
        grid, block, smem, stream = cfg
        call = (
            f"{EMU}launch_kernel({EMU}kernel_id({kernel}), dim3({grid}), dim3({block}), "
            f"size_t({smem}), {stream}, [&] {{ {kernel}{args}; }})"
        )
        src = src[:start] + call + src[k + 1 :]
    return src


_SHARED = re.compile(
    r"^(?P<ind>[ \t]*)(?P<ext>extern[ \t]+)?__shared__[ \t]+(?:__align__\(\d+\)[ \t]+)?"
    r"(?P<type>[\w:]+(?:<[^;]*?>)?)[ \t]+(?P<decl>[^;]+);",
    re.M,
)


def _shared(src: str) -> str:
    counter = iter(range(1 << 30))

    def one(m: re.Match) -> str:
        ind, ty = m["ind"], m["type"]
        if m["ext"]:
            name = m["decl"].strip().removesuffix("[]").strip()
            return f"{ind}{ty}* {name} = reinterpret_cast<{ty}*>({EMU}dyn_smem());"
        out = []
        for d in _split_top(m["decl"]):
            name, _, dims = d.partition("[")
            name, dims = name.strip(), ("[" + dims) if dims else ""
            ref = f"(&{name}){dims}" if dims else f"&{name}"
            out.append(f"{ty} {ref} = {EMU}static_shared<{ty}{dims}>({next(counter)});")
        return ind + " ".join(out)

    return _SHARED.sub(one, src)


def translate(src: str, name: str = "") -> str:
    line = f'#line 1 "{name}"\n' if name else ""
    return "#define VILG_CUDA_EMULATE 1\n" + line + _shared(_launches(src))


def main() -> None:
    src, out = Path(sys.argv[1]), Path(sys.argv[2])
    out.write_text(translate(src.read_text(), str(src)))


if __name__ == "__main__":
    main()
