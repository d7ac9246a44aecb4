"""TensorBoard event files of a run, on every Keras backend: ``RUN/tensorboard/{train,validation}``.

``keras.callbacks.TensorBoard`` writes through TensorFlow, which the JAX and
PyTorch environments do not have; :class:`TensorBoardLogger` writes the same
kind of event files with ``tensorboardX`` (protobuf only), so one callback
serves every backend. ``tensorboard --logdir JOB_DIR`` then shows each run as
``ID_RID/tensorboard/train`` and ``ID_RID/tensorboard/validation``, whose
curves of the same tag (``loss``, ``iou``) are drawn on one chart.

Steps are epochs numbered from 1, as in ``history.csv``. A resumed run opens a
new event file in the same folders that starts with a purge marker at its first
epoch: TensorBoard then hides whatever an interrupted session had written for
that epoch or later, so the curves hold each epoch once.
"""

import os

import keras
import numpy as np

FOLDER = "tensorboard"


RUNS = ("train", "validation")


IMAGES = 3  # validation crops drawn with their predictions


def log_dirs(run_dir):
    """``{run: folder}`` of a run's event files (``train``, ``validation``)."""
    return {name: os.path.join(run_dir, FOLDER, name) for name in RUNS}


def scalars(logs, learning_rate, rename=lambda key: key):
    """``{run: {tag: value}}`` from a Keras epoch's ``logs``: ``val_x`` goes to ``validation`` as ``x``.

    ``rename`` maps a log key to its history name (deep supervision: the main
    output's metrics without the output's prefix).
    """
    out = {"train": {"learning_rate": float(learning_rate)}, "validation": {}}
    for key, value in logs.items():
        if key == "learning_rate":
            continue
        name = rename(key)
        run, tag = ("validation", name[4:]) if name.startswith("val_") else ("train", name)
        out[run][tag] = float(value)
    return out


def prediction_grid(x, y, probabilities):
    """One picture of validation crops: a row per crop of image | ground truth | prediction, float32 in [0, 1].

    Parameters
    ----------
    x : ndarray ``(N, *spatial, C)``, normalised images (3D: the middle slice is drawn)
    y : ndarray ``(N, *spatial, 1)``, masks (binary, or class ids when K > 1)
    probabilities : ndarray ``(N, *spatial, K)``: K = 1, the foreground probability;
        K > 1, class probabilities, drawn as the class id over ``K - 1``; instance channels (``y`` of several
        channels too), their foreground.

    Returns
    -------
    ndarray ``(N * H, 3 * W)`` float32
    """
    k = probabilities.shape[-1]
    if k > 1 and np.shape(y)[-1] > 1:  # instance channels (model.targets bc, bcd): their foreground is drawn
        y, probabilities, k = np.asarray(y)[..., :1], probabilities[..., :1], 1
    rows = [picture_row(image, mask if k == 1 else mask / (k - 1), prob)
            for image, mask, prob in zip(x, np.asarray(y, np.float32), probabilities)]
    return np.concatenate(rows, axis=0)


def picture_row(image, *maps):
    """``image`` (its first channel, stretched to [0, 1]) beside ``maps``, side by side: ``(H, (1 + M) W)`` float32.

    ``image`` and each map are ``(*spatial, C)``, 2D or 3D (the middle slice is drawn). A map of
    one channel is drawn as it is (a probability or a mask); one of K > 1 channels as its argmax
    over ``K - 1``.
    """
    def plane(a):
        a = np.asarray(a, np.float32)
        return a[a.shape[0] // 2] if a.ndim == 4 else a  # (Z, Y, X, C) -> (Y, X, C)

    first = plane(image)[..., 0]
    lo, hi = float(first.min()), float(first.max())
    columns = [(first - lo) / (hi - lo) if hi > lo else np.zeros_like(first)]
    for m in map(plane, maps):
        columns.append(m[..., 0] if m.shape[-1] == 1 else np.argmax(m, axis=-1) / (m.shape[-1] - 1))
    return np.clip(np.concatenate(columns, axis=1), 0.0, 1.0).astype(np.float32)


def graph_def(model):
    """The layer graph of a functional Keras ``model`` as a TensorBoard ``GraphDef`` (any backend).

    One node per layer (op: the layer class; attribute ``_output_shapes``), its
    inputs the layers it is called on, read from ``model.get_config()``.
    """
    from tensorboardX.proto import attr_value_pb2, graph_pb2, node_def_pb2, tensor_shape_pb2

    def sources(value):
        if isinstance(value, dict):
            history = value.get("config", {}).get("keras_history") if value.get("class_name") == \
                "__keras_tensor__" else None
            if history:
                return [history[0]]
            return [s for v in value.values() for s in sources(v)]
        if isinstance(value, (list, tuple)):
            return [s for v in value for s in sources(v)]
        return []

    nodes = []
    for layer in model.get_config().get("layers", []):
        name = layer["name"]
        shapes = attr_value_pb2.AttrValue.ListValue()
        try:
            outputs = model.get_layer(name).output
        except (AttributeError, ValueError):
            outputs = []
        for tensor in outputs if isinstance(outputs, (list, tuple)) else [outputs]:
            shapes.shape.add(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=-1 if d is None else int(d))
                                  for d in tensor.shape])
        inputs = list(dict.fromkeys(sources(layer.get("inbound_nodes", []))))
        nodes.append(node_def_pb2.NodeDef(name=name, op=layer["class_name"], input=inputs,
                                          attr={"_output_shapes": attr_value_pb2.AttrValue(list=shapes)}))
    return graph_pb2.GraphDef(node=nodes)


class TensorBoardLogger(keras.callbacks.Callback):
    """Writes a run's TensorBoard events each epoch: scalars, and validation pictures every ``images_every`` epochs.

    Parameters
    ----------
    run_dir : str
    first_epoch : int
        Epochs already in ``history.csv`` (0 for a new run): the steps continue after them.
    val_data : tuple ``(x, y)`` of arrays, or None
        Validation crops; the first :data:`IMAGES` are drawn with their predictions.
    images_every : int
        Epochs between pictures (also drawn at the first epoch); 0: none.
    rename : callable, optional
        Log key -> history column name (:func:`scalars`).

    Placed before the callback that commits ``history.csv``: an epoch is in the
    event files whenever it is in the history (and one interrupted before its
    commit is hidden by the purge marker of the resumed session).
    """

    def __init__(self, run_dir, first_epoch, val_data=None, images_every=10, rename=lambda key: key):
        super().__init__()
        self.run_dir, self.first_epoch, self.images_every, self.rename = run_dir, first_epoch, images_every, rename
        self.val = None if val_data is None else (val_data[0][:IMAGES], val_data[1][:IMAGES])
        self.writers = {}

    def on_train_begin(self, logs=None):
        from tensorboardX import SummaryWriter

        purge = self.first_epoch + 1 if self.first_epoch else None
        self.writers = {name: SummaryWriter(folder, purge_step=purge, flush_secs=30)
                        for name, folder in log_dirs(self.run_dir).items()}
        if not self.first_epoch:
            from tensorboardX.proto import event_pb2

            graph = event_pb2.Event(graph_def=graph_def(self.model).SerializeToString())
            self.writers["train"].file_writer.add_event(graph)

    def on_epoch_end(self, epoch, logs=None):
        step = epoch + 1
        rate = keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)
        for run, values in scalars(dict(logs or {}), rate, self.rename).items():
            for tag, value in values.items():
                self.writers[run].add_scalar(tag, value, step)
        if self.val is not None and self.images_every and (step == 1 or step % self.images_every == 0):
            predicted = self.model.predict_on_batch(self.val[0])
            if isinstance(predicted, (list, tuple)):  # deep supervision: the main output
                predicted = predicted[0]
            grid = prediction_grid(self.val[0], self.val[1], keras.ops.convert_to_numpy(predicted))
            self.writers["validation"].add_image("image_truth_prediction", grid, step, dataformats="HW")
        for writer in self.writers.values():
            writer.flush()

    def on_train_end(self, logs=None):
        for writer in self.writers.values():
            writer.close()
