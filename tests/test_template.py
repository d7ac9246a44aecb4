"""The 2D template end to end, as a user runs it from bash (its refusals of bad input: test_bad_input.py)."""

import csv
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tifffile

from conftest import REPO, run_here

# one pytest worker runs this file (make test: --dist loadgroup): its fixtures that run templates run once
pytestmark = pytest.mark.xdist_group("test_template")

TEMPLATE = os.path.join(REPO, "templates", "template.py")
FAST = ["--set", "train.epochs=8", "--set", "data.crop_shape=[64,64]", "--set", "data.replicate=4",
        "--set", "model.depth=2", "--set", "model.filters=8", "--set", "model.dropout=0.0",
        "--set", "train.batch_size=8", "--set", "train.learning_rate=3e-3", "--set", "train.steps_per_epoch=6"]


def run_template(*args, cwd=None):
    """The template run from bash in ``cwd``; without it, in this process (the same run, without a new Keras start)."""
    if cwd is None:
        return run_here("templates/template.py", *args)
    return subprocess.run([sys.executable, TEMPLATE, REPO, *args], capture_output=True, text=True,
                          cwd=cwd, timeout=600)


@pytest.fixture(scope="session")  # once per worker, although other files run between its tests
def finished_run(dataset_2d, tmp_path_factory):
    job = tmp_path_factory.mktemp("jobs")
    # run from an unrelated working directory: the template must not depend on it
    # the paper protocols, off by default, switched on to check them end to end
    result = run_template(dataset_2d, str(job), "--id", "e2e", "--rid", "0", "--gpu", "cpu", *FAST,
                          "--set", "inference.per_crop=true", "--set", "inference.merged=true",
                          cwd=str(tmp_path_factory.mktemp("elsewhere")))
    assert result.returncode == 0, result.stderr[-3000:]
    return job, result


def test_run_folder_has_every_output(finished_run):
    job, _ = finished_run
    run = job / "e2e_0"
    for name in ("config.json", "environment.json", "history.csv", "metrics.json", "model.txt",
                 "checkpoints/best.keras", "checkpoints/last.keras",
                 "charts/loss.png", "charts/iou.png", "charts/threshold_sweep.png"):
        assert (run / name).is_file(), name
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["epochs"] == 8 and config["data"]["crop_shape"] == [64, 64]
    with open(run / "history.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 8 and {"seconds", "loss", "val_loss", "iou", "val_iou"} <= set(rows[0])
    # where each epoch's time went, for tests/benchmarks/bench_time_budget.py
    for row in rows:
        parts = [float(row[k]) for k in ("step_seconds", "wait_seconds", "val_seconds", "save_seconds")]
        assert min(parts) >= 0 and sum(parts[:3]) <= float(row["seconds"]) + 1e-3
    for variant in ("merged", "tiled"):
        probs = sorted((run / "predictions" / variant / "prob").iterdir())
        binary = sorted((run / "predictions" / variant / "binary").iterdir())
        assert len(probs) == 2 and len(binary) == 2
        p = tifffile.imread(probs[0])
        b = tifffile.imread(binary[0])
        assert p.shape == (128, 128) and p.dtype == np.float32 and 0 <= p.min() and p.max() <= 1
        assert set(np.unique(b)) <= {0, 255}


def test_a_log_file_gets_one_plain_line_per_epoch(finished_run):
    """Written to a file (SLURM, ``> log``), training prints a line per epoch, not Keras' redrawn bar."""
    _, result = finished_run
    epochs = [line for line in result.stdout.splitlines() if re.match(r"^6/6 - \d+s - .*loss: ", line)]
    assert len(epochs) == 8, result.stdout[-3000:]
    assert "\x1b[" not in result.stdout and "\b" not in result.stdout and "\r" not in result.stdout


def test_metrics_beat_all_background(finished_run, dataset_2d):
    job, result = finished_run
    metrics = json.loads((job / "e2e_0" / "metrics.json").read_text())
    masks = [tifffile.imread(os.path.join(dataset_2d, "test", "y", f)) > 0
             for f in sorted(os.listdir(os.path.join(dataset_2d, "test", "y")))]
    fg = np.mean(np.concatenate([m.ravel() for m in masks]))
    background_mean_iou = (1 - fg) / 2  # all-background: fg IoU 0, bg IoU = 1 - fg share
    for variant in ("per_crop", "merged", "tiled"):
        values = metrics["results"][variant]
        assert set(values) >= {"fg_iou", "mean_iou", "dice", "precision", "recall"}
        assert values["fg_iou"] > 0.2, (variant, values)
        assert values["mean_iou"] > background_mean_iou + 0.1, (variant, values)
    assert "fg_iou" in result.stdout and "tiled" in result.stdout  # the table is printed
    info = metrics["training"]
    assert info["monitor"] == "val_iou" and 1 <= info["best_epoch"] <= 8 and info["val_crops"] == 4
    assert info["predict_megavoxels"] == pytest.approx(2 * 128 * 128 / 1e6, abs=1e-3)
    assert f"predicting with epoch {info['best_epoch']} (val_iou" in result.stdout
    assert "s per megavoxel)" in result.stdout
    with open(job / "summary.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 1 and rows[0]["id"] == "e2e" and float(rows[0]["tiled_fg_iou"]) > 0.2


def test_finished_run_is_not_overwritten(finished_run, dataset_2d):
    job, _ = finished_run
    before = (job / "e2e_0" / "metrics.json").read_text()
    result = run_template(dataset_2d, str(job), "--id", "e2e", "--rid", "0", "--gpu", "cpu")
    assert result.returncode == 2
    assert "holds a finished run; use --rid 1" in result.stderr and "--overwrite" in result.stderr
    assert (job / "e2e_0" / "metrics.json").read_text() == before


def test_time_limit_stops_training_and_still_evaluates(dataset_2d, tmp_path):
    result = run_template(dataset_2d, str(tmp_path), "--id", "limit", "--gpu", "cpu", *FAST,
                          "--set", "train.epochs=1000", "--set", "train.time_limit_minutes=0.05")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "limit_0" / "metrics.json").read_text())
    assert metrics["training"]["stopped_by"] == "time_limit"
    assert metrics["training"]["epochs"] < 1000
    assert "tiled" in metrics["results"]


def test_test_split_without_masks_is_predicted_not_scored(dataset_2d, tmp_path):
    """No DATA_DIR/test/y: the test images are predicted and written, and no metrics are made up."""
    from lib.evaluate.reports import NO_GROUND_TRUTH

    data = tmp_path / "data"
    shutil.copytree(dataset_2d, data)
    shutil.rmtree(data / "test" / "y")
    result = run_template(str(data), str(tmp_path / "jobs"), "--id", "nogt", "--gpu", "cpu", *FAST,
                          "--set", "train.epochs=2", "--set", "train.steps_per_epoch=2",
                          "--set", "inference.merged=true")
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "jobs" / "nogt_0"
    for variant in ("merged", "tiled", "z_filter"):
        for kind in ("prob", "binary"):
            assert sorted(p.name for p in (run / "predictions" / variant / kind).iterdir()) == [
                "img_0000.tif", "img_0001.tif"], (variant, kind)
    assert tifffile.imread(run / "predictions" / "tiled" / "prob" / "img_0000.tif").shape == (128, 128)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["ground_truth"] is False and metrics["results"] == {} and metrics["threshold_sweeps"] == {}
    assert metrics["training"]["predict_megavoxels"] == pytest.approx(2 * 128 * 128 / 1e6, abs=1e-3)
    assert NO_GROUND_TRUTH in result.stdout and "fg_iou" not in result.stdout
    assert not (run / "charts" / "overlays.png").exists()
