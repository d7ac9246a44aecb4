"""Segmentation losses, backend-agnostic (``keras.ops``), selected by name.

Every loss takes ``y_pred``, sigmoid probabilities of shape
``(N, *spatial, C)``, and ``y_true`` of the same shape holding binary masks
(any float/int dtype), and returns one scalar per sample, which Keras averages
over the batch. :func:`weighted_bce` alone takes ``y_true`` with ``2 C``
channels: the masks, then their per-pixel weights (:func:`lib.data.weightmaps.weight_map`).

Multi-class segmentation (``model.classes`` K > 1): ``y_pred`` holds the softmax
probabilities of the K classes ``(N, *spatial, K)`` and ``y_true`` the class ids
``(N, *spatial, 1)``; :func:`ce` (categorical cross-entropy), :func:`class_dice` (soft
Dice averaged over the foreground classes 1..K-1) and :class:`CeDice` take them,
with optional per-class weights.

Unannotated pixels (``data.ignore_value``) have a negative target (-1, :func:`lib.data.tiling.training_targets`):
every loss leaves them out, per sample, as if the sample held only its annotated pixels (a mean over those
pixels, sums over those pixels); a sample with none scores 0.

Probabilities are clipped to ``[1e-7, 1 - 1e-7]`` before any logarithm, so a
saturated prediction gives a large but finite loss, and every sum runs in
float32 whatever the dtype policy.
"""

import keras
from keras import ops

from ..config import CATEGORICAL_LOSSES, LOSS_NAMES, loss_for, uses_weight_maps  # noqa: F401

_EPS = 1e-7


def _flatten(y_true, y_pred):
    """Cast both to float32 and reshape to ``(N, pixels)``."""
    y_pred = ops.cast(y_pred, "float32")
    y_true = ops.cast(y_true, "float32")
    n = ops.shape(y_pred)[0]
    return ops.reshape(y_true, (n, -1)), ops.reshape(y_pred, (n, -1))


def _annotated(t):
    """``(t, v)``: the targets with unannotated pixels (negative) set to 0, and ``v`` 1 where annotated, else 0."""
    v = ops.cast(t >= 0, "float32")
    return t * v, v


def _masked_mean(values, v):
    """The mean of ``values`` ``(N, pixels)`` over the pixels where ``v`` is 1, per sample (0 where none)."""
    return ops.sum(values * v, axis=1) / ops.maximum(ops.sum(v, axis=1), 1.0)


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
    t, v = _annotated(t)
    return _masked_mean(_pixel_bce(t, p), v)


@keras.saving.register_keras_serializable(package="emseg")
def weighted_bce(y_true, y_pred):
    """Pixel-weighted binary cross-entropy (Ronneberger et al. 2015).

    ``mean(w * bce)`` over the pixels of each sample: the mean, not the
    weighted mean, so that with every weight 1 it equals :func:`bce`.

    Parameters
    ----------
    y_true : tensor ``(N, *spatial, 2 C)``
        Channels ``0 .. C-1``: binary masks; channels ``C .. 2C-1``: their
        weights, e.g. from :func:`lib.data.weightmaps.weight_map`.
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
    t, v = _annotated(t)
    return _masked_mean(w * _pixel_bce(t, p), v)


def _overlap_sums(y_true, y_pred, batch):
    """``(sum(t p), sum(t), sum(p))`` per sample, shape ``(N,)``; with ``batch`` over the whole batch, a scalar."""
    t, p = _flatten(y_true, y_pred)
    t, v = _annotated(t)
    p = p * v
    axis = None if batch else 1
    return ops.sum(t * p, axis=axis), ops.sum(t, axis=axis), ops.sum(p, axis=axis)


def _per_sample(loss, y_pred, batch):
    """``loss`` as one value per sample: a batch-wide scalar is repeated ``N`` times, so Keras' mean keeps it."""
    return loss * ops.ones((ops.shape(y_pred)[0],), "float32") if batch else loss


@keras.saving.register_keras_serializable(package="emseg")
def dice(y_true, y_pred, smooth=1.0, batch=False):
    """Soft Dice loss ``1 - (2 sum(t p) + s) / (sum(t) + sum(p) + s)`` per sample.

    ``smooth`` (in pixels) makes an empty mask predicted empty score a loss of 0
    rather than 0/0. With ``batch`` the sums run over the whole batch (one
    value, repeated per sample): crops without foreground then no longer reward
    an empty prediction on their own, which per-sample sums do.
    """
    inter, st, sp = _overlap_sums(y_true, y_pred, batch)
    return _per_sample(1.0 - (2.0 * inter + smooth) / (st + sp + smooth), y_pred, batch)


@keras.saving.register_keras_serializable(package="emseg")
def jaccard(y_true, y_pred, smooth=1.0, batch=False):
    """Soft Jaccard (IoU) loss ``1 - (sum(t p) + s) / (sum(t) + sum(p) - sum(t p) + s)`` per sample.

    ``batch``: sums over the whole batch, as :func:`dice`.
    """
    inter, st, sp = _overlap_sums(y_true, y_pred, batch)
    return _per_sample(1.0 - (inter + smooth) / (st + sp - inter + smooth), y_pred, batch)


@keras.saving.register_keras_serializable(package="emseg")
class BatchOverlap(keras.losses.Loss):
    """:func:`dice` or :func:`jaccard` with their sums over the whole batch, savable in ``.keras`` files.

    Parameters
    ----------
    kind : {"dice", "jaccard"}
    name : str
    """

    def __init__(self, kind="jaccard", name=None, **kwargs):
        if kind not in ("dice", "jaccard"):
            raise ValueError(f"BatchOverlap: kind must be dice or jaccard, got {kind!r}")
        super().__init__(name=name or f"batch_{kind}", **kwargs)
        self.kind = kind

    def call(self, y_true, y_pred):
        return (dice if self.kind == "dice" else jaccard)(y_true, y_pred, batch=True)

    def get_config(self):
        return {**super().get_config(), "kind": self.kind}


@keras.saving.register_keras_serializable(package="emseg")
class BceDice(keras.losses.Loss):
    """``bce_weight * bce + dice_weight * dice`` per sample.

    Parameters
    ----------
    bce_weight, dice_weight : float
        Non-negative weights of the two terms.
    batch : bool
        Dice sums over the whole batch (see :func:`dice`).
    name : str
    """

    def __init__(self, bce_weight=1.0, dice_weight=1.0, batch=False, name="bce_dice", **kwargs):
        super().__init__(name=name, **kwargs)
        self.bce_weight = float(bce_weight)
        self.dice_weight = float(dice_weight)
        self.batch = bool(batch)

    def call(self, y_true, y_pred):
        return self.bce_weight * bce(y_true, y_pred) + self.dice_weight * dice(y_true, y_pred, batch=self.batch)

    def get_config(self):
        return {**super().get_config(), "bce_weight": self.bce_weight, "dice_weight": self.dice_weight,
                "batch": self.batch}


def _one_hot(y_true, y_pred):
    """Class ids ``(N, *spatial, 1)`` and probabilities ``(N, *spatial, K)`` -> ``(t, p, v)``: ``t`` and ``p``
    ``(N, pixels, K)`` float32, ``t`` one-hot (all 0 on unannotated pixels, whose ids are negative), ``v``
    ``(N, pixels)`` 1 where annotated."""
    k = y_pred.shape[-1]
    n = ops.shape(y_pred)[0]
    ids, v = _annotated(ops.reshape(ops.cast(y_true[..., 0], "float32"), (n, -1)))
    t = ops.one_hot(ops.cast(ids, "int32"), k, dtype="float32") * ops.expand_dims(v, -1)
    return t, ops.reshape(ops.cast(y_pred, "float32"), (n, -1, k)), v


def _class_weights(weights, k):
    return ops.ones((k,), "float32") if weights is None else ops.convert_to_tensor(weights, "float32")


def ce(y_true, y_pred, class_weights=None):
    """Categorical cross-entropy ``mean(-w_c log p_c)`` over the pixels of each sample, ``c`` the true class.

    Parameters
    ----------
    y_true : tensor ``(N, *spatial, 1)``, class ids ``0 .. K-1``
    y_pred : tensor ``(N, *spatial, K)``, softmax probabilities
    class_weights : sequence of K floats, optional
        Weight of the pixels of each class (the mean, not the weighted mean, as :func:`weighted_bce`).

    Returns
    -------
    tensor ``(N,)`` float32; with two classes and no weights it equals :func:`bce` of class 1's probability.
    """
    t, p, v = _one_hot(y_true, y_pred)
    w = _class_weights(class_weights, y_pred.shape[-1])
    return _masked_mean(-ops.sum(t * w * ops.log(ops.clip(p, _EPS, 1.0)), axis=-1), v)


def class_dice(y_true, y_pred, smooth=1.0, batch=False, class_weights=None):
    """Soft Dice loss of each foreground class (1 .. K-1), averaged over them per sample.

    ``1 - (2 sum(t p) + s) / (sum(t) + sum(p) + s)`` per class, as :func:`dice`; the mean
    over the foreground classes is weighted by ``class_weights[1:]`` when given. The background
    class 0 is left out: it is most pixels, and its Dice is near 1 whatever the objects.
    ``batch``: the sums run over the whole batch, as :func:`dice`.

    Returns
    -------
    tensor ``(N,)`` float32
    """
    t, p, v = _one_hot(y_true, y_pred)
    t, p = t[..., 1:], p[..., 1:] * ops.expand_dims(v, -1)
    axis = (0, 1) if batch else 1
    inter, st, sp = ops.sum(t * p, axis=axis), ops.sum(t, axis=axis), ops.sum(p, axis=axis)
    per_class = 1.0 - (2.0 * inter + smooth) / (st + sp + smooth)
    w = _class_weights(class_weights, y_pred.shape[-1])[1:]
    return _per_sample(ops.sum(per_class * w, axis=-1) / ops.sum(w), y_pred, batch)


@keras.saving.register_keras_serializable(package="emseg")
class MultiClass(keras.losses.Loss):
    """Losses of multi-class segmentation, savable in ``.keras`` files: ``ce_weight * ce + dice_weight * dice``.

    ``ce`` is :func:`ce`, ``dice`` :func:`class_dice`. Targets are class ids ``(N, *spatial, 1)``,
    predictions softmax probabilities ``(N, *spatial, K)``.

    Parameters
    ----------
    ce_weight, dice_weight : float
        Non-negative weights of the two terms (``ce``: 1 and 0; ``dice``: 0 and 1).
    batch : bool
        Dice sums over the whole batch (see :func:`dice`).
    class_weights : list of K floats, optional
        Weight of each class, background first, in both terms.
    name : str
    """

    def __init__(self, ce_weight=1.0, dice_weight=1.0, batch=False, class_weights=None, name="ce_dice", **kwargs):
        super().__init__(name=name, **kwargs)
        self.ce_weight = float(ce_weight)
        self.dice_weight = float(dice_weight)
        self.batch = bool(batch)
        self.class_weights = None if class_weights is None else [float(w) for w in class_weights]

    def call(self, y_true, y_pred):
        total = 0.0
        if self.ce_weight:
            total = total + self.ce_weight * ce(y_true, y_pred, self.class_weights)
        if self.dice_weight:
            total = total + self.dice_weight * class_dice(y_true, y_pred, batch=self.batch,
                                                          class_weights=self.class_weights)
        return total

    def get_config(self):
        return {**super().get_config(), "ce_weight": self.ce_weight, "dice_weight": self.dice_weight,
                "batch": self.batch, "class_weights": self.class_weights}


@keras.saving.register_keras_serializable(package="emseg")
class InstanceChannels(keras.losses.Loss):
    """The loss of the instance channels (``model.targets`` bc or bcd), a weighted sum over the channels.

    The foreground and contour channels each get the binary loss ``binary`` (a name of
    :data:`LOSS_NAMES`: bce, dice, bce_dice or jaccard), the distance channel (bcd) the mean squared error.
    ``y_true`` holds at least as many channels as ``y_pred`` (validation targets carry the crop's label
    image after them, for the F1 of its objects); the extra ones are ignored.

    Parameters
    ----------
    channels : int, 2 (bc) or 3 (bcd)
    weights : list of float, one per channel, or None for 1 each
    binary, bce_weight, dice_weight, batch : the binary loss and its options, as :func:`get_loss`
    """

    def __init__(self, channels=2, weights=None, binary="bce_dice", bce_weight=1.0, dice_weight=1.0, batch=False,
                 name="instance_channels", **kwargs):
        super().__init__(name=name, **kwargs)
        if channels not in (2, 3):
            raise ValueError(f"InstanceChannels: channels must be 2 (bc) or 3 (bcd), got {channels}")
        self.channels, self.binary = int(channels), binary
        self.weights = [1.0] * self.channels if not weights else [float(w) for w in weights]
        if len(self.weights) != self.channels:
            raise ValueError(f"InstanceChannels: expected {self.channels} weights, got {self.weights}")
        self.bce_weight, self.dice_weight, self.batch = float(bce_weight), float(dice_weight), bool(batch)
        self._binary = get_loss(binary, bce_weight, dice_weight, batch)

    def call(self, y_true, y_pred):
        total = 0.0
        for c, w in enumerate(self.weights):
            if w == 0:
                continue
            t, p = y_true[..., c:c + 1], y_pred[..., c:c + 1]
            if c == 2:
                t, p = _flatten(t, p)
                t, v = _annotated(t)
                term = _masked_mean(ops.square(t - p), v)
            else:
                binary = self._binary
                term = binary.call(t, p) if isinstance(binary, keras.losses.Loss) else binary(t, p)  # per sample
            total = total + w * term
        return total

    def get_config(self):
        return {**super().get_config(), "channels": self.channels, "weights": self.weights, "binary": self.binary,
                "bce_weight": self.bce_weight, "dice_weight": self.dice_weight, "batch": self.batch}


def get_loss(name, bce_weight=1.0, dice_weight=1.0, batch_overlap=False, classes=1, class_weights=None):
    """Return the loss registered under ``name`` (one of :data:`LOSS_NAMES`) for ``classes`` output classes.

    ``bce_weight`` and ``dice_weight`` weight the terms of ``bce_dice`` (``ce_dice``) and are
    ignored by the other losses; ``batch_overlap`` takes the sums of ``dice``,
    ``jaccard`` and the Dice term of ``bce_dice`` over the whole batch instead
    of per sample, and is ignored by ``bce`` and ``weighted_bce``.

    ``classes`` > 1 (softmax output, class-id targets): ``ce``, ``dice`` and ``ce_dice`` are the
    categorical losses of :class:`MultiClass`, with ``class_weights`` (K floats or None);
    ``bce`` and ``bce_dice`` name ``ce`` and ``ce_dice`` (:func:`lib.config.loss_for`), the other
    binary losses raise ValueError. With one class ``ce`` and ``ce_dice`` name ``bce`` and ``bce_dice``.
    """
    name = loss_for(name, classes) if name in CATEGORICAL_LOSSES or classes == 1 else name
    if classes > 1:
        if name not in ("ce", "dice", "ce_dice"):
            raise ValueError(f"loss: {name} is a binary loss; expected ce, dice or ce_dice for {classes} classes")
        weights = {"ce": (1.0, 0.0), "dice": (0.0, 1.0), "ce_dice": (bce_weight, dice_weight)}[name]
        return MultiClass(*weights, batch=batch_overlap, class_weights=class_weights, name=name)
    if name == "bce_dice":
        return BceDice(bce_weight, dice_weight, batch=batch_overlap)
    if batch_overlap and name in ("dice", "jaccard"):
        return BatchOverlap(name)
    return {"bce": bce, "weighted_bce": weighted_bce, "dice": dice, "jaccard": jaccard}[name]
