"""bfloat16 against float32: the 2D template on lucchi_dev, trained for the same time in each precision.

For each precision (``train.precision``) a new process runs ``templates/template.py``
(in-process there, through :func:`lib.run.runner.run`) with ``train.time_limit_minutes``
set to the budget, then predicts the test images again with the run's best
checkpoint in that precision, timed alone. Each prints, and appends to the
output file, one JSON line:

- ``train_crops_per_s``: training crops per second inside the optimiser steps
  (``steps`` x ``train.batch_size`` / ``step_seconds`` of ``history.csv``), the
  first epoch left out when there are more (it compiles);
- ``predict_voxels_per_s``: tiled prediction of the test images in memory
  (``inference.*`` of the run, as its ``tiled`` variant), after one image to warm up;
- ``fg_iou``: the ``tiled`` variant on the test set (``metrics.json``);
- ``device_peak_mb``: peak memory of the accelerator (JAX or TensorFlow on a GPU;
  null on a CPU), ``train_peak_rss_mb``: peak memory of the process while training.

A last line compares them (``bfloat16 / float32`` of each measure). Environment:

- ``EMSEG_BENCH_PRECISION_MINUTES``: training budget per precision (default 5);
- ``EMSEG_BENCH_PRECISION_DATA``: dataset folder (default ``../shared/data/lucchi_dev``);
- ``EMSEG_BENCH_PRECISION_PRECISIONS``: comma-separated (default ``float32,bfloat16``);
- ``EMSEG_BENCH_PRECISION_GPU``: ``--gpu`` (default ``cpu``);
- ``EMSEG_BENCH_PRECISION_SET``: more ``--set`` options, space-separated (e.g.
  ``train.batch_size=16 model.filters=8``);
- ``EMSEG_BENCH_PRECISION_OUT``: the JSON lines file (default: printed only);
- ``EMSEG_BENCH_TMP``: where the run folders go (deleted after).

On this machine: ``EMSEG_BENCH_PRECISION_MINUTES=10 .venv/bin/python tests/benchmarks/bench_precision.py``
(an idle machine: the figures are speeds). ``tests/benchmarks/gpu/run.sh`` runs it on a GPU.
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATA = os.path.join(REPO, "..", "shared", "data", "lucchi_dev")


def settings():
    env = os.environ.get
    return {
        "minutes": float(env("EMSEG_BENCH_PRECISION_MINUTES", "5")),
        "data": os.path.abspath(env("EMSEG_BENCH_PRECISION_DATA", DATA)),
        "precisions": env("EMSEG_BENCH_PRECISION_PRECISIONS", "float32,bfloat16").split(","),
        "gpu": env("EMSEG_BENCH_PRECISION_GPU", "cpu"),
        "sets": env("EMSEG_BENCH_PRECISION_SET", "").split(),
        "out": env("EMSEG_BENCH_PRECISION_OUT"),
    }


def train_crops_per_s(rows, batch_size):
    """Crops per second inside the optimiser steps of history ``rows``, without the first epoch when there are more."""
    rows = rows[1:] if len(rows) > 1 else rows
    seconds = sum(r["step_seconds"] for r in rows)
    return sum(r["steps"] for r in rows) * batch_size / seconds if seconds else None


def predict_voxels_per_s(run_dir, data_dir, precision):
    """Voxels per second of the run's tiled prediction of the test images, after one image to warm up."""
    import numpy as np

    from lib import config as config_lib
    from lib.predict.blockwise import load_predictor
    from lib.predict.inference import predict_tiled
    from lib.run import datasets
    from lib.run.predicting import fitted_tiles

    cfg = config_lib.from_dict(config_lib.load_json(os.path.join(run_dir, "config.json")))
    _, test_set = datasets.load_2d(data_dir, cfg)
    _, predict = load_predictor(os.path.join(run_dir, "checkpoints", "best.keras"), precision)
    images = [np.asarray(image) for image in test_set.images]
    tile, overlap, batch = fitted_tiles(cfg, images[0].shape[:2])
    predict_tiled(predict, images[0], tile, overlap, cfg.inference.window, batch)
    start = time.perf_counter()
    for image in images:
        predict_tiled(predict, image, tile, overlap, cfg.inference.window, batch)
    return sum(image.shape[0] * image.shape[1] for image in images) / (time.perf_counter() - start)


def device_peak_mb():
    """Peak memory of the first accelerator in this process, MB; None on a CPU."""
    import keras

    if keras.backend.backend() == "jax":
        import jax

        device = jax.devices()[0]
        stats = device.memory_stats() if device.platform == "gpu" else None
        return round(stats["peak_bytes_in_use"] / 2**20, 1) if stats else None
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        if tf.config.list_logical_devices("GPU"):
            return round(tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20, 1)
    return None


def measure(precision, s, job_dir):
    """Train and predict in ``precision`` in this process; the JSON record."""
    spec = importlib.util.spec_from_file_location("template", os.path.join(REPO, "templates", "template.py"))
    template = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(template)
    argv = [REPO, s["data"], job_dir, "--id", precision, "--gpu", s["gpu"], "--set", f"train.precision={precision}",
            "--set", f"train.time_limit_minutes={s['minutes']}", "--set", "inference.overlays=0"]
    for option in s["sets"]:
        argv += ["--set", option]
    start = time.perf_counter()
    template.main(argv)
    wall = time.perf_counter() - start
    import keras

    from lib.train.loop import read_history

    run_dir = os.path.join(job_dir, f"{precision}_0")
    config = json.load(open(os.path.join(run_dir, "config.json")))
    metrics = json.load(open(os.path.join(run_dir, "metrics.json")))
    rows = read_history(os.path.join(run_dir, "history.csv"))
    speed = train_crops_per_s(rows, config["train"]["batch_size"])
    return {"benchmark": "precision", "precision": precision, "backend": keras.backend.backend(),
            "gpu": s["gpu"], "budget_minutes": s["minutes"], "data": os.path.basename(s["data"]),
            "batch_size": config["train"]["batch_size"], "crop_shape": config["data"]["crop_shape"],
            "epochs": len(rows), "steps": int(sum(r["steps"] for r in rows)),
            "train_crops_per_s": round(speed, 2) if speed else None,
            "predict_voxels_per_s": round(predict_voxels_per_s(run_dir, s["data"], precision)),
            "fg_iou": round(metrics["results"]["tiled"]["fg_iou"], 4),
            "device_peak_mb": device_peak_mb(), "train_peak_rss_mb": metrics["training"].get("train_peak_rss_mb"),
            "wall_seconds": round(wall, 1)}


def compare(records):
    """``bfloat16 / float32`` of each speed and of fg_iou, when both were measured."""
    by = {r["precision"]: r for r in records}
    if not {"float32", "bfloat16"} <= set(by):
        return None
    ratio = {k: round(by["bfloat16"][k] / by["float32"][k], 3) if by["bfloat16"][k] and by["float32"][k] else None
             for k in ("train_crops_per_s", "predict_voxels_per_s", "fg_iou")}
    return {"benchmark": "precision_ratio", "bfloat16_over_float32": ratio, "backend": by["float32"]["backend"],
            "budget_minutes": by["float32"]["budget_minutes"]}


def emit(record, out):
    line = json.dumps(record)
    print(line, flush=True)
    if out:
        with open(out, "a") as fh:
            fh.write(line + "\n")


def test_precision():
    s = settings()
    if not os.path.isdir(s["data"]):
        import pytest

        pytest.skip(f"{s['data']}: no dataset (EMSEG_BENCH_PRECISION_DATA)")
    root = tempfile.mkdtemp(prefix="emseg_bench_precision_", dir=os.environ.get("EMSEG_BENCH_TMP"))
    records = []
    try:
        for precision in s["precisions"]:
            # one process each: a fresh backend, and its own peak of device memory
            result = subprocess.run([sys.executable, __file__, "--one", precision, root],
                                    stdout=subprocess.PIPE, text=True)
            assert result.returncode == 0, f"{precision}: exit status {result.returncode}"
            records.append(json.loads(result.stdout.strip().splitlines()[-1]))
            emit(records[-1], s["out"])
    finally:
        shutil.rmtree(root, ignore_errors=True)
    ratio = compare(records)
    if ratio:
        emit(ratio, s["out"])
    for record in records:
        assert record["fg_iou"] >= 0 and record["train_crops_per_s"] and record["predict_voxels_per_s"] > 0
    return records


if __name__ == "__main__":
    sys.path.insert(0, REPO)
    if sys.argv[1:2] == ["--one"]:
        from lib.run import cli

        with cli.user_errors():
            record = measure(sys.argv[2], settings(), sys.argv[3])
        sys.stdout.flush()
        print(json.dumps(record), flush=True)
    else:
        test_precision()
