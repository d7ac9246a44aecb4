"""Tiled prediction, blending and test-time augmentation, with NumPy predictors of known output."""

import numpy as np
import pytest

from lib.data.tiling import tile_grid
from lib.predict.inference import blend_window, predict_crops, predict_tiled, predict_tta, tta_transforms


def sigmoid(batch):
    """A per-pixel predictor: equivariant under every flip and rotation."""
    return (1.0 / (1.0 + np.exp(-batch[..., 0]))).astype(np.float32)


def x_ramp(batch):
    """A predictor that ignores the image: 0 on the first column of each tile, 1 on the last."""
    n = batch.shape[-2]
    return np.broadcast_to(np.linspace(0, 1, n, dtype=np.float32), batch.shape[:-1]).copy()


class Recorder:
    """Wraps a predictor and keeps every batch it is given."""

    def __init__(self, predict):
        self.predict, self.batches = predict, []

    def __call__(self, batch):
        self.batches.append(batch.copy())
        return self.predict(batch)

    @property
    def inputs(self):
        return np.concatenate(self.batches)


def _image(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape + (1,)).astype(np.float32)


@pytest.mark.parametrize("tile", [(32, 32), (16, 24), (8, 16, 16)])
@pytest.mark.parametrize("kind", ["gaussian", "spline"])
def test_blend_window_positive_peaked_and_cached(tile, kind):
    w = blend_window(tile, kind)
    assert w.shape == tile and w.dtype == np.float32
    assert w.min() > 0 and w.max() == pytest.approx(1.0)
    centre = tuple(t // 2 for t in tile)
    assert w[centre] >= w.max() - 1e-3 and w[(0,) * len(tile)] < 0.1
    assert blend_window(tile, kind) is w  # computed once per tile shape


@pytest.mark.parametrize("shape, tile, overlap", [
    ((70, 90), (32, 32), 0.5), ((70, 90), (32, 32), 0.0), ((20, 25), (32, 32), 0.25),
    ((9, 40, 50), (8, 16, 16), [0.0, 0.5, 0.5]),
])
@pytest.mark.parametrize("window", ["gaussian", "spline"])
@pytest.mark.parametrize("tta", [False, True])
def test_blend_of_constant_predictor_is_that_constant(shape, tile, overlap, window, tta):
    const = lambda b: np.full(b.shape[:-1], 0.3, np.float32)  # noqa: E731
    out = predict_tiled(const, _image(shape), tile, overlap, window, 4, tta=tta)
    assert out.shape == shape and out.dtype == np.float32
    np.testing.assert_allclose(out, 0.3, atol=1e-5)  # float32 sums of up to 16 x 8 tiles


@pytest.mark.parametrize("shape, tile", [((70, 90), (32, 32)), ((70, 90), (32, 48)),
                                         ((9, 40, 50), (8, 16, 16)), ((9, 40, 50), (8, 16, 24))])
def test_tta_of_an_equivariant_predictor_is_its_output(shape, tile):
    image = _image(shape)
    out = predict_tta(sigmoid, image, tile, 0.5, "gaussian", 8)
    np.testing.assert_allclose(out, sigmoid(image[None])[0], atol=1e-5)
    np.testing.assert_allclose(predict_crops(sigmoid, image, tile, 3), sigmoid(image[None])[0], atol=0)


@pytest.mark.parametrize("tile, count", [((32, 32), 8), ((16, 24), 8), ((8, 16, 16), 16), ((8, 16, 24), 16)])
def test_tta_transforms_are_distinct_and_square_or_not_every_tile_gets_all(tile, count):
    transforms = tta_transforms(tile)
    assert len(transforms) == count and transforms[0] == (0, ())
    rec = Recorder(sigmoid)
    image = _image(tile)  # one tile exactly: every input is a transform of the same tile
    predict_tiled(rec, image, tile, overlap=0.0, batch_size=count, tta=True)
    inputs = [x for b in rec.batches for x in b]
    turned = tile[:-2] + (tile[-1], tile[-2])
    assert len(inputs) == count and len({x.tobytes() for x in inputs}) == count
    # Quarter turns of a tile not square in y-x have its transposed shape, half of the inputs.
    assert sorted(x.shape[:-1] for x in inputs) == sorted([tile] * (count // 2) + [turned] * (count // 2))
    assert all(np.array_equal(np.sort(x, axis=None), np.sort(image, axis=None)) for x in inputs)


def _d4_mean_by_hand(predict, image):
    """The mean over the 8 (2D) or 16 (3D) flips and quarter turns of ``image`` of ``predict``, mapped back."""
    plane = (image.ndim - 3, image.ndim - 2)
    z_flips = (False, True) if image.ndim == 4 else (False,)
    outs = []
    for flip_z in z_flips:
        for flip_x in (False, True):
            for k in range(4):
                x = np.flip(image, 0) if flip_z else image
                x = np.rot90(np.flip(x, plane[1]) if flip_x else x, k, axes=plane)
                p = np.rot90(predict(x[None])[0], -k, axes=plane)
                p = np.flip(p, plane[1]) if flip_x else p
                outs.append(np.flip(p, 0) if flip_z else p)
    assert len(outs) == 4 * 2 * len(z_flips)
    return np.mean(outs, axis=0)


def tilted(batch):
    """Neither rotation- nor flip-invariant, and image-dependent: a ramp along the tile's x times the image."""
    return sigmoid(batch) * x_ramp(batch) + 0.1 * np.roll(sigmoid(batch), 1, axis=-2)


@pytest.mark.parametrize("tile", [(16, 24), (24, 16), (4, 8, 16)])
def test_tta_of_a_non_square_tile_is_the_mean_of_all_transforms_by_hand(tile):
    image = _image(tile, seed=3)
    out = predict_tta(tilted, image, tile, overlap=0.0, batch_size=5)  # one tile: the blend window cancels
    expected = _d4_mean_by_hand(tilted, image)
    np.testing.assert_allclose(out, expected, atol=1e-6)
    assert not np.allclose(out, predict_tiled(tilted, image, tile, overlap=0.0), atol=1e-2)
    # And with overlapping tiles, an equivariant predictor gives the plain prediction.
    big = _image((50, 70) if len(tile) == 2 else (9, 30, 40), seed=4)
    np.testing.assert_allclose(predict_tta(sigmoid, big, tile, 0.5, batch_size=7),
                               predict_tiled(sigmoid, big, tile, 0.5), atol=1e-5)


def test_tta_averages_the_transforms_mapped_back():
    # x_ramp is not equivariant: over the 8 D4 transforms its mapped-back outputs
    # are ramps in the four directions, which average to 0.5 everywhere.
    image = _image((64, 64))
    plain = predict_tiled(x_ramp, image, (32, 32), overlap=0.0)
    assert plain.min() == 0 and plain.max() == 1
    np.testing.assert_allclose(predict_tta(x_ramp, image, (32, 32), overlap=0.0), 0.5, atol=1e-6)


@pytest.mark.parametrize("tta, per_tile", [(False, 1), (True, 8)])
def test_each_tile_predicted_once_in_full_batches(tta, per_tile):
    image = _image((100, 130))
    tile, overlap, batch = (32, 32), 0.5, 6
    rec = Recorder(sigmoid)
    predict_tiled(rec, image, tile, overlap, batch_size=batch, tta=tta)
    padded = (100 + 2 * 8, 130 + 2 * 8)  # a quarter tile of margin on each side
    n_tiles = len(tile_grid(padded, tile, overlap))
    sizes = [len(b) for b in rec.batches]
    assert sum(sizes) == n_tiles * per_tile
    assert all(s == batch for s in sizes[:-1])  # batches mix tiles and transforms
    assert len({x.tobytes() for x in rec.inputs}) == n_tiles * per_tile  # nothing predicted twice


def test_predict_crops_predicts_the_crop_grid_once():
    rec = Recorder(sigmoid)
    image = _image((70, 90))
    out = predict_crops(rec, image, (32, 32), batch_size=4)
    assert out.shape == (70, 90)
    assert sum(len(b) for b in rec.batches) == 3 * 3


def test_tile_count_is_what_predict_tiled_predicts():
    from lib.data.tiling import tile_count
    from lib.predict.inference import predict_tiled

    calls = []

    def predict(batch):
        calls.append(len(batch))
        return np.full(batch.shape[:-1], 0.5, np.float32)

    image = np.zeros((70, 90, 1), np.float32)
    for overlap in (0.0, 0.5, [0.25, 0.9]):
        calls.clear()
        predict_tiled(predict, image, (32, 32), overlap=overlap, batch_size=7)
        assert sum(calls) == tile_count((70, 90), (32, 32), overlap)


@pytest.mark.parametrize("spatial, tile, divisor, tiles, overlaps", [
    ((768, 1024), (1024, 1024), (16, 16), (768, 1024), [0.0, 0.0]),    # one pass, no overlap
    ((700, 1000), (1024, 1024), (16, 16), (704, 1008), [0.0, 0.0]),    # rounded up to the downsampling
    ((768, 3000), (1024, 1024), (16, 16), (768, 1024), [0.0, 0.5]),    # tiled along x only
    ((40, 768, 1024), (16, 128, 128), (8, 8, 8), (16, 128, 128), [0.5, 0.5, 0.5]),
])
def test_fit_tile(spatial, tile, divisor, tiles, overlaps):
    from lib.predict.inference import fit_tile

    assert fit_tile(spatial, tile, divisor, 0.5) == (tiles, overlaps)


def test_fit_tile_refuses_a_tile_the_network_cannot_take():
    from lib.predict.inference import fit_tile

    with pytest.raises(ValueError, match="not a multiple of the downsampling 16"):
        fit_tile((100, 100), (100, 128), (16, 16))


def test_tile_batch_keeps_the_pixels_of_a_batch_of_crops():
    from lib.predict.inference import tile_batch

    assert tile_batch(8, (256, 256), (256, 256)) == 8
    assert tile_batch(8, (256, 256), (768, 1024)) == 1
    assert tile_batch(8, (256, 256), (512, 512)) == 2


@pytest.mark.parametrize("tile, tta, core", [((32, 32), False, None), ((16, 24), True, None),
                                             ((16, 24), False, (slice(10, 40), slice(50, 90))),
                                             ((8, 16, 24), True, None)])
def test_progress_advances_batch_by_batch_to_the_number_of_inputs(tile, tta, core):
    from lib.predict.inference import tiled_inputs

    image = _image((100, 130) if len(tile) == 2 else (12, 40, 50))
    rec = Recorder(sigmoid)
    steps = []
    predict_tiled(rec, image, tile, 0.5, batch_size=6, tta=tta, core=core, progress=steps.append)
    total = tiled_inputs(image.shape[:-1], tile, 0.5, tta, core)
    assert steps == [len(b) for b in rec.batches] and sum(steps) == total > 20


def test_tile_progress_shows_a_bar_of_tiles_only_for_long_predictions(monkeypatch, capsys):
    import lib.predict.inference as inference

    image = _image((200, 260))
    with inference.tile_progress(inference.tiled_inputs(image.shape[:-1], (32, 32)), "tiled") as bar:
        predict_tiled(sigmoid, image, (32, 32), progress=bar.update)
        assert bar.n == bar.total == 221
    assert capsys.readouterr().err == ""  # done before the delay: no bar at all
    monkeypatch.setattr(inference, "PROGRESS_DELAY", 0)
    with inference.tile_progress(221, "tiled") as bar:
        predict_tiled(sigmoid, image, (32, 32), progress=bar.update)
    assert "tiled:   0%|          | 0/221" in capsys.readouterr().err
