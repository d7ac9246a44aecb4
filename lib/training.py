"""Optimisers, callbacks and the training loop with checkpoints, history and time limits.

Checkpoints (``checkpoints/last.keras`` every epoch, ``checkpoints/best.keras``
at each improvement of the monitored loss) and ``history.csv`` are written
atomically, so a killed run leaves whole files and can be resumed by running
the same command again.
"""

import csv
import math
import os
import time

import keras

from . import io
from .errors import UserError
from .losses import get_loss

BEST, LAST = "best.keras", "last.keras"


def make_optimizer(cfg):
    """Return the optimiser named by ``cfg.optimizer`` (``TrainConfig``)."""
    if cfg.optimizer == "sgd":
        return keras.optimizers.SGD(learning_rate=cfg.learning_rate, momentum=cfg.momentum)
    if cfg.optimizer == "adam":
        return keras.optimizers.Adam(learning_rate=cfg.learning_rate)
    return keras.optimizers.AdamW(learning_rate=cfg.learning_rate, weight_decay=cfg.weight_decay)


def compile_model(model, cfg):
    """Compile ``model`` with the configured optimiser, loss and the foreground IoU metric."""
    from .metrics import ForegroundIoU

    model.compile(optimizer=make_optimizer(cfg), loss=get_loss(cfg.loss), metrics=[ForegroundIoU(name="iou")])
    return model


def save_model_atomic(model, path):
    """Save ``model`` in the ``.keras`` format under a temporary name, then rename."""
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{os.getpid()}.tmp.keras")
    try:
        model.save(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def read_history(path):
    """Rows of ``history.csv`` as dicts of floats (empty list when missing)."""
    if not os.path.exists(path):
        return []
    with open(path, newline="") as fh:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(fh)]


class RunRecorder(keras.callbacks.Callback):
    """Writes ``history.csv`` and the checkpoints after every epoch, atomically.

    Each history row holds the epoch number (1-based), the seconds the epoch
    took, the learning rate and every logged loss and metric.
    """

    def __init__(self, run_dir, monitor, history=()):
        super().__init__()
        self.run_dir = run_dir
        self.monitor = monitor
        self.rows = list(history)
        self.best = min((r[monitor] for r in self.rows if monitor in r), default=math.inf)
        os.makedirs(os.path.join(run_dir, "checkpoints"), exist_ok=True)

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        row = {"epoch": epoch + 1, "seconds": round(time.perf_counter() - self._start, 3)}
        row["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        row.update({k: float(v) for k, v in logs.items() if k != "learning_rate"})
        value = row.get(self.monitor)
        if value is not None and not math.isfinite(value):
            raise UserError(
                f"training diverged at epoch {epoch + 1}: {self.monitor} is {value}; "
                f"the last good checkpoint is kept in {os.path.join(self.run_dir, 'checkpoints')}. "
                "Lower train.learning_rate or check the data"
            )
        ckpt = os.path.join(self.run_dir, "checkpoints")
        if value is not None and value < self.best:
            self.best = value
            save_model_atomic(self.model, os.path.join(ckpt, BEST))
        save_model_atomic(self.model, os.path.join(ckpt, LAST))
        self.rows.append(row)
        io.write_text(os.path.join(self.run_dir, "history.csv"), io.rows_to_csv(self.rows))


class TimeLimit(keras.callbacks.Callback):
    """Stops training cleanly after ``minutes``: the current epoch ends, then validation and checkpoints run."""

    def __init__(self, minutes):
        super().__init__()
        self.seconds = minutes * 60.0
        self.reached = False

    def on_train_begin(self, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        if time.perf_counter() - self._start >= self.seconds:
            self.reached = True
            self.model.stop_training = True


def train(model, train_data, val_data, cfg, run_dir):
    """Fit ``model`` and return it with the best weights, plus a summary dict.

    Parameters
    ----------
    model : keras.Model
        Built model; compiled here unless resuming from ``checkpoints/last.keras``.
    train_data : keras.utils.PyDataset
    val_data : tuple ``(x, y)`` of arrays or None
        Validation crops; without them the training loss is monitored.
    cfg : TrainConfig
    run_dir : str

    Returns
    -------
    model : keras.Model with the weights of the best epoch.
    info : dict with ``epochs``, ``stopped_by`` ('epochs', 'early_stopping' or
        'time_limit'), ``seconds`` and ``seconds_per_epoch``.
    """
    monitor = "val_loss" if val_data is not None else "loss"
    history_path = os.path.join(run_dir, "history.csv")
    last = os.path.join(run_dir, "checkpoints", LAST)
    history = read_history(history_path)
    if history and os.path.exists(last):
        model = keras.models.load_model(last)
        print(f"Resuming from {last} after epoch {len(history)}")
    else:
        history = []
        compile_model(model, cfg)
    recorder = RunRecorder(run_dir, monitor, history)
    early = keras.callbacks.EarlyStopping(monitor=monitor, patience=cfg.patience, mode="min")
    if history:
        early.best = recorder.best
    callbacks = [recorder, early]
    limit = TimeLimit(cfg.time_limit_minutes) if cfg.time_limit_minutes > 0 else None
    if limit is not None:
        callbacks.append(limit)
    start = time.perf_counter()
    if len(history) < cfg.epochs:
        model.fit(train_data, validation_data=val_data, epochs=cfg.epochs, initial_epoch=len(history),
                  callbacks=callbacks, verbose=2 if os.environ.get("CI") else 1)
    seconds = time.perf_counter() - start
    best = os.path.join(run_dir, "checkpoints", BEST)
    if os.path.exists(best):
        model.load_weights(best)
    epochs = len(recorder.rows)
    stopped_by = "time_limit" if limit is not None and limit.reached else (
        "early_stopping" if early.stopped_epoch > 0 else "epochs")
    times = [r["seconds"] for r in recorder.rows]
    return model, {
        "epochs": epochs,
        "best_epoch": 1 + min(range(epochs), key=lambda i: recorder.rows[i].get(monitor, math.inf)) if epochs else 0,
        "stopped_by": stopped_by,
        "seconds": round(seconds, 1),
        "seconds_per_epoch": round(sum(times) / len(times), 2) if times else 0.0,
    }
