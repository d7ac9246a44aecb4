"""Normalisation, train/validation split, crops and merges, tiling.

Everything here works for 2D images ``(H, W, C)`` and 3D volumes
``(Z, Y, X, C)`` alike: a "spatial shape" is the shape without the channel axis.
"""

import itertools

import numpy as np

from .errors import UserError


# --------------------------------------------------------------------------- normalisation

def fit_normalization(images, method):
    """Return the statistics ``normalize`` needs for ``method``, from training images.

    For ``zscore`` the mean and standard deviation over all training pixels; for the
    other methods an empty dict.
    """
    if method == "zscore":
        count = sum(x.size for x in images)
        mean = sum(float(x.sum(dtype=np.float64)) for x in images) / count
        var = sum(float(((x.astype(np.float64) - mean) ** 2).sum()) for x in images) / count
        return {"mean": mean, "std": max(var ** 0.5, 1e-8)}
    return {}


def normalize(image, method, stats=None):
    """Return ``image`` as float32 normalised by ``method``.

    Parameters
    ----------
    image : ndarray, any shape, integer or float
    method : {'per_image', 'dtype_max', 'zscore'}
        ``per_image``: min-max to [0, 1] per image; ``dtype_max``: divide by the
        largest value of the integer dtype (255 for uint8); ``zscore``: subtract
        the training mean and divide by the training std (from ``fit_normalization``).
    """
    x = image.astype(np.float32)
    if method == "per_image":
        lo, hi = float(x.min()), float(x.max())
        return (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)
    if method == "dtype_max":
        if image.dtype.kind not in "ui":
            raise UserError(
                f"data.normalization=dtype_max needs integer images, got {image.dtype}; "
                "use per_image or zscore for float images"
            )
        return x / np.float32(np.iinfo(image.dtype).max)
    if method == "zscore":
        return (x - np.float32(stats["mean"])) / np.float32(stats["std"])
    raise UserError(f"data.normalization: unknown method '{method}'")


# --------------------------------------------------------------------------- split

def split_indices(n, fraction, mode, seed):
    """Split ``range(n)`` into sorted train and validation index arrays.

    ``mode='random'`` draws the validation items with ``seed``; ``mode='last'``
    takes the last ``fraction`` of the items (useful for slices of a volume,
    where neighbours are nearly identical). At least one item stays in training
    and, when ``fraction > 0``, at least one goes to validation.
    """
    n_val = int(round(n * fraction))
    if fraction > 0:
        n_val = max(n_val, 1)
    if n_val >= n:
        raise UserError(
            f"data.val_fraction={fraction} leaves no training image out of {n}; lower it"
        )
    if mode == "last":
        order = np.arange(n)
    else:
        order = np.random.default_rng(seed).permutation(n)
    val = np.sort(order[n - n_val:]) if mode == "last" else np.sort(order[:n_val])
    train = np.setdiff1d(np.arange(n), val)
    return train, val


# --------------------------------------------------------------------------- tiling

def tile_starts(size, tile, overlap):
    """Start offsets of tiles of length ``tile`` covering ``size`` with the given overlap.

    The step is ``tile * (1 - overlap)`` (at least 1); the last tile is aligned
    with the end so every position is covered and no tile leaves the data.
    ``size`` must be >= ``tile``.
    """
    step = max(1, int(round(tile * (1.0 - overlap))))
    starts = list(range(0, size - tile + 1, step))
    if starts[-1] != size - tile:
        starts.append(size - tile)
    return starts


def tile_grid(shape, tile, overlap=0.0):
    """All tile corner positions for a spatial ``shape`` (tuple per tile)."""
    return list(itertools.product(*(tile_starts(s, t, overlap) for s, t in zip(shape, tile))))


def pad_to_tile(array, tile, mode="reflect", to_multiple=False):
    """Pad the spatial axes of ``array`` (channels-last if it has one more axis).

    Each spatial axis is padded at the end up to at least ``tile`` and, with
    ``to_multiple``, up to a multiple of it. Returns the padded array and the
    original spatial shape.
    """
    spatial = array.shape[:len(tile)]
    target = []
    for s, t in zip(spatial, tile):
        size = max(s, t)
        if to_multiple:
            size = -(-size // t) * t
        target.append(size)
    pad = [(0, t - s) for s, t in zip(spatial, target)] + [(0, 0)] * (array.ndim - len(tile))
    if all(p == (0, 0) for p in pad):
        return array, tuple(spatial)
    if mode == "reflect" and any(p[1] >= s for p, s in zip(pad, spatial)):
        mode = "symmetric"  # reflect cannot pad more than the axis length minus one
        if any(p[1] > s for p, s in zip(pad, spatial)):
            mode = "edge"
    return np.pad(array, pad, mode=mode), tuple(spatial)


def check_crop_fits(shape, crop, name):
    """Raise UserError when ``crop`` is larger than the data's spatial ``shape``."""
    if len(crop) != len(shape) or any(c > s for c, s in zip(crop, shape)):
        raise UserError(
            f"data.crop_shape={list(crop)} is larger than {name} "
            f"({'x'.join(map(str, shape))}); choose a crop no larger than the smallest image"
        )


def crop_grid(array, tile):
    """Cut ``array`` into non-overlapping tiles, padding the end by reflection.

    Parameters
    ----------
    array : ndarray ``(*spatial, ...)``
    tile : sequence of int, one per spatial axis

    Returns
    -------
    crops : ndarray ``(n_tiles, *tile, ...)``
    info : dict with ``positions`` and ``shape``/``padded`` spatial shapes, for ``merge_grid``.
    """
    padded, shape = pad_to_tile(array, tile, to_multiple=True)
    positions = tile_grid(padded.shape[:len(tile)], tile, overlap=0.0)
    crops = np.stack([padded[_window(p, tile)] for p in positions])
    return crops, {"positions": positions, "shape": shape, "padded": padded.shape[:len(tile)]}


def merge_grid(crops, info):
    """Inverse of ``crop_grid``: reassemble the tiles and drop the padding."""
    tile = crops.shape[1:1 + len(info["shape"])]
    out = np.empty(tuple(info["padded"]) + crops.shape[1 + len(tile):], crops.dtype)
    for crop, p in zip(crops, info["positions"]):
        out[_window(p, tile)] = crop
    return out[tuple(slice(0, s) for s in info["shape"])]


def _window(position, tile):
    return tuple(slice(p, p + t) for p, t in zip(position, tile))


def foreground_fraction(masks):
    """Foreground fraction of each mask in a batch ``(N, ...)``, as float array (N,)."""
    masks = np.asarray(masks)
    return masks.reshape(len(masks), -1).mean(axis=1, dtype=np.float64)


def discard_low_foreground(images, masks, min_fraction):
    """Keep the crops whose mask foreground fraction is >= ``min_fraction`` (0-1).

    Raises UserError when no crop is left.
    """
    if min_fraction <= 0:
        return images, masks
    keep = foreground_fraction(masks) >= min_fraction
    if not keep.any():
        raise UserError(
            f"data.min_fg_fraction={min_fraction} discards every training crop "
            f"(largest foreground fraction {foreground_fraction(masks).max():.3f}); lower it"
        )
    return images[keep], masks[keep]
