"""Tests of lib.model.losses against hand-computed values, and of lib.data.weightmaps.weight_map."""

import keras
import numpy as np
import pytest
from scipy import ndimage as ndi

from lib.data.weightmaps import weight_map
from lib.model import losses
from lib.model.metrics import ForegroundIoU

# One sample of four pixels, shape (1, 2, 2, 1).
T = np.array([1.0, 1.0, 0.0, 0.0], np.float32).reshape(1, 2, 2, 1)
P = np.array([0.5, 0.9, 0.2, 0.0], np.float32).reshape(1, 2, 2, 1)


def value(loss, y_true, y_pred):
    """Per-sample values: a ``keras.losses.Loss`` is called unreduced."""
    fn = loss.call if isinstance(loss, keras.losses.Loss) else loss
    return keras.ops.convert_to_numpy(fn(y_true, y_pred))


def test_bce_by_hand():
    # log(0) is clipped to log(1e-7) on the predicted-0 background pixel, whose target is 0: no cost.
    expected = -(np.log(0.5) + np.log(0.9) + np.log(0.8) + np.log(1 - 1e-7)) / 4
    np.testing.assert_allclose(value(losses.bce, T, P), [expected], rtol=1e-5)


def test_dice_by_hand():
    # sum(t p) = 1.4, sum(t) = 2, sum(p) = 1.6
    np.testing.assert_allclose(value(losses.dice, T, P), [1 - (2 * 1.4 + 1) / (2 + 1.6 + 1)], rtol=1e-6)
    np.testing.assert_allclose(value(lambda t, p: losses.dice(t, p, smooth=0.0), T, P),
                               [1 - 2.8 / 3.6], rtol=1e-6)


def test_jaccard_by_hand():
    # union = 2 + 1.6 - 1.4 = 2.2
    np.testing.assert_allclose(value(losses.jaccard, T, P), [1 - (1.4 + 1) / (2.2 + 1)], rtol=1e-6)
    np.testing.assert_allclose(value(lambda t, p: losses.jaccard(t, p, smooth=0.0), T, P),
                               [1 - 1.4 / 2.2], rtol=1e-6)


def test_perfect_and_empty_predictions():
    empty = np.zeros((1, 2, 2, 1), np.float32)
    for loss in (losses.dice, losses.jaccard):
        assert value(loss, T, T)[0] == pytest.approx(0.0, abs=1e-6)
        assert value(loss, empty, empty)[0] == pytest.approx(0.0, abs=1e-6)
    assert value(losses.bce, T, T)[0] < 1e-6


def test_saturated_wrong_prediction_is_finite():
    wrong = 1.0 - T
    for name in ("bce", "dice", "jaccard", "bce_dice"):
        assert np.all(np.isfinite(value(losses.get_loss(name), T, wrong)))
    # clipped at 1e-7 (1 - 1e-7 rounds to 1 - 1.19e-7 in float32)
    assert value(losses.bce, T, wrong)[0] == pytest.approx(-np.log(1e-7), rel=1e-2)


def test_one_value_per_sample():
    rng = np.random.default_rng(0)
    t = (rng.random((3, 8, 8, 1)) > 0.5).astype(np.float32)
    p = rng.random((3, 8, 8, 1)).astype(np.float32)
    for name in ("bce", "dice", "jaccard", "bce_dice"):
        per_sample = value(losses.get_loss(name), t, p)
        assert per_sample.shape == (3,)
        np.testing.assert_allclose(per_sample[1], value(losses.get_loss(name), t[1:2], p[1:2])[0], rtol=1e-6)


def test_weighted_bce_equals_bce_with_unit_weights():
    rng = np.random.default_rng(1)
    t = (rng.random((2, 16, 16, 1)) > 0.5).astype(np.float32)
    p = rng.random((2, 16, 16, 1)).astype(np.float32)
    y = np.concatenate([t, np.ones_like(t)], axis=-1)
    np.testing.assert_allclose(value(losses.weighted_bce, y, p), value(losses.bce, t, p), rtol=1e-6)


def test_weighted_bce_by_hand():
    w = np.array([2.0, 0.0, 1.0, 3.0], np.float32).reshape(1, 2, 2, 1)
    expected = -(2 * np.log(0.5) + 0 * np.log(0.9) + 1 * np.log(0.8) + 3 * np.log(1 - 1e-7)) / 4
    y = np.concatenate([T, w], axis=-1)
    np.testing.assert_allclose(value(losses.weighted_bce, y, P), [expected], rtol=1e-5)


def test_weighted_bce_needs_weight_channels():
    with pytest.raises(ValueError, match="expected targets with 2 channels"):
        losses.weighted_bce(T, P)


def test_bce_dice_weights_and_serialisation():
    loss = losses.get_loss("bce_dice", bce_weight=2.0, dice_weight=0.5)
    expected = 2.0 * value(losses.bce, T, P) + 0.5 * value(losses.dice, T, P)
    np.testing.assert_allclose(value(loss, T, P), expected, rtol=1e-6)
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert (restored.bce_weight, restored.dice_weight) == (2.0, 0.5)
    assert float(restored(T, P)) == pytest.approx(float(loss(T, P)))


# Two crops: the first with two foreground pixels, the second without foreground.
T2 = np.concatenate([T, np.zeros_like(T)])
P2 = np.concatenate([P, np.full_like(P, 0.1)])


@pytest.mark.parametrize("name", ["dice", "jaccard"])
def test_batch_overlap_sums_over_the_whole_batch(name):
    """One value for the batch, repeated per crop, equal to the loss of the crops laid side by side."""
    loss = losses.get_loss(name, batch_overlap=True)
    side_by_side = value(getattr(losses, name), T2.reshape(1, 4, 2, 1), P2.reshape(1, 4, 2, 1))
    np.testing.assert_allclose(value(loss, T2, P2), np.repeat(side_by_side, 2), rtol=1e-6)
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert restored.kind == name
    assert float(restored(T2, P2)) == pytest.approx(float(side_by_side[0]))


def test_batch_jaccard_does_not_reward_predicting_nothing():
    """Per crop, an empty prediction scores a perfect 0 on the crop without foreground, halving the mean loss;
    over the batch every crop scores 1 - 1 / (sum(t) + 1), as the crop with foreground does."""
    empty = np.zeros_like(P2)
    np.testing.assert_allclose(value(losses.jaccard, T2, empty), [1.0 - 1.0 / 3.0, 0.0], rtol=1e-6)
    np.testing.assert_allclose(value(losses.get_loss("jaccard", batch_overlap=True), T2, empty),
                               [1.0 - 1.0 / 3.0] * 2, rtol=1e-6)


def test_bce_dice_batch_overlap_survives_serialisation():
    loss = losses.get_loss("bce_dice", batch_overlap=True)
    expected = value(losses.bce, T2, P2) + value(losses.get_loss("dice", batch_overlap=True), T2, P2)
    np.testing.assert_allclose(value(loss, T2, P2), expected, rtol=1e-6)
    assert keras.losses.deserialize(keras.losses.serialize(loss)).batch is True


def test_every_name_has_a_loss():
    assert set(losses.LOSS_NAMES) == {"bce", "weighted_bce", "dice", "bce_dice", "jaccard", "ce", "ce_dice"}
    for name in losses.LOSS_NAMES:
        assert callable(losses.get_loss(name))
    assert [n for n in losses.LOSS_NAMES if losses.uses_weight_maps(n)] == ["weighted_bce"]


def test_foreground_iou_reads_the_mask_channel_only():
    mask = np.zeros((1, 4, 4, 1), np.float32)
    mask[0, :2] = 1
    weights = np.full_like(mask, 7.0)  # would count as foreground everywhere if read
    metric = ForegroundIoU()
    metric.update_state(np.concatenate([mask, weights], -1), mask * 0.9)
    assert float(metric.result()) == pytest.approx(1.0)


# --------------------------------------------------------------------------- weight maps

def two_squares(gap=5):
    mask = np.zeros((30, 50), np.uint8)
    mask[10:20, 10:20] = 1
    mask[10:20, 20 + gap:30 + gap] = 1
    return mask


def test_weight_map_peaks_between_two_objects():
    mask = two_squares(gap=5)
    w = weight_map(mask, w0=10, sigma=5, fg_fraction=0.5)  # class weights 1: only the border term remains
    peak = np.unravel_index(np.argmax(w), w.shape)
    assert 10 <= peak[0] < 20 and 20 <= peak[1] < 25, peak  # inside the gap
    # every gap pixel has d1 + d2 = gap + 1
    np.testing.assert_allclose(w[10:20, 20:25], 1 + 10 * np.exp(-36 / 50), rtol=1e-5)
    assert w[0, 0] == pytest.approx(1.0, abs=1e-6)  # far from both objects
    np.testing.assert_allclose(w[mask == 1], 1.0)  # the border term is on background only
    assert w.dtype == np.float32 and w.shape == mask.shape


def test_weight_map_narrower_gap_weighs_more():
    wide = weight_map(two_squares(gap=8), fg_fraction=0.5).max()
    narrow = weight_map(two_squares(gap=2), fg_fraction=0.5).max()
    assert narrow > wide > 1.0


def test_weight_map_class_balance():
    mask = np.zeros((10, 10), np.uint8)
    mask[:2] = 1  # one object, 20 % foreground: no border term
    w = weight_map(mask)
    assert w[0, 0] == pytest.approx(0.5 / 0.2) and w[5, 5] == pytest.approx(0.5 / 0.8)
    assert w.mean() == pytest.approx(1.0)
    np.testing.assert_allclose(weight_map(np.zeros((8, 8))), 1.0)
    assert weight_map(mask, fg_fraction=0.5)[0, 0] == pytest.approx(1.0)


def brute_force(mask, w0, sigma):
    """The border term with exact distances to every object over the whole image."""
    labels, n = ndi.label(mask)
    d = np.sort(np.stack([ndi.distance_transform_edt(labels != i) for i in range(1, n + 1)]), axis=0)
    return np.where(mask, 0.0, w0 * np.exp(-((d[0] + d[1]) ** 2) / (2 * sigma**2)))


@pytest.mark.parametrize("shape", [(64, 80), (12, 32, 32)])
def test_weight_map_matches_brute_force(shape):
    rng = np.random.default_rng(2)
    mask = ndi.binary_opening(ndi.gaussian_filter(rng.random(shape), 2) > 0.52)
    assert ndi.label(mask)[1] > 5
    w = weight_map(mask, w0=10, sigma=3, fg_fraction=0.5)
    np.testing.assert_allclose(w - 1.0, brute_force(mask, 10, 3), atol=1e-5)
