"""Segmentation losses, backend-agnostic (``keras.ops``), selected by name.

Every loss takes ``y_pred``, sigmoid probabilities of shape
``(N, *spatial, C)``, and ``y_true`` of the same shape holding binary masks
(any float/int dtype), and returns one scalar per sample, which Keras averages
over the batch. :func:`weighted_bce` alone takes ``y_true`` with ``2 C``
channels: the masks, then their per-pixel weights (:func:`lib.data.weight_map`).

Probabilities are clipped to ``[1e-7, 1 - 1e-7]`` before any logarithm, so a
saturated prediction gives a large but finite loss, and every sum runs in
float32 whatever the dtype policy.
"""

import keras
from keras import ops

from .config import LOSS_NAMES, uses_weight_maps  # noqa: F401  (defined there so that data checks need no Keras)

_EPS = 1e-7


def _flatten(y_true, y_pred):
    """Cast both to float32 and reshape to ``(N, pixels)``."""
    y_pred = ops.cast(y_pred, "float32")
    y_true = ops.cast(y_true, "float32")
    n = ops.shape(y_pred)[0]
    return ops.reshape(y_true, (n, -1)), ops.reshape(y_pred, (n, -1))


def _pixel_bce(t, p):
    p = ops.clip(p, _EPS, 1.0 - _EPS)
    return -(t * ops.log(p) + (1.0 - t) * ops.log(1.0 - p))


@keras.saving.register_keras_serializable(package="emseg")
def bce(y_true, y_pred):
    """Binary cross-entropy averaged over the pixels of each sample.

    Parameters
    ----------
    y_true : tensor ``(N, *spatial, C)``, binary
    y_pred : tensor ``(N, *spatial, C)``, probabilities

    Returns
    -------
    tensor ``(N,)`` float32
    """
    t, p = _flatten(y_true, y_pred)
    return ops.mean(_pixel_bce(t, p), axis=1)


@keras.saving.register_keras_serializable(package="emseg")
def weighted_bce(y_true, y_pred):
    """Pixel-weighted binary cross-entropy (Ronneberger et al. 2015).

    ``mean(w * bce)`` over the pixels of each sample: the mean, not the
    weighted mean, so that with every weight 1 it equals :func:`bce`.

    Parameters
    ----------
    y_true : tensor ``(N, *spatial, 2 C)``
        Channels ``0 .. C-1``: binary masks; channels ``C .. 2C-1``: their
        weights, e.g. from :func:`lib.data.weight_map`.
    y_pred : tensor ``(N, *spatial, C)``, probabilities

    Returns
    -------
    tensor ``(N,)`` float32
    """
    channels = y_pred.shape[-1]
    if y_true.shape[-1] != 2 * channels:
        raise ValueError(
            f"weighted_bce: expected targets with {2 * channels} channels (masks, then weights) for "
            f"predictions with {channels}, got {y_true.shape[-1]}; build the training data with weight maps"
        )
    mask, weight = y_true[..., :channels], y_true[..., channels:]
    t, p = _flatten(mask, y_pred)
    w, _ = _flatten(weight, y_pred)
    return ops.mean(w * _pixel_bce(t, p), axis=1)


@keras.saving.register_keras_serializable(package="emseg")
def dice(y_true, y_pred, smooth=1.0):
    """Soft Dice loss ``1 - (2 sum(t p) + s) / (sum(t) + sum(p) + s)`` per sample.

    ``smooth`` (in pixels) makes an empty mask predicted empty score a loss of 0
    rather than 0/0.
    """
    t, p = _flatten(y_true, y_pred)
    inter = ops.sum(t * p, axis=1)
    return 1.0 - (2.0 * inter + smooth) / (ops.sum(t, axis=1) + ops.sum(p, axis=1) + smooth)


@keras.saving.register_keras_serializable(package="emseg")
def jaccard(y_true, y_pred, smooth=1.0):
    """Soft Jaccard (IoU) loss ``1 - (sum(t p) + s) / (sum(t) + sum(p) - sum(t p) + s)`` per sample."""
    t, p = _flatten(y_true, y_pred)
    inter = ops.sum(t * p, axis=1)
    union = ops.sum(t, axis=1) + ops.sum(p, axis=1) - inter
    return 1.0 - (inter + smooth) / (union + smooth)


@keras.saving.register_keras_serializable(package="emseg")
class BceDice(keras.losses.Loss):
    """``bce_weight * bce + dice_weight * dice`` per sample.

    Parameters
    ----------
    bce_weight, dice_weight : float
        Non-negative weights of the two terms.
    name : str
    """

    def __init__(self, bce_weight=1.0, dice_weight=1.0, name="bce_dice", **kwargs):
        super().__init__(name=name, **kwargs)
        self.bce_weight = float(bce_weight)
        self.dice_weight = float(dice_weight)

    def call(self, y_true, y_pred):
        return self.bce_weight * bce(y_true, y_pred) + self.dice_weight * dice(y_true, y_pred)

    def get_config(self):
        return {**super().get_config(), "bce_weight": self.bce_weight, "dice_weight": self.dice_weight}


def get_loss(name, bce_weight=1.0, dice_weight=1.0):
    """Return the loss registered under ``name`` (one of :data:`LOSS_NAMES`).

    ``bce_weight`` and ``dice_weight`` weight the terms of ``bce_dice`` and are
    ignored by the other losses.
    """
    if name == "bce_dice":
        return BceDice(bce_weight, dice_weight)
    return {"bce": bce, "weighted_bce": weighted_bce, "dice": dice, "jaccard": jaccard}[name]
