#!/usr/bin/env bash
# Issue 18 on a GPU machine: the distributed tests and the full benchmark on
# however many GPUs it has, figures written to a results folder.
#
#     benchmarks/gpu/scale_out.sh [RESULTS_DIR]
#
# Default RESULTS_DIR: benchmarks/gpu/results/scale_out_<UTC time>. Writes
# there: gpus.txt (nvidia-smi), commit.txt, test_distribution_<backend>.txt
# (pytest of tests/test_distribution.py with every GPU as the distributed
# devices: JAX DataParallel, TensorFlow MirroredStrategy),
# test_multiprocess_<backend>.txt (tests/test_multiprocess.py, two processes
# with one GPU each, on 2 GPUs or more), scale_out_<backend>
# .json/.txt (benchmarks/scale_out.py: disk-cache memory at 20,000 and
# 200,000 samples; seconds per add-on epoch on 1 GPU against all of them),
# and full_<backend>.json/run_full.txt (benchmarks/run.py --full). Exits
# non-zero if no GPU is found or any step failed (the others still run).
# Python: $PYTHON, else .venv/bin/python, else python.
set -u
cd "$(dirname "$0")/../.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}
OUT=${1:-benchmarks/gpu/results/scale_out_$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export TF_CPP_MIN_LOG_LEVEL=2

NUM_GPUS=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
{ echo "gpus: $NUM_GPUS"; nvidia-smi 2>&1; } > "$OUT/gpus.txt"
git rev-parse HEAD > "$OUT/commit.txt" 2>/dev/null || true
echo "$NUM_GPUS GPU(s); results in $OUT"
if [ "$NUM_GPUS" -lt 1 ]; then
    echo "no GPU found (nvidia-smi -L): nothing run" >&2
    exit 1
fi
if [ $((64 % NUM_GPUS)) -ne 0 ]; then
    echo "the tests split batches of 64: $NUM_GPUS GPUs do not divide it" >&2
fi

status=0
step() {  # step NAME COMMAND...: runs, logs to $OUT/NAME.txt, keeps going
    local name=$1; shift
    echo "== $name"
    if "$@" > "$OUT/$name.txt" 2>&1; then
        tail -n 3 "$OUT/$name.txt"
    else
        echo "FAILED: $name (see $OUT/$name.txt)"; tail -n 20 "$OUT/$name.txt"
        status=1
    fi
}

for backend in jax tensorflow; do
    step "test_distribution_$backend" env KERAS_BACKEND=$backend \
        KERAS_TAC_DEVICE_KIND=gpu KERAS_TAC_NUM_DEVICES="$NUM_GPUS" \
        "$PY" -m pytest -x -q -p no:cacheprovider tests/test_distribution.py
    # Several processes, one GPU each (JAX; TensorFlow's multi-worker
    # strategy fails in Keras 3.15, and its test asserts that failure).
    if [ "$NUM_GPUS" -ge 2 ]; then
        step "test_multiprocess_$backend" env KERAS_BACKEND=$backend \
            KERAS_TAC_DEVICE_KIND=gpu \
            "$PY" -m pytest -x -q -p no:cacheprovider -m slow \
            tests/test_multiprocess.py
    fi
    step "scale_out_$backend" env KERAS_BACKEND=$backend \
        "$PY" -m benchmarks.scale_out --device-kind gpu --output-dir "$OUT"
done
step run_full "$PY" -m benchmarks.run --full --output-dir "$OUT"
echo "done (status $status): $OUT"
exit $status
