"""Optimisers and learning-rate schedules.

The learning rate of an epoch is a pure function of the epoch number and of the history rows
before it (:func:`learning_rate_at`), so a resumed run continues the same schedule.
"""

import math
import time

import keras

from ..model.optimizers import AdaBound

# One-cycle: the rise starts at learning_rate / ONECYCLE_DIV and, without
# train.warmup_epochs, lasts ONECYCLE_RISE of the epochs (Smith & Topin 2019).
ONECYCLE_DIV = 25.0


ONECYCLE_RISE = 0.3


def make_optimizer(cfg):
    """Return the optimiser named by ``cfg.optimizer`` (``TrainConfig``)."""
    if cfg.optimizer == "sgd":
        return keras.optimizers.SGD(learning_rate=cfg.learning_rate, momentum=cfg.momentum, nesterov=cfg.nesterov)
    if cfg.optimizer == "adam":
        return keras.optimizers.Adam(learning_rate=cfg.learning_rate)
    if cfg.optimizer == "adabound":
        return AdaBound(learning_rate=cfg.learning_rate, final_lr=cfg.final_lr, gamma=cfg.gamma)
    return keras.optimizers.AdamW(learning_rate=cfg.learning_rate, weight_decay=cfg.weight_decay)


def learning_rate_at(epoch, cfg, history=(), monitor="val_loss", elapsed=0.0):
    """The learning rate of epoch ``epoch`` (0-based) under ``cfg.schedule``.

    With ``L = learning_rate``, ``m = min_learning_rate``, ``W = warmup_epochs``
    and ``E = epochs``:

    - warm-up (every schedule but ``onecycle``): epoch ``e < W`` uses
      ``L (e + 1) / (W + 1)``;
    - ``none``: ``L``;
    - ``step``: ``L * step_factor ** k``, ``k`` the number of ``step_epochs``
      already completed (``[100, 150]``: epochs 1-100 at ``L``, 101-150 at
      ``L f``, then ``L f^2``; epochs numbered from 1 as in ``history.csv``);
    - ``cosine``: from ``L`` after the warm-up down to ``m`` at the last epoch, or at the end of
      ``time_limit_minutes`` when that comes first (``elapsed``: the share of it used);
    - ``plateau``: ``L * plateau_factor ** k`` (at least ``m``), ``k`` the
      number of times ``monitor`` went ``plateau_patience`` epochs without a
      new minimum, counted over the history after the warm-up;
    - ``onecycle``: a cosine rise from ``L / 25`` to ``L`` over ``W`` epochs
      (default 30 % of the epochs), then a cosine decay to ``m`` at the last epoch.

    Parameters
    ----------
    epoch : int
    cfg : lib.config.TrainConfig
    history : sequence of dict
        Rows of ``history.csv`` of the epochs before ``epoch`` (only ``plateau`` reads them).
    monitor : str
        Key of the rows that ``plateau`` watches.
    elapsed : float
        Share of ``train.time_limit_minutes`` already trained (0 without a limit).

    Returns
    -------
    float
    """
    base, low, warm = cfg.learning_rate, cfg.min_learning_rate, cfg.warmup_epochs
    if cfg.schedule == "onecycle":
        rise = warm or int(round(ONECYCLE_RISE * cfg.epochs))
        if epoch < rise:
            return _cosine(base / ONECYCLE_DIV, base, epoch / rise)
        return _cosine(base, low, (epoch - rise) / max(1, cfg.epochs - 1 - rise))
    if epoch < warm:
        return base * (epoch + 1) / (warm + 1)
    if cfg.schedule == "step":
        return base * cfg.step_factor ** sum(epoch >= e for e in cfg.step_epochs)
    if cfg.schedule == "cosine":
        return _cosine(base, low, max((epoch - warm) / max(1, cfg.epochs - 1 - warm), elapsed))
    if cfg.schedule == "plateau":
        drops = _plateau_drops([to_minimise(row, monitor) for row in history[warm:epoch]], cfg.plateau_patience)
        return max(base * cfg.plateau_factor ** drops, low)
    return base


def _cosine(start, end, t):
    """Half a cosine from ``start`` (t = 0) to ``end`` (t >= 1)."""
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * min(max(t, 0.0), 1.0)))


def to_minimise(row, monitor):
    """The monitored value of a history ``row`` as a quantity to minimise (IoU and F1 negated); None when absent."""
    value = row.get(monitor)
    if value is None:
        return None
    return -value if monitor.endswith(("iou", "f1")) else value


def _plateau_drops(values, patience):
    """How many times ``values`` went ``patience`` entries without a new minimum (as ReduceLROnPlateau)."""
    best, wait, drops = math.inf, 0, 0
    for value in values:
        if value is None:
            continue
        if value < best:
            best, wait = value, 0
            continue
        wait += 1
        if wait >= patience:
            drops, wait = drops + 1, 0
    return drops


def spent_seconds(rows):
    """Seconds of training in the history ``rows``: each epoch's ``seconds`` and ``save_seconds`` (the
    checkpoints written between epochs, recorded in the next row)."""
    return sum(r.get("seconds", 0.0) + r.get("save_seconds", 0.0) for r in rows)


class TrainingClock(keras.callbacks.Callback):
    """Seconds of training of a run so far, the one clock of the schedule, the time limit and the run's summary.

    :func:`spent_seconds` of the history ``rows`` of earlier sessions (read when
    this session's training begins) plus the time since: optimiser steps,
    validation and the checkpoints written between epochs. First in the list of
    callbacks, so that it starts before the callbacks that read it.
    """

    def __init__(self, rows):
        super().__init__()
        self.rows = rows
        self.on_train_begin()

    def on_train_begin(self, logs=None):
        self._start, self._earlier = time.perf_counter(), spent_seconds(self.rows)

    def seconds(self):
        """Seconds trained by the run, earlier sessions included."""
        return self._earlier + time.perf_counter() - self._start


class LearningRateSchedule(keras.callbacks.Callback):
    """Sets the optimiser's learning rate from :func:`learning_rate_at` at the start of each epoch.

    ``history`` is the list of history rows that :class:`RunRecorder` appends
    to, shared so that ``plateau`` sees every finished epoch. A ``cosine``
    schedule under ``train.time_limit_minutes`` is also updated before every
    batch from the share of the time limit used (the run's :class:`TrainingClock`),
    so that it ends at the limit.
    """

    def __init__(self, cfg, monitor, history, clock):
        super().__init__()
        self.cfg = cfg
        self.monitor = monitor
        self.history = history
        self.clock = clock
        self.by_time = cfg.schedule == "cosine" and cfg.time_limit_minutes > 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
        self._set()

    def on_train_batch_begin(self, batch, logs=None):
        if self.by_time:
            self._set()

    def _set(self):
        elapsed = self.clock.seconds() / (60.0 * self.cfg.time_limit_minutes) if self.by_time else 0.0
        rate = learning_rate_at(self.epoch, self.cfg, self.history[:self.epoch], self.monitor, elapsed)
        self.model.optimizer.learning_rate.assign(rate)
