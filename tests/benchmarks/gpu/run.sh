#!/usr/bin/env bash
# The GPU run: the 2D template on .gpu/lucchi_subset, trained for EMSEG_GPU_MINUTES (default 1.5) in float32 and
# in bfloat16 with the JAX backend, then the test slices predicted (tests/benchmarks/bench_precision.py): one JSON
# line per precision (train_crops_per_s, predict_voxels_per_s, fg_iou, device_peak_mb) and one of their ratios
# in $OUT/gpu_run.jsonl, the log in $OUT/log.txt, nvidia-smi in $OUT/nvidia-smi.txt. About 6 minutes on the
# lent H200 with the default budget. Make .gpu/ first with tests/benchmarks/gpu/prepare.sh; docs/devices.md, "A GPU run".
#
# Environment: OUT (results folder; default /tmp/emseg-gpu), EMSEG_GPU_MINUTES, EMSEG_GPU_DATA (default
# .gpu/lucchi_subset), EMSEG_GPU_SET (more --set options; default "train.batch_size=16 train.workers=4"),
# EMSEG_BENCH_PRECISION_GPU (--gpu, default 0), PYTHON (default python3), KERAS_BACKEND (default jax).
set -euo pipefail
cd "$(dirname "$0")/../../.."
OUT=${OUT:-/tmp/emseg-gpu}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
# Keras and its missing dependencies travel as wheels (no network there); a Python that has Keras uses its own.
if ! "$PY" -c "import keras" 2>/dev/null; then
    ls .gpu/whl/*.whl >/dev/null || { echo "error: no Keras here and no .gpu/whl; run tests/benchmarks/gpu/prepare.sh" >&2; exit 2; }
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/emseg-site .gpu/whl/*.whl
    export PYTHONPATH=/tmp/emseg-site${PYTHONPATH:+:$PYTHONPATH}
fi
(nvidia-smi || echo "no nvidia-smi") > "$OUT/nvidia-smi.txt" 2>&1
export KERAS_BACKEND=${KERAS_BACKEND:-jax} PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # the peak of device memory is then what the run used
export EMSEG_BENCH_PRECISION_MINUTES=${EMSEG_GPU_MINUTES:-1.5}
export EMSEG_BENCH_PRECISION_DATA=${EMSEG_GPU_DATA:-.gpu/lucchi_subset}
export EMSEG_BENCH_PRECISION_SET=${EMSEG_GPU_SET:-train.batch_size=16 train.workers=4}
export EMSEG_BENCH_PRECISION_GPU=${EMSEG_BENCH_PRECISION_GPU:-0}
export EMSEG_BENCH_PRECISION_OUT="$OUT/gpu_run.jsonl"
rm -f "$EMSEG_BENCH_PRECISION_OUT"
test -d "$EMSEG_BENCH_PRECISION_DATA/train/x" || { echo "error: $EMSEG_BENCH_PRECISION_DATA: no dataset; run tests/benchmarks/gpu/prepare.sh" >&2; exit 2; }
set -o pipefail
"$PY" tests/benchmarks/bench_precision.py 2>&1 | tee "$OUT/log.txt"
