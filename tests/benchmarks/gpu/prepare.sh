#!/usr/bin/env bash
# Make what the GPU run (tests/benchmarks/gpu/run.sh) carries to the lent machine, in the ignored folder .gpu/:
#   .gpu/whl/            Keras and the packages it needs that the machine's image lacks (namex, optree), and
#                        tensorboardX (training's event files; its pin from env/requirements-base.txt), as
#                        wheels for its Python 3.12; the machine has no network
#   .gpu/lucchi_subset/  the first EMSEG_GPU_TRAIN_SLICES (32) training and EMSEG_GPU_TEST_SLICES (8) test
#                        slices of lucchi_dev (768 x 1024 each), under the 64 MiB that travel with the checkout
# Usage, from the repository: tests/benchmarks/gpu/prepare.sh [LUCCHI_DEV]   (default ../shared/data/lucchi_dev)
set -euo pipefail
cd "$(dirname "$0")/../../.."
SRC=${1:-../shared/data/lucchi_dev}
PY=${PYTHON:-python3}
DEST=.gpu/lucchi_subset
test -d "$SRC/train/x" -a -d "$SRC/test/x" || { echo "error: $SRC: expected train/{x,y} and test/{x,y}" >&2; exit 2; }
rm -rf "$DEST"
for split in train test; do
    if [ "$split" = train ]; then n=${EMSEG_GPU_TRAIN_SLICES:-32}; else n=${EMSEG_GPU_TEST_SLICES:-8}; fi
    for kind in x y; do
        mkdir -p "$DEST/$split/$kind"
        ls "$SRC/$split/$kind" | sort | head -n "$n" | while read -r name; do cp "$SRC/$split/$kind/$name" "$DEST/$split/$kind/"; done
    done
done
mkdir -p .gpu/whl
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .gpu/whl keras==3.15.1 namex==0.1.0 optree==0.20.0 "$(grep -i '^tensorboardX==' env/requirements-base.txt)"
du -sh .gpu/whl "$DEST"
