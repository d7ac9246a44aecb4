"""Options of the original DeepLearning_EM project (issue 16, item 4), through lib and the entry scripts.

AdaBound's own tests are in test_optimizers.py.
"""

import argparse
import json
import os
import re
import shutil

import numpy as np
import pytest

from conftest import blob_pair, run_here, write_pairs
from lib import config
from lib.data import intensity, tiling, weightmaps
from lib.errors import UserError
from lib.run import cli, datasets, training_data
from lib.run import record as run_record

FAST = ["train.epochs=1", "train.steps_per_epoch=2", "train.batch_size=2", "model.depth=2", "model.filters=4",
        "inference.overlays=0", "post.z_filter=false"]


# Volumes of 4 slices: thinner than the 3D template's 8-section z stem.
NO_STEM = ("model.stem_stride=1",)


def run_script(script, data_dir, job, *sets, run_id="o"):
    args = [a for kv in (*FAST, *sets) for a in ("--set", kv)]
    return run_here(script, str(data_dir), str(job), "--id", run_id, "--gpu", "cpu", *args)


def dataset(root, n_train=6, n_test=2, seed=0, shape=(64, 64)):
    """``root/{train,test}``: random uint8 images with square {0, 255} masks (conftest.blob_pair)."""
    pairs = [blob_pair(shape, seed=seed + i) for i in range(n_train + n_test)]
    write_pairs(str(root), "train", [x for x, _ in pairs[:n_train]], [y for _, y in pairs[:n_train]])
    write_pairs(str(root), "test", [x for x, _ in pairs[n_train:]], [y for _, y in pairs[n_train:]])
    return root


def add_folder(root, name, n, seed):
    """``root/name/{x,y}`` with ``n`` pairs."""
    pairs = [blob_pair(seed=seed + i) for i in range(n)]
    write_pairs(str(root), name, [x for x, _ in pairs], [y for _, y in pairs])


# --------------------------------------------------------------------------- augmentation

def test_median_size_list_draws_one_odd_size_per_sample():
    from lib.data.augment import Augmenter

    probabilities = {f: 0.0 for f in config.AugmentConfig.__dataclass_fields__ if f.endswith("_p")}
    cfg = config.AugmentConfig(**{**probabilities, "median_p": 1.0, "median_size": [3, 7]})
    image = np.random.default_rng(0).random((32, 32, 1)).astype(np.float32)
    mask = np.zeros((32, 32), np.uint8)
    from scipy import ndimage as ndi

    filtered = {k: ndi.median_filter(image, size=(k, k, 1), mode="reflect") for k in (3, 7)}
    seen = set()
    for seed in range(12):
        out, _ = Augmenter(cfg, 2)(image.copy(), mask, np.random.default_rng(seed))
        matches = [k for k, f in filtered.items() if np.allclose(out, f)]
        assert len(matches) == 1
        seen.add(matches[0])
    assert seen == {3, 7}


@pytest.mark.parametrize("value", ["[3,4]", "[]", "[0]"])
def test_median_size_list_must_hold_odd_sizes(value):
    with pytest.raises(UserError, match="augment.median_size: expected a size >= 1 or a non-empty list of odd"):
        config.apply_overrides(config.Config(), [f"augment.median_size={value}"]).validate()
    assert config.apply_overrides(config.Config(), ["augment.median_size=4"]).validate().augment.median_size == 4


def _load(template_config, *overrides):
    args = argparse.Namespace(config=None, overrides=list(overrides))
    return cli.load_config(template_config, args)


def test_preset_original_sets_free_rotation_and_other_values_win():
    cfg = _load({}, "augment.preset=original")
    assert (cfg.augment.rotation_p, cfg.augment.rotation_range, cfg.augment.flip_p, cfg.augment.rot90_p) == \
        (1.0, 180.0, 0.5, 0.0)
    # a template CONFIG listing the defaults does not undo the preset; a value of its own wins
    listed = {"augment": {"rotation_p": 0.0, "rot90_p": 0.5, "flip_p": 0.5}}
    assert _load(listed, "augment.preset=original").augment.rotation_p == 1.0
    cfg = _load({"augment": {"rotation_p": 0.3}}, "augment.preset=original")
    assert (cfg.augment.rotation_p, cfg.augment.rot90_p) == (0.3, 0.0)
    assert _load({"augment": {"preset": "original"}}, "augment.rotation_range=90").augment.rotation_range == 90
    assert _load({}).augment.rotation_p == 0.0
    with pytest.raises(UserError, match="augment.preset: unknown value 'orignal'"):
        _load({}, "augment.preset=orignal")


# --------------------------------------------------------------------------- normalisation

def test_fixed_normalisation_and_percentile_clipping():
    images = [np.arange(1000, dtype=np.uint16).reshape(10, 100), np.full((10, 100), 500, np.uint16)]
    stats = intensity.fit_normalization(images, "fixed", [1, 99], (100.0, 20.0))
    values = np.concatenate([x.ravel() for x in images]).astype(np.float64)
    assert stats["clip"] == pytest.approx(list(np.percentile(values, [1, 99])))
    assert (stats["mean"], stats["std"]) == (100.0, 20.0)
    out = intensity.normalize(images[0], "fixed", stats)
    low, high = np.floor(stats["clip"][0]), np.ceil(stats["clip"][1])
    assert out.min() == pytest.approx((low - 100) / 20) and out.max() == pytest.approx((high - 100) / 20)
    # zscore statistics are those of the clipped pixels
    z = intensity.fit_normalization(images, "zscore", [1, 99])
    clipped = np.concatenate([intensity.clip_intensities(x, z["clip"]).ravel() for x in images]).astype(np.float64)
    assert z["mean"] == pytest.approx(clipped.mean()) and z["std"] == pytest.approx(clipped.std())


@pytest.mark.parametrize("override, message", [
    ("data.clip_percentiles=[99,1]", "data.clip_percentiles: expected [low, high] with 0 <= low < high <= 100"),
    ("data.clip_percentiles=[1]", "data.clip_percentiles: expected [low, high]"),
    ("data.norm_std=0", "data.norm_std: expected a value in (0.0, inf)"),
    ("data.extra_train_shares=[0.5]", "data.extra_train_shares: expected one share per folder"),
])
def test_bad_values_are_refused(override, message):
    with pytest.raises(UserError, match=re.escape(message)):
        config.apply_overrides(config.Config(), [override]).validate()


def test_shares_of_an_epoch_per_folder():
    draws = tiling.share_draws([4, 4, 1, 1, 2], [0, 0, 1, 1, 2], [0.25, 0.25])
    totals = [draws[:2].sum(), draws[2:4].sum(), draws[4:].sum()]
    assert np.allclose(np.array(totals) / draws.sum(), [0.5, 0.25, 0.25], atol=0.01)
    assert draws[0] == draws[1] and draws[2] == draws[3]


# --------------------------------------------------------------------------- the network's picture

def test_model_png_beside_model_txt(tmp_path, capsys):
    import keras

    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(2, 3, name="conv")])
    run_record.record_model(model, str(tmp_path))
    assert (tmp_path / "model.txt").is_file()
    missing = run_record.model_picture_missing()
    if missing:
        assert not (tmp_path / "model.png").exists() and f"No model.png: {missing}" in capsys.readouterr().out
        pytest.skip(f"no model.png here: {missing}")
    with open(tmp_path / "model.png", "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- folders, checked before the run folder

def test_validation_folder_replaces_the_split_2d_and_streamed(tmp_path):
    root = dataset(tmp_path / "d")
    add_folder(root, "val", 2, seed=50)
    add_folder(root, "more", 3, seed=60)
    cfg = config.apply_overrides(config.Config(), ["data.crop_shape=[32,32]", "model.depth=2",
                                                   "data.extra_train_dirs=['more']"]).validate()
    for load, split in ((datasets.load_2d, training_data.training_data_2d),
                        (datasets.open_2d_streamed, training_data.training_data_streamed)):
        train, _ = load(str(root), cfg)
        assert len(train) == 9 and train.groups == [0] * 6 + [1] * 3 and len(train.validation) == 2
        dataset_, (x_val, y_val) = split(train, cfg)
        assert len(x_val) == 2 * 4  # the 32 x 32 grid of the two 64 x 64 images of DATA_DIR/val
        assert len(dataset_.images) == 9  # every training image trains: none held out
        assert training_data.validation_source(train, cfg) == "DATA_DIR/val (2 images)"


def test_validation_folder_of_a_3d_run(tmp_path):
    root = dataset(tmp_path / "d", n_train=8, n_test=4)
    add_folder(root, "val", 4, seed=50)
    cfg = config.apply_overrides(config.Config(), ["data.crop_shape=[4,32,32]", "model.depth=2"]).validate()
    train, _ = datasets.load_3d(str(root), cfg)
    _, (x_val, _) = training_data.training_data_3d(train, cfg)
    assert train.validation.images[0].shape[:3] == (4, 64, 64) and len(x_val) == 4  # not the z split of train


def test_bad_extra_and_validation_folders_are_refused_before_the_run_folder(tmp_path):
    from test_bad_input import assert_refused

    root = dataset(tmp_path / "d", n_train=4, n_test=4)
    job = tmp_path / "jobs"
    for script in ("templates/template.py", "templates/big_data_template.py"):
        result = run_script(script, root, job, "data.crop_shape=[32,32]", "data.extra_train_dirs=['nowhere']")
        assert_refused(result, job, f"data.extra_train_dirs: {root / 'nowhere'}: folder not found")
    add_folder(root, "more", 3, seed=9)
    os.remove(root / "more" / "y" / "001.tif")
    result = run_script("templates/template.py", root, job, "data.crop_shape=[32,32]", "data.extra_train_dirs=['more']")
    assert_refused(result, job, f"{root / 'more' / 'x'} has 3 images but {root / 'more' / 'y'} has 2 masks")
    shutil.rmtree(root / "more")
    add_folder(root, "val", 2, seed=9)
    shutil.rmtree(root / "val" / "y")
    result = run_script("templates/3D_template.py", root, job, "data.crop_shape=[4,32,32]", *NO_STEM)
    assert_refused(result, job, f"{root / 'val' / 'y'}: folder not found")


# --------------------------------------------------------------------------- end to end, and back in predict.py

def _predict_matches_tiled(root, run_dir, tmp_path):
    from test_predict import assert_predict_matches_tiled

    assert_predict_matches_tiled(str(root), run_dir, tmp_path)


def test_template_with_every_new_option_and_predict_reuses_its_normalisation(tmp_path):
    root = dataset(tmp_path / "d")
    add_folder(root, "val", 2, seed=50)
    add_folder(root, "more", 2, seed=60)
    result = run_script("templates/template.py", root, tmp_path / "j", "data.crop_shape=[32,32]",
                        "train.optimizer=adabound", "train.final_lr=0.05", "data.extra_train_dirs=['more']",
                        "data.extra_train_shares=[0.4]", "data.normalization=fixed", "data.norm_mean=120",
                        "data.norm_std=60", "data.clip_percentiles=[1,99]", "augment.preset=original",
                        "augment.median_p=0.5", "augment.median_size=[3,5]", "inference.tile_shape=[64,64]")
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "j" / "o_0"
    assert "Validation set: DATA_DIR/val (2 images)" in result.stdout
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["training"]["validation"] == "DATA_DIR/val (2 images)"
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["augment"]["rotation_p"] == 1.0 and saved["train"]["optimizer"] == "adabound"
    record = json.loads((run_dir / "normalization.json").read_text())
    from lib.data import io

    train = [io.read_image(p) for folder in ("train", "more") for p in io.list_images(str(root / folder / "x"))]
    expected = intensity.fit_normalization(train, "fixed", [1, 99], (120, 60))
    assert record == {"method": "fixed", "mean": 120.0, "std": 60.0, "clip": expected["clip"],
                      "clip_percentiles": [1.0, 99.0]}
    _predict_matches_tiled(root, run_dir, tmp_path)


def test_big_data_template_weighted_bce_fixed_crops_clipping(tmp_path):
    root = dataset(tmp_path / "d")
    add_folder(root, "val", 2, seed=50)
    result = run_script("templates/big_data_template.py", root, tmp_path / "j", "data.crop_shape=[32,32]",
                        "train.loss=weighted_bce", "data.random_crops=false", "data.min_fg_fraction=0.05",
                        "data.clip_percentiles=[2,98]", "inference.tile_shape=[64,64]")
    assert result.returncode == 0, result.stderr[-3000:]
    # the squares of blob_pair lie in the top-left 32 x 32 crop of each 64 x 64 image: 6 of the 24 crops are kept
    assert "Training on 6 images (6 fixed crops read from disk)" in result.stdout
    run_dir = tmp_path / "j" / "o_0"
    record = json.loads((run_dir / "normalization.json").read_text())
    assert record["method"] == "per_image" and len(record["clip"]) == 2
    assert json.loads((run_dir / "metrics.json").read_text())["training"]["validation"] == "DATA_DIR/val (2 images)"
    _predict_matches_tiled(root, run_dir, tmp_path)


def test_streamed_weight_maps_are_those_of_each_crop(tmp_path):
    root = dataset(tmp_path / "d")
    cfg = config.apply_overrides(config.Config(), ["data.crop_shape=[32,32]", "model.depth=2", "augment.enabled=false",
                                                   "train.loss=weighted_bce", "data.random_crops=false"]).validate()
    train, _ = datasets.open_2d_streamed(str(root), cfg)
    dataset_, (_, y_val) = training_data.training_data_streamed(train, cfg)
    x, y = dataset_[0]
    assert y.shape[-1] == 2 and y_val.shape[-1] == 2
    fg = sum(f for f, _ in train.fg_counts) / sum(t for _, t in train.fg_counts)
    for mask, weight in zip(y[..., 0], y[..., 1]):
        np.testing.assert_allclose(weight, weightmaps.weight_map(mask, cfg.train.weight_w0, cfg.train.weight_sigma,
                                                                 fg_fraction=fg), rtol=1e-6)


def test_3d_template_with_validation_and_extra_folders(tmp_path):
    root = dataset(tmp_path / "d", n_train=8, n_test=4)
    add_folder(root, "val", 4, seed=50)
    add_folder(root, "more", 4, seed=60)
    result = run_script("templates/3D_template.py", root, tmp_path / "j", "data.crop_shape=[4,32,32]", *NO_STEM,
                        "data.extra_train_dirs=['more']", "data.clip_percentiles=[1,99]", "train.optimizer=adabound")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Training on 2 volumes" in result.stdout and "Validation set: DATA_DIR/val (1 volume)" in result.stdout
    record = json.loads((tmp_path / "j" / "o_0" / "normalization.json").read_text())
    assert len(record["clip"]) == 2
