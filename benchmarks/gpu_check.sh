#!/usr/bin/env bash
# One-call check of the CUDA kernels on a GPU machine, run from the repository root:
#   build in place against the machine's own torch (no network), install a carried zennit wheel
#   (wheels/zennit-*.whl) if there is one, print nvidia-smi, run the whole test suite, run
#   compute-sanitizer memcheck over every op and both paths, then the layer benchmark, whose
#   table is printed last.  Full logs go to $OUT (default ./out).  Each step is time-limited;
#   a failing step is reported and the script goes on; the exit status is non-zero if any
#   step failed.  The whole run is held under GPU_CHECK_BUDGET_S seconds (default 470).
#
#   bash benchmarks/gpu_check.sh
#   BENCH_ARGS="--device cuda --dtype bfloat16" bash benchmarks/gpu_check.sh
set -u

OUT="${OUT:-./out}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 2

BUDGET="${GPU_CHECK_BUDGET_S:-470}"
START=$(date +%s)
PY="${PYTHON:-$(command -v python3 || command -v python)}"
BENCH_ARGS="${BENCH_ARGS:---device cuda --budget 0.5}"
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"
FAILED=0

elapsed() { echo $(( $(date +%s) - START )); }

# step NAME LIMIT_S RESERVE_S CMD...: run CMD with a time limit of at most LIMIT_S seconds,
# keeping RESERVE_S seconds of the budget for the steps after it; output to $OUT/NAME.log.
step() {
  local name="$1" limit="$2" reserve="$3"
  shift 3
  local left=$(( BUDGET - $(elapsed) - reserve ))
  (( left < limit )) && limit=$left
  if (( limit < 10 )); then
    echo "FAIL  $name: no time left in the ${BUDGET}s budget" | tee -a "$SUMMARY"
    FAILED=1
    return 1
  fi
  echo "=== $name (limit ${limit}s, at $(elapsed)s)"
  local t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  local dt=$(( $(date +%s) - t0 ))
  if (( rc == 0 )); then
    echo "ok    $name (${dt}s)" | tee -a "$SUMMARY"
  else
    local why="exit $rc"
    (( rc == 124 || rc == 137 )) && why="timed out after ${limit}s"
    echo "FAIL  $name: $why (${dt}s); last lines of $name.log:" | tee -a "$SUMMARY"
    tail -n 25 "$OUT/$name.log" | sed 's/^/      /' | tee -a "$SUMMARY"
    FAILED=1
  fi
  return $rc
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
  echo "# gpu_check $(date -u '+%Y-%m-%d %H:%M UTC') on $(hostname)"
  echo "# python: $PY ($("$PY" --version 2>&1))"
  "$PY" -c 'import torch; print("# torch", torch.__version__, "CUDA", torch.version.cuda, "GPUs", torch.cuda.device_count())' 2>&1
} | tee "$OUT/env.txt"

CUDA_HOME_FOUND="$(find_cuda_home || true)"
if [[ -n "$CUDA_HOME_FOUND" ]]; then
  export CUDA_HOME="$CUDA_HOME_FOUND"
  export PATH="$CUDA_HOME/bin:$PATH"
  echo "# CUDA_HOME=$CUDA_HOME ($("$CUDA_HOME/bin/nvcc" --version | tail -n 1))" | tee -a "$OUT/env.txt"
else
  echo "# no CUDA toolkit found (nvcc); the build step will fail" | tee -a "$OUT/env.txt"
fi

echo "=== nvidia-smi"
nvidia-smi 2>&1 | tee "$OUT/nvidia-smi.txt" || echo "(nvidia-smi failed)"

# ---- build in place (no network), against this machine's torch ----
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
export MAX_JOBS="${MAX_JOBS:-8}"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
step build 240 200 env FORCE_CUDA=1 LRP_PTXAS_VERBOSE=1 "$PY" setup.py build_ext --inplace
grep -E "ptxas info *: (Compiling|Used)|spill" "$OUT/build.log" >"$OUT/ptxas.txt" 2>/dev/null || true
step import 60 190 "$PY" -c '
import torch, lrp_ext
from lrp_ext import ops
assert torch.cuda.is_available(), "torch sees no GPU"
ok = ops.has_compiled_ops("cuda")
print("CUDA kernels registered:", ok, "| device:", torch.cuda.get_device_name(0))
assert ok, "lrp_ext._C has no CUDA kernels"
'

# ---- optional zennit wheel for the oracle tests and the benchmark ----
shopt -s nullglob
wheels=(wheels/zennit-*.whl)
shopt -u nullglob
if (( ${#wheels[@]} )); then
  step zennit 60 180 "$PY" -m pip install --no-deps --no-index --no-build-isolation "${wheels[@]}"
fi

# ---- tests, then memcheck, then the benchmark ----
step pytest 150 130 "$PY" -m pytest -q --maxfail=50 --tb=short -p no:cacheprovider tests/

cat >"$OUT/sanitize_case.py" <<'EOF'
# Every op on small shapes, both paths, a >= 0 and mixed, fp32 and bf16 (vector and element
# loads), under compute-sanitizer.
import os
import torch
import lrp_ext

torch.manual_seed(0)
dev = "cuda"
for path in ("fused", "gemm"):
    os.environ["LRP_EXT_CUDA_PATH"] = path
    for dtype in (torch.float32, torch.bfloat16):
        for (N, O, I) in ((1, 7, 3), (5, 70, 64), (9, 33, 129)):
            for signed in (False, True):
                a = torch.randn(N, I, device=dev, dtype=dtype)
                a = a if signed else a.abs()
                W = torch.randn(O, I, device=dev, dtype=dtype)
                b = torch.randn(O, device=dev, dtype=dtype)
                R = torch.randn(N, O, device=dev, dtype=dtype)
                outs = [lrp_ext.epsilon(R, a, W, b), lrp_ext.gamma(R, a, W, b),
                        lrp_ext.alpha_beta(R, a, W, b), lrp_ext.z_plus(R, a, W),
                        lrp_ext.flat(R, a, W), lrp_ext.w_square(R, a, W, b),
                        lrp_ext.z_box(R, a, W, low=-3.0, high=3.0)]
                torch.cuda.synchronize()
                assert all(o.shape == a.shape for o in outs)
print("sanitize case done")
EOF
SAN="$(command -v compute-sanitizer || true)"
[[ -z "$SAN" && -n "${CUDA_HOME:-}" ]] && for c in "$CUDA_HOME/bin/compute-sanitizer" \
    "$CUDA_HOME/compute-sanitizer/compute-sanitizer"; do [[ -x "$c" ]] && SAN="$c" && break; done
if [[ -n "$SAN" ]]; then
  step memcheck 150 70 "$SAN" --tool memcheck --error-exitcode 1 --print-limit 20 \
      "$PY" "$OUT/sanitize_case.py"
else
  echo "FAIL  memcheck: compute-sanitizer not found" | tee -a "$SUMMARY"
  FAILED=1
fi

step bench 200 0 "$PY" benchmarks/bench_layers.py $BENCH_ARGS --csv "$OUT/bench_layers_cuda.csv"

echo
echo "=== summary ($(elapsed)s of ${BUDGET}s; logs in $OUT)"
cat "$SUMMARY"
echo
echo "=== benchmark table"
if [[ -f "$OUT/bench.log" ]]; then
  # the table is the tail of the benchmark's output, from its '# times are medians' line
  awk '/^# times are medians/{p=1} p' "$OUT/bench.log" | grep . || tail -n 40 "$OUT/bench.log"
else
  echo "(no benchmark output)"
fi
exit $FAILED
