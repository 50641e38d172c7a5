#!/usr/bin/env bash
# The GPU check of the cupy backend, for a machine with an NVIDIA GPU (docs/cupy.md).
#
# Steps, each with its own time limit; a failing step is recorded and the next one runs:
#   1. make this checkout importable through a folder of links (nothing installed, nothing from the network)
#   2. fff backends                      (what is available, and why not)
#   3. fff check cupy                    (the conformance suite on the cupy backend)
#   4. fff check cupy --dtype float16    (the undeclared float16 variant, declared for this step only
#                                         through FFFCORE_CUPY_FLOAT16=1)
#   5. fff check torch --device cuda     (the torch backend on CUDA)
#   6. the test suite's CUDA tests, and FFFInference on CUDA tensors (benchmarks/studies/torch_module.py)
#   7. the benchmark: cupy FFF vs torch dense Linear-GELU-Linear (cuBLAS), width 768, depth 11,
#      batches 1/128/4096/16384/65536, float32 (also against TF32 dense) and bfloat16,
#      into benchmarks/results/gpu_<stamp>.json and a plot of time against batch, gpu_<stamp>.png
# Total under 15 minutes: the limits below add up to 13 min 40 s (plus 5 s of grace each).
# Exit status: 0 when every step passed, 1 otherwise; in a dry run the steps that need a GPU are expected
# to fail, so 0 when every other step passed and the benchmark wrote its results.
#
# Environment: PYTHON (default python3), FFF_CHECK_EXAMPLES (default 30), FFF_CHECK_SEED (default 1),
# GPU_CHECK_RESULTS_DIR (default benchmarks/results), GPU_CHECK_COPY_TO (a folder that also receives
# the results and logs; default $OUT when set), GPU_CHECK_DRY_RUN=1 (no GPU needed: runs the
# benchmark with --dry-run; the GPU steps fail and are recorded, which is what a dry run checks).

set -u
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PYTHON=${PYTHON:-python3}
EXAMPLES=${FFF_CHECK_EXAMPLES:-30}
SEED=${FFF_CHECK_SEED:-1}
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
RESULTS_DIR=${GPU_CHECK_RESULTS_DIR:-"$ROOT/benchmarks/results"}
DRY_RUN=${GPU_CHECK_DRY_RUN:-0}
LOG_DIR="$RESULTS_DIR/gpu_check_$STAMP"
RESULTS="$RESULTS_DIR/gpu_$STAMP.json"
COPY_TO=${GPU_CHECK_COPY_TO:-${OUT:-}}
export PYTHONUNBUFFERED=1
mkdir -p "$LOG_DIR"
RESULTS_DIR=$(cd "$RESULTS_DIR" && pwd)  # absolute: the steps run from another folder
LOG_DIR="$RESULTS_DIR/gpu_check_$STAMP"
RESULTS="$RESULTS_DIR/gpu_$STAMP.json"

STEPS=()
FAILED=0

# run_step NAME SECONDS COMMAND...: runs with a time limit, logs to $LOG_DIR/NAME.log, records the exit code.
run_step() {
    local name=$1 limit=$2
    shift 2
    local log="$LOG_DIR/$name.log"
    echo "=== $name (limit ${limit}s): $*"
    timeout --kill-after=5 "$limit" "$@" >"$log" 2>&1
    local code=$?
    tail -n 25 "$log"
    echo "=== $name: exit $code"
    STEPS+=("--step" "$name=$code:$log")
    if [ "$code" -ne 0 ] && ! { [ "$DRY_RUN" = 1 ] && [[ " $GPU_STEPS " == *" $name "* ]]; }; then
        FAILED=1
    fi
}
GPU_STEPS="check_cupy check_cupy_float16 check_torch_cuda torch_module"  # fail by design in a dry run

# 1. Use this checkout without installing anything: a folder of links maps pyproject.toml's package layout
# (fffcore.reference -> reference/, ...) onto the checkout, and every step runs from that folder. Running
# from the checkout's root instead would let ./fffcore shadow the layout (python -m puts the working
# directory first on sys.path), and pip would need the network or a recent setuptools.
SHIM=$(mktemp -d)
mkdir -p "$SHIM/fffcore"
for entry in "$ROOT"/fffcore/*; do ln -s "$entry" "$SHIM/fffcore/"; done
for package in reference backends conformance benchmarks; do ln -s "$ROOT/$package" "$SHIM/fffcore/$package"; done
ln -s "$ROOT/benchmarks" "$SHIM/benchmarks"  # the studies, run as python -m benchmarks.studies.NAME from the root
export PYTHONPATH="$SHIM${PYTHONPATH:+:$PYTHONPATH}"
cd "$SHIM"
if ! timeout 60 "$PYTHON" -c "import fffcore.cli, benchmarks.studies.gpu_bench" >"$LOG_DIR/import.log" 2>&1; then
    echo "=== cannot import fffcore from $ROOT through $SHIM with $PYTHON; nothing else was run:"
    cat "$LOG_DIR/import.log"
    printf '{"schema": 1, "mode": "gpu", "errors": ["fffcore could not be imported; see %s"]}\n' \
        "$LOG_DIR/import.log" >"$RESULTS"
    exit 1
fi
echo "=== using this checkout through $SHIM (nothing installed)"
FFF=("$PYTHON" -m fffcore.cli)

if command -v nvidia-smi >/dev/null; then
    nvidia-smi >"$LOG_DIR/nvidia-smi.log" 2>&1
    head -n 15 "$LOG_DIR/nvidia-smi.log"
else
    echo "nvidia-smi not found" | tee "$LOG_DIR/nvidia-smi.log"
fi

# 2-5. Listing and conformance.
run_step backends 20 "${FFF[@]}" backends
run_step check_cupy 120 "${FFF[@]}" check cupy --device cuda --max-examples "$EXAMPLES" --seed "$SEED"
run_step check_cupy_float16 70 env FFFCORE_CUPY_FLOAT16=1 "${FFF[@]}" check cupy --device cuda --dtype float16 \
    --max-examples "$EXAMPLES" --seed "$SEED"
run_step check_torch_cuda 80 "${FFF[@]}" check torch --device cuda --max-examples "$EXAMPLES" --seed "$SEED"

# 6. The test suite's CUDA halves (zero-copy bridging of CUDA tensors, the torch backend, the custom
#    operators and training on CUDA), and FFFInference on CUDA tensors against cuBLAS dense layers.
run_step cuda_tests 180 "$PYTHON" -m pytest "$ROOT/tests/core/test_bridging.py" "$ROOT/tests/torch/test_torch_ops.py" \
    "$ROOT/tests/backends/test_torch_backend.py" "$ROOT/tests/torch/test_training.py" -q -rs -p no:cacheprovider
MODULE_RESULTS="$RESULTS_DIR/gpu_torch_module_$STAMP.json"
run_step torch_module 150 "$PYTHON" -m benchmarks.studies.torch_module --device cuda --json "$MODULE_RESULTS"

# 7. The benchmark; it records the steps above in its results file.
BENCH_OPTIONS=()
[ "$DRY_RUN" = 1 ] && BENCH_OPTIONS+=("--dry-run")
echo "=== benchmark (limit 200s)"
timeout --kill-after=5 200 "$PYTHON" -m benchmarks.studies.gpu_bench --out "$RESULTS" --plot "${RESULTS%.json}.png" \
    "${BENCH_OPTIONS[@]}" \
    "${STEPS[@]}" 2>&1 | tee "$LOG_DIR/benchmark.log"
code=${PIPESTATUS[0]}
echo "=== benchmark: exit $code"
[ "$code" -eq 0 ] || FAILED=1
if [ ! -s "$RESULTS" ]; then
    # The benchmark died before writing anything: leave a results file that says so.
    printf '{"schema": 1, "mode": "gpu", "errors": ["benchmark exited %s before writing results; see %s"]}\n' \
        "$code" "$LOG_DIR/benchmark.log" >"$RESULTS"
fi

if [ -n "$COPY_TO" ]; then
    mkdir -p "$COPY_TO" && cp "$RESULTS" "$COPY_TO/" && { [ ! -s "$MODULE_RESULTS" ] || cp "$MODULE_RESULTS" "$COPY_TO/"; } \
        && { [ ! -s "${RESULTS%.json}.png" ] || cp "${RESULTS%.json}.png" "$COPY_TO/"; } \
        && tar -czf "$COPY_TO/gpu_check_logs_$STAMP.tar.gz" -C "$RESULTS_DIR" "gpu_check_$STAMP"
fi
echo "results: $RESULTS; logs: $LOG_DIR"
exit "$FAILED"
