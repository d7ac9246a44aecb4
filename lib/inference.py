"""Prediction of whole images and volumes: per crop, merged crops, blended tiles.

Dimension-generic: an image is ``(*spatial, C)`` float32 with 2 or 3 spatial
axes, a prediction is a float32 probability map of the spatial shape.
"""

import functools

import numpy as np

from .data import crop_grid, merge_grid, pad_to_tile, tile_grid


def make_predictor(model):
    """Return ``f(batch (N, *tile, C)) -> probabilities (N, *tile)`` float32 for ``model``.

    For models with several outputs (deep supervision) the first, main output is used.
    """
    def predict(batch):
        out = model.predict_on_batch(batch)
        if isinstance(out, (list, tuple)):
            out = out[0]
        return np.asarray(out, dtype=np.float32)[..., 0]

    return predict


def _predict_batched(predict, tiles, batch_size):
    return np.concatenate([predict(tiles[i:i + batch_size]) for i in range(0, len(tiles), batch_size)])


def predict_crops(predict, image, tile, batch_size=8):
    """Predict non-overlapping crops of ``image`` and merge them back.

    Returns the probability map of the image's spatial shape; padding added to
    complete the last crops (by reflection) is removed.
    """
    crops, info = crop_grid(image, tile)
    probs = _predict_batched(predict, crops, batch_size)
    return merge_grid(probs, info)


@functools.lru_cache(maxsize=8)
def blend_window(tile, kind="gaussian"):
    """Blending weights for one tile: positive, largest at the centre, float32 ``tile``.

    ``gaussian``: separable Gaussian with sigma = tile/8 per axis (as nnU-Net);
    ``spline``: separable second-order spline window (Hann-like, as used for smooth
    blending of overlapping patches). Both are floored at 1e-3 of their peak so that
    every pixel keeps a positive weight. Cached: computed once per tile shape.
    """
    axes = []
    for n in tile:
        x = np.arange(n, dtype=np.float64) - (n - 1) / 2.0
        if kind == "gaussian":
            w = np.exp(-0.5 * (x / (n / 8.0)) ** 2)
        else:
            r = np.abs(x) / (n / 2.0)  # 0 at the centre, ~1 at the edges
            w = np.where(r <= 0.5, 1.0 - 2.0 * r ** 2, 2.0 * (1.0 - r) ** 2)
        axes.append(w / w.max())
    window = functools.reduce(np.multiply.outer, axes)
    window = np.maximum(window, 1e-3).astype(np.float32)
    window.setflags(write=False)
    return window


def predict_tiled(predict, image, tile, overlap=0.5, window="gaussian", batch_size=8):
    """Predict ``image`` with overlapping tiles blended by a smooth window.

    The image is first padded by reflection by a quarter tile on each side so
    that its borders are not seen only at tile edges. Tiles are predicted in
    batches, each exactly once; memory is the output map plus its weight sum
    plus one batch of tiles.

    Parameters
    ----------
    predict : callable from ``make_predictor``
    image : float32 ndarray ``(*spatial, C)``
    tile : tuple of int, spatial tile shape (divisible by the network's downsampling)
    overlap : float in [0, 1)
    window : {'gaussian', 'spline'}

    Returns
    -------
    float32 ndarray ``spatial``
    """
    tile = tuple(int(t) for t in tile)
    spatial = image.shape[:len(tile)]
    margin = [t // 4 if overlap > 0 else 0 for t in tile]
    pad = [(m, m) for m in margin] + [(0, 0)]
    mode = "reflect" if all(m < s for m, s in zip(margin, spatial)) else "symmetric"
    padded, _ = pad_to_tile(np.pad(image, pad, mode=mode), tile)
    weights = blend_window(tile, window)
    acc = np.zeros(padded.shape[:len(tile)], np.float32)
    wsum = np.zeros_like(acc)
    positions = tile_grid(acc.shape, tile, overlap)
    for i in range(0, len(positions), batch_size):
        chunk = positions[i:i + batch_size]
        windows = [tuple(slice(p, p + t) for p, t in zip(pos, tile)) for pos in chunk]
        probs = predict(np.stack([padded[w] for w in windows]))
        for w, p in zip(windows, probs):
            acc[w] += p * weights
            wsum[w] += weights
    out = acc / wsum
    return out[tuple(slice(m, m + s) for m, s in zip(margin, spatial))]


def crop_windows(shape, tile):
    """Windows of the non-overlapping crop grid of ``shape``, clipped to the data (no padding)."""
    return [tuple(slice(p, min(p + t, s)) for p, t, s in zip(pos, tile, shape))
            for pos in tile_grid(tuple(-(-s // t) * t for s, t in zip(shape, tile)), tile)]
