"""Intensity normalisation and clipping of images and volumes.

Everything here works for 2D images ``(H, W, C)`` and 3D volumes ``(Z, Y, X, C)`` alike.
"""

import numpy as np

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
