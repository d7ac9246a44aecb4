"""Keras metrics of a segmentation network, backend-agnostic (``keras.ops``): foreground and class IoU.

Registered with Keras serialisation, so a checkpoint compiled with them loads once this module is imported.
"""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="emseg")
class ForegroundIoU(keras.metrics.Metric):
    """Foreground IoU over a whole epoch, for ``model.compile(metrics=...)``.

    TP, FP and FN are summed over every batch since the last reset, so the result
    is ``TP / (TP + FP + FN)`` of the epoch, not a mean of batch IoUs. An epoch
    with no foreground predicted or present scores 1.0. Backend-agnostic
    (``keras.ops`` only).

    Parameters
    ----------
    threshold : float
        A prediction ``p`` is foreground when ``p >= threshold``.
    name : str
        Name in the training logs.
    dtype : str, optional
        Dtype of the result.
    channel : int, optional
        Score this channel of ``y_pred`` (and of ``y_true``) alone, e.g. 0, the foreground of the
        instance channels (``model.targets`` bc, bcd).
    """

    def __init__(self, threshold=0.5, name="iou", dtype=None, channel=None, **kwargs):
        super().__init__(name=name, dtype=dtype, **kwargs)
        self.threshold = float(threshold)
        self.channel = None if channel is None else int(channel)
        # float32 whatever the dtype policy: float16 cannot count past 2048 pixels.
        self.tp, self.fp, self.fn = (
            self.add_variable(shape=(), initializer="zeros", dtype="float32", name=n)
            for n in ("tp", "fp", "fn")
        )

    def update_state(self, y_true, y_pred, sample_weight=None):
        """Add one batch.

        Parameters
        ----------
        y_true : tensor, shape (N, ..., K)
            Binary ground truth (values above 0.5 are foreground, negative values unannotated pixels, which
            count nowhere) in the first ``C`` channels; further channels (the weight maps of
            :func:`lib.model.losses.weighted_bce`) are not read.
        y_pred : tensor, shape (N, ..., C)
            Foreground probabilities.
        sample_weight : tensor, optional
            Weights broadcastable to ``y_true`` after trailing axes are added,
            e.g. one weight per sample of shape (N,).
        """
        if self.channel is not None:  # one channel of several (the foreground of model.targets bc, bcd)
            y_true, y_pred = y_true[..., self.channel:self.channel + 1], y_pred[..., self.channel:self.channel + 1]
        y_true = ops.cast(y_true[..., :y_pred.shape[-1]], "float32")
        true = ops.cast(y_true > 0.5, "float32")
        pred = ops.cast(ops.cast(y_pred, "float32") >= self.threshold, "float32")
        w = ops.cast(y_true >= 0, "float32")  # unannotated pixels (negative targets) count nowhere
        if sample_weight is not None:
            weight = ops.cast(sample_weight, "float32")
            while len(weight.shape) < len(true.shape):
                weight = ops.expand_dims(weight, -1)
            w = w * weight
        self.tp.assign_add(ops.sum(w * true * pred))
        self.fp.assign_add(ops.sum(w * (1.0 - true) * pred))
        self.fn.assign_add(ops.sum(w * true * (1.0 - pred)))

    def result(self):
        denom = self.tp + self.fp + self.fn
        iou = ops.where(denom > 0, self.tp / ops.where(denom > 0, denom, 1.0), 1.0)
        return ops.cast(iou, self.dtype)

    def get_config(self):
        return {**super().get_config(), "threshold": self.threshold, "channel": self.channel}


@keras.saving.register_keras_serializable(package="emseg")
class ClassIoU(keras.metrics.Metric):
    """Foreground IoU of each class 1 .. K-1 over a whole epoch, averaged over those classes (macro mean).

    :class:`ForegroundIoU` of multi-class segmentation (``model.classes`` K > 1): the predicted
    class of a pixel is its most probable one; TP, FP and FN of each foreground class are summed
    over every batch since the last reset. A class neither predicted nor present scores 1.0.
    Backend-agnostic (``keras.ops`` only).

    Parameters
    ----------
    classes : int, K >= 2
    name, dtype : as :class:`ForegroundIoU`
    """

    def __init__(self, classes=2, name="iou", dtype=None, **kwargs):
        super().__init__(name=name, dtype=dtype, **kwargs)
        self.classes = int(classes)
        self.tp, self.fp, self.fn = (
            self.add_variable(shape=(self.classes - 1,), initializer="zeros", dtype="float32", name=n)
            for n in ("tp", "fp", "fn")
        )

    def update_state(self, y_true, y_pred, sample_weight=None):
        """Add one batch: ``y_true`` class ids ``(N, ..., 1)``, ``y_pred`` probabilities ``(N, ..., K)``."""
        k = self.classes
        ids = ops.reshape(ops.cast(y_true[..., 0], "float32"), (-1,))
        annotated = ops.cast(ids >= 0, "float32")  # unannotated pixels (negative ids) count nowhere
        true = ops.one_hot(ops.cast(ids * annotated, "int32"), k, dtype="float32")[:, 1:]
        pred = ops.one_hot(ops.reshape(ops.argmax(y_pred, axis=-1), (-1,)), k, dtype="float32")[:, 1:]
        w = ops.expand_dims(annotated, -1)
        if sample_weight is not None:
            weight = ops.cast(sample_weight, "float32")
            while len(weight.shape) < len(y_pred.shape) - 1:
                weight = ops.expand_dims(weight, -1)
            w = w * ops.reshape(ops.broadcast_to(weight, ops.shape(y_pred)[:-1]), (-1, 1))
        self.tp.assign_add(ops.sum(w * true * pred, axis=0))
        self.fp.assign_add(ops.sum(w * (1.0 - true) * pred, axis=0))
        self.fn.assign_add(ops.sum(w * true * (1.0 - pred), axis=0))

    def result(self):
        denom = self.tp + self.fp + self.fn
        iou = ops.where(denom > 0, self.tp / ops.where(denom > 0, denom, 1.0), 1.0)
        return ops.cast(ops.mean(iou), self.dtype)

    def get_config(self):
        return {**super().get_config(), "classes": self.classes}
