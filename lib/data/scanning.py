"""One pass over files too large to hold: intensity statistics, foreground counts, class counts.

The streamed templates read every training and test file once, one at a time, before training:
this checks every file and gives the normalisation of each image (:func:`normalization_affine`).
"""

from typing import NamedTuple, Optional

import numpy as np

from .. import progress
from ..errors import UserError
from . import disk, intensity, io

# --------------------------------------------------------------------------- 2D data streamed from disk

# Side of the blocks whose foreground counts drive data.fg_sampling on streamed data, per number of axes:
# a foreground sample reads one block of the mask (64 x 64 pixels, 32 x 32 x 32 voxels).
FG_BLOCK = {2: 64, 3: 32}


SLAB_VOXELS = 2 ** 24  # voxels read at once when an item is scanned (64 MB as float32): z slabs of a volume


def _slabs(shape, cell):
    """Windows ``((z0, z1), (0, Y), ...)`` along axis 0 of an item of spatial ``shape``, each of about
    ``SLAB_VOXELS`` voxels and a multiple of ``cell`` deep; ``[None]`` (the whole item) when one covers it."""
    depth = max(cell, SLAB_VOXELS // max(1, int(np.prod(shape[1:]))) // cell * cell)
    if depth >= shape[0]:
        return [None]
    return [((z, min(z + depth, shape[0])),) + tuple((0, n) for n in shape[1:]) for z in range(0, shape[0], depth)]


class Scan(NamedTuple):
    """What :func:`scan_pairs` found in one image/mask pair (None where it has no mask, or was not asked)."""

    stats: tuple                 # (min, max), then (count, mean, m2) with moments
    counts: Optional[np.ndarray]  # foreground pixels per block of side cell
    fg: Optional[tuple]          # (foreground pixels, pixels)
    sample: Optional[np.ndarray]  # about ``sample`` pixels, for percentiles
    per_class: Optional[np.ndarray]  # pixels of each class (classes > 1)


def scan_pairs(images, masks, workers, moments, cell, split, classes=1, clip=None, sample=0, ignore=None):
    """Read each image/mask pair once: a :class:`Scan` of each.

    An image without a mask (None) has no counts, fg or per_class. Pixels per class (int array of
    ``classes``) are counted when ``classes`` > 1, masks then holding class ids. Statistics are
    those of the pixels clipped to ``clip`` (``[low, high]``, :func:`lib.data.intensity.clip_intensities`) when given;
    ``sample`` > 0: about that many pixels of each image (:func:`lib.data.intensity.pixel_sample`), for percentiles.
    Statistics are ``(min, max)``, with ``moments`` followed by ``(count, mean, m2)``
    (``m2``: sum of squared deviations from the mean, in float64 blocks of rows,
    so the memory used stays a few rows per image). Block counts (of blocks of side
    ``cell``) are made when ``cell`` is given. A large item is read in slabs (:func:`_slabs`).
    With ``ignore`` (``data.ignore_value``) the masks' unannotated pixels count nowhere: ``fg`` is then
    ``(foreground pixels, annotated pixels)``.
    """
    from concurrent.futures import ThreadPoolExecutor


    def one(pair):
        x_source, y_source = pair
        parts, counts, fg, annotated, samples = [], [], 0, 0, []
        per_class = np.zeros(classes, np.int64) if classes > 1 else None
        windows = _slabs(x_source.shape[:-1], cell or max(FG_BLOCK.values()))
        for window in windows:
            x = intensity.clip_intensities(x_source.read(window), clip)
            if sample:
                samples.append(intensity.pixel_sample(x, -(-sample // len(windows))))
            part = (float(x.min()), float(x.max()))
            if not np.isfinite(part).all():
                raise UserError(f"{x_source.path}: some pixels are NaN or infinite; expected finite values "
                                "(replace them, e.g. by the background level)")
            if moments:
                mean = float(x.sum(dtype=np.float64)) / x.size
                m2 = sum(float(np.square(rows.astype(np.float64) - mean).sum())
                         for rows in np.array_split(x, -(-len(x) // 256)))
                part += (x.size, mean, m2)
            parts.append(part)
            del x
            if y_source is not None:
                y = io.read_mask(y_source, window, classes, ignore)
                fg += int(np.count_nonzero(io.foreground(y)))
                kept = io.annotated(y)
                annotated += int(np.count_nonzero(kept))
                if per_class is not None:
                    per_class += np.bincount(y[kept], minlength=classes)
                if cell:
                    counts.append(disk.ForegroundIndex.block_counts(y, cell))
        stats = (min(p[0] for p in parts), max(p[1] for p in parts))
        if moments:
            stats += _merge_moments([p[2:] for p in parts])
        samples = np.concatenate(samples) if sample else None
        if y_source is None:
            return Scan(stats, None, None, samples, None)
        return Scan(stats, np.concatenate(counts) if cell else None, (fg, annotated), samples, per_class)

    with ThreadPoolExecutor(max(1, workers)) as pool:
        return list(progress.bar(pool.map(one, zip(images, masks)), total=len(images),
                                 desc=f"checking {split} files", unit="image"))


def _merge_moments(parts):
    """``(count, mean, m2)`` of the union of parts given as ``(count, mean, m2)``.

    Merged pairwise (Chan, Golub and LeVeque), which stays accurate over many parts.
    """
    count, mean, m2 = 0, 0.0, 0.0
    for n, m, s in parts:
        delta = m - mean
        total = count + n
        mean += delta * (n / total)  # exactly the part's mean when it is the first
        m2 += s + delta * delta * count * n / total
        count = total
    return count, mean, m2


def zscore_stats(moments):
    """Mean and standard deviation over all pixels from per-image ``(min, max, count, mean, m2)``."""
    count, mean, m2 = _merge_moments([m[2:] for m in moments])
    return {"mean": mean, "std": max((m2 / count) ** 0.5, 1e-8)}


def normalization_affine(source, image_stats, method, stats):
    """``(offset, scale)`` with ``(x - offset) / scale`` equal to ``lib.data.intensity.normalize(x, method, stats)``."""
    lo, hi = image_stats[:2]
    if method == "per_image":
        return lo, (hi - lo if hi > lo else 1.0)
    if method == "dtype_max":
        return 0.0, float(np.iinfo(source.dtype).max)
    return stats["mean"], stats["std"]  # zscore, fixed
