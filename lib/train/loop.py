"""The training loop: compile, fit with checkpoints, history, early stopping and a time limit; resume.

Checkpoints (``checkpoints/last.keras`` every epoch, ``checkpoints/best.keras``
at each improvement of the monitored value) and ``history.csv`` are written
atomically, so a killed run leaves whole files and can be resumed by running
the same command again.
"""

import csv
import math
import os
import sys
import time

import keras
import numpy as np

from .. import progress
from ..data import io
from ..errors import UserError
from ..model.losses import InstanceChannels, get_loss
from ..model.metrics import ClassIoU, ForegroundIoU
from ..model.mixed_precision import precision
from ..model.saving import BEST, LAST, load_model, save_model_atomic
from .determinism import enable_determinism
from .schedules import LearningRateSchedule, TrainingClock, make_optimizer, spent_seconds, to_minimise


def deep_supervision_weights(cfg, n_outputs):
    """Loss weight of each output, main first: ``train.deep_supervision_weights``, or 1, 1/2, 1/4...

    Parameters
    ----------
    cfg : lib.config.TrainConfig
    n_outputs : int
        Outputs of the model: the main one, then ``aux_1 .. aux_{n-1}``.

    Returns
    -------
    list of float, ``n_outputs`` long
    """
    if cfg.deep_supervision_weights:
        if len(cfg.deep_supervision_weights) != n_outputs:
            raise UserError(f"train.deep_supervision_weights: expected {n_outputs} weights for a model with "
                            f"{n_outputs} outputs, got {cfg.deep_supervision_weights}")
        return [float(w) for w in cfg.deep_supervision_weights]
    return [0.5**k for k in range(n_outputs)]


def compile_model(model, cfg, class_weights=None, targets="mask"):
    """Compile ``model`` with the configured optimiser, loss and the foreground IoU metric.

    A model with several outputs (deep supervision) gets the loss on every
    output, weighted by :func:`deep_supervision_weights`, and the metric on the
    main output only; its targets must be repeated per output (:func:`per_output`).
    A model of K > 1 output channels (``model.classes``: softmax) gets the loss of K classes
    (:func:`lib.model.losses.get_loss`, with ``class_weights``) and the mean IoU of its foreground classes.
    An instance model (``targets`` bc or bcd) gets :class:`lib.model.losses.InstanceChannels` and the IoU of its
    foreground channel.
    """
    classes = int(model.outputs[0].shape[-1])
    n = len(model.outputs)
    if targets != "mask":
        loss = InstanceChannels(classes, cfg.channel_weights, cfg.loss, cfg.bce_weight, cfg.dice_weight,
                                cfg.batch_overlap)
        iou = ForegroundIoU(name="iou", channel=0)
    else:
        loss = get_loss(cfg.loss, cfg.bce_weight, cfg.dice_weight, cfg.batch_overlap, classes, class_weights)
        iou = ForegroundIoU(name="iou") if classes == 1 else ClassIoU(classes, name="iou")
    if n == 1:
        model.compile(optimizer=make_optimizer(cfg), loss=loss, metrics=[iou])
    else:
        model.compile(optimizer=make_optimizer(cfg), loss=[loss] * n, loss_weights=deep_supervision_weights(cfg, n),
                      metrics=[[iou]] + [[] for _ in range(n - 1)])
    # Built now, not inside the first traced training step: on TensorFlow, variables created there make
    # tf.function trace the whole step a second time (about 4 s for a small network, on every run).
    model.optimizer.build(model.trainable_variables)
    return model


class _RepeatTargets(keras.utils.PyDataset):
    """A PyDataset whose batches ``(x, y)`` become ``(x, (y,) * n)``."""

    def __init__(self, data, n):
        super().__init__(workers=data.workers, use_multiprocessing=data.use_multiprocessing,
                         max_queue_size=data.max_queue_size)
        self.data, self.n = data, n

    def __len__(self):
        return len(self.data)

    def __getitem__(self, index):
        x, y = self.data[index]
        return x, (y,) * self.n

    def on_epoch_begin(self):
        self.data.on_epoch_begin()

    def on_epoch_end(self):
        self.data.on_epoch_end()


def per_output(data, n_outputs):
    """Feed the targets of ``data`` to each of ``n_outputs`` model outputs.

    Parameters
    ----------
    data : keras.utils.PyDataset, tuple ``(x, y)`` of arrays, or None
    n_outputs : int

    Returns
    -------
    ``data`` itself for one output; else the same data with ``y`` repeated.
    """
    if data is None or n_outputs == 1:
        return data
    if isinstance(data, tuple):
        x, y = data
        return x, (y,) * n_outputs
    return _RepeatTargets(data, n_outputs)


def fit_input(data):
    """What ``fit`` trains on for ``data``: itself, or on TensorFlow a tf.data pipeline of it without autotuning.

    Keras feeds a PyDataset to TensorFlow through a pipeline with an autotuned
    prefetch. An epoch's spent iterator is then destroyed as the next epoch's
    first step begins, and that waits for tf.data's autotuning thread: about 1 s
    before epochs of 3 s, 16-29 s before a third of the epochs of a minute (the
    demo: 168 of its 1,587 s). Here nothing is autotuned or prefetched by
    tf.data: each batch is asked for in its training step, after the epoch's
    ``set_epoch`` (the dataset prepares batches ahead with its own threads).

    Parameters
    ----------
    data : keras.utils.PyDataset of ``(x, y)`` batches (``y`` an array or a tuple of arrays), or arrays, or None
    """
    if keras.backend.backend() != "tensorflow" or not isinstance(data, keras.utils.PyDataset):
        return data
    import tensorflow as tf

    def spec(array):
        array = np.asarray(array)
        return tf.TensorSpec((None,) + array.shape[1:], array.dtype)

    def batches():
        for index in range(len(data)):
            yield data[index]

    signature = tf.nest.map_structure(spec, tuple(data[0]))
    options = tf.data.Options()
    options.autotune.enabled = False
    dataset = tf.data.Dataset.from_generator(batches, output_signature=signature)
    return dataset.apply(tf.data.experimental.assert_cardinality(len(data))).with_options(options)


def read_history(path):
    """Rows of ``history.csv`` as dicts of floats, ``epoch`` an int (empty list when missing)."""
    if not os.path.exists(path):
        return []
    with open(path, newline="") as fh:
        return [{k: int(v) if k == "epoch" else float(v) for k, v in row.items() if v != ""}
                for row in csv.DictReader(fh)]


def _pending(checkpoints, epoch, name):
    """Where checkpoint ``name`` of ``epoch`` waits until the epoch's history row is written."""
    return os.path.join(checkpoints, f".pending_{epoch}_{name}")


def recover_checkpoints(run_dir, epochs):
    """Make the checkpoints those of epoch ``epochs``, the last row of ``history.csv``, after a kill.

    :class:`RunRecorder` commits an epoch by writing its history row between
    saving the epoch's checkpoints under pending names and renaming them into
    place. A run killed before the row was written keeps the checkpoints of the
    epoch before; one killed after it has its renaming finished here. Pending
    checkpoints of other epochs and temporary files of interrupted saves are removed.
    """
    checkpoints = os.path.join(run_dir, "checkpoints")
    if not os.path.isdir(checkpoints):
        return
    for name in (BEST, LAST):
        pending = _pending(checkpoints, epochs, name)
        if os.path.exists(pending):
            os.replace(pending, os.path.join(checkpoints, name))
    for name in os.listdir(checkpoints):
        if name.startswith("."):
            os.remove(os.path.join(checkpoints, name))


class RunRecorder(keras.callbacks.Callback):
    """Writes ``history.csv`` and the checkpoints after every epoch, atomically.

    Each history row holds the epoch number (1-based), the seconds the epoch
    took, the learning rate and every logged loss and metric, then where the
    epoch's time went: ``steps`` (optimiser steps, fewer in an epoch cut by the time
    limit), ``step_seconds`` (in optimiser steps), ``wait_seconds``
    (between steps: waiting for a batch, callbacks), ``val_seconds``
    (validation) and ``save_seconds`` (checkpoints and history, of the
    previous epoch: an epoch's own saving ends after its row); an epoch that
    the time limit cut short has ``cut_by_time_limit`` 1. With several
    outputs, the metrics of the main output (``output_iou``) are recorded
    under their plain names (``iou``), as for a single output.

    ``checkpoints/last.keras`` always holds the epoch of the last history row,
    even after a kill at any moment (see :func:`recover_checkpoints`). A loss
    that is not finite, checked after every batch, stops training with a
    UserError before anything of that epoch is written.
    """

    def __init__(self, run_dir, monitor, history=()):
        super().__init__()
        self.run_dir = run_dir
        self.monitor = monitor
        self.rows = list(history)
        self.best = min((v for v in (to_minimise(r, monitor) for r in self.rows) if v is not None),
                        default=math.inf)
        self._saving = 0.0
        self.time_limit = None  # the run's TimeLimit, if any: an epoch it cut short is marked in its row
        os.makedirs(os.path.join(run_dir, "checkpoints"), exist_ok=True)

    def on_epoch_begin(self, epoch, logs=None):
        self._start = self._batch_end = time.perf_counter()
        self._steps = self._wait = self._val = 0.0
        self._count = 0

    def on_train_batch_begin(self, batch, logs=None):
        self._batch_start = time.perf_counter()
        self._wait += self._batch_start - self._batch_end

    def on_test_begin(self, logs=None):
        self._val_start = time.perf_counter()

    def on_test_end(self, logs=None):
        self._val += time.perf_counter() - self._val_start

    def on_train_batch_end(self, batch, logs=None):
        self._batch_end = time.perf_counter()
        self._steps += self._batch_end - self._batch_start
        self._count += 1
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self._diverged(f"the training loss is {float(loss)} after batch {batch + 1}")

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        row = {"epoch": epoch + 1, "seconds": round(time.perf_counter() - self._start, 3)}
        row["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        main = self.model.output_names[0] if len(self.model.outputs) > 1 else None
        row.update({_main_metric_name(k, main): float(v) for k, v in logs.items() if k != "learning_rate"})
        bad = [k for k, v in row.items() if k.endswith("loss") and not math.isfinite(v)]
        if bad:
            self._diverged(f"{bad[0]} is {row[bad[0]]}")
        row.update(steps=self._count, step_seconds=round(self._steps, 3), wait_seconds=round(self._wait, 3),
                   val_seconds=round(self._val, 3), save_seconds=round(self._saving, 3))
        if self.time_limit is not None and self.time_limit.cut:
            row["cut_by_time_limit"] = 1.0
        saving = time.perf_counter()
        value = to_minimise(row, self.monitor)
        checkpoints = os.path.join(self.run_dir, "checkpoints")
        names = ([BEST] if value is not None and value < self.best else []) + [LAST]
        for name in names:
            save_model_atomic(self.model, _pending(checkpoints, epoch + 1, name))
        self.best = min(self.best, value if value is not None else math.inf)
        self.rows.append(row)
        io.write_text(os.path.join(self.run_dir, "history.csv"), io.rows_to_csv(self.rows))
        for name in names:
            os.replace(_pending(checkpoints, epoch + 1, name), os.path.join(checkpoints, name))
        self._saving = time.perf_counter() - saving

    def _diverged(self, detail):
        epoch = len(self.rows) + 1
        last = os.path.join(self.run_dir, "checkpoints", LAST)
        kept = f"{last} keeps epoch {epoch - 1}, the last good one" if self.rows else "no checkpoint was saved"
        print(flush=True)  # end the progress bar's line: the message gets a line of its own
        raise UserError(f"training diverged in epoch {epoch} ({detail}); {kept}. Lower train.learning_rate "
                        "or check the data; the same command then resumes from the last good epoch")


def _main_metric_name(key, main):
    """``[val_]<main>_<metric>`` -> ``[val_]<metric>``; losses and other keys unchanged."""
    prefix = "val_" if key.startswith("val_") else ""
    rest = key[len(prefix):]
    if main is None or not rest.startswith(f"{main}_") or rest == f"{main}_loss":
        return key
    return prefix + rest[len(main) + 1:]


def _since_best(rows, monitor):
    """``(best value of monitor, to minimise, and epochs since it)`` over history ``rows``; ``(inf, 0)`` without rows."""
    values = [math.inf if v is None else v for v in (to_minimise(row, monitor) for row in rows)]
    if not values:
        return math.inf, 0
    best = min(range(len(values)), key=values.__getitem__)
    return values[best], len(values) - 1 - best


class _EarlyStopping(keras.callbacks.Callback):
    """Stops training after ``patience`` epochs (at least one) without a better ``monitor`` in the history ``rows``.

    ``rows`` is :class:`RunRecorder`'s list, which holds the epochs of earlier
    sessions too, so a resumed run stops at the same epoch as an uninterrupted
    one; the test is :func:`finished_by`'s.
    """

    def __init__(self, monitor, patience, rows):
        super().__init__()
        self.monitor, self.patience, self.rows = monitor, max(1, patience), rows

    def on_epoch_end(self, epoch, logs=None):
        if self.rows and _since_best(self.rows, self.monitor)[1] >= self.patience:
            self.model.stop_training = True


class TimeLimit(keras.callbacks.Callback):
    """Stops training so that it ends within ``minutes``, counting the epochs of earlier sessions.

    Time is the run's :class:`TrainingClock` (over the history ``rows`` shared
    with :class:`RunRecorder`): the epochs of earlier sessions plus the time
    since this session's training began. Checked after every batch, keeping
    back the time of the last epoch's validation and checkpoints, which the
    current epoch still spends once stopped (``cut`` is then set:
    :class:`RunRecorder` marks the epoch's row ``cut_by_time_limit``); and
    after every epoch, the test that :func:`finished_by` repeats when a run is
    resumed.
    """

    def __init__(self, minutes, rows, clock):
        super().__init__()
        self.seconds = minutes * 60.0
        self.rows = rows
        self.clock = clock
        self.cut = False

    def on_epoch_begin(self, epoch, logs=None):
        self.cut = False

    def on_train_batch_end(self, batch, logs=None):
        last = self.rows[-1] if self.rows else {}
        reserve = last.get("val_seconds", 0.0) + last.get("save_seconds", 0.0)
        if self.clock.seconds() + reserve >= self.seconds:
            self.model.stop_training = self.cut = True

    def on_epoch_end(self, epoch, logs=None):
        if spent_seconds(self.rows) >= self.seconds:
            self.model.stop_training = True


def finished_by(rows, cfg, monitor):
    """Why training is over after the epochs of history ``rows``, or None if it goes on.

    The tests of the callbacks, in their order: ``time_limit`` (the last
    epoch was cut short by it, or :func:`spent_seconds` reach
    ``train.time_limit_minutes``), ``early_stopping``
    (``train.patience`` epochs, at least one, without a new minimum of
    ``monitor``) and ``epochs`` (``train.epochs`` done). A run killed after
    its training ended, e.g. during prediction, is thereby not trained further
    when run again.

    Parameters
    ----------
    rows : list of dict, rows of ``history.csv``
    cfg : TrainConfig
    monitor : str

    Returns
    -------
    str or None
    """
    if not rows:
        return None
    if cfg.time_limit_minutes > 0 and (rows[-1].get("cut_by_time_limit")
                                       or spent_seconds(rows) >= cfg.time_limit_minutes * 60):
        return "time_limit"
    if _since_best(rows, monitor)[1] >= max(1, cfg.patience):
        return "early_stopping"
    if len(rows) >= cfg.epochs:
        return "epochs"
    return None


class EpochSeeds(keras.callbacks.Callback):
    """Draws each epoch's randomness from ``(seed, epoch)``: dropout and noise layers, crops and augmentation.

    Keras does not save the state of its seed generators in ``.keras`` files,
    so a resumed run would draw other dropout masks than an uninterrupted one.
    Setting every seed generator of the model, and the epoch of the training
    data (``set_epoch``), as each epoch begins makes a resumed run draw what an
    uninterrupted one draws, and each epoch reproducible on its own.
    """

    def __init__(self, seed, data):
        super().__init__()
        self.seed = seed
        self.data = data

    def on_epoch_begin(self, epoch, logs=None):
        states = [v for v in self.model.variables if v.path.endswith("seed_generator_state")]
        for index, state in enumerate(states):
            value = np.random.default_rng([self.seed, epoch, index]).integers(1, 2**31 - 1)
            state.assign(np.array([value, 0], dtype=keras.backend.standardize_dtype(state.dtype)))
        if hasattr(self.data, "set_epoch"):
            self.data.set_epoch(epoch)


def monitor_key(cfg, validation, main_output=None, targets="mask"):
    """The history column that picks the best checkpoint, stops early and drives ``plateau``.

    ``train.monitor`` with validation data (``val_iou``, ``val_f1``: higher is better;
    ``val_loss``: lower is better; ``auto``: ``val_f1`` for instance ``targets``, else ``val_iou``), else
    the training ``loss``. With deep
    supervision (``main_output`` named) the loss is the main output's,
    ``[val_]<main>_loss``; the IoU is the main output's already.
    """
    monitor = cfg.monitor if cfg.monitor != "auto" else "val_iou" if targets == "mask" else "val_f1"
    if validation and monitor in ("val_iou", "val_f1"):
        return monitor
    return ("val_" if validation else "") + (f"{main_output}_loss" if main_output else "loss")


class ValidationScores(keras.callbacks.Callback):
    """Adds ``score(model)`` (a dict, e.g. ``{"val_f1": ...}``) to the logs of each epoch, before the callbacks
    after it (the recorder, the schedule, early stopping) read them."""

    def __init__(self, score):
        super().__init__()
        self.score = score

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs.update(self.score(self.model))


def train(model, train_data, val_data, cfg, run_dir, class_weights=None, replicas=1, targets="mask",
          val_score=None):
    """Fit ``model`` and return it with the best weights, plus a summary dict.

    Parameters
    ----------
    model : keras.Model
        Built model, one output or several (deep supervision: main first);
        compiled here unless resuming from ``checkpoints/last.keras``.
    train_data : keras.utils.PyDataset
        Batches ``(x, y)``; ``y`` is fed to every output. With ``set_epoch``
        (``CropDataset``), its samples are drawn from the seed and the epoch.
    val_data : tuple ``(x, y)`` of arrays or None
        Validation crops; without them the training loss is monitored.
    cfg : TrainConfig
    run_dir : str
    class_weights : list of float, optional
        The loss weight of each class of a multi-class model (:func:`lib.run.training_data.class_weights`).
    replicas : int
        Devices of data-parallel training (:func:`lib.run.devices.distribution`; the model
        built in its scope): every batch must split evenly over them, so the
        validation crops are cut to a multiple of ``replicas`` and validated in
        batches of ``cfg.batch_size``.
    targets : str, ``model.targets``: an instance model (bc, bcd) is compiled with its channels' loss
    val_score : callable ``model -> {name: value}``, optional
        Scores added to each epoch's logs with validation data (e.g. ``val_f1``, the F1 of the objects of the
        validation crops), so that the monitor can pick them.

    Returns
    -------
    model : keras.Model with the weights of the best epoch.
    info : dict with ``epochs``, ``best_epoch``, ``stopped_by`` ('epochs',
        'early_stopping' or 'time_limit'), ``seconds`` (of training, every
        session of a resumed run) and ``seconds_per_epoch``.

    Notes
    -----
    The monitored value (:func:`monitor_key`: ``train.monitor``, or ``loss``
    without validation data) picks the best checkpoint, stops early and drives
    the ``plateau`` schedule.

    A run folder with a history is resumed from ``checkpoints/last.keras``
    (weights, optimiser state, epoch counter); the schedule, early stopping and
    the time limit continue from ``history.csv`` and :class:`EpochSeeds` the
    random draws. When the history shows that training was over
    (:func:`finished_by`), e.g. for a run killed during prediction, the model
    gets the best weights without training further.

    With ``train.epochs=0`` (which needs ``train.pretrained``), the model is not
    trained: its weights, as loaded, are saved as ``checkpoints/best.keras`` (so
    the run folder can be given to ``templates/predict.py``) and predict.
    """
    if cfg.epochs == 0:
        os.makedirs(os.path.join(run_dir, "checkpoints"), exist_ok=True)
        save_model_atomic(model, os.path.join(run_dir, "checkpoints", BEST))
        print(f"train.epochs=0: no training; predicting with the weights of train.pretrained={cfg.pretrained}")
        return model, {"epochs": 0, "best_epoch": 0, "stopped_by": "epochs", "seconds": 0.0,
                       "seconds_per_epoch": 0.0, "pretrained_only": True,
                       "val_crops": 0 if val_data is None else len(val_data[0])}
    if cfg.deterministic:
        enable_determinism()
    if replicas > 1 and val_data is not None:
        keep = len(val_data[0]) // replicas * replicas
        val_data = (val_data[0][:keep], val_data[1][:keep]) if keep else None
    n_outputs = len(model.outputs)
    monitor = monitor_key(cfg, val_data is not None, model.output_names[0] if n_outputs > 1 else None, targets)
    history = read_history(os.path.join(run_dir, "history.csv"))
    recover_checkpoints(run_dir, len(history))
    last = os.path.join(run_dir, "checkpoints", LAST)
    if history and not os.path.exists(last):
        print(f"warning: {run_dir}: history.csv without checkpoints/{LAST}; training starts again", file=sys.stderr)
        history = []
    done = finished_by(history, cfg, monitor)
    if done:
        print(f"Training was over after epoch {len(history)} ({done.replace('_', ' ')}): predicting with its "
              "best checkpoint")
    elif history:
        with precision(cfg.precision):  # a float16 model compiles its loss-scaling optimiser under its policy
            model = load_model(last, compile=True)
        print(f"Resuming from {last} after epoch {len(history)}")
    else:
        compile_model(model, cfg, class_weights, targets)
    recorder = RunRecorder(run_dir, monitor, history)
    clock = TrainingClock(recorder.rows)
    if not done:
        callbacks = [EpochSeeds(cfg.seed, train_data), LearningRateSchedule(cfg, monitor, recorder.rows, clock),
                     recorder, _EarlyStopping(monitor, cfg.patience, recorder.rows)]
        if val_score is not None and val_data is not None:
            callbacks.insert(0, ValidationScores(val_score))
        if cfg.tensorboard:  # before the recorder: an epoch in history.csv is in the event files
            from .tensorboard import TensorBoardLogger

            main = model.output_names[0] if n_outputs > 1 else None
            callbacks.insert(2, TensorBoardLogger(run_dir, len(history), val_data, cfg.tensorboard_images_every,
                                                  lambda key: _main_metric_name(key, main)))
        if cfg.time_limit_minutes > 0:
            recorder.time_limit = TimeLimit(cfg.time_limit_minutes, recorder.rows, clock)
            callbacks.append(recorder.time_limit)
        callbacks.insert(0, clock)  # first: it starts before the callbacks that read it
        # shuffle=False: the dataset shuffles itself from (seed, epoch); Keras would reorder its batches
        # with Python's global random state, which a resumed run cannot restore.
        model.fit(fit_input(per_output(train_data, n_outputs)), validation_data=per_output(val_data, n_outputs),
                  epochs=cfg.epochs, initial_epoch=len(history), callbacks=callbacks, shuffle=False,
                  validation_batch_size=cfg.batch_size if replicas > 1 else None,
                  verbose=progress.keras_verbose())
    seconds = clock.seconds()
    best = os.path.join(run_dir, "checkpoints", BEST)
    if os.path.exists(best):
        model.load_weights(best)
    rows = recorder.rows
    times = [r["seconds"] for r in rows]
    return model, {
        "epochs": len(rows),
        "best_epoch": len(rows) - _since_best(rows, monitor)[1] if rows else 0,
        # fit ends before train.epochs only through a callback; the time limit's mid-epoch stop may end
        # an epoch a rounding error short of the limit that finished_by tests
        "stopped_by": finished_by(rows, cfg, monitor) or "time_limit",
        "seconds": round(seconds, 1),
        "seconds_per_epoch": round(sum(times) / len(times), 2) if times else 0.0,
        "monitor": monitor,
        "best_value": _best_value(rows, monitor),
        "val_crops": 0 if val_data is None else len(val_data[0]),
    }


def _best_value(rows, monitor):
    """The monitored value of the best epoch of ``rows``, as recorded (None without rows)."""
    best, _ = _since_best(rows, monitor)
    if not math.isfinite(best):
        return None
    return -best if monitor.endswith(("iou", "f1")) else best
