"""Small synthetic EM-like datasets, so that the demo and the tests need no real data.

The images imitate FIB-SEM of neuropil with mitochondria as foreground: dark
elongated objects with a double membrane and cristae-like stripes, on a textured
cytoplasm that also holds dark vesicles and cell membranes. Those distractors
are as dark as the mitochondria, so a global threshold does poorly while a
network can learn the shapes and textures.

With ``--classes 3`` the masks hold three classes for multi-class segmentation
(``model.classes=3``): 0 background, 1 mitochondria, 2 cell membranes (the thin dark
lines between cells).

Command line, from the repository root::

    python -m lib.data.synthetic OUT_DIR [--n-train N] [--n-test N] [--size H W]
                                    [--volume Z Y X] [--seed S] [--classes 1|2|3]
"""

import argparse
import os
import shutil
import sys

import numpy as np
import tifffile
from scipy import ndimage

from ..errors import UserError
from .targets import between_objects

# Foreground fraction aimed at, and the ceiling an added object may not cross.
FG_TARGET = (0.07, 0.11)


FG_MAX = 0.14


# Image sizes below this leave too few pixels for objects, membranes and texture.
MIN_SIDE = 16


SPLITS = ("train", "test")


CLASSES = (1, 2, 3)  # binary (0/255 masks), mitochondria as class ids 0/1, or + membranes as class 2


def make_sample(shape, rng, n_objects=None, classes=1, touching=False, labels=False):
    """Make one synthetic EM image or volume and its mitochondria mask (with ``classes=3``, and membranes).

    Parameters
    ----------
    shape : tuple of int
        ``(H, W)`` for an image or ``(Z, Y, X)`` for a volume (isotropic voxels),
        each side at least 16.
    rng : numpy.random.Generator or int
        Source of randomness; an int seeds a new generator.
    n_objects : int, optional
        Number of mitochondria to place (fewer if they do not fit). By default
        objects are added until 7-11 % of the pixels are foreground (never
        above 14 %).
    classes : {1, 2, 3}
        3: the mask also marks the cell membranes drawn in the image as class 2. The image
        is the same whatever ``classes``.
    touching : bool
        Place most objects against another, so that they touch along a border (each keeps its own double
        membrane there, as in EM); with ``classes`` 1 only.
    labels : bool
        Return a label image (uint16, each object its own id) instead of the binary mask; with ``classes`` 1.

    Returns
    -------
    image : ndarray of uint8, shape ``shape``
        Intensities stretched to 0-255; mitochondria are darker than cytoplasm.
    mask : ndarray of uint8, shape ``shape``
        1 inside mitochondria (membrane included), 0 elsewhere; with ``classes=3``, 2 on the
        cell membranes (where they are drawn at least at 1/e of their full darkness).
    """
    shape = _check_shape(shape, (2, 3))
    rng = np.random.default_rng(rng)
    if classes not in CLASSES:
        raise UserError(f"classes: expected one of {', '.join(map(str, CLASSES))}, got {classes!r}")
    if n_objects is not None and (not _is_int(n_objects) or n_objects < 0):
        raise UserError(f"n_objects: expected an integer >= 0, got {n_objects!r}")
    # Lengths are set for a 256-pixel field of view and scaled with the image.
    scale = min(shape[-2:]) / 256.0
    px = max(scale, 0.5)

    membrane_dist = _level_set_distance(shape, rng, cell_size=50 * scale)
    # Mitochondria sit inside cells, so cell membranes are obstacles for placement.
    if (touching or labels) and classes != 1:
        raise UserError(f"classes={classes}: touching objects and label images are of one kind of object; "
                        "expected classes 1")
    objects, along = _place_objects(shape, rng, n_objects, membrane_dist > 4 * px, scale, touching)
    fg = objects > 0
    mask = fg.astype(np.uint8)

    cytoplasm = 0.62 + 0.09 * _smooth_noise(shape, rng, 70 * scale)
    cytoplasm += 0.05 * _smooth_noise(shape, rng, 3 * px)
    membranes = np.exp(-((membrane_dist / (1.2 * px)) ** 2))
    distractors = 0.35 * membranes + 0.40 * _vesicles(shape, rng, px)
    # Distractors drawn over or against an object would be a free cue to its outline.
    outside = ndimage.distance_transform_edt(~fg) if fg.any() else np.inf
    near = np.clip((outside - 1) / (2 * px), 0, 1)
    distractors *= near
    if classes == 3:
        mask = np.where(~fg & (membranes * near >= np.exp(-1.0)), np.uint8(2), mask).astype(np.uint8)

    # Cristae: stripes across the long axis, wavy rather than ruled.
    period = rng.uniform(5, 8) * px
    phase = 2 * np.pi * along / period + 1.5 * _smooth_noise(shape, rng, 8 * px)
    cristae = np.clip(np.cos(phase), 0, None) ** 2
    # Depth inside each object: where objects touch, each has its own border (and membranes) there.
    depth = ndimage.distance_transform_edt(fg & ~between_objects(objects) if touching else fg)
    double_membrane = sum(
        np.exp(-(((depth - d * px) / (0.7 * px)) ** 2)) for d in (0.8, 2.6)
    )
    darkening = 0.12 + 0.20 * cristae + 0.05 * _smooth_noise(shape, rng, 2 * px)
    darkening += 0.30 * double_membrane
    image = cytoplasm - distractors - fg * darkening

    image = ndimage.gaussian_filter(image, 0.8 * px)
    # Electron counts give signal-dependent shot noise; the detector adds a Gaussian floor.
    electrons = 80.0
    image = rng.poisson(np.clip(image, 0, None) * electrons) / electrons
    image += rng.normal(0, 0.03, shape)
    return _to_uint8(image), (objects if labels else mask)


def write_dataset(out_dir, n_train=12, n_test=4, shape=(256, 256), seed=0, volume=False, classes=1,
                  touching=False):
    """Write a synthetic dataset in the template folder layout.

    Layout: ``out_dir/{train,test}/{x,y}/``, one zlib-compressed 2D TIFF per
    file, paired by sorted name, masks stored as ``{0, 255}`` uint8 (``classes`` 2 and 3:
    class ids, see :func:`make_sample`). The
    dataset is built in ``out_dir + ".tmp"`` and renamed, so ``out_dir`` is
    either complete or absent; an existing complete ``out_dir`` with the same
    counts and image shape is left untouched, which makes reruns cheap.

    Parameters
    ----------
    out_dir : str or os.PathLike
        Folder to create.
    n_train, n_test : int
        Number of 2D images per split (``img_0000.tif``..., masks
        ``mask_0000.tif``...). Ignored with ``volume=True``.
    shape : tuple of int
        ``(H, W)`` for images, or ``(Z, Y, X)`` with ``volume=True``.
    seed : int
        Seed; image ``i`` of a split depends only on ``seed``, the split and ``i``.
    volume : bool
        Write one volume per split (train and test differ) as its sorted slices
        ``slice_0000.tif``..., under the same names in ``x`` and ``y``.
    classes : {1, 2, 3}
        1: binary masks 0/255; 2: mitochondria as class ids 0/1; 3: and membranes as class 2.
    touching : bool
        Objects that touch (:func:`make_sample`), the masks label images (uint16, each object its own id;
        ``model.targets`` bc or bcd); with ``classes`` 1.

    Returns
    -------
    str
        ``out_dir``.
    """
    out_dir = os.fspath(out_dir)
    shape = _check_shape(shape, (3,) if volume else (2,))
    for name, n in (("n_train", n_train), ("n_test", n_test)):
        if not _is_int(n) or n < 1:
            raise UserError(f"{name}: expected an integer >= 1, got {n!r}")
    if not _is_int(seed) or seed < 0:
        raise UserError(f"seed: expected an integer >= 0, got {seed!r}")
    if classes not in CLASSES:
        raise UserError(f"classes: expected one of {', '.join(map(str, CLASSES))}, got {classes!r}")
    counts = (shape[0], shape[0]) if volume else (n_train, n_test)
    if os.path.exists(out_dir):
        if _is_complete(out_dir, counts, shape[-2:]):
            return out_dir
        raise UserError(
            f"{out_dir}: exists but is not a synthetic dataset of {counts[0]} train and "
            f"{counts[1]} test {'slices' if volume else 'images'} of {shape[-2]}x{shape[-1]}; "
            "remove it or pick another folder"
        )

    tmp_dir = out_dir + ".tmp"
    # A leftover from an interrupted run is ours (its name says so) and incomplete.
    shutil.rmtree(tmp_dir, ignore_errors=True)
    try:
        for split_index, split in enumerate(SPLITS):
            x_dir = os.path.join(tmp_dir, split, "x")
            y_dir = os.path.join(tmp_dir, split, "y")
            os.makedirs(x_dir)
            os.makedirs(y_dir)
            for x_name, y_name, image, mask in _split_pairs(
                shape, seed, split_index, counts[split_index], volume, classes, touching
            ):
                tifffile.imwrite(os.path.join(x_dir, x_name), image, compression="zlib")
                tifffile.imwrite(
                    os.path.join(y_dir, y_name), mask * np.uint8(255) if classes == 1 and not touching else mask,
                    compression="zlib",
                )
        os.rename(tmp_dir, out_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    return out_dir


def main(argv=None):
    """Command line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m lib.data.synthetic",
        description="Write a small synthetic EM mitochondria dataset "
        "in the DATA_DIR/{train,test}/{x,y}/ layout.",
    )
    parser.add_argument("out_dir", help="folder to create (left as is if already complete)")
    parser.add_argument("--n-train", type=int, default=12, help="training images (2D only)")
    parser.add_argument("--n-test", type=int, default=4, help="test images (2D only)")
    parser.add_argument("--size", type=int, nargs=2, default=(256, 256), metavar=("H", "W"))
    parser.add_argument(
        "--volume", type=int, nargs=3, metavar=("Z", "Y", "X"),
        help="write one volume per split as 2D slices instead of separate images",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--classes", type=int, default=1, choices=CLASSES,
                        help="1: binary masks (0/255); 3: class ids 0 background, 1 mitochondria, 2 membranes "
                             "(model.classes=3); 2: mitochondria as class ids 0/1")
    parser.add_argument("--touching", action="store_true",
                        help="objects that touch, the masks label images (each object its own id) for instance "
                             "runs (model.targets=bc or bcd)")
    args = parser.parse_args(argv)
    volume = args.volume is not None
    shape = tuple(args.volume if volume else args.size)
    try:
        out_dir = write_dataset(
            args.out_dir, args.n_train, args.n_test, shape, args.seed, volume, args.classes, args.touching
        )
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    what = (
        f"a {'x'.join(map(str, shape))} train volume and a test volume as slices"
        if volume
        else f"{args.n_train} train and {args.n_test} test images of {shape[0]}x{shape[1]}"
    )
    print(f"{out_dir}: {what} (seed {args.seed})")
    return 0


def _is_int(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check_shape(shape, ndims):
    try:
        shape = tuple(shape)
    except TypeError:
        shape = None
    if (
        shape is None
        or len(shape) not in ndims
        or not all(_is_int(n) and n >= MIN_SIDE for n in shape)
    ):
        dims = " or ".join(f"{n} integers" for n in ndims)
        raise UserError(f"shape: expected {dims}, each >= {MIN_SIDE}, got {shape!r}")
    return tuple(int(n) for n in shape)


def _split_pairs(shape, seed, split_index, count, volume, classes=1, touching=False):
    """Yield ``(image name, mask name, image, mask)`` for the 2D files of one split."""
    more = dict(classes=classes, touching=touching, labels=touching)
    if volume:
        image, mask = make_sample(shape, np.random.default_rng([seed, split_index]), **more)
        for z in range(count):
            yield f"slice_{z:04d}.tif", f"slice_{z:04d}.tif", image[z], mask[z]
    else:
        for i in range(count):
            image, mask = make_sample(shape, np.random.default_rng([seed, split_index, i]), **more)
            yield f"img_{i:04d}.tif", f"mask_{i:04d}.tif", image, mask


def _smooth_noise(shape, rng, feature_size):
    """Zero-mean, unit-std noise whose blobs are about ``feature_size`` pixels wide.

    White noise is low-pass filtered in Fourier space, which costs the same
    whatever the feature size, unlike a spatial Gaussian with a wide kernel. The
    result wraps around the edges, which nobody can see in a texture.
    """
    sigma = max(feature_size, 1.0) / 3
    spectrum = np.fft.rfftn(rng.standard_normal(shape, np.float32))
    freqs = [np.fft.fftfreq(n) for n in shape[:-1]] + [np.fft.rfftfreq(shape[-1])]
    grids = np.meshgrid(*freqs, indexing="ij", sparse=True)
    gaussian = np.exp(-2 * (np.pi * sigma) ** 2 * sum(g**2 for g in grids))
    spectrum *= gaussian.astype(np.float32)
    field = np.fft.irfftn(spectrum, shape, axes=range(len(shape)))
    return (field - field.mean()) / (field.std() + 1e-12)


def _level_set_distance(shape, rng, cell_size):
    """Approximate distance to the zero level set of a smooth random field.

    The zero level set of smooth noise is a tangle of closed curves (sheets in
    3D) that resembles cell outlines; ``|f| / |grad f|`` turns it into a
    distance so that the drawn membranes have an even width.
    """
    field = _smooth_noise(shape, rng, cell_size)
    gradient = np.sqrt(sum(g**2 for g in np.gradient(field)))
    return np.abs(field) / (gradient + 1e-3)


def _vesicles(shape, rng, px):
    """Darkness in [0, 1] of small vesicles, clustered as in synaptic terminals."""
    size = int(np.prod(shape))
    radius_mean = 2.5 * px
    # A 3D sphere is cut by about 2r slices, so fewer are needed for the same look.
    per_vesicle = 100 * px**2 * (2 * radius_mean if len(shape) == 3 else 1)
    n = rng.poisson(size / per_vesicle)
    centres = tuple(rng.integers(0, s, n) for s in shape)
    density = _smooth_noise(shape, rng, 40 * px)[centres]
    keep = rng.random(n) < 1 / (1 + np.exp(-4 * (density - 0.8)))
    centres = tuple(c[keep] for c in centres)
    if not centres[0].size:
        return np.zeros(shape)
    seeds = np.ones(shape, bool)
    seeds[centres] = False
    radii = np.zeros(shape)
    radii[centres] = rng.uniform(0.6, 1.4, centres[0].size) * radius_mean
    dist, nearest = ndimage.distance_transform_edt(seeds, return_indices=True)
    radius = radii[tuple(nearest)]
    ring = np.exp(-(((dist - radius) / (0.7 * px)) ** 2))
    return np.where(dist < radius, np.maximum(ring, 0.25), ring)


def _rotation(ndim, rng):
    """A uniformly random rotation matrix of size ``ndim``."""
    q, r = np.linalg.qr(rng.standard_normal((ndim, ndim)))
    q *= np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _place_objects(shape, rng, n_objects, free, scale, touching=False):
    """Place non-touching, slightly irregular ellipses/ellipsoids.

    Objects go where ``free`` is True for the first half of the attempts; the
    second half ignores it so that crowded images still reach the target
    fraction. Returns the label image (uint16, each object its own id) and, inside each object, the coordinate
    along its long axis (which orients the cristae).

    With ``touching``, most objects are placed against one placed before (a part of it up to a third of its
    size is left to the one before), so that they touch along a border, as mitochondria crowded in a cell do.
    """
    ndim = len(shape)
    size = int(np.prod(shape))
    mask = np.zeros(shape, np.uint16)
    placed_at = []  # (centre, long axis) of each object
    along = np.zeros(shape)
    target = rng.uniform(*FG_TARGET)
    gap = max(3.0, 6 * scale)
    attempts = 1000
    # A shared smooth field bends the outlines away from perfect ellipses.
    wobble = np.clip(0.25 * _smooth_noise(shape, rng, 20 * scale), -0.4, 0.4)
    placed, filled = 0, 0
    for attempt in range(attempts):
        if (placed >= n_objects) if n_objects is not None else (filled >= target * size):
            break
        long_axis = rng.uniform(14, 30) * scale * (1.5 if ndim == 3 else 1.0)
        axes = long_axis * np.r_[1.0, rng.uniform(0.35, 0.6, ndim - 1)]
        axes = np.maximum(axes, 3.0)
        rot = _rotation(ndim, rng)  # columns are the object's axes in image space
        centre = rng.uniform(0, shape)
        if touching and placed_at and rng.random() < 0.7:
            near, length = placed_at[int(rng.integers(len(placed_at)))]
            direction = rng.standard_normal(ndim)
            centre = near + direction / np.linalg.norm(direction) * 0.45 * (length + long_axis)
            centre = np.clip(centre, 0, np.array(shape) - 1)
        # 1.2 > sqrt(1.4) keeps the most wobbled outline and halo inside the box.
        half = np.sqrt(((rot * 1.2 * (axes + gap)) ** 2).sum(axis=1))
        lo = np.maximum(np.floor(centre - half), 0).astype(int)
        hi = np.minimum(np.ceil(centre + half) + 1, shape).astype(int)
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        offsets = np.ogrid[box]
        local = [
            sum(rot[i, j] * (offsets[i] - centre[i]) for i in range(ndim)) for j in range(ndim)
        ]
        inside = sum((q / a) ** 2 for q, a in zip(local, axes)) + wobble[box] <= 1
        halo = sum((q / (a + gap)) ** 2 for q, a in zip(local, axes)) + wobble[box] <= 1
        if touching:  # against others: the part of it already taken stays theirs, if it is small
            taken = inside & (mask[box] > 0)
            if taken.sum() > inside.sum() / 3:
                continue
            inside &= ~taken
            halo = halo & ~ndimage.binary_dilation(mask[box] > 0, iterations=int(gap) + 1)
        added = int(inside.sum())
        too_full = n_objects is None and filled + added > FG_MAX * size
        blocked = attempt < attempts // 2 and not free[box][inside].all()
        if not added or too_full or blocked or mask[box][halo].any():
            continue
        mask[box][inside] = placed + 1
        along[box][inside] = np.broadcast_to(local[0], inside.shape)[inside]
        placed += 1
        placed_at.append((centre, long_axis))
        filled += added
    return mask, along


def _to_uint8(image):
    """Stretch to 0-255 between robust extremes, as the real datasets were stretched."""
    lo, hi = np.percentile(image, (0.5, 99.5))
    return np.clip((image - lo) / (hi - lo + 1e-12) * 255 + 0.5, 0, 255).astype(np.uint8)


def _is_complete(out_dir, counts, slice_shape):
    """Whether ``out_dir`` already holds the dataset that would be written."""
    for split, count in zip(SPLITS, counts):
        files = []
        for sub in ("x", "y"):
            folder = os.path.join(out_dir, split, sub)
            if not os.path.isdir(folder):
                return False
            names = sorted(n for n in os.listdir(folder) if n.endswith(".tif"))
            if len(names) != count:
                return False
            files.append(os.path.join(folder, names[0]))
        for path in files:
            try:
                with tifffile.TiffFile(path) as tif:
                    if tuple(tif.pages[0].shape) != tuple(slice_shape):
                        return False
            except (OSError, ValueError):
                return False
    return True


if __name__ == "__main__":
    sys.exit(main())
