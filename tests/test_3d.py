"""The 3D path: volume loading, subvolumes with overlap, blending, test-time augmentation, the 3D template."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tifffile
from scipy import ndimage as ndi

from conftest import REPO
from lib import config
from lib.data import layout, sets, splits, tiling
from lib.errors import UserError
from lib.predict.inference import blend_window, predict_tiled, predict_tta, tta_transforms
from lib.run import datasets, training_data

# one pytest worker runs this file (make test: --dist loadgroup): its fixtures that run templates run once
pytestmark = pytest.mark.xdist_group("test_3d")

TEMPLATE = os.path.join(REPO, "templates", "3D_template.py")


@pytest.fixture(scope="session")  # once per worker, although other files run between its tests
def dataset_3d(tmp_path_factory):
    """One 16x64x64 training and one test volume, each a folder of sorted 2D slices."""
    from lib.data.synthetic import write_dataset

    return write_dataset(str(tmp_path_factory.mktemp("data") / "em3d"), shape=(16, 64, 64), seed=3, volume=True)


def small_config(**data_options):
    cfg = config.Config()
    cfg.data.crop_shape = [8, 32, 32]
    cfg.model.depth = 2
    cfg.model.dropout = 0.0
    for key, value in data_options.items():
        setattr(cfg.data, key, value)
    return cfg.validate()


# --------------------------------------------------------------------------- subvolumes

@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5, 0.75, 0.9, [0.5, 0.0, 0.25]])
@pytest.mark.parametrize("shape, tile", [((10, 33, 47, 1), (4, 16, 16)), ((3, 40, 21), (4, 16, 16)),
                                         ((37, 29), (8, 8))])
def test_extract_merge_reproduces_the_volume_for_any_overlap(shape, tile, overlap):
    if len(tile) == 2 and not np.isscalar(overlap):
        overlap = overlap[1:]
    volume = np.random.default_rng(0).random(shape).astype(np.float32)
    tiles, positions = tiling.extract_tiles(volume, tile, overlap)
    assert tiles.shape == (len(positions), *tile, *shape[len(tile):])
    merged = tiling.merge_tiles(tiles, positions, shape[:len(tile)])
    assert merged.dtype == np.float32 and np.array_equal(merged, volume)
    mask = (volume > 0.5).astype(np.uint8)
    tiles, positions = tiling.extract_tiles(mask, tile, overlap)
    assert np.array_equal(tiling.merge_tiles(tiles, positions, mask.shape[:len(tile)]), mask)


def test_overlap_per_axis_sets_the_step_of_each_axis():
    positions = tiling.tile_grid((16, 64, 64), (8, 32, 32), [0.0, 0.5, 0.75])
    assert sorted({p[0] for p in positions}) == [0, 8]
    assert sorted({p[1] for p in positions}) == [0, 16, 32]
    assert sorted({p[2] for p in positions}) == [0, 8, 16, 24, 32]
    assert tiling.tile_grid((16, 64, 64), (8, 32, 32), 0.5) == tiling.tile_grid((16, 64, 64), (8, 32, 32),
                                                                                [0.5, 0.5, 0.5])
    with pytest.raises(ValueError, match=r"^overlap=\[0.5, 0.5\]: expected one value or 3 values"):
        tiling.tile_grid((16, 64, 64), (8, 32, 32), [0.5, 0.5])


def test_overlap_option_accepts_one_value_or_a_list():
    cfg = config.apply_overrides(config.Config(), ["inference.overlap=[0.5,0.25,0]"]).validate()
    assert cfg.inference.overlap == [0.5, 0.25, 0.0]
    with pytest.raises(UserError, match=r"inference.overlap: expected a value in \[0.0, 1.0\), got 1.0"):
        config.apply_overrides(config.Config(), ["inference.overlap=[0.5,1.0,0.5]"]).validate()


# --------------------------------------------------------------------------- blending and inference

@pytest.mark.parametrize("kind", ["gaussian", "spline"])
@pytest.mark.parametrize("overlap", [0.25, 0.5, [0.5, 0.25, 0.75]])
def test_blending_weights_are_positive_and_normalise_to_one(kind, overlap):
    shape, tile = (20, 70, 50), (8, 32, 32)
    weights = blend_window(tile, kind)
    assert weights.shape == tile and weights.dtype == np.float32 and weights.min() > 0
    windows = [tuple(slice(c, c + t) for c, t in zip(p, tile)) for p in tiling.tile_grid(shape, tile, overlap)]
    total = np.zeros(shape, np.float64)
    for w in windows:
        total[w] += weights
    normalised = np.zeros(shape, np.float64)
    for w in windows:
        normalised[w] += weights / total[w]
    np.testing.assert_allclose(normalised, 1.0, atol=1e-6)


@pytest.mark.parametrize("kind", ["gaussian", "spline"])
@pytest.mark.parametrize("overlap", [0.0, 0.5, [0.5, 0.0, 0.75]])
def test_tiled_prediction_of_the_identity_returns_the_volume(kind, overlap):
    volume = np.random.default_rng(1).random((13, 45, 70, 1)).astype(np.float32)
    batches = []

    def identity(batch):
        batches.append(len(batch))
        return batch[..., 0]

    out = predict_tiled(identity, volume, (8, 16, 16), overlap, kind, batch_size=4)
    assert out.shape == volume.shape[:3] and out.dtype == np.float32
    np.testing.assert_allclose(out, volume[..., 0], atol=1e-6)
    assert max(batches) <= 4  # bounded memory: never more than one batch of tiles at a time


def _box_blur(batch):
    """Equivariant under every flip and rotation of a tile: a symmetric filter with symmetric borders."""
    return np.stack([ndi.uniform_filter(t[..., 0], size=3, mode="reflect") for t in batch])


def test_tta_of_an_equivariant_function_returns_its_output():
    tile = (8, 16, 16)
    transforms = tta_transforms(tile)
    assert len(transforms) == 16 and len(set(transforms)) == 16
    volume = np.random.default_rng(2).random((12, 40, 40, 1)).astype(np.float32)
    plain = predict_tiled(_box_blur, volume, tile, 0.5, batch_size=5)
    # 16 float32 accumulations per voxel: equal to rounding
    np.testing.assert_allclose(predict_tta(_box_blur, volume, tile, 0.5, batch_size=5), plain, atol=1e-5)


# --------------------------------------------------------------------------- volume loading

def write_slices(root, split, image, mask):
    for kind, volume in (("x", image), ("y", mask)):
        folder = os.path.join(root, split, kind)
        os.makedirs(folder, exist_ok=True)
        for z, plane in enumerate(volume):
            tifffile.imwrite(os.path.join(folder, f"s{z:03d}.tif"), plane)


def test_a_folder_of_slices_is_one_volume(dataset_3d):
    images, masks, names = layout.load_pairs_3d(layout.dataset_pairs(dataset_3d, "test"), "test")
    assert names == ["test"] and images[0].shape == (16, 64, 64, 1) and images[0].dtype == np.uint8
    assert masks[0].shape == (16, 64, 64) and set(np.unique(masks[0])) == {0, 1}
    first = tifffile.imread(os.path.join(dataset_3d, "test", "x", "slice_0000.tif"))
    assert np.array_equal(images[0][0, ..., 0], first)


def test_multipage_stacks_are_one_volume_each(tmp_path):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for kind in ("x", "y"):
            os.makedirs(tmp_path / split / kind)
        for name, depth in (("a", 5), ("b", 7)):
            image = rng.integers(0, 255, (depth, 20, 24), dtype=np.uint8)
            tifffile.imwrite(tmp_path / split / "x" / f"{name}.tif", image)
            tifffile.imwrite(tmp_path / split / "y" / f"{name}.tif", (image > 128).astype(np.uint8) * 255)
    images, masks, names = layout.load_pairs_3d(layout.dataset_pairs(str(tmp_path), "train"), "train")
    assert names == ["a", "b"]
    assert [v.shape for v in images] == [(5, 20, 24, 1), (7, 20, 24, 1)]
    assert np.array_equal(masks[1], (images[1][..., 0] > 128).astype(np.uint8))


def test_non_binary_mask_slice_is_named(tmp_path):
    image = np.zeros((4, 16, 16), np.uint8)
    mask = np.zeros((4, 16, 16), np.uint8)
    mask[2, :4, :4] = [[0, 1, 2, 3]] * 4
    write_slices(str(tmp_path), "train", image, mask)
    with pytest.raises(UserError, match=r"y/s002.tif: mask is not binary, found 4 values"):
        layout.load_pairs_3d(layout.dataset_pairs(str(tmp_path), "train"), "train")


def test_slices_of_different_sizes_are_refused(tmp_path):
    write_slices(str(tmp_path), "train", np.zeros((3, 16, 16), np.uint8), np.zeros((3, 16, 16), np.uint8))
    tifffile.imwrite(tmp_path / "train" / "x" / "s003.tif", np.zeros((16, 20), np.uint8))
    tifffile.imwrite(tmp_path / "train" / "y" / "s003.tif", np.zeros((16, 20), np.uint8))
    with pytest.raises(UserError, match=r"x/s003.tif: slice size 16x20x1 differs from .*s000.tif \(16x16x1\)"):
        layout.load_pairs_3d(layout.dataset_pairs(str(tmp_path), "train"), "train")


def test_a_folder_mixing_stacks_and_slices_is_refused(tmp_path):
    write_slices(str(tmp_path), "train", np.zeros((2, 16, 16), np.uint8), np.zeros((2, 16, 16), np.uint8))
    tifffile.imwrite(tmp_path / "train" / "x" / "s001.tif", np.zeros((5, 16, 16), np.uint8))
    with pytest.raises(UserError, match=r"s001.tif is a stack but .*s000.tif a single image"):
        layout.load_pairs_3d(layout.dataset_pairs(str(tmp_path), "train"), "train")


def test_load_3d_checks_the_configuration(dataset_3d):
    train, test = datasets.load_3d(dataset_3d, small_config())
    assert train.images[0].shape == (16, 64, 64, 1) and train.images[0].dtype == np.float32
    assert train.images[0].min() == 0 and train.images[0].max() == 1 and test.names == ["test"]
    with pytest.raises(UserError, match=r"the 3D template needs 3 sizes \(z, y, x\)"):
        datasets.load_3d(dataset_3d, small_config(crop_shape=[32, 32]))
    cfg = small_config()
    cfg.inference.overlap = [0.5, 0.5]
    with pytest.raises(UserError, match="inference.overlap"):
        datasets.load_3d(dataset_3d, cfg)
    with pytest.raises(UserError, match=r"size 10 on axis z is not divisible by 4"):
        datasets.load_3d(dataset_3d, small_config(crop_shape=[10, 32, 32]))


# --------------------------------------------------------------------------- training data

def test_split_depth_keeps_a_block_at_the_end():
    assert splits.split_depth(125, 0.1, 16) == 109  # 12.5 slices round to 12, raised to one crop depth
    assert splits.split_depth(100, 0.3, 16) == 70
    assert splits.split_depth(40, 0.0, 16) == 40
    with pytest.raises(ValueError, match=r"^fraction=0.5: .* 20 slices"):
        splits.split_depth(20, 0.5, 16)


def test_training_subvolumes_and_validation_of_one_volume(dataset_3d):
    cfg = small_config(val_fraction=0.5, replicate=6, fg_sampling=0.5)
    cfg.train.batch_size = 3
    train, _ = datasets.load_3d(dataset_3d, cfg)
    dataset, (x_val, y_val) = training_data.training_data_3d(train, cfg)
    # 4 subvolumes cover the 8 x 64 x 64 training part; 6 passes of them are 8 steps of 3, below the floor
    assert len(dataset) == training_data.MIN_AUTO_STEPS
    cfg.train.steps_per_epoch = 2
    assert len(training_data.training_data_3d(train, cfg)[0]) == 2
    x, y = dataset[0]
    assert x.shape == (3, 8, 32, 32, 1) and x.dtype == np.float32 and y.shape == (3, 8, 32, 32, 1)
    assert set(np.unique(y)) <= {0.0, 1.0}
    # the last 8 slices validate, as the non-overlapping grid of 8x32x32 subvolumes
    assert x_val.shape == (4, 8, 32, 32, 1)
    assert np.array_equal(x_val[0], train.images[0][8:, :32, :32])
    assert dataset.images[0].shape == (8, 64, 64, 1)


def test_several_volumes_are_split_as_whole_volumes(dataset_3d):
    cfg = small_config(val_fraction=0.5, val_split="last")
    train, test = datasets.load_3d(dataset_3d, cfg)
    both = sets.ImageSet(train.images + test.images, train.masks + test.masks, ["a", "b"])
    dataset, (x_val, _) = training_data.training_data_3d(both, cfg)
    assert len(dataset.images) == 1 and dataset.images[0] is train.images[0]
    assert len(x_val) == 2 * 2 * 2


# --------------------------------------------------------------------------- the template, end to end

def test_3d_template_end_to_end(dataset_3d, tmp_path):
    job = tmp_path / "jobs"
    args = [sys.executable, TEMPLATE, REPO, dataset_3d, str(job), "--id", "e3d", "--rid", "0", "--gpu", "cpu",
            "--set", "train.epochs=20", "--set", "data.crop_shape=[8,32,32]", "--set", "train.steps_per_epoch=8",
            "--set", "train.batch_size=4",
            "--set", "data.val_fraction=0.5", "--set", "model.depth=2", "--set", "model.filters=8",
            "--set", "model.dropout=0.0", "--set", "train.learning_rate=3e-3", "--set", "inference.overlays=1"]
    result = subprocess.run(args, capture_output=True, text=True, cwd=str(tmp_path), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    run = job / "e3d_0"
    for name in ("config.json", "environment.json", "history.csv", "model.txt", "checkpoints/best.keras",
                 "charts/loss.png", "charts/threshold_sweep.png", "charts/overlays.png"):
        assert (run / name).is_file(), name
    prob = tifffile.imread(run / "predictions" / "tiled" / "prob" / "test.tif")
    binary = tifffile.imread(run / "predictions" / "tiled" / "binary" / "test.tif")
    assert prob.shape == binary.shape == (16, 64, 64) and prob.dtype == np.float32
    assert 0 <= prob.min() and prob.max() <= 1 and set(np.unique(binary)) <= {0, 255}
    metrics = json.loads((run / "metrics.json").read_text())
    tiled = metrics["results"]["tiled"]
    # the merged volume's fg_iou, recomputed from the written prediction and the test masks
    gt = np.stack([tifffile.imread(os.path.join(dataset_3d, "test", "y", f)) > 0
                   for f in sorted(os.listdir(os.path.join(dataset_3d, "test", "y")))])
    pred = binary > 0
    assert tiled["fg_iou"] == pytest.approx((pred & gt).sum() / (pred | gt).sum())
    assert tiled["fg_iou"] > 0.2, tiled
    training = metrics["training"]
    assert training["inference_peak_rss_mb"] >= training["inference_start_rss_mb"] > 0
    assert "Peak memory (RSS): training" in result.stdout and "fg_iou" in result.stdout
    with open(job / "summary.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 1 and rows[0]["id"] == "e3d" and float(rows[0]["tiled_fg_iou"]) == pytest.approx(
        tiled["fg_iou"], abs=1e-6)


def test_3d_template_without_test_masks_predicts_and_says_so(dataset_3d, tmp_path):
    import shutil

    data_dir = tmp_path / "data"
    shutil.copytree(dataset_3d, data_dir)
    shutil.rmtree(data_dir / "test" / "y")
    job = tmp_path / "jobs"
    args = [sys.executable, TEMPLATE, REPO, str(data_dir), str(job), "--id", "nogt", "--gpu", "cpu",
            "--set", "train.epochs=2", "--set", "train.steps_per_epoch=2", "--set", "data.crop_shape=[8,32,32]",
            "--set", "train.batch_size=2", "--set", "data.val_fraction=0.5", "--set", "model.depth=2",
            "--set", "model.filters=4", "--set", "model.dropout=0.0"]
    result = subprocess.run(args, capture_output=True, text=True, cwd=str(tmp_path), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    run = job / "nogt_0"
    for variant in ("tiled", "z_filter"):
        assert tifffile.imread(run / "predictions" / variant / "prob" / "test.tif").shape == (16, 64, 64)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["ground_truth"] is False and metrics["results"] == {}
    assert "No ground truth given" in result.stdout
