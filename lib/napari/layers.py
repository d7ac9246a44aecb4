"""The toolkit's outputs as napari layer data ``(data, attributes, layer_type)``; napari is not imported here.

- a predict.py output store (``OUT.zarr``): the probabilities as an image, the mask and the objects as labels,
  each a pyramid of lazily read levels (napari reads the level that fits the screen) with the input's voxel size;
- a run folder (``JOB_DIR/ID_RID``): its test images, the probabilities, masks and objects of its best variant
  (by the test fg_iou of ``metrics.json``) with ``data.voxel_size``.

:func:`napari_reader` is the plugin's reader: it takes those two kinds of folder and leaves everything else to
other readers.
"""

import json
import os

import numpy as np
import tifffile

from ..data import io
from ..predict import writers
from ..run import folders


def napari_reader(path):
    """npe2 reader: a function reading ``path`` when it is a predict.py output or a run folder, else None."""
    path = _one_path(path)
    if is_output(path) or is_run(path):
        return read
    return None


def read(path):
    """The layers of a predict.py output or a run folder (a list of ``(data, attributes, layer_type)``)."""
    path = _one_path(path)
    return output_layers(path) if is_output(path) else run_layers(path)


def _one_path(path):
    """The path napari gives a reader (a path, or a list of one) as a string without a trailing slash."""
    return str(path[0] if isinstance(path, (list, tuple)) else path).rstrip("/")


def is_output(path):
    """True for an OME-Zarr store written by predict.py (complete or not)."""
    return writers.output_kind(path) == "zarr" and writers.read_job(path) is not None


def is_run(path):
    """True for a run folder: ``config.json`` and a checkpoint."""
    return os.path.isfile(os.path.join(path, "config.json")) and folders.run_checkpoint(path) is not None


def output_layers(path, name=None):
    """The layers of predict.py's output store at ``path``: the probabilities (an image; one per class of a
    multi-class model, ``channel_axis`` 0), the mask and, when found, the objects (labels), each with its
    pyramid and the scale of its level 0 (space axes)."""
    import dask.array as da
    import zarr

    root = zarr.open_group(path, mode="r")
    name = name or os.path.basename(path)
    groups = [(root, "probability", "image")] + [(root["labels"][n], n, "labels")
                                                 for n in dict(root["labels"].attrs)["ome"]["labels"]]
    job = writers.read_job(path) or {}
    layers = []
    for group, what, kind in groups:
        multiscale = dict(group.attrs)["ome"]["multiscales"][0]
        space = [a["type"] == "space" for a in multiscale["axes"]]
        levels = [da.from_zarr(group[d["path"]]) for d in multiscale["datasets"]]
        scale = [v for v, s in zip(multiscale["datasets"][0]["coordinateTransformations"][0]["scale"], space) if s]
        attributes = {"name": f"{name} {what}", "scale": scale, "multiscale": len(levels) > 1}
        if kind == "image":
            top = 1.0 if levels[0].dtype == np.float16 else 255
            attributes.update(contrast_limits=[0, top], colormap="magma", blending="additive", opacity=0.6)
            if not space[0]:  # a class per channel
                attributes.update(channel_axis=0, name=[f"{name} probability of class {k}"
                                                        for k in range(levels[0].shape[0])])
        elif what == "mask" and job.get("classes", 1) == 1:
            attributes.update(opacity=0.5)
        layers.append((levels if len(levels) > 1 else levels[0], attributes, kind))
    return layers


def run_layers(run_dir):
    """The layers of a run folder: each test image (stacked when all have one shape) and the probabilities, mask
    and objects of the run's best variant."""
    with open(os.path.join(run_dir, "config.json")) as fh:
        config = json.load(fh)
    name = os.path.basename(run_dir)
    scale = config.get("data", {}).get("voxel_size")
    classes = config.get("model", {}).get("classes", 1)
    variant = best_variant(run_dir)
    if variant is None:
        raise ValueError(f"{run_dir}: a run folder without predictions (the run has not finished its test set)")
    folder = os.path.join(run_dir, "predictions", variant)
    files = sorted(os.listdir(os.path.join(folder, "prob")), key=io.natural_key)
    sources = {"image": [_test_image(run_dir, f) for f in files],
               "probability": [os.path.join(folder, "prob", f) for f in files],
               "mask": [os.path.join(folder, "binary", f) for f in files],
               "objects": [os.path.join(folder, "instances", f) for f in files]}
    layers = []
    for what, paths in sources.items():
        if not all(p and os.path.exists(p) for p in paths):
            continue
        arrays = [_read(p) for p in paths]
        if what == "mask" and classes == 1:
            arrays = [(a > 0).astype(np.uint8) for a in arrays]
        kind = {"image": "image", "probability": "image"}.get(what, "labels")
        for label, data in _stacked(arrays, files):
            attributes = {"name": f"{name} {what}{label}"}
            if scale and len(scale) == data.ndim:
                attributes["scale"] = list(scale)
            if what == "probability":
                attributes.update(colormap="magma", blending="additive", opacity=0.6)
            layers.append((data, attributes, kind))
    return layers


def best_variant(run_dir):
    """The variant with the best test fg_iou in ``metrics.json`` (the last predicted one without ground truth)."""
    predictions = os.path.join(run_dir, "predictions")
    variants = sorted(os.listdir(predictions)) if os.path.isdir(predictions) else []
    try:
        with open(os.path.join(run_dir, "metrics.json")) as fh:
            results = json.load(fh).get("results", {})
        scored = [(r.get("fg_iou", -1), v) for v, r in results.items() if v in variants and isinstance(r, dict)]
        if scored:
            return max(scored)[1]
    except (OSError, ValueError):
        pass
    return variants[-1] if variants else None


def _test_image(run_dir, name):
    """The test image (or volume: a folder of slices) that the prediction file ``name`` was made of."""
    try:
        with open(os.path.join(run_dir, "environment.json")) as fh:
            data_dir = json.load(fh)["data_dir"]
        folder = os.path.join(data_dir, "test", "x")
        if os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
        stem = os.path.splitext(name)[0]
        same = [f for f in os.listdir(folder) if os.path.splitext(f)[0] == stem]
        if same:
            return os.path.join(folder, same[0])
        return folder if io.list_images(folder) else None  # a 3D run's volume: the folder of its slices
    except (OSError, KeyError, ValueError):
        return None


def _read(path):
    """An image file, or a folder of slices as a volume."""
    if os.path.isdir(path):
        return np.stack([io.read_image(p) for p in io.list_images(path)])
    if path.lower().endswith(io.TIFF_EXTENSIONS):  # every page: a 3D run's volumes are TIFF stacks
        return tifffile.imread(path)
    return io.read_image(path)


def _stacked(arrays, names):
    """``[(label, array)]``: one stack when the arrays share a shape (or there is one), else one per file."""
    if len({a.shape for a in arrays}) == 1:
        return [("", arrays[0] if len(arrays) == 1 else np.stack(arrays))]
    return [(f" {os.path.splitext(n)[0]}", a) for n, a in zip(names, arrays)]
