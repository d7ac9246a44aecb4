"""Training data generators: length, batch shapes, seeded reproducibility, foreground sampling, streaming."""

import numpy as np
import pytest
import tifffile

from lib.config import AugmentConfig
from lib.data import intensity, io
from lib.data.augment import Augmenter
from lib.data.disk import DiskImage, DiskMask, ForegroundIndex
from lib.data.generators import CropDataset, DiskCropDataset
from lib.errors import UserError


def _images(n=5, shape=(48, 64), seed=0):
    """Images whose pixels all equal their index (so a crop tells which image it came from) and blob masks."""
    rng = np.random.default_rng(seed)
    images = [np.full(shape + (1,), i, np.float32) + rng.random(shape + (1,), np.float32) * 0.1 for i in range(n)]
    masks = [(rng.random(shape) < 0.2).astype(np.uint8) for _ in range(n)]
    return images, masks


def _batches(dataset):
    return [dataset[i] for i in range(len(dataset))]


@pytest.mark.parametrize("n, replicate, batch, expected", [(5, 1, 2, 3), (5, 3, 4, 4), (8, 2, 4, 4), (1, 1, 8, 1)])
def test_length_counts_replicated_samples(n, replicate, batch, expected):
    images, masks = _images(n)
    dataset = CropDataset(images, masks, (16, 16), batch, replicate=replicate)
    assert len(dataset) == expected
    sizes = [len(x) for x, _ in _batches(dataset)]
    assert sum(sizes) == n * replicate and all(s == batch for s in sizes[:-1])


def test_batch_shapes_and_types():
    images, masks = _images(4)
    dataset = CropDataset(images, masks, (16, 32), 3, augmenter=Augmenter(AugmentConfig(), 2))
    x, y = dataset[0]
    assert x.shape == (3, 16, 32, 1) and x.dtype == np.float32
    assert y.shape == (3, 16, 32, 1) and y.dtype == np.float32 and set(np.unique(y)) <= {0.0, 1.0}


def test_every_image_seen_replicate_times_per_epoch():
    images, masks = _images(5)
    dataset = CropDataset(images, masks, (16, 16), 4, replicate=3)
    for _ in range(2):
        seen = np.concatenate([np.floor(x[:, 0, 0, 0]) for x, _ in _batches(dataset)]).astype(int)
        assert np.bincount(seen, minlength=5).tolist() == [3] * 5
        dataset.on_epoch_end()


def test_seeded_reproducible_and_independent_of_batch_order():
    images, masks = _images(6)
    augment = Augmenter(AugmentConfig(rotation_p=0.5, noise_p=0.5), 2)

    def make(seed):
        return CropDataset(images, masks, (16, 16), 4, augmenter=augment, fg_sampling=0.5, replicate=2, seed=seed)

    a, b = make(7), make(7)
    first = _batches(a)
    backwards = [b[i] for i in reversed(range(len(b)))][::-1]  # computed last batch first
    for (xa, ya), (xb, yb) in zip(first, backwards):
        assert np.array_equal(xa, xb) and np.array_equal(ya, yb)
    other = _batches(make(8))
    assert not all(np.array_equal(xa, xo) for (xa, _), (xo, _) in zip(first, other))
    a.on_epoch_end()
    second = _batches(a)
    assert not all(np.array_equal(x1, x2) for (x1, _), (x2, _) in zip(first, second))


def test_no_shuffle_keeps_the_order():
    images, masks = _images(4)
    dataset = CropDataset(images, masks, (16, 16), 4, shuffle=False, replicate=2)
    seen = np.concatenate([np.floor(x[:, 0, 0, 0]) for x, _ in _batches(dataset)]).astype(int)
    assert seen.tolist() == [0, 1, 2, 3, 0, 1, 2, 3]


def _centre_hits(dataset, masks, n=4000):
    """Share of ``dataset``'s random crop centres on foreground (``masks``: its masks in memory)."""
    hits = []
    for i in range(n):
        rng = np.random.default_rng([3, i])
        item = i % len(dataset.images)
        corner = dataset._crop_corner(item, rng)
        centre = [c + s // 2 for c, s in zip(corner, dataset.crop_shape)]
        hits.append(masks[item][tuple(centre)])
    return float(np.mean(hits))


def _sparse_masks(n=3, shape=(200, 200)):
    """Masks with ~2 % foreground in small squares far from the borders (no crop is clipped)."""
    masks = []
    for i in range(n):
        m = np.zeros(shape, np.uint8)
        for y, x in ((40 + 10 * i, 50), (120, 130 - 10 * i), (150, 60)):
            m[y:y + 8, x:x + 8] = 1
        masks.append(m)
    return masks


@pytest.mark.parametrize("share", [0.0, 0.5, 0.94])
def test_fg_sampling_puts_the_requested_share_of_centres_on_foreground(share):
    masks = _sparse_masks()
    images = [m[..., None].astype(np.float32) for m in masks]
    fg = np.mean([m.mean() for m in masks])
    dataset = CropDataset(images, masks, (16, 16), 4, fg_sampling=share)
    expected = share + (1 - share) * fg
    assert abs(_centre_hits(dataset, masks) - expected) < 0.025


# --------------------------------------------------------------------------- streamed from disk

def _disk_pairs(tmp_path, images, masks, **tiff_options):
    """Write raw uint8 images and 0/255 masks; return their FileSlices."""
    xs, ys = [], []
    for i, (x, y) in enumerate(zip(images, masks)):
        tifffile.imwrite(tmp_path / f"x{i}.tif", x, **tiff_options)
        tifffile.imwrite(tmp_path / f"y{i}.tif", y * np.uint8(255), compression="zlib")
        xs += io.file_slices(str(tmp_path / f"x{i}.tif"))
        ys += io.file_slices(str(tmp_path / f"y{i}.tif"))
    return xs, ys


def test_disk_image_and_mask_read_windows_as_normalised_arrays(tmp_path):
    rng = np.random.default_rng(0)
    raw = rng.integers(10, 200, (70, 90), dtype=np.uint8)
    mask = (rng.random((70, 90)) < 0.3).astype(np.uint8)
    (x_src,), (y_src,) = _disk_pairs(tmp_path, [raw], [mask], compression="zlib", rowsperstrip=16)
    image, disk_mask = DiskImage(x_src, raw.min(), raw.max() - raw.min()), DiskMask(y_src)
    expected = intensity.normalize(raw[..., None], "per_image")
    assert image.shape == (70, 90, 1) and disk_mask.shape == (70, 90)
    assert np.allclose(image[5:40, 60:200], expected[5:40, 60:]) and image[5:40, 60:200].dtype == np.float32
    assert np.array_equal(disk_mask[33:70, 0:17], mask[33:, :17]) and disk_mask[0:1, 0:1].dtype == np.uint8
    assert np.allclose(np.asarray(image), expected) and np.array_equal(np.asarray(disk_mask), mask)


def test_disk_mask_names_the_file_of_a_non_binary_window(tmp_path):
    labels = np.zeros((32, 32), np.uint8)
    labels[20:, 20:] = 3
    labels[25:, 25:] = 7
    tifffile.imwrite(tmp_path / "labels.tif", labels)
    mask = DiskMask(io.file_slices(str(tmp_path / "labels.tif"))[0])
    assert mask[0:16, 0:16].sum() == 0  # a window with one value is read
    with pytest.raises(UserError, match=r"labels.tif: mask is not binary, found 3 values \(0, 3, 7\)"):
        mask[16:32, 16:32]


def test_foreground_index_lists_every_foreground_pixel_once(tmp_path):
    mask = _sparse_masks(1, (150, 170))[0]
    mask[0:3, 160:170] = 1  # foreground in a partial block at the border
    (_,), (y_src,) = _disk_pairs(tmp_path, [mask], [mask])
    disk_mask = DiskMask(y_src)
    index = ForegroundIndex(disk_mask, ForegroundIndex.block_counts(mask, 64), 64)
    assert len(index) == mask.sum()
    assert sorted(index[k] for k in range(len(index))) == np.flatnonzero(mask).tolist()
    empty = ForegroundIndex(disk_mask, np.zeros((3, 3), np.int64), 64)
    assert len(empty) == 0


def test_disk_dataset_gives_the_in_memory_batches(tmp_path):
    rng = np.random.default_rng(1)
    raws = [rng.integers(0, 255, (60 + 10 * i, 80), dtype=np.uint8) for i in range(4)]
    masks = [(rng.random(r.shape) < 0.25).astype(np.uint8) for r in raws]
    xs, ys = _disk_pairs(tmp_path, raws, masks, tile=(16, 16))
    augment = Augmenter(AugmentConfig(rotation_p=0.5, brightness_p=0.5), 2)
    options = dict(crop_shape=(32, 32), batch_size=3, augmenter=augment, replicate=2, seed=5)
    streamed = DiskCropDataset([DiskImage(x, r.min(), r.max() - r.min()) for x, r in zip(xs, raws)],
                               [DiskMask(y) for y in ys], **options)
    in_memory = CropDataset([intensity.normalize(r[..., None], "per_image") for r in raws], masks, **options)
    assert len(streamed) == len(in_memory) == 3
    for _ in range(2):
        for (xs_, ys_), (xm, ym) in zip(_batches(streamed), _batches(in_memory)):
            assert np.allclose(xs_, xm, atol=1e-6) and np.array_equal(ys_, ym)
        streamed.on_epoch_end()
        in_memory.on_epoch_end()


def test_disk_dataset_fg_sampling_share(tmp_path):
    masks = _sparse_masks()
    xs, ys = _disk_pairs(tmp_path, [m * 100 for m in masks], masks)
    disk_masks = [DiskMask(y) for y in ys]
    foreground = [ForegroundIndex(d, ForegroundIndex.block_counts(m, 64), 64) for d, m in zip(disk_masks, masks)]
    dataset = DiskCropDataset([DiskImage(x, 0, 100) for x in xs], disk_masks, (16, 16), 4, fg_sampling=0.94,
                              foreground=foreground)
    fg = np.mean([m.mean() for m in masks])
    assert abs(_centre_hits(dataset, masks, 2000) - (0.94 + 0.06 * fg)) < 0.03
    with pytest.raises(ValueError, match="one ForegroundIndex per mask"):
        DiskCropDataset(dataset.images, disk_masks, (16, 16), 4, fg_sampling=0.5)


def test_draws_weight_images_and_samples_per_epoch_sets_the_length():
    images, masks = _images(3)
    dataset = CropDataset(images, masks, (16, 16), 4, draws=[1, 2, 3], replicate=2)
    assert dataset.samples == 12 and len(dataset) == 3
    seen = np.concatenate([np.floor(x[:, 0, 0, 0]) for x, _ in _batches(dataset)]).astype(int)
    assert np.bincount(seen, minlength=3).tolist() == [2, 4, 6]
    # Fewer samples than a pass: a seeded part of it, another part next epoch; more: passes repeat.
    short = CropDataset(images, masks, (16, 16), 2, draws=[1, 2, 3], samples_per_epoch=4, seed=3)
    assert len(short) == 2 and sum(len(x) for x, _ in _batches(short)) == 4
    first = short._order.copy()
    short.on_epoch_end()
    assert len(short._order) == 4 and not np.array_equal(first, short._order)
    long = CropDataset(images, masks, (16, 16), 5, draws=[1, 1, 1], samples_per_epoch=10)
    counts = np.bincount(long._order, minlength=3)
    assert len(long) == 2 and counts.sum() == 10 and set(counts.tolist()) <= {3, 4}


def test_draws_must_match_the_images():
    images, masks = _images(2)
    with pytest.raises(ValueError, match="one positive number of draws per image"):
        CropDataset(images, masks, (16, 16), 2, draws=[1])
