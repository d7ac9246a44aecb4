"""The loaded data of a run: :class:`ImageSet` (arrays in memory) and :class:`DiskImageSet` (read from disk).
"""

from dataclasses import dataclass
from typing import List, Optional

import numpy as np


class _Items:
    """What both kinds of set offer: ``len``, ``[i]`` ``(image, mask or None, name)`` as arrays, ``channels``."""

    @property
    def channels(self):
        return self.images[0].shape[-1]

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        mask = self.masks[i]
        return np.asarray(self.images[i]), None if mask is None else np.asarray(mask), self.names[i]


@dataclass
class ImageSet(_Items):
    """Normalised images float32 ``(*spatial, C)`` (2D images or 3D volumes), masks ``spatial`` uint8, names.

    Masks are binary {0, 1}, or class ids ``0 .. model.classes - 1`` (multi-class segmentation).

    A test set without ground truth (no ``DATA_DIR/test/y``) has None masks.

    ``normalization``: the training statistics the images were normalised with (``zscore``: mean and std), or None.

    A training set also has ``groups``: the folder each item comes from (0: ``DATA_DIR/train``, k: the k-th
    of ``data.extra_train_dirs``; None: all 0), and ``validation``: the set of ``DATA_DIR/val`` when it
    exists (then no training item validates), else None.
    """

    images: List[np.ndarray]
    masks: List[np.ndarray]
    names: List[str]
    normalization: Optional[dict] = None
    groups: Optional[List[int]] = None
    validation: Optional["ImageSet"] = None


@dataclass
class DiskImageSet(_Items):
    """2D images (or 3D volumes) and masks on disk, read one item at a time, and their names.

    ``[i]`` reads item ``i`` whole: ``(image (H, W, C) float32`` normalised like
    the training data, ``mask (H, W) uint8 {0, 1}`` or None without ground truth, ``name)``; nothing is kept, so a
    set of any size is used in bounded memory (``lib.evaluate.evaluation.evaluate_test_set``
    takes it as a test set). Volumes are ``(Z, Y, X, C)`` and ``(Z, Y, X)``.

    Attributes
    ----------
    images : list of lib.data.disk.DiskImage
    masks : list of lib.data.disk.DiskMask (None without ground truth)
    names : list of str
    foreground : list of lib.data.disk.ForegroundIndex, or None
        Per-block foreground index of each mask (training set with ``data.fg_sampling > 0``).
    normalization : dict or None
        The training statistics of ``zscore`` normalisation (mean and std), as :class:`ImageSet`.
    groups, validation
        As :class:`ImageSet`'s.
    fg_counts : list of (foreground pixels, annotated pixels), or None
        Of each training mask, as the scan counted them (the class balance of weight maps).
    class_counts : list of int ndarray (model.classes,), or None
        With ``model.classes > 1``: the pixels of each class in each mask (for ``train.class_weights=auto``).
    """

    images: list
    masks: list
    names: List[str]
    foreground: Optional[list] = None
    normalization: Optional[dict] = None
    groups: Optional[List[int]] = None
    validation: Optional["DiskImageSet"] = None
    fg_counts: Optional[list] = None
    class_counts: Optional[list] = None  # model.classes > 1: pixels of each class in each mask, from the scan
