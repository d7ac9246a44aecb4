"""Segmentation metrics: NumPy evaluation of whole images and volumes, and a Keras metric.

Pixel metrics (``fg_iou``, ``mean_iou``, ``dice``, ``precision``, ``recall``) are
computed from true/false positive/negative counts. Conventions when a denominator
is zero, chosen so that a correct "nothing here" prediction scores 1:

- IoU and Dice of a class are 1.0 when that class is absent from both the
  prediction and the ground truth;
- precision is 1.0 when nothing is predicted and nothing was to be found
  (``FN == 0``), else 0.0;
- recall is 1.0 when the ground truth has no foreground.

Object metrics ``det`` and ``seg`` follow the Cell Tracking Challenge (Maška et
al., 2014; Ulman et al., 2017): a reference object R matches the computed object C
when ``|R ∩ C| > 0.5 |R|``, so each R matches at most one C.

Binarisation convention: a probability ``p`` is foreground at threshold ``t`` when
``p >= t``, as in :func:`lib.predict.postprocess.binarize` and ``keras.metrics.BinaryIoU``.
"""

from dataclasses import dataclass, fields

import numpy as np
from skimage.measure import label as _label

from ..predict.postprocess import threshold_as

PIXEL_METRICS = ("fg_iou", "mean_iou", "dice", "precision", "recall")


DEFAULT_THRESHOLDS = np.round(np.arange(0.05, 0.951, 0.05), 2)


# Weights of the detection operations in AOGM-D (Matula et al., 2015).
_SPLIT_WEIGHT = 5


_FN_WEIGHT = 10


_FP_WEIGHT = 1


# Elements per block in threshold_sweep: bounds its temporaries to a few tens of MB
# whatever the size of a volume.
_SWEEP_BLOCK = 1 << 22


def _ratio(num, den, empty):
    return num / den if den else empty


def _check_binary(a, what):
    a = np.asarray(a)
    if a.dtype == bool:
        return a
    # Every nonzero value must be exactly 1: catches 0/255 masks and probabilities.
    if np.count_nonzero(a) != np.count_nonzero(a == 1):
        raise ValueError(
            f"{what}: expected a binary array of 0 and 1, got values in "
            f"[{a.min()}, {a.max()}] (dtype {a.dtype}); binarise it first"
        )
    return a.astype(bool)


def _pairs(preds, gts):
    """Yield (index, pred, gt) with checked shapes, over two equally long iterables."""
    sentinel = object()
    preds, gts = iter(preds), iter(gts)
    i = 0
    while True:
        p, g = next(preds, sentinel), next(gts, sentinel)
        if p is sentinel and g is sentinel:
            if i == 0:
                raise ValueError("no arrays to evaluate: preds and gts are empty")
            return
        if p is sentinel or g is sentinel:
            raise ValueError(
                f"preds and gts differ in length: one ends at index {i}, the other goes on"
            )
        p, g = np.asarray(p), np.asarray(g)
        if p.shape != g.shape:
            raise ValueError(
                f"index {i}: prediction shape {p.shape} differs from ground truth shape {g.shape}"
            )
        yield i, p, g
        i += 1


@dataclass
class PixelCounts:
    """True/false positive/negative pixel counts, summed over any number of arrays.

    Counts are Python integers, which cannot overflow however large the data.

    Attributes
    ----------
    tp, fp, fn, tn : int
        Foreground pixels predicted as foreground, background predicted as
        foreground, foreground predicted as background, background predicted as
        background.
    """

    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    @classmethod
    def from_arrays(cls, pred, gt):
        """Count one pair of binary arrays.

        Parameters
        ----------
        pred, gt : ndarray of bool or {0, 1} integers, any shape
            Prediction and ground truth, of the same shape.

        Returns
        -------
        PixelCounts
        """
        pred = _check_binary(pred, "prediction")
        gt = _check_binary(gt, "ground truth")
        if pred.shape != gt.shape:
            raise ValueError(
                f"prediction shape {pred.shape} differs from ground truth shape {gt.shape}"
            )
        tp = int(np.count_nonzero(pred & gt))
        fp = int(np.count_nonzero(pred)) - tp
        fn = int(np.count_nonzero(gt)) - tp
        return cls(tp, fp, fn, pred.size - tp - fp - fn)

    def __add__(self, other):
        return PixelCounts(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    def metrics(self):
        """Pixel metrics of these counts, with the module's empty-denominator conventions.

        Returns
        -------
        dict
            ``fg_iou``, ``mean_iou``, ``dice``, ``precision``, ``recall`` as floats.
        """
        tp, fp, fn, tn = self.tp, self.fp, self.fn, self.tn
        fg_iou = _ratio(tp, tp + fp + fn, 1.0)
        bg_iou = _ratio(tn, tn + fp + fn, 1.0)
        return {
            "fg_iou": fg_iou,
            "mean_iou": (fg_iou + bg_iou) / 2,
            "dice": _ratio(2 * tp, 2 * tp + fp + fn, 1.0),
            "precision": _ratio(tp, tp + fp, 1.0 if fn == 0 else 0.0),
            "recall": _ratio(tp, tp + fn, 1.0),
        }


def pixel_metrics(preds, gts):
    """Pixel metrics pooled over a set of arrays (counts summed, then ratios taken).

    Parameters
    ----------
    preds, gts : iterable of ndarray of bool or {0, 1} integers
        Predictions and ground truths, paired in order; each pair has one shape,
        any number of dimensions. A stacked array ``(N, ...)`` is iterated over
        its first axis.

    Returns
    -------
    dict
        ``fg_iou`` (foreground Jaccard ``TP / (TP + FP + FN)``), ``mean_iou``
        (mean of foreground and background IoU, ``TN / (TN + FP + FN)``), ``dice``,
        ``precision``, ``recall``; floats. See the module docstring for the
        values of empty denominators.

    Raises
    ------
    ValueError
        If a pair differs in shape (the message names its index), an array is not
        binary, or the iterables are empty or of different lengths.
    """
    total = PixelCounts()
    for _, p, g in _pairs(preds, gts):
        total = total + PixelCounts.from_arrays(p, g)
    return total.metrics()


def mean_per_item_metrics(preds, gts):
    """Pixel metrics computed for each pair of arrays, then averaged over pairs.

    Parameters
    ----------
    preds, gts : iterable of ndarray of bool or {0, 1} integers
        As in :func:`pixel_metrics`.

    Returns
    -------
    dict
        The keys of :func:`pixel_metrics`; each value is the unweighted mean of
        the per-pair values, so a small crop weighs as much as a large one.
    """
    per_item = [PixelCounts.from_arrays(p, g).metrics() for _, p, g in _pairs(preds, gts)]
    return {k: float(np.mean([m[k] for m in per_item])) for k in PIXEL_METRICS}


@dataclass
class ObjectCounts:
    """Detection errors and matched Jaccard indices of one or more images.

    Attributes
    ----------
    n_ref, n_pred : int
        Reference (ground-truth) and computed (predicted) objects.
    splits : int
        Splits needed: ``k - 1`` for each computed object matched by ``k > 1``
        reference objects.
    fn : int
        Reference objects matched by no computed object.
    fp : int
        Computed objects matching no reference object.
    jaccard_sum : float
        Sum over reference objects of the Jaccard index with their match.
    """

    n_ref: int = 0
    n_pred: int = 0
    splits: int = 0
    fn: int = 0
    fp: int = 0
    jaccard_sum: float = 0.0

    @classmethod
    def from_labels(cls, pred_labels, gt_labels):
        """Match the objects of two label arrays of one image or volume.

        Parameters
        ----------
        pred_labels, gt_labels : ndarray of int, any shape
            Computed and reference objects, 0 for background; the same shape.
            Labels need not be consecutive.

        Returns
        -------
        ObjectCounts
        """
        pred = _check_labels(pred_labels, "predicted labels")
        gt = _check_labels(gt_labels, "ground-truth labels")
        if pred.shape != gt.shape:
            raise ValueError(
                f"predicted labels shape {pred.shape} differs from ground truth shape {gt.shape}"
            )
        gt_sizes = np.bincount(gt.ravel(), minlength=1)
        pred_sizes = np.bincount(pred.ravel(), minlength=1)
        gt_ids = np.flatnonzero(gt_sizes[1:]) + 1
        pred_ids = np.flatnonzero(pred_sizes[1:]) + 1

        # Sparse contingency table over the overlapping pixels only: one sort of
        # (gt, pred) pair codes instead of a dense n_ref x n_pred table.
        both = (gt > 0) & (pred > 0)
        codes = gt[both] * np.int64(pred_sizes.size) + pred[both]
        codes, overlap = np.unique(codes, return_counts=True)
        r, c = np.divmod(codes, pred_sizes.size)

        matched = 2 * overlap > gt_sizes[r]
        r, c, overlap = r[matched], c[matched], overlap[matched]
        refs_per_pred = np.bincount(c, minlength=pred_sizes.size)[pred_ids]
        jaccard = overlap / (gt_sizes[r] + pred_sizes[c] - overlap)
        return cls(
            n_ref=gt_ids.size,
            n_pred=pred_ids.size,
            splits=int(np.maximum(refs_per_pred - 1, 0).sum()),
            fn=gt_ids.size - r.size,
            fp=int(np.count_nonzero(refs_per_pred == 0)),
            jaccard_sum=float(jaccard.sum()),
        )

    @classmethod
    def from_masks(cls, pred, gt, connectivity=None, gt_labels=None):
        """Match the connected components of two binary masks of one image or volume.

        Parameters
        ----------
        pred, gt : ndarray of bool or {0, 1} integers, shape (Y, X) or (Z, Y, X)
            Prediction and ground truth, of the same shape.
        connectivity : int, optional
            Neighbourhood of :func:`skimage.measure.label`, from 1 (faces) to
            ``ndim``; default ``ndim`` (8-connected in 2D, 26-connected in 3D).
        gt_labels : ndarray of int, optional
            The labelled components of ``gt``, when already computed (labelling a
            large volume once serves every prediction compared with it).

        Returns
        -------
        ObjectCounts
        """
        pred = _check_binary(pred, "prediction")
        if gt_labels is None:
            gt_labels = _label(_check_binary(gt, "ground truth"), connectivity=connectivity)
        return cls.from_labels(_label(pred, connectivity=connectivity), gt_labels)

    def __add__(self, other):
        return ObjectCounts(
            *(getattr(self, f.name) + getattr(other, f.name) for f in fields(self))
        )

    @property
    def aogm_d(self):
        """Cost of the detection errors: ``5 splits + 10 FN + 1 FP``."""
        return _SPLIT_WEIGHT * self.splits + _FN_WEIGHT * self.fn + _FP_WEIGHT * self.fp

    @property
    def aogm_d0(self):
        """Cost of detecting from nothing: ``10 n_ref``."""
        return _FN_WEIGHT * self.n_ref

    def metrics(self):
        """DET, SEG and the counts behind them.

        Returns
        -------
        dict
            ``det`` = ``1 - min(AOGM-D, AOGM-D0) / AOGM-D0``; ``seg`` = mean over
            reference objects of the Jaccard index with their match (0 when
            unmatched). Without reference objects both are 1.0 if nothing was
            computed, else 0.0. Also ``n_ref``, ``n_pred``, ``splits``, ``fn``,
            ``fp``, ``aogm_d``, ``aogm_d0``.
        """
        empty = 1.0 if self.n_pred == 0 else 0.0
        d, d0 = self.aogm_d, self.aogm_d0
        return {
            "det": 1.0 - min(d, d0) / d0 if d0 else empty,
            "seg": _ratio(self.jaccard_sum, self.n_ref, empty),
            "n_ref": self.n_ref,
            "n_pred": self.n_pred,
            "splits": self.splits,
            "fn": self.fn,
            "fp": self.fp,
            "aogm_d": d,
            "aogm_d0": d0,
        }


def _check_labels(a, what):
    a = np.asarray(a)
    if a.dtype == bool:
        return a.astype(np.int64)
    if not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{what}: expected an integer label array, got dtype {a.dtype}")
    if a.size and a.min() < 0:
        raise ValueError(f"{what}: labels must be >= 0, got {a.min()}")
    if a.size and a.max() > a.size:
        # Sparse huge ids would make the bincounts larger than the image: number them 1, 2, ...
        # keeping 0 for the background (the smallest id, if there is no 0, is an object too).
        values, inverse = np.unique(a, return_inverse=True)
        a = (inverse + (values[0] != 0)).reshape(a.shape)
    return a.astype(np.int64, copy=False)


def object_metrics_labels(pred_labels, gt_labels):
    """Cell Tracking Challenge DET and SEG of one labelled image or volume.

    Parameters
    ----------
    pred_labels, gt_labels : ndarray of int, shape (Y, X) or (Z, Y, X)
        Computed and reference objects, 0 for background; the same shape.

    Returns
    -------
    dict
        See :meth:`ObjectCounts.metrics`.
    """
    return ObjectCounts.from_labels(pred_labels, gt_labels).metrics()


def object_metrics(pred, gt, connectivity=None):
    """Cell Tracking Challenge DET and SEG of one binary image or volume.

    Objects are the connected components of each mask.

    Parameters
    ----------
    pred, gt : ndarray of bool or {0, 1} integers, shape (Y, X) or (Z, Y, X)
        Prediction and ground truth, of the same shape.
    connectivity : int, optional
        Neighbourhood of :func:`skimage.measure.label`, from 1 (faces) to
        ``ndim``; default ``ndim`` (8-connected in 2D, 26-connected in 3D).

    Returns
    -------
    dict
        See :meth:`ObjectCounts.metrics`.
    """
    return ObjectCounts.from_masks(pred, gt, connectivity).metrics()


def object_metrics_set(preds, gts, connectivity=None):
    """DET and SEG of a set of binary images, aggregated over the set.

    DET sums AOGM-D and AOGM-D0 over images before taking the ratio; SEG averages
    the Jaccard index over all reference objects of all images.

    Parameters
    ----------
    preds, gts : iterable of ndarray of bool or {0, 1} integers, shape (Y, X)
        Predictions and ground truths, paired in order.
    connectivity : int, optional
        As in :func:`object_metrics`.

    Returns
    -------
    dict
        See :meth:`ObjectCounts.metrics`; counts are totals over the set.
    """
    total = ObjectCounts()
    for _, p, g in _pairs(preds, gts):
        total = total + ObjectCounts.from_masks(p, g, connectivity)
    return total.metrics()


class SweepHistogram:
    """Threshold sweep accumulated one array at a time: streaming :func:`threshold_sweep`.

    Each probability is binned by the number of thresholds it reaches
    (``p >= t``), separately for ground-truth foreground and background;
    cumulative sums of the two histograms give the confusion counts at every
    threshold, exactly. Memory is two histograms of ``K + 1`` integers, whatever
    the number and size of the arrays added.

    Parameters
    ----------
    thresholds : array_like of float, shape (K,)
        Strictly increasing thresholds in [0, 1]; default 0.05, 0.10, ..., 0.95.
    """

    def __init__(self, thresholds=DEFAULT_THRESHOLDS):
        thresholds = np.asarray(thresholds, dtype=np.float64)
        if thresholds.ndim != 1 or thresholds.size == 0:
            raise ValueError(
                f"thresholds: expected a non-empty 1-D sequence, got shape {thresholds.shape}"
            )
        if not np.all((thresholds >= 0) & (thresholds <= 1)):
            raise ValueError(f"thresholds: expected values in [0, 1], got {thresholds.tolist()}")
        if np.any(np.diff(thresholds) <= 0):
            raise ValueError(
                f"thresholds: expected strictly increasing values, got {thresholds.tolist()}"
            )
        self.thresholds = thresholds
        self.fg_hist = np.zeros(thresholds.size + 1, np.int64)
        self.bg_hist = np.zeros(thresholds.size + 1, np.int64)

    def update(self, prob, gt, where="probabilities"):
        """Add one probability map and its ground truth.

        Parameters
        ----------
        prob : ndarray of float, any shape
            Foreground probabilities in [0, 1].
        gt : ndarray of bool or {0, 1} integers, shape of ``prob``
            Ground truth.
        where : str
            Names the array in error messages.
        """
        p, g = np.asarray(prob), _check_binary(gt, f"ground truth of {where}")
        if p.shape != g.shape:
            raise ValueError(f"{where}: shape {p.shape} differs from ground truth shape {g.shape}")
        p, g = p.ravel(), g.ravel()
        if p.size and not (p.min() >= 0 and p.max() <= 1):  # also rejects NaN
            raise ValueError(f"{where}: probabilities must lie in [0, 1], got [{p.min()}, {p.max()}]")
        n_bins = self.fg_hist.size
        # Compared in the probabilities' own type, as binarize compares: a pixel at exactly a
        # threshold counts the same here as in a rerun with that threshold.
        thresholds = threshold_as(self.thresholds, p.dtype)
        for start in range(0, p.size, _SWEEP_BLOCK):
            block = slice(start, start + _SWEEP_BLOCK)
            reached = np.searchsorted(thresholds, p[block], side="right")
            fg = g[block]
            self.fg_hist += np.bincount(reached[fg], minlength=n_bins)
            self.bg_hist += np.bincount(reached[~fg], minlength=n_bins)

    def counts(self):
        """Confusion counts at every threshold: a list of K :class:`PixelCounts`."""
        # A pixel in bin b reaches thresholds 0..b-1: positives at threshold k are bins > k.
        tp = np.cumsum(self.fg_hist[::-1])[::-1][1:]
        fp = np.cumsum(self.bg_hist[::-1])[::-1][1:]
        fn = self.fg_hist.sum() - tp
        tn = self.bg_hist.sum() - fp
        return [PixelCounts(*map(int, c)) for c in zip(tp, fp, fn, tn)]

    def result(self):
        """The sweep, as :func:`threshold_sweep` returns it."""
        scores = [c.metrics() for c in self.counts()]
        fg_iou = [s["fg_iou"] for s in scores]
        best = int(np.argmax(fg_iou))
        return {
            "thresholds": self.thresholds.tolist(),
            "fg_iou": fg_iou,
            "dice": [s["dice"] for s in scores],
            "best_threshold": float(self.thresholds[best]),
            "best_fg_iou": fg_iou[best],
        }


def threshold_sweep(probs, gts, thresholds=DEFAULT_THRESHOLDS):
    """Pooled foreground IoU and Dice at many thresholds, in one pass over the data.

    Exact confusion counts at every threshold from two histograms (see
    :class:`SweepHistogram`); memory does not depend on the number of thresholds.

    Parameters
    ----------
    probs : iterable of ndarray of float, any shape
        Foreground probabilities in [0, 1]. A stacked array ``(N, ...)`` is
        iterated over its first axis.
    gts : iterable of ndarray of bool or {0, 1} integers
        Ground truths, each the shape of its probability array.
    thresholds : array_like of float, shape (K,)
        Strictly increasing thresholds in [0, 1]; default 0.05, 0.10, ..., 0.95.

    Returns
    -------
    dict
        ``thresholds`` (list of K floats), ``fg_iou`` and ``dice`` (lists of K
        floats, pooled over the set), ``best_threshold`` (the lowest threshold of
        highest ``fg_iou``) and ``best_fg_iou``.
    """
    sweep = SweepHistogram(thresholds)
    for i, p, g in _pairs(probs, gts):
        sweep.update(p, g, where=f"index {i}")
    return sweep.result()
