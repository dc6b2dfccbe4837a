#!/usr/bin/env bash
# On a GPU machine: install the cu13 wheel built by scripts/build_wheels.sh (the one for this
# machine's Python) into a venv that sees the machine's own torch, then, from outside the source
# tree, run `vilg info`, every kernel against dense attention on cpu and cuda, and the CUDA tests.
#
#   scripts/gpu_check.sh [WHEELHOUSE]    (default: wheelhouse/; results under $OUT or /tmp)
# With the device tool: run(command="bash scripts/gpu_check.sh", carry=["wheelhouse"]).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
HOUSE=$(realpath "${1:-$ROOT/wheelhouse}")
RES=${OUT:-/tmp/vilg-gpu-check}
mkdir -p "$RES"
PY=${PYTHON:-python3}
tag=$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
whl=$(ls "$HOUSE"/vilg_cu13-*-"$tag"-*manylinux*.whl | head -1)
echo "python: $("$PY" --version), torch: $("$PY" -c 'import torch; print(torch.__version__, torch.version.cuda)')"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader || true

venv=$(mktemp -d)/venv
"$PY" -m venv --system-site-packages "$venv"  # the machine's own torch
"$venv/bin/pip" install -q --no-deps "$whl"
"$venv/bin/pip" install -q tokenizers safetensors pillow tqdm pytest 2>/dev/null || true
work=$(mktemp -d)
cp -r "$ROOT/tests" "$work/"
cd "$work"  # not the source tree: `import vilg` finds the installed wheel only
"$venv/bin/vilg" info | tee "$RES/info.json"
"$venv/bin/python" tests/wheel_check.py cpu cuda | tee "$RES/wheel_check.json"
"$venv/bin/python" -m pytest -q -p no:cacheprovider -m "not slow" tests/test_build.py \
  tests/test_attention_cuda.py tests/test_decode_cuda.py tests/test_sampling_cuda.py \
  tests/test_vq_cuda.py 2>&1 | tee "$RES/pytest.txt" | tail -5
