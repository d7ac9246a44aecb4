"""tests/benchmarks/gpu/run.sh, the run made for a lent GPU machine, on this CPU with a tiny budget and dataset.

With KERAS_BACKEND=jax when JAX is installed (as on that machine), else the suite's backend, so that a change
that breaks the script shows here and not first on the GPU.
"""

import importlib.util
import json
import os
import subprocess
import sys

import keras

from conftest import REPO

TINY = ("data.crop_shape=[32,32] model.depth=2 model.filters=4 train.batch_size=4 train.steps_per_epoch=2 "
        "train.epochs=2 train.workers=1 post.z_filter=false inference.tile_shape=[64,64]")


def test_gpu_run_script_measures_both_precisions(tmp_path):
    from lib.data.synthetic import write_dataset

    data = write_dataset(str(tmp_path / "em"), n_train=5, n_test=2, shape=(64, 64), seed=4)
    env = dict(os.environ, OUT=str(tmp_path / "out"), PYTHON=sys.executable, EMSEG_GPU_DATA=data,
               EMSEG_GPU_MINUTES="0.02", EMSEG_GPU_SET=TINY, EMSEG_BENCH_PRECISION_GPU="cpu",
               EMSEG_BENCH_TMP=str(tmp_path))
    env["KERAS_BACKEND"] = "jax" if importlib.util.find_spec("jax") is not None else keras.backend.backend()
    result = subprocess.run(["bash", os.path.join(REPO, "tests", "benchmarks", "gpu", "run.sh")], env=env,
                            capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    lines = [json.loads(line) for line in open(tmp_path / "out" / "gpu_run.jsonl")]
    assert [line["benchmark"] for line in lines] == ["precision", "precision", "precision_ratio"]
    assert [line["precision"] for line in lines[:2]] == ["float32", "bfloat16"]
    for line in lines[:2]:
        assert line["backend"] == env["KERAS_BACKEND"]
        assert 0 <= line["fg_iou"] <= 1 and line["train_crops_per_s"] > 0 and line["predict_voxels_per_s"] > 0
        assert line["steps"] >= 1 and line["device_peak_mb"] is None  # no GPU here
    assert set(lines[2]["bfloat16_over_float32"]) == {"train_crops_per_s", "predict_voxels_per_s", "fg_iou"}
    assert (tmp_path / "out" / "log.txt").stat().st_size > 0 and (tmp_path / "out" / "nvidia-smi.txt").exists()
    assert not [p for p in os.listdir(tmp_path) if p.startswith("emseg_bench_precision_")]  # run folders removed
