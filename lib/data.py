"""Normalisation, train/validation split, crops and merges, tiling.

Everything here works for 2D images ``(H, W, C)`` and 3D volumes
``(Z, Y, X, C)`` alike: a "spatial shape" is the shape without the channel axis.
"""

import itertools

import numpy as np
from scipy import ndimage as ndi



# --------------------------------------------------------------------------- normalisation

CLIP_SAMPLE = 1 << 22  # pixels of the training set whose percentiles give the clipping levels


def fit_normalization(images, method, clip_percentiles=None, fixed=None):
    """Return the statistics ``normalize`` needs for ``method``, from training images.

    Parameters
    ----------
    images : list of ndarray, any shapes
    method : {'per_image', 'dtype_max', 'zscore', 'fixed'}
    clip_percentiles : (low, high), optional
        Percentiles (0-100) of the training pixels: ``stats['clip']`` holds the two
        intensities every image is clipped to before it is normalised (:func:`clip_levels`).
    fixed : (mean, std), optional
        ``fixed``: the mean and standard deviation to normalise with.

    Returns
    -------
    dict: ``mean`` and ``std`` for ``zscore`` (over the clipped training pixels) and ``fixed``;
    ``clip`` with ``clip_percentiles``; empty otherwise.
    """
    stats = {}
    if clip_percentiles is not None:
        stats["clip"] = clip_levels([pixel_sample(x, CLIP_SAMPLE // len(images)) for x in images],
                                    clip_percentiles)
    if method == "zscore":
        clipped = [clip_intensities(x, stats.get("clip")) for x in images]
        count = sum(x.size for x in clipped)
        mean = sum(float(x.sum(dtype=np.float64)) for x in clipped) / count
        var = sum(float(((x.astype(np.float64) - mean) ** 2).sum()) for x in clipped) / count
        stats.update(mean=mean, std=max(var ** 0.5, 1e-8))
    if method == "fixed":
        if fixed is None or not fixed[1] > 0:
            raise ValueError(f"fixed: expected (mean, std) with std > 0, got {fixed}")
        stats.update(mean=float(fixed[0]), std=float(fixed[1]))
    return stats


def pixel_sample(image, n):
    """About ``n`` (at least 1) pixels of ``image``, evenly strided through it, as a flat array."""
    flat = np.asarray(image).reshape(-1)
    return flat[::max(1, flat.size // max(1, n))]


def clip_levels(samples, percentiles):
    """``[low, high]``: the ``percentiles`` (0-100, low < high) of the pixels of ``samples`` (flat arrays)."""
    low, high = percentiles
    if not 0 <= low < high <= 100:
        raise ValueError(f"percentiles: expected [low, high] with 0 <= low < high <= 100, got {list(percentiles)}")
    values = np.percentile(np.concatenate([np.asarray(s, np.float64) for s in samples]), [low, high])
    return [float(values[0]), float(values[1])]


def clip_intensities(image, clip):
    """``image`` clipped to ``clip = [low, high]`` (None: unchanged), keeping its dtype.

    Integer images are clipped to the integers around the levels (outward), so no pixel
    inside them changes and the dtype stays (``dtype_max`` still divides by its maximum).
    """
    if clip is None:
        return image
    return np.clip(image, *clip_bounds(clip, image.dtype))


def clip_bounds(clip, dtype):
    """The two values of ``dtype`` that :func:`clip_intensities` clips an image of that dtype to."""
    dtype = np.dtype(dtype)
    low, high = clip
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        return (dtype.type(min(max(int(np.floor(low)), info.min), info.max)),
                dtype.type(min(max(int(np.ceil(high)), info.min), info.max)))
    return dtype.type(low), dtype.type(high)


def normalize(image, method, stats=None):
    """Return ``image`` as float32 normalised by ``method``.

    Parameters
    ----------
    image : ndarray, any shape, integer or float
    method : {'per_image', 'dtype_max', 'zscore', 'fixed'}
        ``per_image``: min-max to [0, 1] per image; ``dtype_max``: divide by the
        largest value of the integer dtype (255 for uint8); ``zscore``: subtract
        the training mean and divide by the training std (from ``fit_normalization``);
        ``fixed``: the same with the given mean and std.
    stats : dict, optional
        From :func:`fit_normalization`; with ``clip``, the image is first clipped to those levels.
    """
    image = clip_intensities(image, (stats or {}).get("clip"))
    if method == "per_image":
        lo, hi = float(image.min()), float(image.max())
        return affine_float32(image, lo, hi - lo) if hi > lo else np.zeros(image.shape, np.float32)
    if method == "dtype_max":
        if image.dtype.kind not in "ui":
            raise ValueError(f"method=dtype_max needs integer images, got {image.dtype}; "
                             "use per_image or zscore for float images")
        return affine_float32(image, 0.0, float(np.iinfo(image.dtype).max))
    if method in ("zscore", "fixed"):
        return affine_float32(image, stats["mean"], stats["std"])
    raise ValueError(f"method: unknown normalisation '{method}'")


_AFFINE_BLOCK = 1 << 20  # elements converted at a time: float64 temporaries of a few MB


def affine_float32(array, offset, scale):
    """``(array - offset) / scale`` as float32, the subtraction made in float64.

    Casting to float32 first would merge the levels of large integers (32-bit
    images of values near 2**26 keep 2 of 9 levels); float64 holds every
    integer up to 2**53. Converted block by block, so memory is the float32
    result plus a few MB.

    Parameters
    ----------
    array : ndarray, any shape, integer or float
    offset, scale : float, ``scale`` nonzero

    Returns
    -------
    float32 ndarray, shape of ``array``
    """
    array = np.asarray(array)
    out = np.empty(array.shape, np.float32)
    flat, flat_out = array.reshape(-1), out.reshape(-1)
    for start in range(0, flat.size, _AFFINE_BLOCK):
        block = slice(start, start + _AFFINE_BLOCK)
        flat_out[block] = (flat[block].astype(np.float64) - offset) / scale
    return out


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
        raise ValueError(f"fraction={fraction} leaves no training image out of {n}; lower it")
    if mode == "last":
        order = np.arange(n)
    else:
        order = np.random.default_rng(seed).permutation(n)
    val = np.sort(order[n - n_val:]) if mode == "last" else np.sort(order[:n_val])
    train = np.setdiff1d(np.arange(n), val)
    return train, val


def split_depth(depth, fraction, min_depth):
    """Split one stack of ``depth`` slices into training ``[0, z)`` and validation ``[z, depth)``; return z.

    The last ``fraction`` of the slices validate: a contiguous block at the end,
    because neighbouring slices are nearly identical and scattered validation
    slices would be seen in training. With ``fraction > 0`` both parts hold at
    least ``min_depth`` slices (a whole training crop); ``fraction == 0`` returns ``depth``.
    """
    if fraction <= 0:
        return depth
    n_val = max(int(round(depth * fraction)), min_depth)
    if depth - n_val < min_depth:
        raise ValueError(
            f"fraction={fraction}: the training volume has {depth} slices; validating on the last "
            f"{n_val} leaves fewer than {min_depth} (the crop depth) for training; lower the fraction "
            "or the crop depth, or validate on nothing (fraction 0)"
        )
    return depth - n_val


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
    """Number of tiles :func:`lib.inference.predict_tiled` predicts for a spatial ``shape``, without listing them.

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
    """Foreground (nonzero: any class but the background) fraction of each mask in a batch ``(N, ...)``, as float
    array (N,)."""
    masks = np.asarray(masks)
    return (masks.reshape(len(masks), -1) > 0).mean(axis=1, dtype=np.float64)


def discard_low_foreground(images, masks, min_fraction):
    """Keep the crops whose mask foreground fraction is >= ``min_fraction`` (0-1).

    Raises ValueError (``min_fraction=...``) when no crop is left.
    """
    if min_fraction <= 0:
        return images, masks
    keep = foreground_fraction(masks) >= min_fraction
    if not keep.any():
        raise ValueError(
            f"min_fraction={min_fraction} discards every training crop "
            f"(largest foreground fraction {foreground_fraction(masks).max():.3f}); lower it"
        )
    return images[keep], masks[keep]


# --------------------------------------------------------------------------- weight maps

# Distances are computed only this many sigmas around each object: farther, the
# border term is below exp(-6**2 / 2) w0 = 1.5e-8 w0 and is left out.
_WEIGHT_REACH = 6.0


def weight_map(mask, w0=10.0, sigma=5.0, fg_fraction=None):
    """Per-pixel loss weights of U-Net (Ronneberger et al. 2015): class balance plus borders.

    ``w = w_c + w0 exp(-(d1 + d2)^2 / (2 sigma^2))``, the border term on
    background pixels only, where ``d1`` and ``d2`` are the distances to the
    nearest and second-nearest object (connected component of the mask). It
    peaks in narrow gaps between objects, which the network must learn to keep
    open. ``w_c`` balances the classes: ``1 / (2 f)`` on foreground and
    ``1 / (2 (1 - f))`` on background for a foreground share ``f``, so its mean
    over pixels with that share is 1.

    Distances are computed object by object in the object's bounding box grown
    by ``6 sigma``, so the cost grows with the number and size of the objects,
    not with their number times the image size.

    Parameters
    ----------
    mask : ndarray ``spatial`` (2D or 3D), binary (nonzero is foreground)
    w0 : float
        Height of the border term, >= 0.
    sigma : float
        Width of the border term, pixels (voxels in 3D), > 0.
    fg_fraction : float in [0, 1], optional
        Foreground share ``f`` for the class balance; by default this mask's.
        Pass the share of the whole training set so that every image gets the
        same class weights. With ``f`` 0 or 1 the class weights are all 1.

    Returns
    -------
    ndarray of float32, shape ``spatial``
    """
    mask = np.asarray(mask) != 0
    if w0 < 0 or sigma <= 0:
        raise ValueError(f"weight_map: expected w0 >= 0 and sigma > 0, got w0={w0}, sigma={sigma}")
    f = float(mask.mean()) if fg_fraction is None else float(fg_fraction)
    if not 0.0 <= f <= 1.0:
        raise ValueError(f"weight_map: fg_fraction must be in [0, 1], got {fg_fraction}")
    if 0.0 < f < 1.0:
        weights = np.where(mask, np.float32(0.5 / f), np.float32(0.5 / (1.0 - f)))
    else:
        weights = np.ones(mask.shape, np.float32)
    labels, count = ndi.label(mask)
    if count < 2 or w0 == 0:
        return weights
    pad = int(np.ceil(_WEIGHT_REACH * sigma))
    nearest = np.full(mask.shape, np.inf, np.float32)
    second = np.full(mask.shape, np.inf, np.float32)
    for index, box in enumerate(ndi.find_objects(labels), start=1):
        window = tuple(slice(max(0, s.start - pad), min(n, s.stop + pad)) for s, n in zip(box, mask.shape))
        # The window holds the whole object, so these are its exact distances.
        d = ndi.distance_transform_edt(labels[window] != index).astype(np.float32)
        first, other = nearest[window], second[window]
        np.minimum(other, np.maximum(first, d), out=other)
        np.minimum(first, d, out=first)
    border = np.float32(w0) * np.exp(-((nearest + second) ** 2) / np.float32(2.0 * sigma ** 2))
    weights[~mask] += border[~mask]
    return weights
