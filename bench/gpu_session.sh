#!/usr/bin/env bash
# The one prepared script for a lent GPU (about 9 minutes of an H200): build vilg there with that
# machine's own python3 and torch, then the CUDA tests, compute-sanitizer, every benchmark and
# `vilg profile`, everything logged and written under $OUT.
#
#   bash bench/gpu_session.sh             # on the GPU machine ($OUT set by the device tool)
#   bash bench/gpu_session.sh --dry-run   # here, first: the same steps on the CPU, tiny sizes
#   bash bench/gpu_session.sh --checks-only   # correctness only (one device call, when the
#                                             # whole script would not fit in one)
#
# Every step runs under its own time limit and the script goes on past a failed step (a
# failure is logged with its exit code), except the build: nothing else means anything
# without it. The script's own exit code is 1 when any step failed (the list is printed last),
# so a lent GPU's run cannot pass quietly. What comes back is $OUT/log, $OUT/summary.txt and $OUT/results.tgz (the JSON of
# every benchmark and profile, and the sanitizer reports): the device tool returns at most 8
# files. Unpack results.tgz into bench/results/ here and commit it with the numbers.
set -u -o pipefail
cd "$(dirname "$0")/.."

DRY=0 CHECKS_ONLY=0
for arg in "$@"; do
  case $arg in
    --dry-run) DRY=1 ;;
    --checks-only) CHECKS_ONLY=1 ;;  # build, tests, static check, sanitizers; no benchmarks
    *) echo "unknown argument: $arg" >&2; exit 2 ;;
  esac
done
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
WORK=$(mktemp -d)  # results gathered here, packed into one file at the end
LOG=$OUT/log
: >"$LOG"
: >"$OUT/summary.txt"
export PYTHONUNBUFFERED=1

note() { echo "== $(date +%T) $*" | tee -a "$LOG"; }
FAILED=()
# step NAME SECONDS CMD...: run with a time limit, log everything, record the exit code; a
# non-zero one is a failure unless listed in $OK_RC (e.g. OK_RC="0 2" step ...)
step() {
  local name=$1 limit=$2
  shift 2
  note "$name: $*"
  local t0=$SECONDS
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$LOG"
  local rc=$?
  printf '%-28s rc=%-3s %4ss\n' "$name" "$rc" "$((SECONDS - t0))" | tee -a "$OUT/summary.txt"
  if [[ " ${OK_RC:-0} " != *" $rc "* ]]; then
    FAILED+=("$name")
  fi
  return $rc
}

if ((DRY)); then
  DEV=cpu DT=float32 PY=${PYTHON:-python}
  BUILD=(true)  # the dry run uses the build already installed here
  GRIDS=(--grids 8) BATCH=(--batch 1 --heads 2) VQ=(--sizes 2048x256x64)
  QUICK=(--repeat 2 --warmup 1) REPS=(--reps 2) PROF=(--iters 3 --probe-seconds 0.05)
else
  DEV=cuda DT=bfloat16 PY=${PYTHON:-python3}
  BUILD=(env VILG_CUDA=ON VILG_CUDA_ARCHS=90 CMAKE_BUILD_PARALLEL_LEVEL=16
    "$PY" -m pip install -e . --no-build-isolation --no-deps -q)
  GRIDS=(--grids 16 32 48) BATCH=(--batch 8 --heads 16) VQ=()
  QUICK=() REPS=() PROF=(--iters 10)
fi
note "gpu_session: dry_run=$DRY device=$DEV dtype=$DT python=$("$PY" -c 'import sys; print(sys.version.split()[0])')"
"$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "gpu", torch.cuda.is_available() and torch.cuda.get_device_name(0))' 2>&1 | tee -a "$LOG"
command -v nvidia-smi >/dev/null && nvidia-smi 2>&1 | head -15 | tee -a "$LOG"

# 1. build (the one step that must pass) and what was built
step build 360 "${BUILD[@]}" || { note "build failed: stopping"; exit 1; }
step info 60 "$PY" -m vilg info

# 2. correctness on the device: every CUDA test (skipped cleanly on the CPU), then a check
# that all of them ran: on the GPU a skip is a failure (a build without CUDA kernels, or a
# torch that sees no GPU, skips everything with pytest's exit code 0)
collected=$("$PY" -m pytest -m cuda --collect-only -q -p no:cacheprovider tests 2>/dev/null |
  sed -n 's/^\([0-9]*\)\(\/[0-9]*\)\{0,1\} tests\{0,1\} collected.*/\1/p')
step pytest-cuda 240 "$PY" -m pytest -m cuda -q -p no:cacheprovider --maxfail 20 \
  --junitxml "$WORK/pytest-cuda.xml" tests
COUNT=(--collected "${collected:-0}")
((DRY)) && COUNT+=(--expect-skipped)
step pytest-cuda-count 30 "$PY" bench/check_test_counts.py "$WORK/pytest-cuda.xml" "${COUNT[@]}"

# the static machine-code check of the build made here (CI runs it on its sm_80 + sm_90
# build: tests/test_kernel_resources.py); exit 2: no cuobjdump on this machine
if ((!DRY)); then
  OK_RC="0 2" step kernel-resources 60 "$PY" scripts/kernel_resources.py
fi

# 3. compute-sanitizer's four tools on a small workload of every kernel family (attention,
# decode, vq, sampling), each failing its step on any report (--error-exitcode) or on a
# mismatch against the CPU / float64 (the case exits 1). Not on a CPU: nothing to check there
# (the case exits 2 by design).
if ((DRY)); then
  OK_RC="0 2" step sanitize-case 60 "$PY" tests/cuda_sanitize_case.py
else
  for tool in memcheck racecheck synccheck initcheck; do
    step "sanitizer-$tool" 120 compute-sanitizer --tool "$tool" --error-exitcode 1 \
      --print-limit 50 --log-file "$WORK/sanitizer-$tool.txt" "$PY" tests/cuda_sanitize_case.py ||
      tail -40 "$WORK/sanitizer-$tool.txt" | tee -a "$LOG"
  done
fi

if ((!CHECKS_ONLY)); then
# 4. benchmarks (bf16 on the GPU): every pattern vs SDPA (masked), FlexAttention (compiled)
# and, as the ceiling, SDPA-flash with no mask; VQ; decode; then every kernel on the roofline
FLEX=(--flex)
((DRY)) && FLEX=()
step bench-attention 150 "$PY" bench/attention.py --device "$DEV" --dtype "$DT" "${BATCH[@]}" \
  "${GRIDS[@]}" "${FLEX[@]}" "${QUICK[@]}" --ceiling -o "$WORK/attention.json"
step bench-vq 60 "$PY" bench/vq.py --device "$DEV" "${VQ[@]}" "${REPS[@]}" --out "$WORK/vq.json"
step bench-decode 60 "$PY" bench/decode.py --device "$DEV" "${REPS[@]}" --out "$WORK/decode.json"
# the model's decode loop at 1024 image tokens: CUDA-graph step vs eager vs dense SDPA decode
GEN=(--dtype "$DT" --batch 8 64 --rounds 1)
((DRY)) && GEN=(--layers 2 --hidden 64 --heads 2 --grid 8 --text-len 16 --codes 64 --rounds 1
  --modes checked vilg sdpa)
step bench-generation 90 "$PY" bench/generation.py --device "$DEV" "${GEN[@]}" \
  -o "$WORK/generation.json"
# the model: a training step on vilg vs masked SDPA vs eager attention (time, memory, loss)
# (not in the dry run: tests/test_model_step_bench.py runs the same command on the CPU)
if ((!DRY)); then
  step bench-model-step 150 "$PY" bench/model_step.py --device "$DEV" --steps 12 --chunk 3 \
    --warmup 2 --generate --out "$WORK/model_step.json"
fi
step profile-all 120 "$PY" bench/profile_all.py --device "$DEV" --dtype "$DT" "${BATCH[@]}" \
  "${PROF[@]}" -o "$WORK/profile.json"
step roofline 30 "$PY" bench/plot.py --roofline "$WORK/profile.json" -o "$WORK/roofline.png"
fi

tar -czf "$OUT/results.tgz" -C "$WORK" . && note "packed $(tar -tzf "$OUT/results.tgz" | wc -l) files"
rm -rf "$WORK"
note "done in ${SECONDS}s"
cat "$OUT/summary.txt"
if ((${#FAILED[@]})); then
  note "FAILED steps: ${FAILED[*]}"
  exit 1
fi
