"""The Segment and Train widgets: forms that start ``templates/predict.py`` and the templates in a subprocess.

Nothing is computed here: :mod:`lib.napari.jobs` gives the commands and reads their progress, and
:mod:`lib.napari.layers` turns what they wrote into layers. A timer polls the subprocess twice a second, so the
viewer stays responsive; Cancel sends SIGTERM, after which the same button (or the same command in bash,
printed in the log) resumes where it stopped.
"""

import atexit
import os
import signal
import subprocess
import tempfile
import threading

from napari.layers import Image, Labels, Layer
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (QComboBox, QDoubleSpinBox, QFormLayout, QHBoxLayout, QLabel, QLineEdit, QProgressBar,
                            QPushButton, QVBoxLayout, QWidget)

from . import jobs, layers

POLL_MS = 500
_RUNNING = set()  # the jobs started by this napari: cancelled (resumable) when it exits


@atexit.register
def _cancel_running():
    for job in list(_RUNNING):
        job.cancel()


class _Job:
    """A subprocess with its log file; ``returncode`` None while it runs."""

    def __init__(self, argv, log):
        os.makedirs(os.path.dirname(log), exist_ok=True)
        self.log = log
        with open(log, "ab") as fh:
            fh.write(("$ " + " ".join(argv) + "\n").encode())
            fh.flush()
            self.process = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        _RUNNING.add(self)

    @property
    def returncode(self):
        code = self.process.poll()
        if code is not None:
            _RUNNING.discard(self)
        return code

    def cancel(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def error(self):
        """The last ``error:`` line of the log (what the command line prints for bad input), or its last line."""
        with open(self.log, errors="replace") as fh:
            lines = [line.strip() for line in fh if line.strip()]
        errors = [line for line in lines if line.startswith("error:")]
        return (errors or lines or ["no output"])[-1]


class _Form(QWidget):
    """The layer choosers, buttons, progress bar and status line that both widgets share."""

    def __init__(self, viewer, button):
        super().__init__()
        self.viewer, self.job = viewer, None
        self.form = QFormLayout()
        self.start, self.stop = QPushButton(button), QPushButton("Cancel")
        self.stop.setEnabled(False)
        self.progress, self.status = QProgressBar(), QLabel("")
        self.status.setWordWrap(True)
        buttons = QHBoxLayout()
        buttons.addWidget(self.start)
        buttons.addWidget(self.stop)
        column = QVBoxLayout(self)
        column.addLayout(self.form)
        column.addLayout(buttons)
        column.addWidget(self.progress)
        column.addWidget(self.status)
        self.stop.clicked.connect(self.cancel)
        self.timer = QTimer(self)
        self.timer.setInterval(POLL_MS)
        self.timer.timeout.connect(self.poll)
        viewer.layers.events.inserted.connect(self.refresh)
        viewer.layers.events.removed.connect(self.refresh)

    def options_field(self):
        """More options, as ``--set`` takes them: ``KEY=VALUE`` separated by spaces (e.g. ``train.epochs=20``)."""
        self.options = QLineEdit()
        self.options.setPlaceholderText("KEY=VALUE ... (--set of the command line)")
        self.form.addRow("options", self.options)

    def overrides(self):
        return self.options.text().split()

    def chooser(self, label, kind):
        box = QComboBox()
        box.kind = kind
        self.form.addRow(label, box)
        return box

    def refresh(self, event=None):
        for box in self.findChildren(QComboBox):
            chosen = box.currentText()
            box.clear()
            kind = {"image": Image, "labels": Labels}[box.kind]
            box.addItems([layer.name for layer in self.viewer.layers if isinstance(layer, kind)])
            if chosen:
                box.setCurrentText(chosen)

    def layer(self, box):
        name = box.currentText()
        if name not in self.viewer.layers:
            raise ValueError(f"choose a{'n image' if box.kind == 'image' else ' labels'} layer")
        return self.viewer.layers[name]

    def running(self, text):
        self.start.setEnabled(False)
        self.stop.setEnabled(True)
        self.status.setText(text)
        self.timer.start()

    def finished(self, text):
        self.timer.stop()
        self.start.setEnabled(True)
        self.stop.setEnabled(False)
        self.status.setText(text)

    def cancel(self):
        if self.job is not None:
            self.job.cancel()

    def end(self, code, found, scale, done, cancelled):
        """The job ended with exit status ``code``: its layers (``found()``) added and ``done`` shown, ``cancelled``
        after a cancel (SIGTERM), else its error line."""
        if code == 0:
            self.add_layers(found(), scale)
            self.finished(done)
        elif code in (-signal.SIGTERM, 128 + signal.SIGTERM):
            self.finished(cancelled)
        else:
            self.finished(self.job.error())

    def add_layers(self, found, scale=None):
        for data, attributes, kind in found:
            if scale is not None:  # over the layer it was made of
                attributes = {**attributes, "scale": list(scale)}
            self.viewer.add_layer(Layer.create(data, attributes, kind))


class SegmentWidget(_Form):
    """Apply a run folder to the chosen image layer (2D, 3D, or a lazily read array of any size) with predict.py;
    the probabilities and mask (and objects) come back as layers, read lazily from the output's pyramid."""

    def __init__(self, napari_viewer):
        super().__init__(napari_viewer, "Segment")
        self.image = self.chooser("image", "image")
        self.model, self.output = QLineEdit(), QLineEdit()
        self.model.setPlaceholderText("a run folder JOB_DIR/ID_RID (or a .keras file, options below)")
        self.output.setPlaceholderText("OUT.zarr (default: beside the run folder)")
        self.form.addRow("model", self.model)
        self.form.addRow("output", self.output)
        self.options_field()
        self.start.clicked.connect(self.segment)
        self.refresh()
        self._writing = None

    def output_path(self, layer):
        if self.output.text().strip():
            return self.output.text().strip()
        model = os.path.abspath(self.model.text().strip())
        return os.path.join(os.path.dirname(model), "napari", f"{layer.name}_{os.path.basename(model)}.zarr")

    def segment(self):
        try:
            layer, model = self.layer(self.image), self.model.text().strip()
            if not model:
                raise ValueError("model: choose a run folder")
        except ValueError as exc:
            self.status.setText(f"error: {exc}")
            return
        output = self.output_path(layer)
        self._target = (layer, output, model)
        source = getattr(layer.source, "path", None)
        self._writing = {"folder": os.path.join(os.path.dirname(output), f".{os.path.basename(output)}.input")}

        def write():  # the layer's level 0 as predict.py's INPUT, in this thread (may take a while for big layers)
            try:
                self._writing["spec"] = jobs.layer_input(layer.data, source, self._writing["folder"])
            except Exception as exc:  # shown in the status line by poll()
                self._writing["error"] = f"{type(exc).__name__}: {exc}"

        threading.Thread(target=write, daemon=True).start()
        self.progress.setValue(0)
        self.running(f"reading {layer.name} ...")

    def poll(self):
        if self._writing is not None:
            if "error" in self._writing:
                error, self._writing = self._writing["error"], None
                return self.finished(f"error: {error}")
            if "spec" not in self._writing:
                return
            layer, output, model = self._target
            argv = jobs.predict_command(model, self._writing.pop("spec"), output, overrides=self.overrides())
            self._writing = None
            self.job = _Job(argv, output.rstrip("/") + ".log")
            self.status.setText(f"segmenting {layer.name} into {output}")
            return
        done, total = jobs.prediction_progress(self._target[1])
        if total:
            self.progress.setMaximum(total)
            self.progress.setValue(done)
        code = self.job.returncode
        if code is None:
            return
        layer, output, _ = self._target
        self.end(code, lambda: layers.output_layers(output, layer.name), layer.scale, f"done: {output}",
                 "cancelled: Segment again resumes where it stopped")

    def cancel(self):
        if self._writing is not None:  # nothing started yet: forget the input being written
            self._writing = None
            return self.finished("cancelled")
        super().cancel()


class TrainWidget(_Form):
    """Train the 2D or 3D template on an image layer and its labels layer for a time budget, in a subprocess;
    the loss and validation IoU curves are drawn as the epochs end. The run folder is the ordinary one (resumed
    by the same command in bash); when the run ends, its segmentation of the image is added as layers."""

    def __init__(self, napari_viewer):
        super().__init__(napari_viewer, "Train")
        self.image = self.chooser("image", "image")
        self.labels = self.chooser("labels", "labels")
        self.minutes = QDoubleSpinBox()
        self.minutes.setRange(0.05, 10000)
        self.minutes.setValue(10)
        self.job_dir, self.name = QLineEdit(os.path.join(tempfile.gettempdir(), "em-segmentation-jobs")), \
            QLineEdit("napari")
        self.form.addRow("minutes", self.minutes)
        self.form.addRow("job folder", self.job_dir)
        self.form.addRow("run name", self.name)
        self.options_field()
        self.figure, self.canvas = _curves(self)
        self.layout().addWidget(self.canvas)
        self.start.clicked.connect(self.train)
        self.refresh()
        self.run_dir = None

    def train(self):
        try:
            image, labels = self.layer(self.image), self.layer(self.labels)
            job_dir, name = self.job_dir.text().strip(), self.name.text().strip()
            data_dir = os.path.join(job_dir, f"{name}_data")
            ndim = jobs.training_data(image.data, labels.data, data_dir)
        except (ValueError, OSError) as exc:
            self.status.setText(f"error: {exc}")
            return
        self.run_dir = os.path.join(job_dir, f"{name}_0")
        argv = jobs.train_command(data_dir, job_dir, name, ndim, self.minutes.value(), overrides=self.overrides())
        self._scale = image.scale
        self.job = _Job(argv, os.path.join(job_dir, f"{name}.log"))
        self.progress.setRange(0, 0)  # busy until the first epoch ends
        self.running(f"training {self.run_dir}")

    def poll(self):
        curves = jobs.history(self.run_dir)
        if curves.get("epoch"):
            self.progress.setRange(0, 1)
            self.progress.setValue(1)
            _draw(self.figure, curves)
            self.canvas.draw_idle()
            self.status.setText(f"training {self.run_dir}: epoch {int(curves['epoch'][-1])}")
        code = self.job.returncode
        if code is None:
            return
        self.end(code, lambda: layers.run_layers(self.run_dir), self._scale,
                 f"trained: {self.run_dir} (use it as Segment's model)",
                 "cancelled: Train again (or the command in the log) resumes the run")


def _curves(parent):
    from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(4, 2.5), tight_layout=True)
    canvas = FigureCanvasQTAgg(figure)
    canvas.setParent(parent)
    return figure, canvas


def _draw(figure, curves):
    figure.clear()
    axes = figure.add_subplot(111)
    for key, style in (("loss", "-"), ("val_loss", "--"), ("iou", "-."), ("val_iou", ":")):
        if curves.get(key):
            axes.plot(curves["epoch"][:len(curves[key])], curves[key], style, label=key)
    axes.set_xlabel("epoch")
    axes.legend(fontsize="small")
