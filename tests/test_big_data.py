"""The big-data template: window reads from files, header checks, streaming statistics, end to end."""

import csv
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import skimage.io
import tifffile

from conftest import REPO, blob_pair, load_script, write_pairs
from lib import config
from lib.data import io
from lib.data import layout as data_layout
from lib.errors import UserError
from lib.run import datasets, record, training_data

TEMPLATE = os.path.join(REPO, "templates", "big_data_template.py")
FAST = ["--set", "data.crop_shape=[64,64]", "--set", "data.replicate=4", "--set", "model.depth=2",
        "--set", "model.filters=8", "--set", "model.dropout=0.0", "--set", "train.batch_size=8",
        "--set", "train.learning_rate=3e-3", "--set", "train.steps_per_epoch=4"]


# --------------------------------------------------------------------------- reading windows

LAYOUTS = {
    "uncompressed": (np.uint8, (90, 70), {}),
    "big-endian uint16": (np.uint16, (90, 70), {"byteorder": ">"}),
    "zlib strips": (np.uint8, (90, 70), {"compression": "zlib", "rowsperstrip": 16}),
    "float32 strips": (np.float32, (90, 70), {"compression": "zlib", "rowsperstrip": 8}),
    "uint16 predictor": (np.uint16, (90, 70), {"compression": "zlib", "predictor": True, "rowsperstrip": 8}),
    "zlib tiles": (np.uint8, (90, 70), {"compression": "zlib", "tile": (32, 16)}),
    "rgb tiles": (np.uint8, (90, 70, 3), {"compression": "zlib", "tile": (16, 16)}),
    "multi-page stack": (np.uint8, (5, 90, 70), {"compression": "zlib", "rowsperstrip": 32}),
    "one-page stack": (np.uint8, (3, 90, 70), {}),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_file_slices_read_windows_as_the_whole_file_reads(tmp_path, layout):
    dtype, shape, options = LAYOUTS[layout]
    array = (np.random.default_rng(0).random(shape) * 250).astype(dtype)
    path = str(tmp_path / "a.tif")
    tifffile.imwrite(path, array, **options)
    whole = io.as_image_slices(io.read_image(path), path)
    slices = io.file_slices(path)
    assert len(slices) == len(whole)
    assert slices[0].by_page == (layout != "one-page stack")  # one page holding a stack: decoded whole
    for s, w in zip(slices, whole):
        assert s.shape == w.shape and s.dtype == w.dtype
        assert np.array_equal(s.read(((13, 77), (5, 70))), w[13:77, 5:70])
        assert np.array_equal(s.read(), w)


def test_png_slices_and_pixel_type_errors(tmp_path):
    image, _ = blob_pair()
    skimage.io.imsave(tmp_path / "a.png", image, check_contrast=False)
    (s,) = io.file_slices(str(tmp_path / "a.png"))
    assert s.shape == (64, 64, 1) and not s.by_page and np.array_equal(s.read(((3, 9), (0, 64)))[..., 0], image[3:9])
    (tmp_path / "bad.tif").write_bytes(b"not a tiff at all")
    with pytest.raises(UserError, match="bad.tif: cannot read image"):
        io.file_slices(str(tmp_path / "bad.tif"))
    tifffile.imwrite(tmp_path / "c.tif", np.zeros((8, 8), np.complex64))
    with pytest.raises(UserError, match="c.tif: unsupported pixel type complex64"):
        io.file_slices(str(tmp_path / "c.tif"))


def test_index_pairs_checks_headers(tmp_path):
    rng = np.random.default_rng(0)
    os.makedirs(tmp_path / "x")
    os.makedirs(tmp_path / "y")
    # minisblack: 4 pages; tifffile would otherwise store (4, H, W) as one planar RGBA page
    tifffile.imwrite(tmp_path / "x" / "s.tif", rng.integers(0, 255, (4, 40, 50), dtype=np.uint8),
                     photometric="minisblack")
    tifffile.imwrite(tmp_path / "y" / "s.tif", np.zeros((4, 40, 50), np.uint8), photometric="minisblack")
    pairs = [(str(tmp_path / "x" / "s.tif"), str(tmp_path / "y" / "s.tif"))]
    images, masks, names = data_layout.index_pairs_2d(pairs)
    assert names == ["s_0000", "s_0001", "s_0002", "s_0003"] and [m.index for m in masks] == [0, 1, 2, 3]
    tifffile.imwrite(tmp_path / "y" / "s.tif", np.zeros((3, 40, 50), np.uint8), photometric="minisblack")
    with pytest.raises(UserError, match="s.tif has 4 slices but its mask .* has 3"):
        data_layout.index_pairs_2d(pairs)
    tifffile.imwrite(tmp_path / "y" / "s.tif", np.zeros((4, 40, 49), np.uint8), photometric="minisblack")
    with pytest.raises(UserError, match="image size 40x50 differs from its mask"):
        data_layout.index_pairs_2d(pairs)


# --------------------------------------------------------------------------- opening a dataset for streaming

def _cfg(**data):
    cfg = config.Config()
    cfg.data.crop_shape = [32, 32]
    cfg.model.depth, cfg.model.dropout = 2, 0.0
    for key, value in data.items():
        setattr(cfg.data, key, value)
    return cfg.validate()


@pytest.mark.parametrize("normalization", ["per_image", "dtype_max", "zscore"])
def test_streamed_sets_match_the_in_memory_ones(dataset_2d, normalization):
    cfg = _cfg(normalization=normalization)
    train, test = datasets.open_2d_streamed(dataset_2d, cfg)
    train_mem, test_mem = datasets.load_2d(dataset_2d, cfg)
    assert len(train) == len(train_mem) and len(test) == len(test_mem) and train.channels == 1
    for streamed, in_memory in ((train, train_mem), (test, test_mem)):
        for i in range(len(in_memory)):
            image, mask, name = streamed[i]
            assert image.dtype == np.float32 and mask.dtype == np.uint8 and name == in_memory.names[i]
            assert np.allclose(image, in_memory.images[i], atol=1e-5) and np.array_equal(mask, in_memory.masks[i])
    assert train.foreground is None and test.foreground is None


def test_streamed_training_data(dataset_2d, tmp_path):
    cfg = _cfg(fg_sampling=0.9, max_val_crops=5, val_fraction=0.25)
    cfg.augment.samples = 3
    train, _ = datasets.open_2d_streamed(dataset_2d, cfg)
    assert len(train.foreground) == len(train) and len(train.foreground[0]) == np.asarray(train.masks[0]).sum()
    dataset, (x_val, y_val) = training_data.training_data_streamed(train, cfg)
    assert not os.listdir(tmp_path)  # the training data are made before the run folder, writing nothing
    record.record_training_data(train, dataset, cfg, str(tmp_path))
    # 2 of 8 images validate; 16 crops of 32 x 32 cover each 128 x 128 image: 96 crops, 24 steps of 4
    assert len(dataset.images) == 6 and len(dataset) == 24
    assert x_val.shape == (5, 32, 32, 1) and y_val.shape == (5, 32, 32, 1) and x_val.dtype == np.float32
    x, y = dataset[0]
    assert x.shape == (4, 32, 32, 1) and y.shape == (4, 32, 32, 1)
    assert sorted(os.listdir(tmp_path / "samples" / "augmentation")) == [f"sample_00{i}.png" for i in range(3)]
    assert len(os.listdir(tmp_path / "samples" / "crops")) == 3


def test_check_pictures_of_the_in_memory_template(dataset_2d, tmp_path):
    cfg = _cfg()
    cfg.augment.samples = 6
    train, _ = datasets.load_2d(dataset_2d, cfg)
    record.record_training_data(train, training_data.training_data_2d(train, cfg)[0], cfg, str(tmp_path))
    samples = sorted(os.listdir(tmp_path / "samples" / "augmentation"))
    assert samples == [f"sample_{i:03d}.png" for i in range(6)]
    picture = skimage.io.imread(tmp_path / "samples" / "augmentation" / samples[0])
    assert picture.shape[:2] == (32, 32)
    crops = sorted(os.listdir(tmp_path / "samples" / "crops"))
    assert crops == [f"img_{i:04d}.png" for i in range(record.CROP_CHECKS)]
    mosaic = skimage.io.imread(tmp_path / "samples" / "crops" / crops[0])[..., :3]
    assert mosaic.shape[:2] == (4 * 32 + 5 * 4, 4 * 32 + 5 * 4)  # 128 px: 4 x 4 crops, grid lines of 4 px
    assert (mosaic[:4] == 255).all() and (mosaic[:, 36:40] == 255).all()
    green = (mosaic[..., 1] == 255) & (mosaic[..., 0] == 0) & (mosaic[..., 2] == 0)
    assert green.any()  # the mask outline


@pytest.mark.parametrize("change, message", [
    ({"min_fg_fraction": 0.1}, "data.min_fg_fraction discards fixed crops"),
    ({"crop_shape": [16, 16, 16]}, "the 2D template needs 2 sizes"),
    ({"crop_shape": [256, 256]}, "is larger than the smallest image"),
])
def test_streamed_refusals(dataset_2d, change, message):
    with pytest.raises(UserError, match=message):
        datasets.open_2d_streamed(dataset_2d, _cfg(**change))


def test_float_images_refuse_dtype_max(tmp_path):
    pairs = [blob_pair(seed=i) for i in range(3)]
    images = [p[0].astype(np.float32) for p in pairs]
    for split in ("train", "test"):
        write_pairs(str(tmp_path), split, images, [p[1] for p in pairs])
    with pytest.raises(UserError, match="dtype_max needs integer images, got float32"):
        datasets.open_2d_streamed(str(tmp_path), _cfg(normalization="dtype_max"))


@pytest.fixture
def template_main(monkeypatch):
    """The template's ``main``, imported in this process (:func:`conftest.load_script`)."""
    monkeypatch.setattr(sys, "argv", [TEMPLATE, REPO])
    return load_script("templates/big_data_template.py").main


def test_bad_mask_is_reported_before_anything_is_written(tmp_path, template_main):
    pairs = [blob_pair(seed=i) for i in range(4)]
    masks = [p[1] for p in pairs]
    masks[2] = masks[2].copy()
    masks[2][:4, :4] = 7
    write_pairs(str(tmp_path / "data"), "train", [p[0] for p in pairs], masks)
    write_pairs(str(tmp_path / "data"), "test", [p[0] for p in pairs[:1]], masks[:1])
    job = tmp_path / "jobs"
    with pytest.raises(UserError, match=r"002.tif: mask is not binary, found 3 values \(0, 7, 255\)"):
        template_main([REPO, str(tmp_path / "data"), str(job), "--id", "bad", "--gpu", "cpu",
                       "--set", "data.crop_shape=[32,32]"])
    assert not (job / "bad_0").exists()


# --------------------------------------------------------------------------- end to end

def _nested_copy(src, dst):
    """The same dataset in the ``x/x``, ``y/y`` sub-folder layout (flow_from_directory style)."""
    for split in ("train", "test"):
        for kind in ("x", "y"):
            shutil.copytree(os.path.join(src, split, kind), os.path.join(dst, split, kind, kind))
    return dst


def _check_run(job, epochs):
    run = job / "big_0"
    for name in ("config.json", "environment.json", "history.csv", "metrics.json", "model.txt",
                 "checkpoints/best.keras", "charts/loss.png"):
        assert (run / name).is_file(), name
    probs = sorted((run / "predictions" / "tiled" / "prob").iterdir())
    assert [p.name for p in probs] == ["img_0000.tif", "img_0001.tif"]
    assert tifffile.imread(probs[0]).shape == (128, 128)
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"fg_iou", "mean_iou", "dice"} <= set(metrics["results"]["tiled"])
    assert metrics["training"]["epochs"] == epochs and metrics["training"]["train_peak_rss_mb"] > 0
    with open(job / "summary.csv") as fh:
        assert next(csv.DictReader(fh))["id"] == "big"
    return run, metrics


def test_template_end_to_end(dataset_2d, tmp_path):
    """As a user runs it: a subprocess, from an unrelated working directory."""
    job = tmp_path / "jobs"
    result = subprocess.run([sys.executable, TEMPLATE, REPO, dataset_2d, str(job), "--id", "big", "--gpu", "cpu",
                             # 12 steps per epoch: without batch norm (the default) 4 left the tiny network unlearnt
                             *FAST, "--set", "train.steps_per_epoch=12", "--set", "train.epochs=6",
                             "--set", "augment.samples=2",
                             "--set", "data.fg_sampling=0.5"],
                            capture_output=True, text=True, timeout=600, cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    run, metrics = _check_run(job, epochs=6)
    assert metrics["results"]["tiled"]["fg_iou"] > 0.2, metrics["results"]
    assert len(os.listdir(run / "samples" / "augmentation")) == 2
    assert len(os.listdir(run / "samples" / "crops")) == 2
    assert "Peak memory (RSS): training" in result.stdout and "fg_iou" in result.stdout


def test_template_reads_the_nested_layout(dataset_2d, tmp_path, template_main):
    data_dir = _nested_copy(dataset_2d, str(tmp_path / "nested"))
    assert os.path.isdir(os.path.join(data_dir, "train", "x", "x"))
    template_main([REPO, data_dir, str(tmp_path / "jobs"), "--id", "big", "--gpu", "cpu", *FAST,
                   "--set", "train.epochs=1"])
    _check_run(tmp_path / "jobs", epochs=1)


def test_test_split_without_masks_is_predicted_not_scored(dataset_2d, tmp_path, template_main, capsys):
    data_dir = tmp_path / "data"
    shutil.copytree(dataset_2d, data_dir)
    shutil.rmtree(data_dir / "test" / "y")
    train, test = datasets.open_2d_streamed(str(data_dir), _cfg())
    assert test.masks == [None, None] and test[0][1] is None and test[0][0].shape == (128, 128, 1)
    template_main([REPO, str(data_dir), str(tmp_path / "jobs"), "--id", "big", "--gpu", "cpu", *FAST,
                   "--set", "train.epochs=2", "--set", "train.steps_per_epoch=2"])
    run = tmp_path / "jobs" / "big_0"
    probs = sorted((run / "predictions" / "tiled" / "prob").iterdir())
    assert [p.name for p in probs] == ["img_0000.tif", "img_0001.tif"]
    assert tifffile.imread(probs[0]).shape == (128, 128)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["ground_truth"] is False and metrics["results"] == {}
    assert "No ground truth given" in capsys.readouterr().out
