import keras
import numpy as np
import pytest

from lib.evaluate import metrics
from lib.evaluate.metrics import (
    ObjectCounts,
    PixelCounts,
    SweepHistogram,
    mean_per_item_metrics,
    object_metrics,
    object_metrics_labels,
    object_metrics_set,
    pixel_metrics,
    threshold_sweep,
)
from lib.model.metrics import ForegroundIoU

# Pair A: TP 2, FP 1, FN 1, TN 4.
PRED_A = np.array([[1, 1, 0, 0], [1, 0, 0, 0]], np.uint8)
GT_A = np.array([[1, 0, 0, 0], [1, 1, 0, 0]], np.uint8)
# Pair B: TP 1, FP 0, FN 2, TN 0.
PRED_B = np.array([1, 0, 0], np.uint8)
GT_B = np.array([1, 1, 1], np.uint8)


def _approx(expected):
    return pytest.approx(expected, abs=1e-12)


def test_pixel_metrics_one_pair():
    assert pixel_metrics([PRED_A], [GT_A.astype(bool)]) == _approx(
        {
            "fg_iou": 2 / 4,
            "mean_iou": (2 / 4 + 4 / 6) / 2,
            "dice": 4 / 6,
            "precision": 2 / 3,
            "recall": 2 / 3,
        }
    )


def test_pixel_metrics_pool_counts_over_pairs():
    # TP 3, FP 1, FN 3, TN 4.
    assert pixel_metrics([PRED_A, PRED_B], [GT_A, GT_B]) == _approx(
        {
            "fg_iou": 3 / 7,
            "mean_iou": (3 / 7 + 4 / 8) / 2,
            "dice": 6 / 10,
            "precision": 3 / 4,
            "recall": 3 / 6,
        }
    )


def test_pixel_metrics_empty_prediction():
    gt = np.array([1, 1, 0, 0], np.uint8)
    assert pixel_metrics([np.zeros(4, np.uint8)], [gt]) == _approx(
        {"fg_iou": 0.0, "mean_iou": 0.25, "dice": 0.0, "precision": 0.0, "recall": 0.0}
    )


def test_pixel_metrics_empty_ground_truth():
    pred = np.array([1, 0, 0, 0], np.uint8)
    assert pixel_metrics([pred], [np.zeros(4, np.uint8)]) == _approx(
        {"fg_iou": 0.0, "mean_iou": 0.375, "dice": 0.0, "precision": 0.0, "recall": 1.0}
    )


@pytest.mark.parametrize("value", [0, 1])
def test_pixel_metrics_single_class_everywhere_is_perfect(value):
    mask = np.full((3, 3), value, np.uint8)
    assert pixel_metrics([mask], [mask]) == {k: 1.0 for k in metrics.PIXEL_METRICS}


def test_pixel_counts_add_up():
    total = PixelCounts.from_arrays(PRED_A, GT_A) + PixelCounts.from_arrays(PRED_B, GT_B)
    assert total == PixelCounts(tp=3, fp=1, fn=3, tn=4)


def test_pixel_metrics_shape_mismatch_names_index():
    with pytest.raises(ValueError, match="index 1"):
        pixel_metrics([PRED_A, PRED_B], [GT_A, GT_A])


def test_pixel_metrics_rejects_non_binary_and_unequal_lengths():
    with pytest.raises(ValueError, match="binary"):
        pixel_metrics([PRED_A * 255], [GT_A])
    with pytest.raises(ValueError, match="length"):
        pixel_metrics([PRED_A, PRED_B], [GT_A])
    with pytest.raises(ValueError, match="empty"):
        pixel_metrics([], [])


def test_mean_per_item_differs_from_pooled():
    # A tiny perfect crop and a large poor one: pooled IoU 2/5, mean of items (1 + 1/4) / 2.
    preds = [np.array([1], np.uint8), np.array([1, 0, 0, 0], np.uint8)]
    gts = [np.array([1], np.uint8), np.array([1, 1, 1, 1], np.uint8)]
    assert pixel_metrics(preds, gts)["fg_iou"] == pytest.approx(2 / 5)
    per_item = mean_per_item_metrics(preds, gts)
    assert per_item["fg_iou"] == pytest.approx(0.625)
    assert per_item["recall"] == pytest.approx(0.625)
    assert set(per_item) == set(metrics.PIXEL_METRICS)


def _boxes(shape, *boxes):
    """Label image with object i + 1 on the i-th (row slice, column slice) box."""
    labels = np.zeros(shape, np.int32)
    for i, box in enumerate(boxes):
        labels[box] = i + 1
    return labels


def test_split_needed_when_one_object_covers_two_references():
    gt = _boxes((5, 9), np.s_[1:4, 1:4], np.s_[1:4, 5:8])
    pred = _boxes((5, 9), np.s_[1:4, 1:8])
    m = object_metrics(pred > 0, gt > 0)
    assert (m["n_ref"], m["n_pred"], m["splits"], m["fn"], m["fp"]) == (2, 1, 1, 0, 0)
    assert (m["aogm_d"], m["aogm_d0"]) == (5, 20)
    assert m["det"] == pytest.approx(0.75)
    assert m["seg"] == pytest.approx(9 / 21)


def test_over_segmentation_majority_part_matches_rest_is_false_positive():
    gt = _boxes((4, 6), np.s_[:, :])
    pred = _boxes((4, 6), np.s_[:, 0:4], np.s_[:, 4:6])
    m = object_metrics_labels(pred, gt)
    assert (m["splits"], m["fn"], m["fp"], m["aogm_d"]) == (0, 0, 1, 1)
    assert m["det"] == pytest.approx(0.9)
    assert m["seg"] == pytest.approx(16 / 24)


def test_half_overlaps_do_not_match_and_det_is_clipped_at_zero():
    # Each half covers exactly 50% of the reference: not more than half, so no match.
    gt = _boxes((4, 4), np.s_[:, :])
    pred = _boxes((4, 4), np.s_[:, 0:2], np.s_[:, 2:4])
    m = object_metrics_labels(pred, gt)
    assert (m["fn"], m["fp"], m["aogm_d"], m["aogm_d0"]) == (1, 2, 12, 10)
    assert m["det"] == 0.0
    assert m["seg"] == 0.0


def test_miss_and_false_positive():
    gt = _boxes((6, 12), np.s_[1:3, 1:3], np.s_[1:3, 6:9])
    pred = _boxes((6, 12), np.s_[1:3, 1:3], np.s_[4:6, 10:12])
    m = object_metrics(pred > 0, gt > 0)
    assert (m["splits"], m["fn"], m["fp"], m["aogm_d"], m["aogm_d0"]) == (0, 1, 1, 11, 20)
    assert m["det"] == pytest.approx(0.45)
    assert m["seg"] == pytest.approx(0.5)


def test_labels_need_not_be_consecutive():
    gt = np.array([[0, 7, 7, 0, 3_000_000]], np.int64)
    pred = np.array([[5, 5, 5, 0, 0]], np.int32)
    m = object_metrics_labels(pred, gt)
    # Reference 7 matches (J = 2/3); the single-pixel reference is missed.
    assert (m["n_ref"], m["fn"], m["fp"]) == (2, 1, 0)
    assert m["seg"] == pytest.approx((2 / 3) / 2)


def test_3d_objects_use_full_connectivity_by_default():
    # Two cubes touching only at a corner: one object with 26-, two with 6-connectivity.
    mask = np.zeros((4, 4, 4), np.uint8)
    mask[0:2, 0:2, 0:2] = 1
    mask[2:4, 2:4, 2:4] = 1
    pred = np.zeros_like(mask)
    pred[0:2, 0:2, 0:2] = 1
    full = object_metrics(pred, mask)
    assert (full["n_ref"], full["fn"]) == (1, 1)
    assert full["det"] == 0.0
    faces = object_metrics(pred, mask, connectivity=1)
    assert (faces["n_ref"], faces["fn"], faces["fp"]) == (2, 1, 0)
    assert faces["det"] == pytest.approx(0.5)
    assert faces["seg"] == pytest.approx(0.5)


def test_empty_ground_truth_objects():
    empty = np.zeros((3, 3), np.uint8)
    one = empty.copy()
    one[1, 1] = 1
    nothing = object_metrics(empty, empty)
    assert (nothing["det"], nothing["seg"], nothing["aogm_d0"]) == (1.0, 1.0, 0)
    spurious = object_metrics(one, empty)
    assert (spurious["det"], spurious["seg"], spurious["fp"]) == (0.0, 0.0, 1)


def test_object_metrics_set_sums_costs_and_pools_references():
    split_gt = _boxes((6, 12), np.s_[1:4, 1:4], np.s_[1:4, 5:8]) > 0
    split_pred = _boxes((6, 12), np.s_[1:4, 1:8]) > 0
    miss_gt = _boxes((6, 12), np.s_[1:3, 1:3], np.s_[1:3, 6:9]) > 0
    miss_pred = _boxes((6, 12), np.s_[1:3, 1:3], np.s_[4:6, 10:12]) > 0
    fp_only = _boxes((6, 12), np.s_[0:1, 0:1]) > 0
    m = object_metrics_set(
        [split_pred, miss_pred, fp_only], [split_gt, miss_gt, np.zeros((6, 12), bool)]
    )
    assert (m["aogm_d"], m["aogm_d0"], m["n_ref"]) == (5 + 11 + 1, 40, 4)
    assert m["det"] == pytest.approx(1 - 17 / 40)
    assert m["seg"] == pytest.approx((9 / 21 + 9 / 21 + 1 + 0) / 4)


def _brute_force_sweep(probs, gts, thresholds):
    from lib.predict.postprocess import binarize  # the sweep scores what binarize gives at each threshold

    per_t = [pixel_metrics([binarize(p, float(t)) for p in probs], gts) for t in thresholds]
    return [m["fg_iou"] for m in per_t], [m["dice"] for m in per_t]


def test_threshold_sweep_matches_brute_force(monkeypatch):
    # Tiny blocks exercise the blockwise accumulation.
    monkeypatch.setattr(metrics, "_SWEEP_BLOCK", 7)
    rng = np.random.default_rng(0)
    gts = [rng.random((6, 5)) < 0.4, rng.random((3, 4, 4)) < 0.3]
    probs = [
        np.clip(g * 0.3 + rng.random(g.shape) * 0.7, 0, 1).astype(np.float32) for g in gts
    ]
    # Values exactly on thresholds test the p >= t convention.
    probs[0][0, :3] = [0.05, 0.5, 0.95]
    out = threshold_sweep(probs, gts)
    fg_iou, dice = _brute_force_sweep(probs, gts, metrics.DEFAULT_THRESHOLDS)
    assert out["thresholds"] == pytest.approx(metrics.DEFAULT_THRESHOLDS.tolist())
    assert out["fg_iou"] == pytest.approx(fg_iou, abs=1e-12)
    assert out["dice"] == pytest.approx(dice, abs=1e-12)
    best = int(np.argmax(fg_iou))
    assert out["best_threshold"] == pytest.approx(metrics.DEFAULT_THRESHOLDS[best])
    assert out["best_fg_iou"] == pytest.approx(fg_iou[best])


def test_threshold_sweep_perfect_separation():
    rng = np.random.default_rng(1)
    gt = rng.random((20, 20)) < 0.5
    probs = np.where(gt, rng.uniform(0.72, 1.0, gt.shape), rng.uniform(0.0, 0.28, gt.shape))
    out = threshold_sweep(probs[None], gt[None])
    t, iou = np.array(out["thresholds"]), np.array(out["fg_iou"])
    separating = (t >= 0.3) & (t <= 0.7)
    assert np.all(iou[separating] == 1.0)
    assert np.all(np.diff(iou[t <= 0.3]) >= 0)
    assert np.all(np.diff(iou[t >= 0.7]) <= 0)
    assert out["best_threshold"] == 0.3
    assert out["best_fg_iou"] == 1.0


def test_threshold_sweep_validates():
    p, g = np.full((2, 2), 0.5, np.float32), np.ones((2, 2), np.uint8)
    with pytest.raises(ValueError, match="increasing"):
        threshold_sweep([p], [g], thresholds=[0.5, 0.3])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        threshold_sweep([p], [g], thresholds=[0.5, 1.5])
    with pytest.raises(ValueError, match="probabilities"):
        threshold_sweep([p + 1], [g])


def test_foreground_iou_accumulates_over_batches():
    rng = np.random.default_rng(2)
    gts = [(rng.random((2, 8, 8, 1)) < 0.4).astype("float32") for _ in range(2)]
    probs = [rng.random((2, 8, 8, 1)).astype("float32") for _ in range(2)]
    metric = ForegroundIoU()
    assert metric.name == "iou"
    for g, p in zip(gts, probs):
        metric.update_state(g, p)
    expected = pixel_metrics([p >= 0.5 for p in probs], [g.astype(bool) for g in gts])["fg_iou"]
    assert float(metric.result()) == pytest.approx(expected, rel=1e-6)
    metric.reset_state()
    assert float(metric.result()) == 1.0


def test_foreground_iou_sample_weight_and_serialisation():
    rng = np.random.default_rng(3)
    gt = (rng.random((2, 8, 8, 1)) < 0.4).astype("float32")
    prob = rng.random((2, 8, 8, 1)).astype("float32")
    metric = ForegroundIoU(threshold=0.3, name="fg")
    metric.update_state(gt, prob, sample_weight=np.array([1.0, 0.0], "float32"))
    expected = pixel_metrics([prob[0] >= 0.3], [gt[0].astype(bool)])["fg_iou"]
    assert float(metric.result()) == pytest.approx(expected, rel=1e-6)

    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(metric))
    assert isinstance(clone, ForegroundIoU)
    assert (clone.name, clone.threshold) == ("fg", 0.3)


def test_sweep_histogram_streamed_equals_threshold_sweep():
    rng = np.random.default_rng(4)
    gts = [rng.random((5, 7)) < 0.3 for _ in range(4)]
    probs = [rng.random(g.shape).astype(np.float32) for g in gts]
    sweep = SweepHistogram()
    for p, g in zip(probs, gts):
        sweep.update(p, g)
    assert sweep.result() == threshold_sweep(probs, gts)
    assert sweep.counts()[9] == PixelCounts.from_arrays(np.stack(probs) >= 0.5, np.stack(gts))
    with pytest.raises(ValueError, match="shape"):
        sweep.update(probs[0], gts[0][:, :3])


def test_threshold_sweep_monotonic_cases():
    rng = np.random.default_rng(5)
    probs = rng.random((30, 30)).astype(np.float32)
    # All foreground: IoU and Dice equal recall, which can only fall as the threshold rises.
    everything = threshold_sweep([probs], [np.ones_like(probs, np.uint8)])
    assert np.all(np.diff(everything["fg_iou"]) <= 0) and everything["fg_iou"][0] > everything["fg_iou"][-1]
    assert everything["best_threshold"] == 0.05
    # No foreground: every predicted pixel is a false positive, so IoU is 0 until nothing is predicted.
    nothing = threshold_sweep([probs * 0.5], [np.zeros_like(probs, np.uint8)])
    assert nothing["fg_iou"] == [0.0] * 9 + [1.0] * 10 and nothing["best_threshold"] == 0.5
    # Binary probabilities equal to the truth: perfect at every threshold.
    gt = probs > 0.5
    assert threshold_sweep([gt.astype(np.float32)], [gt])["fg_iou"] == [1.0] * 19


def test_empty_prediction_objects():
    gt = _boxes((6, 12), np.s_[1:3, 1:3], np.s_[1:3, 6:9]) > 0
    m = object_metrics(np.zeros_like(gt), gt)
    assert (m["det"], m["seg"], m["fn"], m["fp"], m["n_pred"]) == (0.0, 0.0, 2, 0, 0)


def test_object_counts_reuse_ground_truth_labels():
    from skimage.measure import label

    gt = _boxes((6, 12), np.s_[1:4, 1:4], np.s_[1:4, 5:8]) > 0
    pred = _boxes((6, 12), np.s_[1:4, 1:8]) > 0
    counts = ObjectCounts.from_masks(pred, gt, gt_labels=label(gt))
    assert counts == ObjectCounts.from_masks(pred, gt)
    assert counts.metrics() == object_metrics(pred, gt)


def test_sparse_ids_without_background_keep_every_object():
    gt = np.ones((8, 8), np.int64)
    pred = np.full((8, 8), 1_000_000, np.int64)  # one object, ids sparse enough to be renumbered
    assert metrics.object_metrics_labels(pred, gt)["det"] == 1.0
    pred[:, :4] = 2_000_000
    gt[:, :4] = 2
    assert metrics.object_metrics_labels(pred, gt)["det"] == 1.0


def test_best_threshold_scores_what_a_rerun_with_it_scores():
    from lib.predict.postprocess import binarize

    t = 0.35  # float32(0.35) < 0.35: a pixel at float32(t) was foreground for binarize, not for the sweep
    prob = np.full((4, 4), np.float32(t), np.float32)
    prob[:2] = 0.9
    gt = np.ones((4, 4), np.uint8)
    sweep = SweepHistogram()
    sweep.update(prob, gt)
    k = list(sweep.thresholds).index(t)
    assert sweep.counts()[k] == PixelCounts.from_arrays(binarize(prob, t), gt)
    assert sweep.result()["fg_iou"][k] == 1.0
