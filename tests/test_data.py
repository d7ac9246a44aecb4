import numpy as np
import pytest

from lib.data import intensity, splits, tiling
from lib.errors import UserError


@pytest.mark.parametrize("shape, tile", [
    ((64, 64, 1), (32, 32)), ((70, 45, 1), (32, 16)), ((20, 20, 3), (32, 32)),
    ((10, 33, 47, 1), (4, 16, 16)), ((33, 47), (16, 16)),
])
def test_crop_merge_round_trip_is_exact(shape, tile):
    array = np.random.default_rng(0).random(shape).astype(np.float32)
    crops, info = tiling.crop_grid(array, tile)
    assert crops.shape[1:1 + len(tile)] == tile
    assert np.array_equal(tiling.merge_grid(crops, info), array)


def test_crop_grid_counts_and_reflect_padding():
    image = np.arange(100 * 60, dtype=np.float32).reshape(100, 60, 1)
    crops, info = tiling.crop_grid(image, (32, 32))
    assert len(crops) == 4 * 2
    assert info["padded"] == (128, 64)
    # reflect padding mirrors the last row, it does not repeat zeros
    padded_row = crops[-1][100 - 96, :28, 0]
    assert np.array_equal(padded_row, image[98, 32:60, 0])


def test_tile_starts_cover_with_overlap():
    starts = tiling.tile_starts(100, 32, 0.5)
    assert starts[0] == 0 and starts[-1] == 100 - 32
    assert all(b - a <= 16 for a, b in zip(starts, starts[1:]))
    assert tiling.tile_starts(32, 32, 0.5) == [0]


def test_normalization_methods():
    image = np.array([[0, 51], [102, 255]], np.uint8)
    assert np.allclose(intensity.normalize(image, "dtype_max"), image / 255.0)
    per = intensity.normalize(np.array([[10, 20], [30, 50]], np.uint16), "per_image")
    assert per.min() == 0 and per.max() == 1 and per.dtype == np.float32
    assert np.allclose(per, [[0, 0.25], [0.5, 1.0]])
    flat = intensity.normalize(np.full((4, 4), 7, np.uint8), "per_image")
    assert np.all(flat == 0)
    train = [np.array([1.0, 3.0], np.float32), np.array([5.0, 7.0], np.float32)]
    stats = intensity.fit_normalization(train, "zscore")
    assert stats["mean"] == pytest.approx(4.0)
    assert stats["std"] == pytest.approx(np.sqrt(5.0))
    z = intensity.normalize(np.array([4.0, 4.0 + np.sqrt(5.0)]), "zscore", stats)
    assert np.allclose(z, [0.0, 1.0])


def test_dtype_max_rejects_float_images():
    with pytest.raises(ValueError, match="^method=dtype_max needs integer images, got float32") as caught:
        intensity.normalize(np.zeros((2, 2), np.float32), "dtype_max")
    assert not isinstance(caught.value, UserError)  # lib.data names its parameters, not options


def test_split_random_and_last():
    train, val = splits.split_indices(10, 0.2, "last", seed=0)
    assert list(val) == [8, 9] and list(train) == list(range(8))
    train, val = splits.split_indices(10, 0.3, "random", seed=3)
    assert len(val) == 3 and len(set(train) | set(val)) == 10
    assert np.array_equal(val, splits.split_indices(10, 0.3, "random", seed=3)[1])
    assert len(splits.split_indices(5, 0.0, "random", 0)[1]) == 0
    with pytest.raises(ValueError, match="^fraction=0.5 leaves no training image"):
        splits.split_indices(1, 0.5, "random", 0)


def test_discard_low_foreground_uses_fraction():
    masks = np.zeros((3, 10, 10), np.uint8)
    masks[1, :1] = 1        # 10 % foreground
    masks[2, :5] = 1        # 50 % foreground
    images = np.arange(3)[:, None, None] * np.ones((3, 10, 10))
    x, y = tiling.discard_low_foreground(images, masks, 0.2)
    assert len(x) == 1 and x[0, 0, 0] == 2
    x, y = tiling.discard_low_foreground(images, masks, 0.05)
    assert len(x) == 2
    with pytest.raises(ValueError, match="^min_fraction=0.9 discards every training crop"):
        tiling.discard_low_foreground(images, masks, 0.9)


def test_crop_larger_than_data_is_refused():
    with pytest.raises(ValueError, match=r"^crop=\[256, 256\] is larger than"):
        tiling.check_crop_fits((128, 300), (256, 256), "the smallest image")


def test_options_turn_parameter_errors_into_option_errors():
    from lib.errors import options

    with pytest.raises(UserError, match=r"^data.val_fraction=0.5 leaves no training image out of 1; lower it$"):
        with options(fraction="data.val_fraction"):
            splits.split_indices(1, 0.5, "random", 0)
    with pytest.raises(ValueError, match="^method=dtype_max") as caught:  # a parameter not named: unchanged
        with options(fraction="data.val_fraction"):
            intensity.normalize(np.zeros((2, 2), np.float32), "dtype_max")
    assert not isinstance(caught.value, UserError)


def test_normalization_keeps_the_levels_of_large_integers():
    image = (2**26 + np.arange(9, dtype=np.uint32)).reshape(3, 3)
    np.testing.assert_allclose(intensity.normalize(image, "per_image"), np.arange(9).reshape(3, 3) / 8, atol=1e-7)
    stats = intensity.fit_normalization([image], "zscore")
    assert len(np.unique(intensity.normalize(image, "zscore", stats))) == 9
    assert stats["mean"] == 2**26 + 4


@pytest.mark.parametrize("shape, crop, expected", [((1024, 1024), (256, 256), 16), ((768, 1024, 1), (256, 256), 12),
                                                   ((100, 100), (256, 256), 1), ((110, 768, 1024), (16, 128, 128), 330),
                                                   ((300, 300), (256, 256), 2)])
def test_crops_to_cover(shape, crop, expected):
    assert tiling.crops_to_cover(shape, crop) == expected
