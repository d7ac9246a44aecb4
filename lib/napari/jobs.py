"""What the napari widgets run, exactly as the command line runs it; napari is not imported here.

- :func:`predict_command` and :func:`train_command`: ``templates/predict.py`` and the templates, in a
  subprocess of their own (the viewer stays responsive; a cancel is the SIGTERM that a cluster scheduler
  sends, after which the same command resumes);
- :func:`layer_input`: a layer's data as predict.py's INPUT: the file or store it was read from when that is
  where its level 0 lies, else a zarr array written chunk by chunk beside the output (never the whole layer in
  memory);
- :func:`training_data`: an image and its labels as a data folder of the template layout;
- :func:`prediction_progress` and :func:`history`: progress read from what the subprocess writes (the blocks
  done in the output store, the epochs in the run's ``history.csv``).
"""

import csv
import os
import sys

import numpy as np

from ..data import io, volumes
from ..predict import writers

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TEMPLATES = {2: "template.py", 3: "3D_template.py"}


def predict_command(model, input_spec, output, gpu="cpu", overrides=()):
    """The argv of ``templates/predict.py`` writing ``output`` from ``input_spec`` with ``model``."""
    return [sys.executable, os.path.join(REPO, "templates", "predict.py"), REPO, str(input_spec), str(output),
            "--model", str(model), "--gpu", str(gpu), *_sets(overrides)]


def train_command(data_dir, job_dir, name, ndim, minutes, gpu="cpu", overrides=()):
    """The argv of the 2D (``ndim`` 2) or 3D template training run ``JOB_DIR/<name>_0`` for ``minutes``.

    The data folder of :func:`training_data` holds one image: a 2D run keeps no validation image apart
    (``data.val_fraction=0``: the last epoch predicts), a 3D run validates on the last slices of the volume.
    ``overrides`` (``--set`` values) come last and win.
    """
    fixed = ["data.val_fraction=0"] if ndim == 2 else []
    return [sys.executable, os.path.join(REPO, "templates", TEMPLATES[ndim]), REPO, str(data_dir), str(job_dir),
            "--id", name, "--rid", "0", "--gpu", str(gpu), "--set", f"train.time_limit_minutes={minutes:g}",
            *_sets(fixed + list(overrides))]


def _sets(overrides):
    return [a for o in overrides for a in ("--set", o)]


MARKER = ".em-segmentation-napari"  # in the folders the widgets write: what they may replace


def claim(folder):
    """Make ``folder`` the widgets' own: create it with :data:`MARKER`, or find the marker in it. A folder that
    exists without the marker is someone else's, and nothing in it is written or removed (ValueError)."""
    marker = os.path.join(folder, MARKER)
    if os.path.isdir(folder) and not os.path.isfile(marker):
        raise ValueError(f"{folder}: exists and was not written by the napari plugin; move it away or choose "
                         "another folder")
    os.makedirs(folder, exist_ok=True)
    if not os.path.isfile(marker):
        io.write_text(marker, "written by the napari plugin of the EM segmentation toolkit; replaced by it\n")


def layer_input(data, source, folder):
    """predict.py's INPUT for a layer's ``data`` (an array, dask array, or the levels of a multiscale layer).

    ``source`` is the path the layer was read from (``layer.source.path``) or None: when predict.py reads an array
    of the same shape there (level 0 of an OME-Zarr image), that path is the input. Otherwise ``data`` (level 0)
    is written to ``folder/input.zarr``, chunk by chunk (dask), once: a rerun with the same shape reuses it.
    ``folder`` is the plugin's own (:func:`claim`).
    """
    import dask.array as da
    import zarr

    data = data[0] if isinstance(data, (list, tuple)) else data
    if source:
        try:
            if volumes.open_volume(str(source)).shape[:-1] == tuple(data.shape):
                return str(source)
        except Exception:  # not something predict.py reads: written below
            pass
    claim(folder)
    path = os.path.join(folder, "input.zarr")
    if os.path.isdir(path):
        existing = zarr.open_array(path, mode="r")
        if existing.shape == tuple(data.shape) and existing.attrs.get("complete"):
            return path
        io.remove_tree(path)
    array = data if isinstance(data, da.Array) else da.from_array(np.asarray(data) if not hasattr(data, "chunks")
                                                                  else data)
    chunks = (64,) * (array.ndim - 2) + (512, 512)
    target = zarr.open_array(path, mode="w", shape=array.shape, dtype=array.dtype,
                             chunks=tuple(min(c, n) for c, n in zip(chunks, array.shape)))
    da.store(array.rechunk(target.chunks), target, lock=False)
    target.attrs["complete"] = True
    return path


def training_data(image, labels, folder):
    """Write ``image`` and its ``labels`` (as painted in the viewer: 0 background, any other id an object) as a
    data folder of the template layout: ``train/x``, ``train/y`` (0/255) and ``test/x`` (the
    image again, predicted at the end of the run). A volume becomes a folder of slices. Returns its dimension.
    ``folder`` is the plugin's own (:func:`claim`): what an earlier Train wrote there is replaced."""
    image, labels = np.asarray(image), np.asarray(labels)
    if image.shape != labels.shape:
        raise ValueError(f"labels: shape {labels.shape} differs from the image's {image.shape}")
    if image.ndim not in (2, 3):
        raise ValueError(f"image: expected a 2D image or a volume, got shape {image.shape}")
    mask = (labels > 0).astype(np.uint8) * 255
    claim(folder)
    for split in ("train", "test"):  # an earlier layer's slices would join this one's
        if os.path.isdir(os.path.join(folder, split)):
            io.remove_tree(os.path.join(folder, split))
    for split, arrays in (("train", (("x", image), ("y", mask))), ("test", (("x", image),))):
        for kind, array in arrays:
            out = os.path.join(folder, split, kind)
            os.makedirs(out, exist_ok=True)
            slices = [array] if array.ndim == 2 else list(array)
            for z, values in enumerate(slices):
                io.write_tiff(os.path.join(out, f"slice_{z:04d}.tif" if array.ndim == 3 else "image.tif"), values)
    return image.ndim


def prediction_progress(output):
    """``(done, total)`` blocks of the prediction into ``output`` (or its staging store), ``(0, 0)`` before the
    store exists."""
    import zarr

    for store in (output, writers.staging_store(output)):
        try:
            done = zarr.open_array(os.path.join(store, "blocks_done"), mode="r")[...]
            return int(done.sum()), int(done.size)
        except Exception:  # not created yet
            continue
    return 0, 0


def history(run_dir):
    """The epochs the run has finished: ``{column: [values]}`` from ``history.csv`` (empty before the first)."""
    path = os.path.join(run_dir, "history.csv")
    if not os.path.isfile(path):
        return {}
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    return {key: [float(r[key]) for r in rows if r.get(key) not in (None, "")] for key in (rows[0] if rows else {})}
