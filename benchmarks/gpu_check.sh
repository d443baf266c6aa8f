#!/usr/bin/env bash
# One-call check of the CUDA kernels on a GPU machine, run from the repository root. It reports
# even when steps fail or time out, in this order (each step time-limited, the whole run held
# under GPU_CHECK_BUDGET_S seconds, default 450):
#   1. build in place against the machine's own torch (no network); import check
#   2. tests/test_cuda.py alone (junit XML in $OUT), then the device-parametrised core tests
#      (-k cuda), then the rest of the suite only if time is left
#   3. compute-sanitizer memcheck (PYTORCH_NO_CUDA_MEMORY_CACHING=1: the caching allocator hides
#      out-of-bounds accesses) on shapes that split O and run the finalize kernel, float16 and
#      float64, a misaligned view; racecheck on one small case
#   4. the layer benchmark, whose table is printed last
# $OUT (default ./out) receives summary.txt, junit_cuda.xml, the benchmark CSV and every log in
# gpu_check_logs.tar.gz.  Exit status: non-zero if any step failed.
#
#   bash benchmarks/gpu_check.sh            # on the GPU machine
#   bash benchmarks/gpu_check.sh --dry-run  # anywhere: the same logic, GPU steps skipped and the
#                                           # pytest steps collect only (CI runs this)
set -u

DRY=0
[[ "${1:-}" == "--dry-run" ]] && DRY=1

OUT="${OUT:-./out}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
LOGS="$OUT/logs"
mkdir -p "$LOGS"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 2

BUDGET="${GPU_CHECK_BUDGET_S:-450}"
START=$(date +%s)
PY="${PYTHON:-$(command -v python3 || command -v python)}"
BENCH_ARGS="${BENCH_ARGS:---device cuda --budget 0.5}"
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"
FAILED=0
FINISHED=0

elapsed() { echo $(( $(date +%s) - START )); }
note() { echo "$*" | tee -a "$SUMMARY"; }

# The summary, the tar of the logs and the benchmark table, also when the run is interrupted.
finish() {
  (( FINISHED )) && return
  FINISHED=1
  trap - INT TERM
  echo
  echo "=== summary ($(elapsed)s of ${BUDGET}s; $( ((DRY)) && echo 'dry run; ')logs in $OUT)"
  cat "$SUMMARY"
  for x in "$OUT"/junit_*.xml; do
    [[ -f "$x" ]] && "$PY" - "$x" <<'EOF' 2>/dev/null
import sys, xml.etree.ElementTree as ET
r = ET.parse(sys.argv[1]).getroot()
s = r if r.tag == "testsuite" else r.find("testsuite")
print(f"      {sys.argv[1].rsplit('/', 1)[-1]}: tests={s.get('tests')} failures={s.get('failures')} "
      f"errors={s.get('errors')} skipped={s.get('skipped')} time={s.get('time')}s")
EOF
  done
  echo
  echo "=== benchmark table"
  if [[ -s "$LOGS/bench.log" ]]; then
    awk '/^# times are medians/{p=1} p' "$LOGS/bench.log" | grep . || tail -n 40 "$LOGS/bench.log"
  else
    echo "(no benchmark output)"
  fi
  cp "$SUMMARY" "$LOGS/" 2>/dev/null
  tar czf "$OUT/gpu_check_logs.tar.gz" -C "$OUT" logs 2>/dev/null && rm -rf "$LOGS"
}
trap 'note "FAIL  interrupted by a signal at $(elapsed)s"; FAILED=1; finish; exit 3' INT TERM
trap finish EXIT

# step NAME LIMIT_S RESERVE_S CMD...: run CMD with a limit of at most LIMIT_S seconds, keeping
# RESERVE_S seconds of the budget for the steps after it; output to $LOGS/NAME.log. SIGINT
# first (pytest then writes its summary and junit XML), SIGKILL 15 s later. Exit codes listed in
# OK_RC count as passing.
step() {
  local name="$1" limit="$2" reserve="$3"
  shift 3
  local left=$(( BUDGET - $(elapsed) - reserve ))
  (( left < limit )) && limit=$left
  if (( limit < 10 )); then
    note "FAIL  $name: no time left in the ${BUDGET}s budget"
    FAILED=1
    return 1
  fi
  echo "=== $name (limit ${limit}s, at $(elapsed)s)"
  local t0=$(date +%s)
  timeout -s INT --kill-after=15 "$limit" "$@" >"$LOGS/$name.log" 2>&1
  local rc=$?
  local dt=$(( $(date +%s) - t0 ))
  if (( rc == 0 )) || [[ " ${OK_RC:-} " == *" $rc "* ]]; then
    note "ok    $name (${dt}s$( ((rc)) && echo ", exit $rc accepted"))"
  else
    local why="exit $rc"
    (( rc == 124 || rc == 137 )) && why="timed out after ${limit}s"
    note "FAIL  $name: $why (${dt}s); last lines of $name.log:"
    grep -E "^(FAILED|ERROR) |Error|error:|passed|failed" "$LOGS/$name.log" | tail -n 25 |
      sed 's/^/      /' | tee -a "$SUMMARY"
    tail -n 5 "$LOGS/$name.log" | sed 's/^/      | /' | tee -a "$SUMMARY"
    FAILED=1
  fi
  return $rc
}

# gpu_step: as step, but only on the GPU machine (printed, not run, in a dry run)
gpu_step() {
  if (( DRY )); then
    local cmd="${*:4}"
    note "skip  $1 (dry run): ${cmd%%$'\n'*}"
    return 0
  fi
  step "$@"
}

# ---- the CUDA toolkit: CUDA_HOME, nvcc on PATH, /usr/local/cuda*, pip's nvidia packages ----
find_cuda_home() {
  local tv cand nvcc
  tv="$("$PY" -c 'import torch; print(torch.version.cuda or "")' 2>/dev/null)"
  nvcc="$(command -v nvcc 2>/dev/null || true)"
  for cand in "${CUDA_HOME:-}" "${CUDA_PATH:-}" \
              ${nvcc:+"$(dirname "$(dirname "$(readlink -f "$nvcc")")")"} \
              ${tv:+"/usr/local/cuda-$tv"} /usr/local/cuda $(ls -d /usr/local/cuda-* 2>/dev/null | sort -rV) \
              $("$PY" - <<'EOF' 2>/dev/null
import site, os
for sp in site.getsitepackages():
    for sub in ("nvidia/cu13", "nvidia/cuda_nvcc", "nvidia/cu12"):
        print(os.path.join(sp, sub))
EOF
); do
    if [[ -n "$cand" && -x "$cand/bin/nvcc" && -f "$cand/include/cuda_runtime.h" ]]; then
      echo "$cand"
      return 0
    fi
  done
  return 1
}

{
  echo "# gpu_check $(date -u '+%Y-%m-%d %H:%M UTC') on $(hostname)$( ((DRY)) && echo ' (dry run)')"
  echo "# python: $PY ($("$PY" --version 2>&1))"
  "$PY" -c 'import torch; print("# torch", torch.__version__, "CUDA", torch.version.cuda, "GPUs", torch.cuda.device_count())' 2>&1
} | tee "$LOGS/env.txt"

if (( ! DRY )); then
  CUDA_HOME_FOUND="$(find_cuda_home || true)"
  if [[ -n "$CUDA_HOME_FOUND" ]]; then
    export CUDA_HOME="$CUDA_HOME_FOUND"
    export PATH="$CUDA_HOME/bin:$PATH"
    echo "# CUDA_HOME=$CUDA_HOME ($("$CUDA_HOME/bin/nvcc" --version | tail -n 1))" | tee -a "$LOGS/env.txt"
  else
    echo "# no CUDA toolkit found (nvcc); the build step will fail" | tee -a "$LOGS/env.txt"
  fi
  nvidia-smi >"$LOGS/nvidia-smi.txt" 2>&1 || echo "(nvidia-smi failed)" >>"$LOGS/nvidia-smi.txt"
  head -n 12 "$LOGS/nvidia-smi.txt"
fi

# ---- 1. build in place (no network), against this machine's torch ----
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
export MAX_JOBS="${MAX_JOBS:-8}"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
gpu_step build 220 200 env FORCE_CUDA=1 LRP_PTXAS_VERBOSE=1 "$PY" setup.py build_ext --inplace
[[ -f "$LOGS/build.log" ]] &&
  grep -E "ptxas info *: (Compiling|Used)|spill" "$LOGS/build.log" >"$LOGS/ptxas.txt" 2>/dev/null
gpu_step import 60 190 "$PY" -c '
import torch, lrp_ext
from lrp_ext import ops
assert torch.cuda.is_available(), "torch sees no GPU"
ok = ops.has_compiled_ops("cuda")
print("CUDA kernels registered:", ok, "| device:", torch.cuda.get_device_name(0))
assert ok, "lrp_ext._C has no CUDA kernels"
'

# optional zennit wheel for the oracle tests and the benchmark
shopt -s nullglob
wheels=(wheels/zennit-*.whl)
shopt -u nullglob
if (( ${#wheels[@]} )); then
  gpu_step zennit 60 180 "$PY" -m pip install --no-deps --no-index --no-build-isolation "${wheels[@]}"
fi

# ---- 2. tests: CUDA file first, then the device-parametrised core tests, then the rest ----
# per-test limit: pytest-timeout where installed, else faulthandler's traceback dump (the
# step's SIGINT then ends the run with its summary)
PER_TEST_S="${GPU_CHECK_TEST_TIMEOUT_S:-60}"
if "$PY" -c 'import pytest_timeout' 2>/dev/null; then
  TIMEOUT_OPT=(--timeout "$PER_TEST_S")
else
  TIMEOUT_OPT=(-o "faulthandler_timeout=$PER_TEST_S")
fi
PYTEST=("$PY" -m pytest -q -rfE --tb=line --maxfail=20 -p no:cacheprovider "${TIMEOUT_OPT[@]}")
(( DRY )) && PYTEST+=(--collect-only)
CORE=(tests/test_rules.py tests/test_properties.py tests/test_nonfinite.py tests/test_errors.py
      tests/test_hand.py tests/test_conv.py tests/test_model_ops.py)

# a dry run collects only: "no tests collected" (exit 5: tests/test_cuda.py skips itself
# without a GPU) is expected there
NOTHING_OK=$( ((DRY)) && echo 5 )
OK_RC=$NOTHING_OK step pytest_cuda 130 150 "${PYTEST[@]}" --junitxml="$OUT/junit_cuda.xml" \
    tests/test_cuda.py
step pytest_core 90 110 "${PYTEST[@]}" --junitxml="$OUT/junit_core.xml" -k cuda "${CORE[@]}"
# the rest of the suite (its CUDA-parametrised tests; the others are CI's) only when at least 2
# minutes are left beyond what the last steps need
if (( BUDGET - $(elapsed) - 110 >= 120 )); then
  step pytest_rest 120 110 "${PYTEST[@]}" -k cuda tests/ \
      $(printf -- '--ignore=%s ' tests/test_cuda.py "${CORE[@]}")
else
  note "skip  pytest_rest: not enough time left ($(elapsed)s used)"
fi

# ---- 3. compute-sanitizer ----
cat >"$LOGS/sanitize_case.py" <<'EOF'
# Cases for compute-sanitizer: every op, both paths, a >= 0 and mixed. memcheck: float16 and
# float64 on shapes (N, O, I) whose fused backward splits O and runs the finalize kernel, plus a
# misaligned view (a and W one element past an aligned address, float32 and bfloat16).
# racecheck: one small case of each op (flat's kernel and z_box's row flags use shared memory).
import os
import sys

import torch

import lrp_ext

mode, dev = sys.argv[1], sys.argv[2]
torch.manual_seed(0)


def shifted(t):
    buf = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)
    v = buf[1:].view(t.shape)
    v.copy_(t)
    return v


def ops(R, a, W, b):
    return [lrp_ext.epsilon(R, a, W, b), lrp_ext.gamma(R, a, W, b),
            lrp_ext.alpha_beta(R, a, W, b), lrp_ext.z_plus(R, a, W, b),
            lrp_ext.flat(R, a, W), lrp_ext.w_square(R, a, W, b),
            lrp_ext.z_box(R, a, W, low=-3.0, high=3.0)]


if mode == "memcheck":
    cases = [(dt, s, False) for dt in (torch.float16, torch.float64)
             for s in ((1, 300, 260), (2, 1000, 1029))]
    cases += [(dt, (3, 70, 66), True) for dt in (torch.float32, torch.bfloat16)]
else:
    cases = [(torch.float32, (2, 40, 36), False)]
if dev == "cpu":  # dry run: the script's logic with the CPU kernels' dtypes
    cases = [(torch.float64 if dt == torch.float16 else dt, s, m) for dt, s, m in cases]
n_calls = 0
for path in ("fused", "gemm"):
    os.environ["LRP_EXT_CUDA_PATH"] = path
    os.environ["LRP_EXT_CPU_PATH"] = path
    for dtype, (N, O, I), misaligned in cases:
        for signed in (False, True):
            a = torch.randn(N, I, device=dev, dtype=dtype)
            a = a if signed else a.abs()
            W = torch.randn(O, I, device=dev, dtype=dtype) / I ** 0.5
            b = torch.randn(O, device=dev, dtype=dtype)
            R = torch.randn(N, O, device=dev, dtype=dtype)
            if misaligned:
                a, W = shifted(a), shifted(W)
            outs = ops(R, a, W, b)
            if dev == "cuda":
                torch.cuda.synchronize()
            assert all(o.shape == a.shape for o in outs)
            n_calls += len(outs)
print(f"sanitize {mode} done: {n_calls} calls")
EOF
SAN="$(command -v compute-sanitizer || true)"
[[ -z "$SAN" && -n "${CUDA_HOME:-}" ]] && for c in "$CUDA_HOME/bin/compute-sanitizer" \
    "$CUDA_HOME/compute-sanitizer/compute-sanitizer"; do [[ -x "$c" ]] && SAN="$c" && break; done
if (( DRY )); then
  step sanitize_script 60 60 "$PY" "$LOGS/sanitize_case.py" memcheck cpu
  gpu_step memcheck 70 80 compute-sanitizer --tool memcheck ... sanitize_case.py memcheck cuda
  gpu_step racecheck 40 60 compute-sanitizer --tool racecheck ... sanitize_case.py racecheck cuda
elif [[ -n "$SAN" ]]; then
  step memcheck 70 80 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$SAN" --tool memcheck \
      --error-exitcode 1 --print-limit 20 "$PY" "$LOGS/sanitize_case.py" memcheck cuda
  step racecheck 40 60 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$SAN" --tool racecheck \
      --error-exitcode 1 --print-limit 20 "$PY" "$LOGS/sanitize_case.py" racecheck cuda
else
  note "FAIL  memcheck, racecheck: compute-sanitizer not found"
  FAILED=1
fi

# ---- 4. the benchmark, last ----
gpu_step bench 60 0 "$PY" benchmarks/bench_layers.py $BENCH_ARGS --csv "$OUT/bench_layers_cuda.csv"

finish
exit $FAILED
