#!/usr/bin/env bash
# The GPU check of the cupy backend, for a machine with an NVIDIA GPU (docs/cupy.md).
#
# Steps, each with its own time limit; a failing step is recorded and the next one runs:
#   1. make this checkout importable through a folder of links (nothing installed, nothing from the network)
#   2. fff backends                      (what is available, and why not)
#   3. correctness, several processes at once (they share the GPU; nothing is timed meanwhile):
#      - fff check cupy, fff check cupy --dtype float16 (the undeclared float16 variant, declared for
#        this step only through FFFCORE_CUPY_FLOAT16=1) and fff check torch --device cuda (the gradient
#        properties included), each by default and with --thorough, once per seed of GPU_CHECK_SEEDS;
#      - the test suite's CUDA tests (bridging, the custom operators, the torch backend, training).
#   4. the benchmark, alone on the GPU (benchmarks/studies/gpu_bench.py): cupy FFF (every kernel
#      variant) against torch dense (cuBLAS) at width 768, depth 11, batches 1/128/4096/16384/65536, in
#      float32 (also against TF32 dense), bfloat16 and float16; FFFInference at batches 1 and 128 from
#      torch tensors, eager, from a CUDA graph and under torch.compile; training steps at batch 16384;
#      into benchmarks/results/gpu_<stamp>.json, with a plot of time against batch, gpu_<stamp>.png.
# Total at most 7 minutes: the limits below add up to 6 min 30 s, with up to 30 s more for stopping
# steps that overrun and saving the results; the correctness phase stops starting jobs when its limit
# is near, and records the jobs it did not start as "not started" (exit code 200). The results and
# logs are copied to GPU_CHECK_COPY_TO whenever the script ends, even early.
# Exit status: 0 when every step passed, 1 otherwise; in a dry run the steps that need a GPU are expected
# to fail, so 0 when every other step passed and the benchmark wrote its results.
#
# Environment: PYTHON (default python3), FFF_CHECK_EXAMPLES (examples per property by default, 20),
# FFF_CHECK_THOROUGH_EXAMPLES (with --thorough, 10: its fixed cases come on top), GPU_CHECK_SEEDS
# (default "0 1 2 3 4 5 6 7 8 9"), GPU_CHECK_PARALLEL (processes at once; default the cores less two,
# at most 12), GPU_CHECK_RESULTS_DIR (default benchmarks/results), GPU_CHECK_COPY_TO (a folder that also
# receives the results and logs; default $OUT when set), GPU_CHECK_DRY_RUN=1 (no GPU needed: runs the
# benchmark with --dry-run; the GPU steps fail and are recorded, which is what a dry run checks),
# GPU_CHECK_CORRECTNESS_SECONDS (the correctness phase's limit, default 160) and GPU_CHECK_BENCH_OPTIONS
# (more options for the benchmark, e.g. "--dtypes float32 --no-training" for a shorter run).

set -u
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PYTHON=${PYTHON:-python3}
EXAMPLES=${FFF_CHECK_EXAMPLES:-20}
THOROUGH_EXAMPLES=${FFF_CHECK_THOROUGH_EXAMPLES:-10}
SEEDS=${GPU_CHECK_SEEDS:-"0 1 2 3 4 5 6 7 8 9"}
CORES=$(nproc 2>/dev/null || echo 2)
PARALLEL=${GPU_CHECK_PARALLEL:-$((CORES > 4 ? CORES - 2 : 2))}
[ "$PARALLEL" -gt 12 ] && PARALLEL=12
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

# copy_out: the results, plot and logs to $COPY_TO (when set), however the script ends.
copy_out() {
    [ -n "$COPY_TO" ] || return 0
    mkdir -p "$COPY_TO" && { [ ! -s "$RESULTS" ] || cp "$RESULTS" "$COPY_TO/"; } \
        && { [ ! -s "${RESULTS%.json}.png" ] || cp "${RESULTS%.json}.png" "$COPY_TO/"; } \
        && tar -czf "$COPY_TO/gpu_check_logs_$STAMP.tar.gz" -C "$RESULTS_DIR" "gpu_check_$STAMP"
}
trap copy_out EXIT

STEPS=()
FAILED=0
GPU_STEP_PREFIXES="check_cupy check_torch_cuda"  # fail by design in a dry run

# record_step NAME CODE LOG: adds the outcome to the results file's steps and to the exit status.
record_step() {
    local name=$1 code=$2 log=$3 prefix expected=0
    STEPS+=("--step" "$name=$code:$log")
    if [ "$DRY_RUN" = 1 ]; then
        for prefix in $GPU_STEP_PREFIXES; do [[ "$name" == "$prefix"* ]] && expected=1; done
    fi
    if [ "$code" -ne 0 ] && [ "$expected" = 0 ]; then
        FAILED=1
    fi
}

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
    record_step "$name" "$code" "$log"
}

# start_job NAME SECONDS COMMAND...: runs in the background, at most $PARALLEL at once, within the
# phase's deadline (a job that cannot start with 10 s left is recorded as not started, exit 200).
PHASE_JOBS=()
start_job() {
    local name=$1 limit=$2
    shift 2
    while [ "$(jobs -rp | wc -l)" -ge "$PARALLEL" ]; do wait -n 2>/dev/null || break; done
    local left=$((PHASE_DEADLINE - $(date +%s)))
    PHASE_JOBS+=("$name")
    if [ "$left" -lt 10 ]; then
        echo "not started: the phase's limit was reached" >"$LOG_DIR/$name.log"
        echo 200 >"$LOG_DIR/$name.code"
        return
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    (
        timeout --kill-after=5 "$limit" "$@" >"$LOG_DIR/$name.log" 2>&1
        echo $? >"$LOG_DIR/$name.code"
    ) &
}

# finish_jobs: waits for the phase's jobs, records each, prints a line each and the log of each failure.
finish_jobs() {
    wait
    local name code
    for name in "${PHASE_JOBS[@]}"; do
        code=$(cat "$LOG_DIR/$name.code" 2>/dev/null || echo 1)
        echo "=== $name: exit $code"
        [ "$code" -ne 0 ] && tail -n 15 "$LOG_DIR/$name.log"
        record_step "$name" "$code" "$LOG_DIR/$name.log"
    done
}

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
if ! timeout 20 "$PYTHON" -c "import fffcore.cli, benchmarks.studies.gpu_bench" >"$LOG_DIR/import.log" 2>&1; then
    echo "=== cannot import fffcore from $ROOT through $SHIM with $PYTHON; nothing else was run:"
    cat "$LOG_DIR/import.log"
    printf '{"schema": 2, "mode": "gpu", "errors": ["fffcore could not be imported; see %s"]}\n' \
        "$LOG_DIR/import.log" >"$RESULTS"
    exit 1
fi
echo "=== using this checkout through $SHIM (nothing installed)"
FFF=("$PYTHON" -m fffcore.cli)

if command -v nvidia-smi >/dev/null; then
    timeout 10 nvidia-smi >"$LOG_DIR/nvidia-smi.log" 2>&1
    head -n 15 "$LOG_DIR/nvidia-smi.log"
else
    echo "nvidia-smi not found" | tee "$LOG_DIR/nvidia-smi.log"
fi

# 2. Listing.
run_step backends 20 "${FFF[@]}" backends

# 3. Correctness, in parallel: the conformance suite (longest jobs first) and the CUDA tests.
PHASE_LIMIT=${GPU_CHECK_CORRECTNESS_SECONDS:-160}
PHASE_DEADLINE=$(($(date +%s) + PHASE_LIMIT))
echo "=== correctness (limit ${PHASE_LIMIT}s, $PARALLEL at once; seeds: $SEEDS)"
ONE_THREAD=(env OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 NUMBA_NUM_THREADS=1)
for seed in $SEEDS; do
    start_job "check_torch_cuda_thorough_seed$seed" 150 "${ONE_THREAD[@]}" "${FFF[@]}" check torch --device cuda \
        --thorough --max-examples "$THOROUGH_EXAMPLES" --seed "$seed"
    start_job "check_cupy_thorough_seed$seed" 150 "${ONE_THREAD[@]}" "${FFF[@]}" check cupy --device cuda \
        --thorough --max-examples "$THOROUGH_EXAMPLES" --seed "$seed"
done
start_job cuda_tests 150 "$PYTHON" -m pytest "$ROOT/tests/core/test_bridging.py" "$ROOT/tests/torch/test_torch_ops.py" \
    "$ROOT/tests/backends/test_torch_backend.py" "$ROOT/tests/torch/test_training.py" -q -rs -p no:cacheprovider
for seed in $SEEDS; do
    start_job "check_torch_cuda_seed$seed" 100 "${ONE_THREAD[@]}" "${FFF[@]}" check torch --device cuda \
        --max-examples "$EXAMPLES" --seed "$seed"
    start_job "check_cupy_seed$seed" 100 "${ONE_THREAD[@]}" "${FFF[@]}" check cupy --device cuda \
        --max-examples "$EXAMPLES" --seed "$seed"
    start_job "check_cupy_float16_seed$seed" 100 "${ONE_THREAD[@]}" env FFFCORE_CUPY_FLOAT16=1 "${FFF[@]}" check cupy \
        --device cuda --dtype float16 --max-examples "$EXAMPLES" --seed "$seed"
done
finish_jobs

# 4. The benchmark, alone; it records the steps above in its results file.
read -r -a BENCH_OPTIONS <<<"${GPU_CHECK_BENCH_OPTIONS:-}"
[ "$DRY_RUN" = 1 ] && BENCH_OPTIONS+=("--dry-run")
echo "=== benchmark (limit 180s)"
timeout --kill-after=5 180 "$PYTHON" -m benchmarks.studies.gpu_bench --out "$RESULTS" --plot "${RESULTS%.json}.png" \
    ${BENCH_OPTIONS[@]+"${BENCH_OPTIONS[@]}"} \
    "${STEPS[@]}" 2>&1 | tee "$LOG_DIR/benchmark.log"
code=${PIPESTATUS[0]}
echo "=== benchmark: exit $code"
[ "$code" -eq 0 ] || FAILED=1
if [ ! -s "$RESULTS" ]; then
    # The benchmark died before writing anything: leave a results file that says so.
    printf '{"schema": 2, "mode": "gpu", "errors": ["benchmark exited %s before writing results; see %s"]}\n' \
        "$code" "$LOG_DIR/benchmark.log" >"$RESULTS"
elif [ "$code" -eq 124 ] || [ "$code" -eq 137 ]; then
    # Stopped at its limit: what it measured is in the file (written after every case); say it stopped.
    timeout 20 "$PYTHON" - "$RESULTS" "$code" <<'ADD_ERROR' || true
import json, sys
path, code = sys.argv[1], sys.argv[2]
with open(path, encoding="utf-8") as file:
    report = json.load(file)
report.setdefault("errors", []).append(f"benchmark stopped at its time limit (exit {code}); later parts are missing")
with open(path, "w", encoding="utf-8") as file:
    json.dump(report, file, indent=2)
    file.write("\n")
ADD_ERROR
fi

echo "results: $RESULTS; logs: $LOG_DIR"
exit "$FAILED"
