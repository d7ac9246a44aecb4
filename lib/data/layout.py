"""The dataset folder: finding ``DATA_DIR/{train,test}/{x,y}``, pairing images with masks, loading the pairs.

Dataset layout (Keras ImageDataGenerator style)::

    DATA_DIR/train/x/*.tif   images
    DATA_DIR/train/y/*.tif   masks, paired with the images in name order (numbers by value)
    DATA_DIR/test/x, DATA_DIR/test/y

Stacks are split into their slices (2D) or kept as volumes (3D); a folder of 2D slices is one
volume in 3D. Every problem raises :class:`lib.errors.UserError` naming the file.
"""

import os
import re

import numpy as np

from ..errors import UserError
from . import volumes
from .io import (IMAGE_EXTENSIONS, as_image_slices, as_mask_slices, check_same_kind, file_slices, is_store, list_images,
                 read_image)


def check_numbers_agree(pairs):
    """Raise UserError when the last number in an image's file name differs from its mask's.

    Names without numbers are not checked. Catches pairs shifted by sorting or
    by a missing file (``img3`` paired with ``mask_0004``).
    """
    for x_path, y_path in pairs:
        numbers = [re.findall(r"\d+", os.path.splitext(os.path.basename(p))[0]) for p in (x_path, y_path)]
        if all(numbers) and int(numbers[0][-1]) != int(numbers[1][-1]):
            raise UserError(
                f"{x_path} is paired with the mask {y_path}, whose number differs ({int(numbers[0][-1])} vs "
                f"{int(numbers[1][-1])}); images and masks are paired in name order (numbers by value): "
                "give each image and its mask the same number"
            )


def find_subfolder(data_dir, split, kind):
    """Locate ``DATA_DIR/split/kind``, also accepting ``split/kind/kind`` (flow_from_directory style)."""
    folder = os.path.join(data_dir, split, kind)
    nested = os.path.join(folder, kind)
    if os.path.isdir(nested) and not any(
        f.lower().endswith(IMAGE_EXTENSIONS) for f in os.listdir(folder)
    ):
        return nested
    if not os.path.isdir(folder):
        raise UserError(
            f"{folder}: folder not found; expected {'images' if kind == 'x' else 'masks'} in "
            f"DATA_DIR/{{train,test}}/{kind}/ (one file per image, paired by sorted name)"
        )
    return folder


def dataset_pairs(data_dir, split, masks_optional=False):
    """Return sorted ``(image_path, mask_path)`` pairs of ``DATA_DIR/split``.

    With ``masks_optional`` (the test split), a split without a ``y/`` folder
    gives ``(image_path, None)`` pairs: images to predict without ground truth.
    """
    if not os.path.isdir(data_dir):
        raise UserError(f"{data_dir}: DATA_DIR not found")
    x_dir = find_subfolder(data_dir, split, "x")
    if masks_optional and not os.path.exists(os.path.join(data_dir, split, "y")):
        return [(x, None) for x in list_images(x_dir)]
    y_dir = find_subfolder(data_dir, split, "y")
    xs, ys = list_images(x_dir), list_images(y_dir)
    if len(xs) != len(ys):
        raise UserError(
            f"{x_dir} has {len(xs)} images but {y_dir} has {len(ys)} masks; "
            "every image needs one mask (paired in name order)"
        )
    pairs = list(zip(xs, ys))
    check_numbers_agree(pairs)
    return pairs


def load_pairs_2d(pairs, classes=1):
    """Read image/mask pairs as lists of 2D images ``(H, W, C)`` and masks ``(H, W)``.

    Multi-page files are split into slices, which must match in number and size.
    A pair without a mask (``y_path`` None) gives None masks. ``classes``: see :func:`class_mask`.
    """
    return _slice_pairs(pairs, lambda path: as_image_slices(read_image(path), path),
                        lambda path: as_mask_slices(read_image(path, mask=True), path, classes))


def _slice_pairs(pairs, image_slices, mask_slices):
    """``(images, masks, names)`` of the 2D slices of each pair, ``image_slices(path)`` and ``mask_slices(path)``.

    Refuses an image and its mask of other slice counts or sizes, and images of other channel counts or
    pixel types; a pair without a mask gives None masks.
    """
    images, masks, names = [], [], []
    for x_path, y_path in pairs:
        xs = image_slices(x_path)
        ys = [None] * len(xs) if y_path is None else mask_slices(y_path)
        if len(xs) != len(ys):
            raise UserError(f"{x_path} has {len(xs)} slices but its mask {y_path} has {len(ys)}")
        for x, y in zip(xs, ys):
            if y is not None and x.shape[:2] != y.shape[:2]:
                raise UserError(f"{x_path}: image size {x.shape[0]}x{x.shape[1]} differs from its mask "
                                f"{y_path} ({y.shape[0]}x{y.shape[1]})")
        images += xs
        masks += ys
        names += _slice_names(x_path, len(xs))
    check_same_kind(images)
    return images, masks, names


def _slice_names(path, count):
    """Names of the ``count`` 2D images of a file: its stem, or ``stem_0003`` for slice 3 of a stack."""
    stem = os.path.splitext(os.path.basename(path))[0]
    return [stem] if count == 1 else [f"{stem}_{i:04d}" for i in range(count)]


def load_pairs_3d(pairs, name, classes=1):
    """Read image/mask pairs as volumes ``(Z, Y, X, C)`` and binary masks ``(Z, Y, X)``.

    Two layouts are accepted. When every file holds one 2D slice, the sorted
    slices form one volume, called ``name``. When every file is a multi-page
    TIFF stack, each file is one volume, called by its file stem.

    Parameters
    ----------
    pairs : list of ``(image_path, mask_path)``, from ``dataset_pairs``
    name : str, the name of a volume made of slices (e.g. the split, ``'test'``)
    classes : int, the mask values accepted (:func:`class_mask`)

    Returns
    -------
    images : list of ndarray ``(Z, Y, X, C)``, the files' pixel type
    masks : list of uint8 ndarray ``(Z, Y, X)``, values {0, 1}; None for pairs without a mask
        (``mask_path`` None: every pair or none)
    names : list of str

    Raises
    ------
    UserError
        If a mask is not binary (naming its file), the folder mixes slices and
        stacks, or slices or masks differ in size.
    """
    xs = [as_image_slices(read_image(x), x) for x, _ in pairs]
    stacked = [len(s) > 1 for s in xs]
    if any(stacked) and not all(stacked):
        raise UserError(
            f"{pairs[stacked.index(True)][0]} is a stack but {pairs[stacked.index(False)][0]} a single "
            "image; expected a folder of 2D slices (one volume) or of multi-page stacks (one volume each)"
        )
    check_same_kind([s for x in xs for s in x])
    masked = pairs[0][1] is not None
    ys = [as_mask_slices(read_image(y, mask=True), y, classes) for _, y in pairs] if masked else [None] * len(pairs)
    for (x_path, y_path), x, y in zip(pairs, xs, ys if masked else ()):
        if len(x) != len(y):
            raise UserError(f"{x_path} has {len(x)} slices but its mask {y_path} has {len(y)}")
        if x[0].shape[:2] != y[0].shape:
            raise UserError(
                f"{x_path}: image size {x[0].shape[0]}x{x[0].shape[1]} differs from its mask "
                f"{y_path} ({y[0].shape[0]}x{y[0].shape[1]})"
            )
    if all(stacked):
        return ([_stack_slices(x, [p] * len(x)) for (p, _), x in zip(pairs, xs)],
                [_stack_slices(y, [q] * len(y)) if masked else None for (_, q), y in zip(pairs, ys)],
                [os.path.splitext(os.path.basename(p))[0] for p, _ in pairs])
    x_paths, y_paths = zip(*pairs)
    return ([_stack_slices([x for x, in xs], x_paths)],
            [_stack_slices([y for y, in ys], y_paths) if masked else None], [name])


def _stack_slices(slices, paths):
    """Stack same-sized 2D slices into one array; ``paths[i]`` is the file of slice ``i``, for messages."""
    for s, path in zip(slices, paths):
        if s.shape != slices[0].shape:
            raise UserError(
                f"{path}: slice size {'x'.join(map(str, s.shape))} differs from {paths[0]} "
                f"({'x'.join(map(str, slices[0].shape))}); the slices of a volume must have one size"
            )
    return np.stack(slices)


def _file_slices(path, mask=False):
    """The 2D slices of an image file (:func:`lib.data.io.file_slices`) or of a zarr / HDF5 store (one per z)."""
    return volumes.store_slices(path) if is_store(path) else file_slices(path, mask)


def index_pairs_2d(pairs):
    """Describe image/mask pairs as 2D slices without reading pixels (see ``file_slices``).

    The checks of ``load_pairs_2d`` that need no pixels are made here: slice
    counts and sizes of each image and its mask, one channel count and one
    pixel type for all images. Mask values are checked when masks are read.

    Returns
    -------
    images, masks : lists of FileSlice, aligned; masks are None for pairs without one (``mask_path`` None)
    names : list of str, file stems (``stem_0003`` for slice 3 of a stack)
    """
    return _slice_pairs(pairs, _file_slices, lambda path: _file_slices(path, mask=True))
