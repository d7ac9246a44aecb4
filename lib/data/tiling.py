"""Crops and tiles: grids over an image or volume, cutting, padding, merging back, sampling.

Everything here works for 2D images ``(H, W, C)`` and 3D volumes ``(Z, Y, X, C)`` alike: a
"spatial shape" is the shape without the channel axis.
"""

import itertools

import numpy as np

from .io import annotated, foreground, ignored

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


def tile_count(shape, tile, overlap, margin=True):
    """Number of tiles :func:`lib.predict.inference.predict_tiled` predicts for a spatial ``shape``, not listing them.

    With ``margin``, as there, axes with overlap are first padded by a quarter
    tile on each side, and every axis up to at least the tile.
    """
    overlaps = per_axis(overlap, len(shape), "overlap")
    count = 1
    for s, t, o in zip(shape, tile, overlaps):
        padded = max(s + (2 * (t // 4) if margin and o > 0 else 0), t)
        count *= len(tile_starts(padded, t, o))
    return count


def tile_grid(shape, tile, overlap=0.0):
    """All tile corner positions for a spatial ``shape`` (tuple per tile).

    ``overlap`` is one fraction in [0, 1) for every axis or a sequence of one per axis.
    """
    overlaps = per_axis(overlap, len(shape), "overlap")
    return list(itertools.product(*(tile_starts(s, t, o) for s, t, o in zip(shape, tile, overlaps))))


def per_axis(value, ndim, name):
    """Return ``value`` as a tuple of ``ndim`` values: a number is repeated, a sequence checked.

    Raises
    ------
    ValueError
        If a sequence does not have ``ndim`` items; the message begins with ``name``.
    """
    if np.ndim(value) == 0:
        return (value,) * ndim
    if len(value) != ndim:
        raise ValueError(
            f"{name}={list(value)}: expected one value or {ndim} values (one per axis "
            f"{', '.join('zyx'[3 - ndim:]) if ndim <= 3 else ndim}), got {len(value)}"
        )
    return tuple(value)


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


def crops_to_cover(shape, crop):
    """How many crops of ``crop`` it takes to cover an image or volume of ``shape``: ``ceil(size / crop size)``.

    Parameters
    ----------
    shape : sequence of int, spatial shape (extra trailing axes, e.g. channels, are ignored)
    crop : sequence of int, spatial crop shape

    Returns
    -------
    int >= 1
    """
    if any(c <= 0 for c in crop):
        raise ValueError(f"crop: expected positive sizes, got {tuple(crop)}")
    size = int(np.prod([int(s) for s in shape[:len(crop)]]))
    return max(1, -(-size // int(np.prod(crop))))


def share_draws(draws, groups, shares, resolution=1000):
    """Draws per image giving each group of images its share of an epoch's samples.

    Parameters
    ----------
    draws : sequence of int
        Samples of each image in one pass (e.g. :func:`crops_to_cover`).
    groups : sequence of int
        The group of each image: 0 (the main set), then 1 .. len(shares).
    shares : sequence of float
        The share of samples of groups 1, 2 ...; group 0 gets the rest.

    Returns
    -------
    int ndarray: draws in the ratios of ``shares`` between groups and of ``draws`` within a
    group, scaled to about ``resolution`` in all (each at least 1), so that small shares are kept.
    """
    draws, groups = np.asarray(draws, np.float64), np.asarray(groups)
    if len(draws) != len(groups):
        raise ValueError(f"groups: expected one per image ({len(draws)}), got {len(groups)}")
    shares = [1.0 - float(sum(shares))] + [float(s) for s in shares]
    if min(shares) <= 0:
        raise ValueError(f"shares: expected positive shares summing to less than 1, got {shares[1:]}")
    out = np.zeros_like(draws)
    for group, share in enumerate(shares):
        chosen = groups == group
        if not chosen.any():
            raise ValueError(f"groups: no image in group {group}, which has a share of {share:.3g}")
        out[chosen] = draws[chosen] / draws[chosen].sum() * share * resolution
    return np.maximum(1, np.rint(out)).astype(int)


def check_crop_fits(shape, crop, name):
    """Raise ValueError (``crop=...``) when ``crop`` is larger than the data's spatial ``shape``."""
    if len(crop) != len(shape) or any(c > s for c, s in zip(crop, shape)):
        raise ValueError(
            f"crop={list(crop)} is larger than {name} "
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
    crops, positions = extract_tiles(padded, tile)
    return crops, {"positions": positions, "shape": shape, "padded": padded.shape[:len(tile)]}


def extract_tiles(array, tile, overlap=0.0):
    """Cut ``array`` into tiles of shape ``tile`` that overlap by ``overlap``.

    Axes shorter than the tile are first padded at the end by reflection; the
    last tile of each axis is aligned with the (padded) end, so every position is
    covered (see ``tile_starts``).

    Parameters
    ----------
    array : ndarray ``(*spatial, ...)``, any dtype
    tile : sequence of int, one per spatial axis
    overlap : float in [0, 1) or sequence of one per spatial axis

    Returns
    -------
    tiles : ndarray ``(n_tiles, *tile, ...)``, dtype of ``array``
    positions : list of tuple of int, the corner of each tile, for ``merge_tiles``
    """
    tile = tuple(int(t) for t in tile)
    padded, _ = pad_to_tile(array, tile)
    positions = tile_grid(padded.shape[:len(tile)], tile, overlap)
    return np.stack([padded[_window(p, tile)] for p in positions]), positions


def merge_tiles(tiles, positions, shape):
    """Inverse of ``extract_tiles``: average the tiles where they overlap, drop the padding.

    Parameters
    ----------
    tiles : ndarray ``(n_tiles, *tile, ...)``
    positions : list of tuple of int, from ``extract_tiles``
    shape : tuple of int, spatial shape of the original array

    Returns
    -------
    ndarray ``(*shape, ...)``, dtype of ``tiles``; where the tiles agree (tiles
    of one array) the original values, exactly.
    """
    ndim = len(shape)
    tile = tiles.shape[1:1 + ndim]
    extent = tuple(max(p[i] + tile[i] for p in positions) for i in range(ndim))
    # float64 sums of equal float32 values divided by their count give those values back exactly.
    total = np.zeros(extent + tiles.shape[1 + ndim:], np.float64)
    count = np.zeros(extent, np.int64)
    for t, p in zip(tiles, positions):
        total[_window(p, tile)] += t
        count[_window(p, tile)] += 1
    count = count.reshape(count.shape + (1,) * (total.ndim - ndim))
    return (total / count)[tuple(slice(0, s) for s in shape)].astype(tiles.dtype)


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
    """Foreground (annotated and nonzero: any class but the background) fraction of each mask in a batch
    ``(N, ...)``, as float array (N,)."""
    masks = np.asarray(masks)
    return foreground(masks.reshape(len(masks), -1)).mean(axis=1, dtype=np.float64)


def discard_low_foreground(images, masks, min_fraction):
    """Keep the crops whose mask foreground fraction is >= ``min_fraction`` (0-1), and that have annotated pixels.

    Raises ValueError (``min_fraction=...``) when no crop is left.
    """
    if min_fraction <= 0:
        keep = annotated(np.asarray(masks).reshape(len(masks), -1)).any(axis=1)
        return (images, masks) if keep.all() else (images[keep], masks[keep])
    keep = foreground_fraction(masks) >= min_fraction
    if not keep.any():
        raise ValueError(
            f"min_fraction={min_fraction} discards every training crop "
            f"(largest foreground fraction {foreground_fraction(masks).max():.3f}); lower it"
        )
    return images[keep], masks[keep]


def seeded_choice(n, limit, seed):
    """Sorted indices of a seeded choice of ``limit`` of ``n`` items, or all of them."""
    if n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, limit, replace=False))


def training_targets(mask, weight=None):
    """Training targets ``(*spatial, 1)``, or ``(*spatial, 2)`` (mask, weight) with a weight map, float32.

    Unannotated pixels (:func:`lib.data.io.ignored`) are -1 in the mask channel: the losses and metrics leave
    out every negative target.
    """
    target = np.stack([mask] if weight is None else [mask, weight], axis=-1).astype(np.float32)
    target[..., 0][ignored(mask)] = -1.0
    return target


def annotated_crops(x, y):
    """``(x, y)`` without the crops whose targets ``y`` ``(N, *crop, K)`` are unannotated everywhere (-1 in the
    first channel), or None when none is left."""
    keep = (y[..., 0] >= 0).reshape(len(y), -1).any(axis=1)
    return None if not keep.any() else (x, y) if keep.all() else (x[keep], y[keep])


def annotated_draws(masks, crop, annotated_share=None):
    """Draws of each mask in one pass over a training set: :func:`crops_to_cover` of its annotated area.

    ``annotated_share``: the annotated share of each mask, when known (streamed masks, from their scan);
    otherwise counted in the (in-memory) masks.
    """
    draws = []
    for k, m in enumerate(masks):
        share = (annotated_share[k] if annotated_share is not None else
                 float(np.count_nonzero(annotated(m))) / max(1, m.size))
        draws.append(max(1, int(np.ceil(crops_to_cover(m.shape, crop) * share))))
    return draws


def fixed_windows(masks, crop, min_fraction):
    """``[(item, corner)]`` of the fixed crop grid of disk masks (:func:`lib.data.tiling.tile_grid`, the last crop of
    each axis aligned with the end, so nothing is padded), without those of less foreground than ``min_fraction``.

    Raises ValueError naming ``min_fraction`` when no crop is left.
    """
    windows = [(i, corner) for i, m in enumerate(masks) for corner in tile_grid(m.shape, crop)]
    if min_fraction <= 0 and all(getattr(m, "ignore", None) is None for m in masks):
        return windows
    fractions, anything = np.array([(float(np.count_nonzero(foreground(window))) / np.prod(crop),
                                     annotated(window).any())
                                    for window in (masks[i][_window(corner, crop)] for i, corner in windows)]).T
    keep = (fractions >= min_fraction) & (anything > 0)
    if not keep.any():
        raise ValueError(f"min_fraction={min_fraction} discards every training crop (largest foreground "
                         f"fraction {fractions.max():.3f}); lower it")
    return [w for w, k in zip(windows, keep) if k]


def validation_crops(images, masks, crop, limit, seed, weight_map=None, targets=None):
    """At most ``limit`` grid crops of disk images: ``(x (N, *crop, C) float32, y (N, *crop, 1) float32)`` or None.

    With ``weight_map`` (``mask -> weights``), ``y`` has a second channel: each crop's weights; with
    ``targets`` (``mask -> (*crop, K) float32``), ``y`` is the targets of each crop's mask.
    """
    windows = [(i, corner) for i, m in enumerate(masks) for corner in tile_grid(m.shape, crop)]
    if not windows:
        return None
    windows = [windows[k] for k in seeded_choice(len(windows), limit, seed)]
    keys = [(i, _window(corner, crop)) for i, corner in windows]
    x = np.stack([images[i][key] for i, key in keys])
    y = np.stack([masks[i][key] for i, key in keys])
    if targets is not None:
        return annotated_crops(x, np.stack([targets(m) for m in y]))
    return annotated_crops(x, np.stack([training_targets(m, None if weight_map is None else weight_map(m))
                                        for m in y]))
