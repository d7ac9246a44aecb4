"""train.epochs=0 with train.pretrained: predict and evaluate with those weights, without training."""

import json
import os

import numpy as np
import pytest
import tifffile

from conftest import run_here

TINY = ["data.crop_shape=[32,32]", "model.depth=2", "model.filters=4",
        "model.dropout=0.0", "inference.overlays=0", "train.steps_per_epoch=2"]


def run_template(data, job, rid, *options):
    args = [a for kv in TINY + list(options) for a in ("--set", kv)]
    return run_here("templates/template.py", data, str(job), "--id", "t", "--rid", str(rid), "--gpu", "cpu", *args)


def test_epochs_0_without_pretrained_is_one_error_line_nothing_written(dataset_2d, tmp_path):
    result = run_template(dataset_2d, tmp_path, 0, "train.epochs=0")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: train.epochs=0") and "train.pretrained" in lines[-1], lines
    assert os.listdir(tmp_path) == []


def test_epochs_0_predicts_with_the_pretrained_weights(dataset_2d, tmp_path):
    first = run_template(dataset_2d, tmp_path, 0, "train.epochs=1")
    assert first.returncode == 0, first.stderr[-3000:]
    again = run_template(dataset_2d, tmp_path, 1, "train.epochs=0", "train.pretrained=t_0")
    assert again.returncode == 0, again.stderr[-3000:]
    run0, run1 = tmp_path / "t_0", tmp_path / "t_1"
    metrics = json.loads((run1 / "metrics.json").read_text())
    assert metrics["training"]["epochs"] == 0
    assert not (run1 / "history.csv").exists() or len((run1 / "history.csv").read_text().splitlines()) <= 1
    # The same weights predict the same test set: the same probabilities and metrics as the pretrained run.
    for p0 in sorted((run0 / "predictions" / "tiled" / "prob").iterdir()):
        p1 = run1 / "predictions" / "tiled" / "prob" / p0.name
        assert np.abs(tifffile.imread(p0) - tifffile.imread(p1)).max() <= 1e-5
    before = json.loads((run0 / "metrics.json").read_text())["results"]["tiled"]["fg_iou"]
    assert metrics["results"]["tiled"]["fg_iou"] == pytest.approx(before, abs=1e-6)
    assert (run1 / "checkpoints" / "best.keras").is_file()  # a run folder predict.py can use


# Every entry script with train.pretrained (the Cheng and Xiao ones too): tests/test_entry_scripts.py.
