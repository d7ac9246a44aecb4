"""Tests for the synthetic EM dataset generator."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tifffile
from scipy import ndimage

from lib.data.synthetic import main, make_sample, write_dataset
from lib.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read_folder(folder):
    names = sorted(os.listdir(folder))
    return names, np.stack([tifffile.imread(os.path.join(folder, n)) for n in names])


@pytest.mark.parametrize("shape", [(96, 128), (16, 48, 64)])
def test_make_sample_shapes_and_dtypes(shape):
    image, mask = make_sample(shape, np.random.default_rng(0))
    assert image.shape == mask.shape == shape
    assert image.dtype == mask.dtype == np.uint8
    assert set(np.unique(mask)) == {0, 1}
    # Stretched to the full range, as the real datasets are.
    assert image.min() < 20 and image.max() > 235


@pytest.mark.parametrize("shape", [(128, 128), (256, 256), (16, 64, 64)])
def test_foreground_fraction_in_range(shape):
    for seed in range(3):
        _, mask = make_sample(shape, seed)
        assert 0.05 <= mask.mean() <= 0.15, (shape, seed, mask.mean())


def test_same_seed_same_sample_and_other_seed_differs():
    first = make_sample((64, 64), np.random.default_rng(7))
    again = make_sample((64, 64), 7)
    other = make_sample((64, 64), 8)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], other[0])


def test_n_objects_sets_the_object_count():
    _, empty = make_sample((128, 128), 0, n_objects=0)
    assert not empty.any()
    _, mask = make_sample((128, 128), 0, n_objects=3)
    assert ndimage.label(mask)[1] == 3


def test_volume_objects_continue_across_slices():
    _, mask = make_sample((32, 128, 128), 0)
    fg = mask.astype(bool)
    assert 0.05 <= fg.mean() <= 0.15
    kept = (fg[:-1] & fg[1:]).sum() / fg[:-1].sum()
    assert kept > 0.7


@pytest.mark.parametrize(
    "shape, n_objects",
    [((8, 64), None), ((64,), None), ((2, 2, 2, 2), None), ((64, 64.0), None), ((64, 64), -1)],
)
def test_make_sample_rejects_bad_arguments(shape, n_objects):
    with pytest.raises(UserError):
        make_sample(shape, 0, n_objects=n_objects)


def test_threshold_alone_does_not_solve_it_but_intensity_is_informative():
    for seed in range(3):
        image, mask = make_sample((256, 256), seed)
        fg = mask.astype(bool)
        best = 0.0
        for t in range(8, 256, 8):
            for guess in (image < t, image >= t):
                best = max(best, (guess & fg).sum() / (guess | fg).sum())
        assert best < 0.7, (seed, best)
        assert image[~fg].mean() - image[fg].mean() > 20


def test_write_dataset_layout_and_pairing(tmp_path):
    out = tmp_path / "data"
    assert write_dataset(out, n_train=3, n_test=2, shape=(64, 48), seed=1) == str(out)
    assert sorted(os.listdir(tmp_path)) == ["data"]
    assert sorted(os.listdir(out)) == ["test", "train"]
    for split, n in (("train", 3), ("test", 2)):
        assert sorted(os.listdir(out / split)) == ["x", "y"]
        x_names, images = _read_folder(out / split / "x")
        y_names, masks = _read_folder(out / split / "y")
        assert x_names == [f"img_{i:04d}.tif" for i in range(n)]
        assert y_names == [f"mask_{i:04d}.tif" for i in range(n)]
        assert images.shape == masks.shape == (n, 64, 48)
        assert images.dtype == masks.dtype == np.uint8
        assert set(np.unique(masks)) == {0, 255}
        # Each mask belongs to its image: mitochondria are the dark parts.
        for image, mask in zip(images, masks):
            assert image[mask == 255].mean() < image[mask == 0].mean()
        with tifffile.TiffFile(out / split / "x" / x_names[0]) as tif:
            assert tif.pages[0].compression == tifffile.COMPRESSION.ADOBE_DEFLATE


def test_write_dataset_keeps_a_complete_folder_and_refuses_a_different_one(tmp_path):
    out = tmp_path / "data"
    write_dataset(out, n_train=2, n_test=1, shape=(32, 32))
    marker = out / "train" / "x" / "img_0000.tif"
    before = marker.stat().st_mtime_ns
    write_dataset(out, n_train=2, n_test=1, shape=(32, 32))
    assert marker.stat().st_mtime_ns == before
    with pytest.raises(UserError, match="data"):
        write_dataset(out, n_train=5, n_test=1, shape=(32, 32))
    with pytest.raises(UserError, match="data"):
        write_dataset(out, n_train=2, n_test=1, shape=(48, 32))
    assert marker.stat().st_mtime_ns == before


def test_write_dataset_replaces_a_leftover_temporary_folder(tmp_path):
    leftover = tmp_path / "data.tmp" / "train" / "x"
    leftover.mkdir(parents=True)
    (leftover / "junk.tif").write_bytes(b"")
    write_dataset(tmp_path / "data", n_train=1, n_test=1, shape=(32, 32))
    assert sorted(os.listdir(tmp_path)) == ["data"]
    assert os.listdir(tmp_path / "data" / "train" / "x") == ["img_0000.tif"]


def test_write_dataset_volume_mode_writes_slices(tmp_path):
    out = tmp_path / "vol"
    write_dataset(out, shape=(16, 64, 64), volume=True)
    volumes = {}
    for split in ("train", "test"):
        x_names, image = _read_folder(out / split / "x")
        y_names, mask = _read_folder(out / split / "y")
        assert x_names == y_names == [f"slice_{z:04d}.tif" for z in range(16)]
        assert image.shape == mask.shape == (16, 64, 64)
        assert set(np.unique(mask)) == {0, 255}
        volumes[split] = image
    assert not np.array_equal(volumes["train"], volumes["test"])


def test_write_dataset_rejects_a_shape_of_the_wrong_dimension(tmp_path):
    with pytest.raises(UserError, match="shape"):
        write_dataset(tmp_path / "a", shape=(64, 64), volume=True)
    with pytest.raises(UserError, match="shape"):
        write_dataset(tmp_path / "b", shape=(16, 64, 64))
    assert not os.listdir(tmp_path)


def test_main_prints_one_line_and_fails_cleanly(tmp_path, capsys):
    out = str(tmp_path / "data")
    assert main([out, "--n-train", "2", "--n-test", "1", "--size", "32", "40"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1 and out in printed[0]
    assert main([out, "--size", "16", "8"]) == 2
    assert "error: shape" in capsys.readouterr().err


def test_command_line_runs_as_a_module_without_keras(tmp_path):
    out = str(tmp_path / "vol")
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "lib.data.synthetic", out, "--volume", "16", "32", "32"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out in result.stdout
    assert "keras" not in result.stderr
    assert len(os.listdir(os.path.join(out, "test", "y"))) == 16
