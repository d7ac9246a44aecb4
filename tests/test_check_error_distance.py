"""tests/benchmarks/check_error_distance.py: docs/benchmarks.md's isbi2012 errors by distance to the annotated edge."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import tifffile

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tests" / "benchmarks" / "check_error_distance.py"


def _write(folder, arrays):
    folder.mkdir(parents=True)
    for i, a in enumerate(arrays):
        tifffile.imwrite(folder / f"s{i:02d}.tif", a)


def test_errors_are_counted_by_distance_to_the_edge_and_runs_averaged(tmp_path):
    truth = np.zeros((32, 32), np.uint8)
    truth[:, 10:13] = 255  # a membrane three pixels wide
    _write(tmp_path / "data" / "test" / "y", [truth])
    thick = np.zeros((32, 32), np.float32)
    thick[:, 9:14] = 0.9  # one pixel too wide on each side: 64 false positives touching the edge
    thick[5, 25] = 0.9  # a false positive 13 pixels away
    missed = np.zeros((32, 32), np.float32)
    missed[:, 10:12] = 0.9  # one pixel too narrow: 32 false negatives, 1 pixel inside the edge
    runs = []
    for name, prob in (("a", thick), ("b", missed)):
        _write(tmp_path / name / "predictions" / "tiled" / "prob", [prob])
        runs.append(str(tmp_path / name))
    out = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "data"), *runs],
                         capture_output=True, text=True, check=True)
    result = json.loads(out.stdout)
    a, b = result["errors"][runs[0]], result["errors"][runs[1]]
    assert (a["fp 1"], a["fp 6+"], sum(a.values())) == (64, 1, 65)
    assert (b["fn 1"], sum(b.values())) == (32, 32)
    assert result["runs"] == {runs[0]: round(96 / (96 + 65), 4), runs[1]: round(64 / 96, 4)}
    # The mean of 0.9 and 0 is 0.45 (< 0.5) outside the narrow prediction: the average is the narrow one.
    assert result["ensemble"] == round(64 / 96, 4)


def test_a_prediction_off_the_annotation_scores_higher_moved_back(tmp_path):
    truth = np.zeros((32, 32), np.uint8)
    truth[:, 10:13] = 255
    _write(tmp_path / "data" / "test" / "y", [truth])
    prob = np.zeros((32, 32), np.float32)
    prob[:, 11:14] = 0.9  # the annotated membrane, one pixel to the right
    _write(tmp_path / "run" / "predictions" / "tiled" / "prob", [prob])
    out = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "data"), str(tmp_path / "run")],
                         capture_output=True, text=True, check=True)
    shifted = json.loads(out.stdout)["shifted"][str(tmp_path / "run")]
    # 30 inner rows: unmoved, 2 of 4 columns overlap; moved left it is the annotation; right, 1 of 5.
    assert shifted == {"none": 0.5, "left": 1.0, "right": 0.2, "up": 0.5, "down": 0.5}
    assert "ensemble" not in json.loads(out.stdout)


def test_a_run_without_the_test_probabilities_is_named(tmp_path):
    _write(tmp_path / "data" / "test" / "y", [np.zeros((8, 8), np.uint8)] * 2)
    _write(tmp_path / "run" / "predictions" / "tiled" / "prob", [np.zeros((8, 8), np.float32)])
    out = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "data"), str(tmp_path / "run")],
                         capture_output=True, text=True)
    assert out.returncode == 1
    assert "1 probability maps in predictions/tiled/prob, expected 2" in out.stderr
