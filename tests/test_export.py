"""Tests of lib.run.export: a run folder written as a BioImage Model Zoo package, validated and reproduced."""

import importlib.util
import json
import os
import subprocess
import sys
import zipfile

import keras
import numpy as np
import pytest
import tifffile

from conftest import REPO
from lib.config import Config, apply_overrides
from lib.model.networks import build_network
from lib.run import export, folders

# The SavedModel weights are converted by TensorFlow: a package made without it holds keras_v3 weights only.
HAS_TF = importlib.util.find_spec("tensorflow") is not None
WEIGHT_FORMATS = ("keras_v3", "tensorflow_saved_model_bundle") if HAS_TF else ("keras_v3",)


def make_run(root, ndim, normalization="per_image", dtype=np.uint8):
    """A run folder as a template leaves it (config.json, checkpoints/best.keras), and a test image file."""
    keras.utils.set_random_seed(0)
    cfg = Config()
    crop = [8, 32, 32] if ndim == 3 else [32, 32]
    apply_overrides(cfg, [f"data.crop_shape={crop}", "model.depth=2", "model.filters=4",
                          f"data.normalization={normalization}", "inference.threshold=0.4"])
    run = os.path.join(root, "job", "7_0")
    os.makedirs(os.path.join(run, "checkpoints"))
    with open(os.path.join(run, "config.json"), "w") as fh:
        json.dump(cfg.to_dict(), fh)
    if normalization == "zscore":
        with open(os.path.join(run, "normalization.json"), "w") as fh:
            json.dump({"method": "zscore", "mean": 100.0, "std": 40.0}, fh)
    model = build_network(cfg.model, (None,) * ndim + (1,))
    model.save(os.path.join(run, "checkpoints", "best.keras"))
    shape = (12, 40, 48) if ndim == 3 else (40, 48)
    image = np.random.default_rng(1).integers(0, 200, shape).astype(dtype)
    path = os.path.join(root, "test.tif")
    tifffile.imwrite(path, image)
    return run, path, image


def read_rdf(package):
    from bioimageio.spec import load_description

    descr = load_description(package, format_version="discover")
    assert descr.validation_summary.status in ("passed", "valid-format"), descr.validation_summary
    return descr


@pytest.mark.parametrize("ndim, normalization", [(2, "per_image"), (3, "zscore"), (2, "dtype_max")])
def test_package_validates_and_its_weights_reproduce_the_test_output(tmp_path, ndim, normalization):
    run, image_path, image = make_run(str(tmp_path), ndim, normalization)
    out = str(tmp_path / "model.zip")
    difference = export.export(export.parse_args([run, out, "--image", image_path, "--author", "A. Tester"]))
    assert difference <= export.TOLERANCE
    with zipfile.ZipFile(out) as archive:
        names = set(archive.namelist())
        assert {"rdf.yaml", "weights.keras", "test_input.npy", "test_output.npy", "cover.png", "README.md"} <= names
        assert ("tf_saved_model_bundle.zip" in names) == HAS_TF
        test_input = np.load(archive.open("test_input.npy"))
        test_output = np.load(archive.open("test_output.npy"))
        readme = archive.read("README.md").decode()
    tile = (8, 32, 32) if ndim == 3 else (32, 32)
    assert test_input.shape == (1,) + tile + (1,) and test_input.dtype == image.dtype
    assert test_output.shape == (1,) + tile + (1,) and test_output.dtype == np.float32
    assert 0.0 <= test_output.min() and test_output.max() <= 1.0
    key = tuple(slice((s - t) // 2, (s - t) // 2 + t) for s, t in zip(image.shape, tile))
    np.testing.assert_array_equal(test_input[0, ..., 0], image[key])  # the centred tile of the test image
    assert "probability > 0.4" in readme and "Ronneberger" in readme

    descr = read_rdf(out)
    assert descr.format_version.startswith("0.5")
    axes = [str(a.id) for a in descr.inputs[0].axes]
    assert axes == ["batch"] + list("zyx"[3 - ndim:]) + ["channel"]
    space = descr.inputs[0].axes[1:-1]
    assert [a.size.min for a in space] == list(tile) and [a.size.step for a in space] == [4] * ndim
    assert [a.halo for a in descr.outputs[0].axes[1:-1]] == [t // 4 for t in tile]  # overlap 0.5: a quarter
    kinds = [p.id for p in descr.inputs[0].preprocessing]
    expected = {"per_image": "scale_range", "zscore": "fixed_zero_mean_unit_variance", "dtype_max": "scale_linear"}
    assert expected[normalization] in kinds
    assert descr.config.emseg["threshold"] == 0.4
    assert descr.weights.keras_v3 is not None
    assert (descr.weights.tensorflow_saved_model_bundle is not None) == HAS_TF


def test_bioimageio_core_reproduces_the_test_output_with_each_weight_format(tmp_path, monkeypatch):
    import keras

    # bioimageio.core sets os.environ["KERAS_BACKEND"] (to torch when unset) as it loads a Keras model; keep
    # it this process's backend, and restored after the test, or later subprocesses of this worker start torch
    monkeypatch.setenv("KERAS_BACKEND", keras.backend.backend())
    from bioimageio.core import test_model

    run, image_path, _ = make_run(str(tmp_path), 2)
    out = str(tmp_path / "model.zip")
    export.export(export.parse_args([run, out, "--image", image_path]))
    monkeypatch.chdir(tmp_path)  # bioimageio.core unzips SavedModel weights into the working folder
    for weight_format in WEIGHT_FORMATS:
        summary = test_model(out, weight_format=weight_format)
        failed = [(d.name, [e.msg for e in d.errors]) for d in summary.details if d.status != "passed"]
        assert summary.status == "passed", failed
        assert any("Reproduce test outputs" in d.name for d in summary.details)


def run_export(*args):
    return subprocess.run([sys.executable, "-m", "lib.run.export", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("case, message", [
    ("missing", "not found"),
    ("not_a_run", "not a run folder (no config.json)"),
    ("untrained", "no trained model"),
    ("bad_name", "--name 'mito/v1': expected letters, digits"),
])
def test_bad_input_is_one_error_line_exit_2_and_nothing_written(tmp_path, case, message):
    run = tmp_path / "run"
    if case != "missing":
        run.mkdir()
    if case in ("untrained", "bad_name"):
        (run / "config.json").write_text("{}")
    if case == "bad_name":
        (run / "checkpoints").mkdir()
        (run / "checkpoints" / "best.keras").write_text("")
    out = tmp_path / "out.zip"
    result = run_export(str(run), str(out), *(["--name", "mito/v1"] if case == "bad_name" else []))
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and message in lines[0] and (case == "bad_name" or str(run) in lines[0])
    assert not out.exists()
    assert sorted(os.listdir(tmp_path)) == (["run"] if case != "missing" else [])


def test_a_package_is_a_pretrained_model(tmp_path):
    from lib.train import finetune

    run, image_path, _ = make_run(str(tmp_path), 2)
    out = str(tmp_path / "model.zip")
    export.export(export.parse_args([run, out, "--image", image_path]))
    path = folders.resolve_pretrained(out, str(tmp_path))
    cfg = Config()
    apply_overrides(cfg, ["model.depth=2", "model.filters=4"])
    keras.utils.set_random_seed(5)
    model = finetune.load_pretrained(build_network(cfg.model, (None, None, 1)), path)
    trained = keras.models.load_model(os.path.join(run, "checkpoints", "best.keras"), compile=False)
    for ours, theirs in zip(model.get_weights(), trained.get_weights()):
        np.testing.assert_array_equal(ours, theirs)
