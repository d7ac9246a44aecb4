"""Training data in zarr / HDF5 volumes: the 3D and big-data templates read their crops from the stores."""

import json
import os
import sys

import h5py
import numpy as np
import pytest
import tifffile
import zarr

from conftest import REPO, load_script
from lib import config
from lib.data import scanning, sets, volumes
from lib.data.synthetic import make_sample
from lib.errors import UserError
from lib.run import datasets, training_data

SHAPE = (16, 64, 64)


def _write(path, array, kind):
    if kind == "zarr":
        store = zarr.create_array(store=path, shape=array.shape, chunks=(4, 32, 32), dtype=array.dtype)
        store[...] = array
    elif kind == "h5":
        with h5py.File(path, "w") as fh:
            fh.create_dataset("data", data=array, chunks=(4, 32, 32))
    else:
        tifffile.imwrite(path, array)


def _dataset(root, kind, test_masks=True):
    """One 16 x 64 x 64 volume per split, in stores of ``kind`` (or multi-page TIFFs: ``tif``)."""
    for split, seed in (("train", 0), ("test", 1)):
        image, mask = make_sample(SHAPE, np.random.default_rng(seed))
        for sub, array in (("x", image), ("y", mask.astype(np.uint8) * 255)):
            if sub == "y" and split == "test" and not test_masks:
                continue
            os.makedirs(os.path.join(root, split, sub), exist_ok=True)
            _write(os.path.join(root, split, sub, f"vol.{kind}"), array, kind)
    return str(root)


def _cfg(normalization="per_image", fg_sampling=0.0, crop=(8, 32, 32)):
    cfg = config.Config()
    cfg.data.crop_shape = list(crop)
    cfg.data.normalization, cfg.data.fg_sampling, cfg.data.val_fraction = normalization, fg_sampling, 0.5
    cfg.model.depth, cfg.model.dropout = 2, 0.0
    cfg.train.batch_size = 4
    return cfg.validate()


@pytest.fixture
def reads(monkeypatch):
    """The index of every read of a store's array, as the store sees it."""
    log = []
    original = volumes.Volume._array

    class Recorder:
        def __init__(self, array):
            self.array = array

        def __getitem__(self, index):
            log.append(tuple(b.stop - b.start for b in index))
            return self.array[index]

    monkeypatch.setattr(volumes.Volume, "_array", lambda self: Recorder(original(self)))
    return log


@pytest.mark.parametrize("kind", ["zarr", "h5"])
@pytest.mark.parametrize("normalization", ["per_image", "zscore"])
def test_3d_store_volumes_match_the_tiff_ones(tmp_path, kind, normalization):
    cfg = _cfg(normalization)
    train, test = datasets.load_3d(_dataset(tmp_path / kind, kind), cfg)
    train_mem, test_mem = datasets.load_3d(_dataset(tmp_path / "tif", "tif"), cfg)
    assert isinstance(train, sets.DiskImageSet) and isinstance(train_mem, sets.ImageSet)
    for disk, memory in ((train, train_mem), (test, test_mem)):
        image, mask, name = disk[0]
        assert name == "vol" and image.shape == SHAPE + (1,) and image.dtype == np.float32
        assert np.allclose(image, memory.images[0], atol=1e-5) and np.array_equal(mask, memory.masks[0])
    if normalization == "zscore":
        assert train.normalization == pytest.approx(train_mem.normalization)


@pytest.mark.parametrize("kind", ["zarr", "h5"])
def test_3d_subvolumes_read_only_their_window(tmp_path, kind, reads):
    cfg = _cfg(fg_sampling=0.5)
    cfg.train.workers = 1  # the batch asked for only: more workers also read the next batches ahead
    train, _ = datasets.load_3d(_dataset(tmp_path, kind), cfg)
    dataset, (x_val, y_val) = training_data.training_data_3d(train, cfg)
    # one volume, split along z: slices 0-7 train, 8-15 validate (the 2 x 2 grid of 8 x 32 x 32)
    assert dataset.images[0].shape == (8, 64, 64, 1) and x_val.shape == (4, 8, 32, 32, 1)
    index, mask = dataset._fg[0], np.asarray(dataset.masks[0])  # the foreground of the training part only
    assert len(index) == np.count_nonzero(mask)
    assert all(mask.flat[index[k]] for k in (0, len(index) // 2, len(index) - 1))
    reads.clear()
    x, y = dataset[0]
    assert x.shape == (4, 8, 32, 32, 1) and y.shape == (4, 8, 32, 32, 1) and set(np.unique(y)) <= {0, 1}
    # 4 crops and their masks, plus a 32-voxel block of the mask per foreground-centred crop, clipped to z 0-7
    assert 8 <= len(reads) <= 12 and reads.count((8, 32, 32)) >= 8
    assert all(np.prod(r) <= 8 * 32 * 32 for r in reads), reads


def test_2d_slices_of_h5_volumes_are_read_window_by_window(tmp_path, reads):
    data_dir = _dataset(tmp_path, "h5")
    cfg = _cfg(fg_sampling=0.5, crop=(32, 32))
    cfg.data.val_fraction = 0.25
    train, test = datasets.open_2d_streamed(data_dir, cfg)
    assert len(train) == len(test) == 16 and train.names[3] == "vol_0003" and train.images[0].shape == (64, 64, 1)
    image = tifffile.imread(os.path.join(_dataset(tmp_path / "tif", "tif"), "train", "x", "vol.tif"))
    assert np.allclose(train[5][0][..., 0], (image[5] - image[5].min()) / np.ptp(image[5]), atol=1e-6)
    dataset, _ = training_data.training_data_streamed(train, cfg)
    reads.clear()
    x, _ = dataset[0]
    assert x.shape == (4, 32, 32, 1)
    assert reads and all(r[0] == 1 and r[1] <= 64 and r[2] <= 64 for r in reads), reads
    assert reads.count((1, 32, 32)) >= 8


def test_scan_reads_a_large_volume_in_slabs(monkeypatch):
    assert scanning._slabs((16, 64, 64), 32) == [None]
    monkeypatch.setattr(scanning, "SLAB_VOXELS", 40 * 64 * 64)
    slabs = scanning._slabs((100, 64, 64), 32)
    assert [s[0] for s in slabs] == [(0, 32), (32, 64), (64, 96), (96, 100)] and slabs[0][1:] == ((0, 64), (0, 64))


def test_refusals_name_the_file(tmp_path):
    data_dir = _dataset(tmp_path, "zarr")
    for sub in ("x", "y"):
        tifffile.imwrite(tmp_path / "test" / sub / "vol2.tif", np.zeros(SHAPE, np.uint8))
    with pytest.raises(UserError, match=r"x/vol2.tif: DATA_DIR/train/x holds zarr / HDF5 volumes"):
        datasets.load_3d(data_dir, _cfg())
    for sub in ("x", "y"):
        os.remove(tmp_path / "test" / sub / "vol2.tif")
        with h5py.File(tmp_path / "train" / sub / "vol2.h5", "w") as fh:
            fh["a"] = np.zeros(SHAPE, np.uint8)
            if sub == "x":
                fh["b"] = np.zeros(SHAPE, np.uint8)
    with pytest.raises(UserError, match=r"vol2.h5: holds 2 datasets \(a, b\)"):
        datasets.load_3d(data_dir, _cfg())


def _main(name):
    """A template's ``main``, imported in this process (:func:`conftest.load_script`)."""
    return load_script(os.path.join("templates", name)).main


FAST = ["--gpu", "cpu", "--set", "train.epochs=2", "--set", "train.steps_per_epoch=2", "--set", "model.depth=2",
        "--set", "model.filters=4", "--set", "train.batch_size=2", "--set", "data.val_fraction=0.5"]


def test_3d_template_trains_on_zarr_volumes(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", [REPO])
    data_dir = _dataset(tmp_path / "data", "zarr", test_masks=False)
    _main("3D_template.py")([REPO, data_dir, str(tmp_path / "jobs"), "--id", "z", *FAST,
                             "--set", "data.crop_shape=[8,32,32]"])
    run = tmp_path / "jobs" / "z_0"
    assert tifffile.imread(run / "predictions" / "tiled" / "prob" / "vol.tif").shape == SHAPE
    assert json.loads((run / "metrics.json").read_text())["ground_truth"] is False


def test_big_data_template_trains_on_h5_volumes(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", [REPO])
    data_dir = _dataset(tmp_path / "data", "h5")
    _main("big_data_template.py")([REPO, data_dir, str(tmp_path / "jobs"), "--id", "h", *FAST,
                                   "--set", "data.crop_shape=[32,32]", "--set", "data.val_fraction=0.25"])
    run = tmp_path / "jobs" / "h_0"
    probs = sorted(os.listdir(run / "predictions" / "tiled" / "prob"))
    assert len(probs) == 16 and probs[0] == "vol_0000.tif"
    assert "fg_iou" in json.loads((run / "metrics.json").read_text())["results"]["tiled"]
