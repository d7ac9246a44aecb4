"""Instance metrics: predicted objects matched to reference objects by IoU, as instance-segmentation papers report.

A predicted and a reference object match at threshold ``t`` (``t >= 0.5``) when their IoU is at least ``t``;
above 0.5 an object can match at most one other, and the rare ties at exactly 0.5 (a prediction made of two
equal halves of two references) are broken by IoU, then by the prediction's score, each object used once.

- ``precision_<t>``, ``recall_<t>``, ``f1_<t>`` at ``t`` = 0.5 and 0.75: matched counts ``TP / predicted``,
  ``TP / reference``, ``2 TP / (predicted + reference)``;
- ``ap_<t>`` and ``map``: average precision as the COCO and MitoEM challenges compute it (predictions ranked by
  their score, e.g. their mean probability; precision interpolated at 101 recall points), at 0.5, 0.75, and its
  mean over ``t`` = 0.5, 0.55 ... 0.95.

Counts pool over the images of a test set (:meth:`Matches.__add__`). Without reference objects every metric is
1.0 when nothing was predicted, else 0.0.
"""

from dataclasses import dataclass, field

import numpy as np

IOU_THRESHOLDS = np.round(np.arange(0.5, 0.951, 0.05), 2)
REPORTED = (0.5, 0.75)
RECALL_POINTS = np.linspace(0.0, 1.0, 101)


def _check(labels, what):
    labels = np.asarray(labels)
    if labels.dtype.kind not in "uib" or (labels.dtype.kind == "i" and labels.size and labels.min() < 0):
        raise ValueError(f"{what}: expected non-negative integer labels, got {labels.dtype}")
    return labels.astype(np.int64, copy=False)


def matched_ious(pred_labels, gt_labels, scores=None):
    """``(ids of the predicted objects, IoU of each with its match or 0.0, number of reference objects)``.

    Parameters
    ----------
    pred_labels, gt_labels : ndarray of int, the same shape, 0 for background (ids need not be consecutive)
    scores : dict or None, ``{predicted id: score}``, to break ties at IoU 0.5 (higher first)
    """
    pred, gt = _check(pred_labels, "predicted labels"), _check(gt_labels, "ground-truth labels")
    if pred.shape != gt.shape:
        raise ValueError(f"predicted labels shape {pred.shape} differs from ground truth shape {gt.shape}")
    pred_sizes = np.bincount(pred.ravel(), minlength=1)
    gt_sizes = np.bincount(gt.ravel(), minlength=1)
    pred_ids = np.flatnonzero(pred_sizes[1:]) + 1
    n_ref = int(np.count_nonzero(gt_sizes[1:]))
    both = (pred > 0) & (gt > 0)
    codes, overlap = np.unique(pred[both] * np.int64(gt_sizes.size) + gt[both], return_counts=True)
    p, g = np.divmod(codes, gt_sizes.size)
    iou = overlap / (pred_sizes[p] + gt_sizes[g] - overlap)
    keep = iou >= IOU_THRESHOLDS[0]
    p, g, iou = p[keep], g[keep], iou[keep]
    tie = np.array([-(scores or {}).get(int(i), 0.0) for i in p])
    best = {}
    taken = set()
    for k in np.lexsort((tie, -iou)):  # greedy: highest IoU first, then the higher score
        if p[k] not in best and g[k] not in taken:
            best[p[k]] = iou[k]
            taken.add(g[k])
    return pred_ids, np.array([best.get(i, 0.0) for i in pred_ids], np.float64), n_ref


@dataclass
class Matches:
    """The matched IoU and score of every predicted object of one or more images, and their reference count."""

    n_ref: int = 0
    ious: np.ndarray = field(default_factory=lambda: np.zeros(0))
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @classmethod
    def from_labels(cls, pred_labels, gt_labels, prob=None):
        """Match two label images; a predicted object's score is its mean of ``prob`` (1.0 without ``prob``)."""
        pred = np.asarray(pred_labels)
        ids = np.unique(pred[pred > 0]) if prob is not None else None
        scores = None
        if prob is not None:
            sums = np.bincount(pred.ravel(), weights=np.asarray(prob, np.float64).ravel())
            counts = np.bincount(pred.ravel())
            scores = {int(i): sums[i] / counts[i] for i in ids}
        pred_ids, ious, n_ref = matched_ious(pred, gt_labels, scores)
        values = np.array([scores[int(i)] for i in pred_ids]) if scores else np.ones(len(pred_ids))
        return cls(n_ref, ious, values)

    def __add__(self, other):
        return Matches(self.n_ref + other.n_ref, np.concatenate([self.ious, other.ious]),
                       np.concatenate([self.scores, other.scores]))

    def metrics(self):
        """``precision_50``, ``recall_50``, ``f1_50``, the same at 0.75, ``ap_50``, ``ap_75`` and ``map``."""
        n_pred = len(self.ious)
        empty = 1.0 if n_pred == 0 else 0.0
        out = {}
        for t in REPORTED:
            tp = int(np.count_nonzero(self.ious >= t))
            tag = f"{round(t * 100)}"
            out[f"precision_{tag}"] = tp / n_pred if n_pred else (1.0 if self.n_ref == 0 else 0.0)
            out[f"recall_{tag}"] = tp / self.n_ref if self.n_ref else empty
            out[f"f1_{tag}"] = 2 * tp / (n_pred + self.n_ref) if n_pred + self.n_ref else 1.0
        aps = {t: self.average_precision(t) for t in IOU_THRESHOLDS}
        out.update(ap_50=aps[0.5], ap_75=aps[0.75], map=float(np.mean(list(aps.values()))))
        return out

    def average_precision(self, t):
        """COCO's average precision at IoU ``t``: precision, made non-increasing, read at 101 recall points."""
        if self.n_ref == 0 or len(self.ious) == 0:
            return float(self.n_ref == 0 and len(self.ious) == 0)
        order = np.argsort(-self.scores, kind="stable")
        hit = self.ious[order] >= t
        tp = np.cumsum(hit)
        precision = tp / np.arange(1, len(hit) + 1)
        recall = tp / self.n_ref
        precision = np.maximum.accumulate(precision[::-1])[::-1]
        at = np.searchsorted(recall, RECALL_POINTS, side="left")
        return float(np.mean(np.where(at < len(precision), precision[np.minimum(at, len(precision) - 1)], 0.0)))
