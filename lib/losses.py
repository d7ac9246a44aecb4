"""Segmentation losses, backend-agnostic (``keras.ops``), selected by name.

All losses take ``y_true`` (binary, any float/int dtype) and ``y_pred``
(sigmoid probabilities) of shape ``(N, *spatial, 1)`` and return one scalar
per sample, which Keras averages over the batch.
"""

import keras
from keras import ops

LOSS_NAMES = ("bce", "dice", "bce_dice")
_EPS = 1e-7


def _flatten(y_true, y_pred):
    y_true = ops.cast(y_true, y_pred.dtype)
    n = ops.shape(y_pred)[0]
    return ops.reshape(y_true, (n, -1)), ops.reshape(y_pred, (n, -1))


@keras.saving.register_keras_serializable(package="emseg")
def bce(y_true, y_pred):
    """Binary cross-entropy averaged over the pixels of each sample."""
    t, p = _flatten(y_true, y_pred)
    p = ops.clip(p, _EPS, 1.0 - _EPS)
    return -ops.mean(t * ops.log(p) + (1.0 - t) * ops.log(1.0 - p), axis=1)


@keras.saving.register_keras_serializable(package="emseg")
def dice(y_true, y_pred, smooth=1.0):
    """Soft Dice loss ``1 - (2 sum(t p) + s) / (sum(t) + sum(p) + s)`` per sample."""
    t, p = _flatten(y_true, y_pred)
    inter = ops.sum(t * p, axis=1)
    return 1.0 - (2.0 * inter + smooth) / (ops.sum(t, axis=1) + ops.sum(p, axis=1) + smooth)


@keras.saving.register_keras_serializable(package="emseg")
def bce_dice(y_true, y_pred):
    """``bce + dice`` with equal weights."""
    return bce(y_true, y_pred) + dice(y_true, y_pred)


def get_loss(name):
    """Return the loss function registered under ``name``."""
    return {"bce": bce, "dice": dice, "bce_dice": bce_dice}[name]
