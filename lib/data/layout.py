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
from . import io, volumes
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


def dataset_pairs(data_dir, split, masks_optional=False, sparse=False):
    """Return sorted ``(image_path, mask_path)`` pairs of ``DATA_DIR/split``.

    With ``masks_optional`` (the test split), a split without a ``y/`` folder
    gives ``(image_path, None)`` pairs: images to predict without ground truth.
    With ``sparse`` (3D slices with ``data.ignore_value``), ``y/`` may hold fewer masks than ``x/`` has images:
    each is paired by number (:func:`sparse_pairs`), the other images get None, read as unannotated slices.
    """
    if not os.path.isdir(data_dir):
        raise UserError(f"{data_dir}: DATA_DIR not found")
    x_dir = find_subfolder(data_dir, split, "x")
    if masks_optional and not os.path.exists(os.path.join(data_dir, split, "y")):
        return [(x, None) for x in list_images(x_dir)]
    y_dir = find_subfolder(data_dir, split, "y")
    xs, ys = list_images(x_dir), list_images(y_dir)
    if sparse and 0 < len(ys) < len(xs):
        return sparse_pairs(xs, ys)
    if len(xs) != len(ys):
        raise UserError(
            f"{x_dir} has {len(xs)} images but {y_dir} has {len(ys)} masks; "
            "every image needs one mask (paired in name order)"
            + ("" if sparse or len(ys) > len(xs) else
               "; a 3D volume annotated on some slices only needs data.ignore_value")
        )
    pairs = list(zip(xs, ys))
    check_numbers_agree(pairs)
    return pairs


def _last_number(path):
    numbers = re.findall(r"\d+", os.path.splitext(os.path.basename(path))[0])
    return int(numbers[-1]) if numbers else None


def sparse_pairs(xs, ys):
    """Pair the image slices ``xs`` of a volume with the masks ``ys`` of some of them: ``[(x, y or None)]``.

    A mask annotates the image slice whose file name ends in the same number (``mask_0011.tif`` the slice
    ``image_0011.tif``); when the image names carry no distinct numbers, the slice at that 0-based position.
    Raises UserError naming a mask without a number, whose number names no slice, or that repeats another's.
    """
    numbers = [_last_number(x) for x in xs]
    by_name = None not in numbers and len(set(numbers)) == len(numbers)
    slot = {n: i for i, n in enumerate(numbers)} if by_name else {i: i for i in range(len(xs))}
    paired = [None] * len(xs)
    for y in ys:
        n = _last_number(y)
        where = "an image slice whose name ends in that number" if by_name else f"0 to {len(xs) - 1}"
        if n is None or n not in slot:
            raise UserError(f"{y}: {'no number in the name' if n is None else f'number {n} names no image slice'}; "
                            f"with fewer masks than image slices (data.ignore_value), each mask is named by the "
                            f"number of the slice it annotates ({where})")
        if paired[slot[n]] is not None:
            raise UserError(f"{y} and {paired[slot[n]]} both annotate the image slice {xs[slot[n]]}; expected one "
                            "mask per slice")
        paired[slot[n]] = y
    return list(zip(xs, paired))


def load_pairs_2d(pairs, classes=1, ignore=None):
    """Read image/mask pairs as lists of 2D images ``(H, W, C)`` and masks ``(H, W)``.

    Multi-page files are split into slices, which must match in number and size.
    A pair without a mask (``y_path`` None) gives None masks. ``classes``, ``ignore``: see :func:`class_mask`.
    """
    def masks(path):
        slices = as_mask_slices(read_image(path, mask=True), path, classes, ignore)
        for k, mask in enumerate(slices) if ignore is not None else ():
            io.check_annotated(mask, path if len(slices) == 1 else f"{path} (page {k + 1})")
        return slices

    return _slice_pairs(pairs, lambda path: as_image_slices(read_image(path), path), masks)


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


def load_pairs_3d(pairs, name, classes=1, ignore=None):
    """Read image/mask pairs as volumes ``(Z, Y, X, C)`` and binary masks ``(Z, Y, X)``.

    Two layouts are accepted. When every file holds one 2D slice, the sorted
    slices form one volume, called ``name``. When every file is a multi-page
    TIFF stack, each file is one volume, called by its file stem.

    Parameters
    ----------
    pairs : list of ``(image_path, mask_path)``, from ``dataset_pairs``
    name : str, the name of a volume made of slices (e.g. the split, ``'test'``)
    classes : int, the mask values accepted (:func:`class_mask`)
    ignore : int, optional
        ``data.ignore_value``: pixels of this value are unannotated (:func:`lib.data.io.ignored`), and so is every
        slice of a volume of slices whose mask is None while others have one (:func:`sparse_pairs`).

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
    masked = any(y is not None for _, y in pairs)
    ys = ([None if y is None else as_mask_slices(read_image(y, mask=True), y, classes, ignore) for _, y in pairs]
          if masked else [None] * len(pairs))
    if masked and None in ys:  # slices without a mask (sparse_pairs): unannotated
        kind = next(y[0].dtype for y in ys if y is not None)
        ys = [[np.full(x[0].shape[:2], io.ignore_id(kind), kind)] * len(x) if y is None else y for x, y in zip(xs, ys)]
        pairs = [(x_path, y_path or f"(no mask: {x_path} unannotated)") for x_path, y_path in pairs]
    for (x_path, y_path), x, y in zip(pairs, xs, ys if masked else ()):
        if len(x) != len(y):
            raise UserError(f"{x_path} has {len(x)} slices but its mask {y_path} has {len(y)}")
        if x[0].shape[:2] != y[0].shape:
            raise UserError(
                f"{x_path}: image size {x[0].shape[0]}x{x[0].shape[1]} differs from its mask "
                f"{y_path} ({y[0].shape[0]}x{y[0].shape[1]})"
            )
    if ignore is not None and masked:  # each volume needs annotated voxels: a stack each, or the folder's slices
        volumes_of = zip((q for _, q in pairs), ys) if all(stacked) else [(os.path.dirname(pairs[0][1]), sum(ys, []))]
        for where, slices in volumes_of:
            if all(io.ignored(s).all() for s in slices):
                raise io.unannotated(where)
    if all(stacked):
        return ([_stack_slices(x, [p] * len(x)) for (p, _), x in zip(pairs, xs)],
                [_stack_slices(y, [q] * len(y)) if masked else None for (_, q), y in zip(pairs, ys)],
                [os.path.splitext(os.path.basename(p))[0] for p, _ in pairs])
    x_paths, y_paths = zip(*pairs)
    return ([_stack_slices([x for x, in xs], x_paths)],
            [_stack_slices([y for y, in ys], y_paths) if masked else None], [name])


def _stack_slices(slices, paths):
    """Stack same-sized 2D slices into one array; ``paths[i]`` is the file of slice ``i``, for messages.

    Masks of several integer types (label images of 16 and 32 bits) are stacked as the widest, their unannotated
    pixels kept (:func:`lib.data.io.as_mask_type`)."""
    for s, path in zip(slices, paths):
        if s.shape != slices[0].shape:
            raise UserError(
                f"{path}: slice size {'x'.join(map(str, s.shape))} differs from {paths[0]} "
                f"({'x'.join(map(str, slices[0].shape))}); the slices of a volume must have one size"
            )
    kind = np.result_type(*{s.dtype for s in slices})
    if np.issubdtype(kind, np.integer):
        slices = [io.as_mask_type(s, kind) for s in slices]
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
