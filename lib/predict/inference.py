"""Prediction of whole images and volumes: merged crops, blended tiles, test-time augmentation.

Dimension-generic: an image is ``(*spatial, C)`` float32 with 2 or 3 spatial
axes, a prediction is a float32 probability map of the spatial shape, or
``(*spatial, K)`` of a multi-class model (the probabilities of its K classes; every
function here blends, turns and crops them along the spatial axes alike).
"""

import functools
import itertools
import math

import numpy as np

from ..data.tiling import pad_to_tile, per_axis, tile_grid, tile_starts
from ..progress import bar as progress_bar

_IDENTITY = (0, ())  # a transform of tta_transforms: no rotation, no flip


PROGRESS_DELAY = 2.0  # seconds a prediction runs before tile_progress shows its bar


def make_predictor(model):
    """Return ``f(batch (N, *tile, C)) -> probabilities (N, *tile)`` float32 for ``model``.

    A model of K > 1 output channels (multi-class, softmax) gives ``(N, *tile, K)``.
    For models with several outputs (deep supervision) the first, main output is used.
    """
    def predict(batch):
        out = model.predict_on_batch(batch)
        if isinstance(out, (list, tuple)):
            out = out[0]
        out = np.asarray(out, dtype=np.float32)
        return out[..., 0] if out.shape[-1] == 1 else out

    return predict


def tta_transforms(tile):
    """The test-time augmentations of ``tile``: the 8 elements of the dihedral group D4 in 2D, 16 in 3D.

    The four rotations by 90 degrees in the y-x plane, each with and without a
    flip of x and, in 3D, of z. Flips of y are included as a 180-degree rotation
    composed with a flip of x. A quarter turn of a tile that is not square in
    y-x transposes its y-x shape, and the turned tile is predicted with that
    shape, so every tile gets all transforms: the networks are fully
    convolutional, and the transposed tile is a multiple of their downsampling
    too when that is the same along y and x (``model.pool_size``).

    Parameters
    ----------
    tile : sequence of int, 2 (y, x) or 3 (z, y, x) sizes

    Returns
    -------
    list of ``(k, flip_axes)``: rotate by ``k`` quarter turns after flipping the
    spatial axes ``flip_axes`` (indices into ``tile``); the first is the identity.
    """
    ndim = len(tile)
    flippable = tuple(range(ndim - 2)) + (ndim - 1,)  # z (3D) and x
    flip_sets = [tuple(a for a, bit in zip(flippable, bits) if bit)
                 for bits in itertools.product((0, 1), repeat=len(flippable))]
    return [(k, flips) for flips in flip_sets for k in range(4)]


def _predict_tiles(predict, padded, tile, positions, batch_size, transforms, progress=None):
    """Predict each tile of ``padded`` under each transform, in batches of ``batch_size``.

    Yields ``(window, probabilities)`` per tile and transform, the probabilities
    mapped back to the tile's orientation. Batches mix the transforms of
    neighbouring tiles, so every batch is full whatever the number of transforms,
    but for the last of each input shape: a batch holds one shape, and quarter
    turns of a tile not square in y-x have its transposed shape. ``progress``,
    if given, is called with the number of inputs of each batch once it is predicted.
    """
    ndim = len(tile)
    plane = (ndim - 2, ndim - 1)
    jobs = [(tuple(slice(p, p + t) for p, t in zip(pos, tile)), transform)
            for pos in positions for transform in transforms]
    groups = [jobs] if tile[-1] == tile[-2] else [[j for j in jobs if j[1][0] % 2 == odd] for odd in (0, 1)]
    for group in groups:
        for i in range(0, len(group), batch_size):
            chunk = group[i:i + batch_size]
            batch = np.stack([np.rot90(np.flip(padded[w], flips), k, axes=plane) for w, (k, flips) in chunk])
            probs = predict(batch)
            if progress is not None:
                progress(len(chunk))
            for (w, (k, flips)), prob in zip(chunk, probs):
                yield w, np.flip(np.rot90(prob, -k, axes=plane), flips)


def tile_progress(total, desc="tiles"):
    """A tqdm bar over the ``total`` network inputs of one prediction; pass its ``update`` as ``progress``.

    It appears only once the prediction has run :data:`PROGRESS_DELAY` seconds
    (an image of a few tiles shows none), below the bars already open (the
    per-image bar of a test set, the block bar of ``predict.py``), and is
    cleared when closed. It is redrawn at most every second on a terminal and
    every 30 seconds otherwise (:func:`lib.progress.bar`), so that log files are
    not flooded. Use it as a context manager.
    """
    return progress_bar(total=total, desc=desc, unit="tile", leave=False, delay=PROGRESS_DELAY, smoothing=0.1)


def predict_crops(predict, image, tile, batch_size=8, progress=None):
    """Predict non-overlapping crops of ``image`` and merge them back.

    Parameters
    ----------
    predict : callable from ``make_predictor``
    image : float32 ndarray ``(*spatial, C)``
    tile : sequence of int, spatial crop shape
    batch_size : int, crops per call of ``predict``
    progress : callable, optional
        Called with the number of crops of each batch once it is predicted (for
        example the ``update`` of :func:`tile_progress` of ``len(crop_windows(spatial, tile))``).

    Returns
    -------
    float32 ndarray ``spatial`` (``(*spatial, K)`` of a multi-class predictor); the padding added to
    complete the last crops (by reflection) is removed. Memory is the output plus one batch of crops.
    """
    tile = tuple(int(t) for t in tile)
    padded, spatial = pad_to_tile(image, tile, to_multiple=True)
    grid = padded.shape[:len(tile)]
    out = None
    for w, prob in _predict_tiles(predict, padded, tile, tile_grid(grid, tile), batch_size,
                                  [_IDENTITY], progress):
        if out is None:  # the class axis, if any, is known from the first prediction
            out = np.empty(grid + prob.shape[len(tile):], np.float32)
        out[w] = prob
    return out[tuple(slice(0, s) for s in spatial)]


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


def predict_tiled(predict, image, tile, overlap=0.5, window="gaussian", batch_size=8, tta=False, core=None,
                  progress=None):
    """Predict ``image`` with overlapping tiles blended by a smooth window.

    The image is first padded by reflection by a quarter tile on each side so
    that its borders are not seen only at tile edges. Tiles are predicted in
    batches, each exactly once (once per transform with ``tta``); memory is the
    output map plus its weight sum plus one batch of tiles.

    Parameters
    ----------
    predict : callable from ``make_predictor``
        Maps a batch ``(N, *tile, C)`` to probabilities ``(N, *tile)`` in [0, 1].
    image : float32 ndarray ``(*spatial, C)``, or any array-like with ``shape``
        whose basic slicing ``image[box]`` returns such an ndarray (a lazily read
        volume: only the parts the tiles need are read)
    tile : sequence of int, spatial tile shape (divisible by the network's downsampling)
    overlap : float in [0, 1), or a sequence of one per spatial axis
    window : {'gaussian', 'spline'}
    batch_size : int, network inputs per call of ``predict``
    tta : bool
        Test-time augmentation: every tile is also predicted under each of
        :func:`tta_transforms`, and the predictions, mapped back, are averaged.
        Because blending is linear and the window symmetric, this equals the
        mean of the blended predictions of all transformed copies of the image,
        each cut along the transformed tile grid. Batches mix the transforms of
        neighbouring tiles, so they stay full. Quarter turns of a tile not
        square in y-x are predicted with the transposed tile shape.
    core : tuple of slices, one per spatial axis, optional
        Predict only this box of the image: only the tiles of the whole image's
        grid that overlap it are read and predicted, so the result equals
        ``predict_tiled(...)[core]`` while memory and work scale with the box
        plus a halo of about the tile overlap (block-wise prediction of large volumes).
    progress : callable, optional
        Called with the number of network inputs of each batch once it is
        predicted; they add up to :func:`tiled_inputs` (for example the
        ``update`` of a :func:`tile_progress` bar of that total).

    Returns
    -------
    float32 ndarray ``spatial`` (the shape of ``core`` when given), with the class axis ``K`` last
    for a multi-class predictor
    """
    tile = tuple(int(t) for t in tile)
    spatial = tuple(image.shape[:len(tile)])
    sources, margin, core, starts = _tile_plan(spatial, tile, overlap, core)
    lows = [s[0] for s in starts]
    region = tuple(s[-1] + t - lo for s, t, lo in zip(starts, tile, lows))
    # Read the bounding box of the source pixels once, then gather its reflected padding.
    picks = [src[lo:lo + n] for src, lo, n in zip(sources, lows, region)]
    box = tuple(slice(int(p.min()), int(p.max()) + 1) for p in picks)
    padded = np.asarray(image[box])[np.ix_(*(p - b.start for p, b in zip(picks, box)))]
    transforms = tta_transforms(tile) if tta else [_IDENTITY]
    weights = blend_window(tile, window)
    share = weights / np.float32(len(transforms))
    acc = None
    wsum = np.zeros(region, np.float32)
    positions = [tuple(p - lo for p, lo in zip(pos, lows)) for pos in itertools.product(*starts)]
    for w, prob in _predict_tiles(predict, padded, tile, positions, batch_size, transforms, progress):
        classes = prob.shape[len(tile):]  # () or (K,) of a multi-class predictor
        if acc is None:
            acc = np.zeros(region + classes, np.float32)
        acc[w] += prob * share.reshape(share.shape + (1,) * len(classes))
    for pos in positions:
        wsum[tuple(slice(p, p + t) for p, t in zip(pos, tile))] += weights
    acc /= wsum.reshape(wsum.shape + (1,) * (acc.ndim - wsum.ndim))
    # A weighted mean of probabilities, but float32 rounding can step just outside [0, 1].
    np.clip(acc, 0.0, 1.0, out=acc)
    return acc[tuple(slice(c.start + m - lo, c.stop + m - lo) for c, m, lo in zip(core, margin, lows))]


def _tile_plan(spatial, tile, overlap, core):
    """``(sources, margin, core, starts)`` of :func:`predict_tiled`: the padding (see :func:`_padded_indices`),
    ``core`` as slices with bounds, and per axis the tile starts in padded coordinates where a tile overlaps it."""
    overlaps = per_axis(overlap, len(tile), "overlap")
    sources, margin = _padded_indices(spatial, tile, overlaps)
    core = tuple(slice(0, s) for s in spatial) if core is None else tuple(
        slice(*c.indices(s)[:2]) for c, s in zip(core, spatial))
    if any(c.stop <= c.start for c in core):
        raise ValueError(f"core: expected a non-empty box inside the image {spatial}, got {core}")
    starts = [[p for p in tile_starts(len(src), t, o) if p < c.stop + m and p + t > c.start + m]
              for src, t, o, c, m in zip(sources, tile, overlaps, core, margin)]
    return sources, margin, core, starts


def tiled_inputs(spatial, tile, overlap=0.5, tta=False, core=None):
    """The number of network inputs :func:`predict_tiled` predicts for an image of spatial shape ``spatial``.

    Tiles (of the ``core`` box when given) times the transforms of ``tta``;
    computed without predicting or listing the tiles.
    """
    tile = tuple(int(t) for t in tile)
    starts = _tile_plan(tuple(spatial), tile, overlap, core)[3]
    return math.prod(len(s) for s in starts) * (len(tta_transforms(tile)) if tta else 1)


def _padded_indices(spatial, tile, overlaps):
    """Per axis, the source index of every position of the padded image that :func:`predict_tiled` tiles.

    The image is padded by a margin of a quarter tile on each side (axes with
    overlap), by reflection (or symmetrically when an axis is not longer than
    the margin), then at the end up to the tile size as ``pad_to_tile`` pads.
    Padding by these modes is separable, so index maps per axis describe it.

    Returns
    -------
    sources : list of int ndarray, one per axis, the padded length
    margin : list of int, the padding before the image per axis
    """
    margin = [t // 4 if o > 0 else 0 for t, o in zip(tile, overlaps)]
    mode = "reflect" if all(m < s for m, s in zip(margin, spatial)) else "symmetric"
    sources = [np.pad(np.arange(s), (m, m), mode=mode) for s, m in zip(spatial, margin)]
    end = [max(t - len(src), 0) for src, t in zip(sources, tile)]
    # The mode of pad_to_tile, which it chooses for all axes together.
    end_mode = "reflect"
    if any(e >= len(src) for e, src in zip(end, sources)):
        end_mode = "edge" if any(e > len(src) for e, src in zip(end, sources)) else "symmetric"
    if any(end):
        sources = [np.pad(src, (0, e), mode=end_mode) for src, e in zip(sources, end)]
    return sources, margin


def predict_tta(predict, image, tile, overlap=0.5, window="gaussian", batch_size=8):
    """:func:`predict_tiled` with test-time augmentation (8 transforms in 2D, 16 in 3D).

    See :func:`predict_tiled` (``tta=True``) and :func:`tta_transforms`.
    """
    return predict_tiled(predict, image, tile, overlap, window, batch_size, tta=True)


def crop_windows(shape, tile):
    """Windows of the non-overlapping crop grid of ``shape``, clipped to the data (no padding)."""
    return [tuple(slice(p, min(p + t, s)) for p, t, s in zip(pos, tile, shape))
            for pos in tile_grid(tuple(-(-s // t) * t for s, t in zip(shape, tile)), tile)]


def fit_tile(spatial, tile, divisor, overlap=0.5):
    """The tile and per-axis overlap to predict an image of shape ``spatial`` with tiles of at most ``tile``.

    Along an axis where the image is no larger than ``tile``, one tile holds the
    whole extent (rounded up to a multiple of the network's downsampling), with
    no overlap: the image is predicted in one pass along that axis, as a fully
    convolutional network allows, without seams or repeated work. Other axes keep
    ``tile`` and ``overlap``.

    Parameters
    ----------
    spatial : sequence of int, the image's spatial shape
    tile : sequence of int, the largest tile (each a multiple of ``divisor``)
    divisor : sequence of int, the network's downsampling per axis
    overlap : float in [0, 1), or a sequence of one per spatial axis

    Returns
    -------
    tile : tuple of int
    overlap : list of float, one per axis
    """
    overlaps = per_axis(overlap, len(tile), "overlap")
    fitted, kept = [], []
    for s, t, d, o in zip(spatial, tile, divisor, overlaps):
        if t % d:
            raise ValueError(f"tile: size {t} is not a multiple of the downsampling {d}")
        whole = -(-int(s) // d) * d
        fitted.append(min(int(t), whole))
        kept.append(o if whole > t else 0.0)
    return tuple(fitted), kept


def tile_batch(batch_size, crop, tile):
    """Tiles per prediction batch: ``batch_size`` crops' worth of pixels, at least one tile."""
    return max(1, int(batch_size * np.prod(crop) // np.prod(tile)))
