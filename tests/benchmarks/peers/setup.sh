#!/usr/bin/env bash
# The peers of the side-by-side runs, each in its own venv beside the project (never inside .venv):
#   .venv-biapy   BiaPy 3.7.1 with CPU torch      from env/requirements-biapy.txt
#   .venv-nnunet  nnU-Net v2 2.8.1 with CPU torch from env/requirements-nnunet.txt
# usage: tests/benchmarks/peers/setup.sh [biapy|nnunet|all]   (default all; run again to repair, it is idempotent)
# The interpreter is the one .venv was made from (its pyvenv.cfg), or $PYTHON. Checks at the end that each
# peer imports and that its command line starts (--help).
set -euo pipefail
repo=$(cd "$(dirname "$0")/../../.." && pwd)
here="$repo/tests/benchmarks/peers"
which=${1:-all}
py=${PYTHON:-}
if [ -z "$py" ] && [ -f "$repo/.venv/pyvenv.cfg" ]; then
  py=$(sed -n 's/^executable = //p' "$repo/.venv/pyvenv.cfg")
fi
py=${py:-python3.11}
"$py" -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' || { echo "need Python 3.11: $py" >&2; exit 1; }

make_venv() {  # NAME REQUIREMENTS
  local venv="$repo/.venv-$1"
  [ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$2"
}

if [ "$which" = all ] || [ "$which" = biapy ]; then
  make_venv biapy "$repo/env/requirements-biapy.txt"
  v="$repo/.venv-biapy"
  site=$("$v/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  # PyPI's torchvision is a CUDA build: let it import beside CPU torch (see the shim's docstring)
  cp "$here/torchvision_cpu_shim.py" "$site/"
  echo "import torchvision_cpu_shim" > "$site/torchvision_cpu_shim.pth"
  "$v/bin/python" -c 'import biapy, torch, torchvision; from biapy import BiaPy
print("biapy", biapy.__version__, "torch", torch.__version__, "cuda", torch.cuda.is_available(), "torchvision", torchvision.__version__)'
  "$v/bin/biapy" --help > /dev/null
  "$v/bin/biapy" --version
fi

if [ "$which" = all ] || [ "$which" = nnunet ]; then
  make_venv nnunet "$repo/env/requirements-nnunet.txt"
  v="$repo/.venv-nnunet"
  "$v/bin/python" -c 'import importlib.metadata as m, torch, nnunetv2
from nnunetv2.run.run_training import run_training_entry
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.training.nnUNetTrainer.variants.training_length.nnUNetTrainer_Xepochs import nnUNetTrainer_1epoch
print("nnunetv2", m.version("nnunetv2"), "torch", torch.__version__, "cuda", torch.cuda.is_available())'
  for cmd in nnUNetv2_plan_and_preprocess nnUNetv2_train nnUNetv2_predict; do
    "$v/bin/$cmd" -h > /dev/null
  done
  echo "nnUNetv2_plan_and_preprocess, nnUNetv2_train, nnUNetv2_predict: --help ok"
fi
