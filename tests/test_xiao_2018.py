"""Xiao et al. (2018): the network, its deeply supervised loss, pre- and post-processing, the entry script."""

import csv
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tifffile

from conftest import REPO, load_script, run_here
from lib.config import Config, ModelConfig
from lib.errors import UserError
from lib.model import saving
from lib.run import cli
from lib.train import loop
from xiao_2018 import pipeline
from xiao_2018.network import LOSS_WEIGHTS, OUTPUT_NAMES, build_model, level_widths
from xiao_2018.options import check_config

# one pytest worker runs this file (make test: --dist loadgroup): its fixtures that run templates run once
pytestmark = pytest.mark.xdist_group("test_xiao_2018")

SCRIPT = os.path.join(REPO, "xiao_2018", "xiao_template.py")


def load_config(template, args):
    """``(cfg, cfg.xiao)``: the configuration the entry script reads, with its ``xiao`` section."""
    cfg = cli.load_config(template, args, sections={pipeline.SECTION: pipeline.XiaoConfig})
    return cfg, cfg.xiao


@pytest.fixture(autouse=True)
def seed():
    keras.utils.set_random_seed(0)


def model_config(**options):
    values = dict(name="xiao2018", depth=3, filters=4, dropout=0.0, pool_size=[1, 2, 2], deep_supervision=True)
    values.update(options)
    return ModelConfig(**values)


def xiao_template_config():
    """The CONFIG block of the entry script, read without running it."""
    return load_script("xiao_2018/xiao_template.py").CONFIG


def bce(y, p):
    """Binary cross-entropy by hand, probabilities clipped in float32 as lib.model.losses does."""
    p = np.clip(np.asarray(p, np.float32), np.float32(1e-7), np.float32(1 - 1e-7)).astype(np.float64)
    return float(np.mean(-(y * np.log(p) + (1 - y) * np.log(1 - p))))


# --- the network -------------------------------------------------------------------------------------------


def test_widths_are_the_papers_for_32_filters():
    assert level_widths(32) == [32, 48, 64, 80]
    assert level_widths(4) == [4, 6, 8, 10]


def test_all_three_heads_have_the_input_spatial_shape():
    model = build_model(model_config(), (None, None, None, 1))
    assert model.name == "xiao2018" and model.output_names == list(OUTPUT_NAMES)
    x = np.random.default_rng(0).random((2, 4, 32, 32, 1)).astype("float32")
    outputs = model.predict_on_batch(x)
    assert len(outputs) == 3
    for out in outputs:
        out = np.asarray(out)
        assert out.shape == (2, 4, 32, 32, 1) and out.dtype == np.float32
        assert 0 <= out.min() and out.max() <= 1
    # another size on the same model: fully convolutional
    assert [tuple(o.shape) for o in model.predict_on_batch(x[:1, :, :16, :24])] == [(1, 4, 16, 24, 1)] * 3


def test_skips_are_added_and_z_is_never_pooled():
    model = build_model(model_config(), (4, 32, 32, 1))
    kinds = [type(layer).__name__ for layer in model.layers]
    assert "Concatenate" not in kinds
    pools = [layer for layer in model.layers if isinstance(layer, keras.layers.MaxPooling3D)]
    assert len(pools) == 3 and all(tuple(p.pool_size) == (1, 2, 2) for p in pools)
    widths = {layer.filters for layer in model.layers if isinstance(layer, keras.layers.Conv3D)
              and tuple(layer.kernel_size) == (3, 3, 3)}
    assert widths == set(level_widths(4))


def test_auxiliary_heads_come_from_the_quarter_and_half_resolution_decoder_stages():
    model = build_model(model_config(), (None, None, None, 1))
    x = np.random.default_rng(4).random((1, 4, 32, 32, 1)).astype("float32")
    _, aux_1, aux_2 = (np.asarray(p)[..., 0] for p in model.predict_on_batch(x))

    def blocky(a, k):  # constant over k x k in-plane blocks: upsampled from 1/k of the resolution
        return np.array_equal(a, np.repeat(np.repeat(a[:, :, ::k, ::k], k, axis=2), k, axis=3))

    assert blocky(aux_1, 4)
    assert blocky(aux_2, 2) and not blocky(aux_2, 4)


def test_without_deep_supervision_one_output():
    args = cli.parse_args([".", "d", "j", "--set", "model.deep_supervision=false",
                           "--set", "train.deep_supervision_weights=[]"])
    cfg, _ = load_config(xiao_template_config(), args)
    model = build_model(cfg.model, (None, None, None, 1))
    assert len(model.outputs) == 1 and model.output_names == ["output"]


def test_save_and_load_keras_file_without_custom_objects(tmp_path):
    model = build_model(model_config(), (None, None, None, 1))
    x = np.random.default_rng(1).random((1, 4, 16, 16, 1)).astype("float32")
    path = str(tmp_path / "xiao.keras")
    saving.save_model_atomic(model, path)
    loaded = keras.models.load_model(path)
    for a, b in zip(model.predict_on_batch(x), loaded.predict_on_batch(x)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


@pytest.mark.parametrize("option, value, message", [
    ("depth", 4, r"model.depth: the Xiao et al. network pools 3 times; expected 3, got 4"),
    ("filters", 1, r"model.filters: .* expected at least 2, got 1"),
    ("name", "unet", r"model.name: .* 'xiao2018', got 'unet'"),
    ("pool_size", [2, 2], r"model.pool_size: expected 3 sizes"),
    ("planar_levels", 2, r"model.planar_levels: the Xiao et al. network has its own blocks; expected 0, got 2"),
])
def test_bad_model_options_are_refused(option, value, message):
    cfg = Config()
    cfg.model = model_config(**{option: value})
    cfg.data.crop_shape = [4, 32, 32]
    with pytest.raises(UserError, match=message):
        check_config(cfg)


def test_input_not_divisible_by_the_pooling_is_refused():
    with pytest.raises(UserError, match=r"input size 20 on axis y is not divisible by 8"):
        build_model(model_config(), (4, 20, 32, 1))


def test_entry_script_defaults_are_the_papers_settings():
    args = cli.parse_args([".", "d", "j"])
    cfg, xcfg = load_config(xiao_template_config(), args)
    check_config(cfg)
    assert (cfg.train.optimizer, cfg.train.learning_rate, cfg.train.schedule) == ("adam", 1e-4, "none")
    assert (cfg.train.batch_size, cfg.train.loss) == (2, "bce")
    assert cfg.data.crop_shape == [20, 256, 256] and cfg.augment.flip_p > 0 and cfg.augment.rot90_p > 0
    assert (cfg.model.filters, cfg.model.pool_size, cfg.model.deep_supervision) == (32, [1, 2, 2], True)
    assert cfg.train.deep_supervision_weights == list(LOSS_WEIGHTS) == [1.0, 0.15, 0.3]
    assert (xcfg.equalize, xcfg.connect_3d) == ("hist", True)


# --- the loss ----------------------------------------------------------------------------------------------


def test_combined_loss_is_main_plus_015_aux1_plus_03_aux2_against_the_ground_truth():
    cfg = Config()
    cfg.train.loss = "bce"
    cfg.train.deep_supervision_weights = list(LOSS_WEIGHTS)
    cfg.train.check_model(model_config())
    model = loop.compile_model(build_model(model_config(), (None, None, None, 1)), cfg.train)
    rng = np.random.default_rng(2)
    x = rng.random((2, 4, 32, 32, 1)).astype("float32")
    y = (rng.random((2, 4, 32, 32, 1)) > 0.7).astype("float32")
    main, aux_1, aux_2 = (np.asarray(p) for p in model.predict_on_batch(x))
    by_hand = bce(y, main) + 0.15 * bce(y, aux_1) + 0.3 * bce(y, aux_2)
    logs = model.evaluate(x, (y, y, y), batch_size=2, return_dict=True, verbose=0)
    assert logs["loss"] == pytest.approx(by_hand, rel=1e-4)
    assert logs["output_loss"] == pytest.approx(bce(y, main), rel=1e-4)
    # against the main prediction instead of the ground truth (the original project's first version) it differs
    assert by_hand != pytest.approx(bce(y, main) + 0.15 * bce(main, aux_1) + 0.3 * bce(main, aux_2), rel=1e-3)


# --- pre- and post-processing ------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["hist", "adapthist"])
def test_equalisation_is_per_slice_and_in_unit_range(method):
    rng = np.random.default_rng(3)
    volume = np.stack([rng.normal(0, 1, (32, 32)) ** 2, 5 + 0.01 * rng.random((32, 32))])[..., None]
    out = pipeline.equalize(volume.astype(np.float32), method)
    assert out.shape == volume.shape and out.dtype == np.float32
    assert 0 <= out.min() and out.max() <= 1
    for z in range(2):  # each slice spreads over the range, whatever its own
        assert out[z].max() > 0.95 and out[z].std() > 0.2
    if method == "hist":  # equalised: close to uniform
        assert abs(np.median(out[0]) - 0.5) < 0.05
    assert pipeline.equalize(volume, "none") is volume


def test_3d_connection_joins_diagonal_neighbours_across_slices_and_drops_small_objects():
    binary = np.zeros((3, 8, 8), np.uint8)
    binary[0, 1:3, 1:3] = 1
    binary[1, 3, 3] = 1          # touches the first block only by a corner: one object with 26-connectivity
    binary[2, 6:8, 6:8] = 1      # a second object of 4 voxels
    binary[0, 7, 0] = 1          # a third of 1 voxel
    labels = pipeline.connect_3d(binary)
    assert labels.dtype == np.uint32 and labels.max() == 3 and labels[0, 1, 1] == labels[1, 3, 3]
    kept = pipeline.connect_3d(binary, min_voxels=4)
    assert kept.max() == 2 and set(np.unique(kept)) == {0, 1, 2}
    assert kept[0, 7, 0] == 0 and np.count_nonzero(kept) == np.count_nonzero(binary) - 1


def test_3d_connection_without_ground_truth_writes_labels_and_scores_nothing(tmp_path):
    prob = np.zeros((3, 8, 8), np.float32)
    prob[0, 1:3, 1:3] = prob[2, 6:8, 6:8] = 0.9
    os.makedirs(tmp_path / "tiled" / "prob")
    tifffile.imwrite(tmp_path / "tiled" / "prob" / "v.tif", prob)
    cfg, xcfg = Config(), pipeline.XiaoConfig()
    assert pipeline.evaluate_connected([(None, None, "v")], cfg, xcfg, str(tmp_path)) is None
    labels = tifffile.imread(tmp_path / pipeline.CONNECTED / "labels" / "v.tif")
    assert labels.max() == 2 and (tmp_path / pipeline.CONNECTED / "binary" / "v.tif").is_file()


# --- options -------------------------------------------------------------------------------------------------


def test_xiao_options_from_template_config_file_and_set(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"train": {"epochs": 7}, "xiao": {"equalize": "adapthist", "clip_limit": 0.02}}))
    template = {"model": {"name": "xiao2018"}, "xiao": {"equalize": "none", "min_object_voxels": 5}}
    args = cli.parse_args([".", "d", "j", "--config", str(path), "--set", "xiao.clip_limit=0.05",
                           "--set", "train.batch_size=3"])
    cfg, xcfg = load_config(template, args)
    assert (cfg.model.name, cfg.train.epochs, cfg.train.batch_size) == ("xiao2018", 7, 3)
    assert (xcfg.equalize, xcfg.clip_limit, xcfg.min_object_voxels, xcfg.connect_3d) == ("adapthist", 0.05, 5, True)


@pytest.mark.parametrize("override, message", [
    ("xiao.equalise=hist", r"--set xiao.equalise=hist: unknown option 'xiao.equalise' \(did you mean 'xiao.equalize'\?\)"),
    ("xiao.equalize=clahe", r"xiao.equalize: unknown value 'clahe'"),
    ("xiao.min_object_voxels=-1", r"xiao.min_object_voxels: expected a value in \[0, inf\), got -1"),
    ("xiao.connect_3d=maybe", r"xiao.connect_3d: expected true or false"),
])
def test_bad_xiao_options_name_the_option(override, message):
    args = cli.parse_args([".", "d", "j", "--set", override])
    with pytest.raises(UserError, match=message):
        load_config({"model": {"name": "xiao2018"}}, args)


# --- the entry script ----------------------------------------------------------------------------------------


@pytest.fixture(scope="session")  # once per worker, although other files run between its tests
def dataset_3d(tmp_path_factory):
    """One 16x64x64 training and one test volume, each a folder of sorted 2D slices."""
    from lib.data.synthetic import write_dataset

    return write_dataset(str(tmp_path_factory.mktemp("data") / "xiao3d"), shape=(16, 64, 64), seed=3, volume=True)


def test_entry_script_end_to_end(dataset_3d, tmp_path):
    job = tmp_path / "jobs"
    args = [sys.executable, SCRIPT, REPO, dataset_3d, str(job), "--id", "xiao", "--rid", "0", "--gpu", "cpu",
            "--set", "train.epochs=2", "--set", "data.crop_shape=[4,32,32]", "--set", "train.steps_per_epoch=2",
            "--set", "data.val_fraction=0.5", "--set", "model.filters=4", "--set", "inference.overlays=1",
            "--set", "xiao.equalize=adapthist", "--set", "xiao.min_object_voxels=3"]
    result = subprocess.run(args, capture_output=True, text=True, cwd=str(tmp_path), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    run = job / "xiao_0"
    for name in ("config.json", "environment.json", "history.csv", "model.txt", "checkpoints/best.keras",
                 "charts/loss.png", "charts/overlays.png", "metrics.json"):
        assert (run / name).is_file(), name
    saved = json.loads((run / "config.json").read_text())
    assert saved["xiao"]["equalize"] == "adapthist" and saved["train"]["deep_supervision_weights"] == [1.0, 0.15, 0.3]
    assert saved["train"]["learning_rate"] == 1e-4 and saved["train"]["batch_size"] == 2
    with open(run / "history.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2
    for row in rows:
        for prefix in ("", "val_"):
            parts = [float(row[f"{prefix}{name}_loss"]) for name in OUTPUT_NAMES]
            assert float(row[f"{prefix}loss"]) == pytest.approx(np.dot(LOSS_WEIGHTS, parts), rel=1e-4)
    results = json.loads((run / "metrics.json").read_text())["results"]
    assert set(results) == {"tiled", pipeline.CONNECTED}
    tiled = tifffile.imread(run / "predictions" / "tiled" / "binary" / "test.tif") > 0
    labels = tifffile.imread(run / "predictions" / pipeline.CONNECTED / "labels" / "test.tif")
    assert labels.shape == tiled.shape == (16, 64, 64)
    assert not (labels > 0)[~tiled].any() and results[pipeline.CONNECTED]["objects"] == labels.max()
    assert np.bincount(labels.ravel())[1:].min() >= 3
    with open(job / "summary.csv") as fh:
        summary = list(csv.DictReader(fh))
    assert summary[0]["id"] == "xiao" and float(summary[0]["tiled_fg_iou"]) == pytest.approx(
        results["tiled"]["fg_iou"], abs=1e-6)


def test_entry_script_refuses_bad_option_before_writing(dataset_3d, tmp_path):
    job = tmp_path / "jobs"
    result = run_here("xiao_2018/xiao_template.py", dataset_3d, str(job), "--gpu", "cpu", "--set", "xiao.equalize=clahe")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: xiao.equalize: unknown value 'clahe'")
    assert not job.exists()
