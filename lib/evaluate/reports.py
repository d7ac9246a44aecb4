"""Charts, metrics tables, ``metrics.json`` and ``JOB_DIR/summary.csv``.
"""

import csv
import json
import os
import re

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.image import imsave

from ..data import io

METRIC_ORDER = ("fg_iou", "mean_iou", "dice", "precision", "recall", "det", "seg", "f1_50", "ap_50")


def _figure(figsize):
    """A figure drawn by Agg into files only: no pyplot, so no global backend or figure list changes."""
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def _save_figure(fig, path):
    io.write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))


def plot_history(rows, charts_dir):
    """Write ``loss.png`` and ``iou.png`` (training and validation curves) from history rows.

    Returns the written paths.
    """
    os.makedirs(charts_dir, exist_ok=True)
    epochs = [int(r["epoch"]) for r in rows]
    paths = []
    for key, title in (("loss", "Loss"), ("iou", "Foreground IoU")):
        fig = _figure((6, 4))
        ax = fig.subplots()
        for name, style in ((key, "-"), (f"val_{key}", "--")):
            values = [r.get(name, np.nan) for r in rows]
            if not np.all(np.isnan(values)):
                ax.plot(epochs, values, style, label=name)
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if ax.get_lines():  # a run of train.epochs=0 has no curve (matplotlib warns of an empty legend)
            ax.legend()
        path = os.path.join(charts_dir, f"{key}.png")
        _save_figure(fig, path)
        paths.append(path)
    return paths


NO_GROUND_TRUTH = ("No ground truth given (DATA_DIR/test has no y/ folder): the test set was predicted and "
                   "written, no metrics computed")


def metrics_table(results):
    """A plain-text table of ``{variant: {metric: value}}``, one row per variant.

    Per-class metrics of multi-class runs (``c<k>_<metric>``, :mod:`lib.evaluate.evaluation`) get one row
    per class under their variant's (macro means), named ``<variant> class <k>``.
    """
    rows = []
    for variant, values in results.items():
        rows.append((variant, values))
        classes = sorted({int(m.group(1)) for m in map(_CLASS_KEY.match, values) if m})
        rows += [(f"{variant} class {c}", {k[len(f"c{c}_"):]: v for k, v in values.items()
                                            if k.startswith(f"c{c}_")}) for c in classes]
    metrics = [m for m in METRIC_ORDER if any(m in r for _, r in rows)]
    width = max([len("variant")] + [len(v) for v, _ in rows])
    lines = ["  ".join(["variant".ljust(width)] + [m.rjust(9) for m in metrics])]
    for variant, values in rows:
        cells = [f"{values[m]:9.4f}" if m in values else " " * 9 for m in metrics]
        lines.append("  ".join([variant.ljust(width)] + cells))
    return "\n".join(lines)


_CLASS_KEY = re.compile(r"^c(\d+)_")


def write_json(path, payload):
    io.write_text(path, json.dumps(payload, indent=2, default=_jsonable) + "\n")


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def append_summary(job_dir, row):
    """Append one row to ``JOB_DIR/summary.csv`` under a file lock, widening the header as needed.

    Concurrent runs each get their whole row: the file is rewritten atomically
    while the lock is held. A row with the same ``id`` and ``rid`` is replaced:
    a run killed after writing its row, then run again, or run again with
    ``--overwrite``, keeps one row.
    """
    import fcntl

    path = os.path.join(job_dir, "summary.csv")
    with open(os.path.join(job_dir, ".summary.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        rows = []
        if os.path.exists(path):
            with open(path, newline="") as fh:
                rows = list(csv.DictReader(fh))
        new = {k: ("" if v is None else str(v)) for k, v in row.items()}
        rows = [r for r in rows if (r.get("id"), r.get("rid")) != (new.get("id"), new.get("rid"))] + [new]
        io.write_text(path, io.rows_to_csv(rows))
    return path


def summary_row(run_id, rid, results, info):
    """Flatten a run's results into one summary.csv row: ``<variant>_<metric>`` columns."""
    row = {"id": run_id, "rid": rid}
    row.update(info)
    for variant, values in results.items():
        for metric, value in values.items():
            row[f"{variant}_{metric}"] = round(float(value), 6)
    return row


def plot_threshold_sweeps(sweeps, charts_dir):
    """Write ``threshold_sweep.png``: fg_iou and dice against the threshold, one line per variant."""
    if not sweeps:
        return None
    os.makedirs(charts_dir, exist_ok=True)
    fig = _figure((10, 4))
    axes = fig.subplots(1, 2)
    for variant, sweep in sweeps.items():
        for ax, key in zip(axes, ("fg_iou", "dice")):
            ax.plot(sweep["thresholds"], sweep[key], marker=".", label=variant)
    for ax, key in zip(axes, ("fg_iou", "dice")):
        ax.set_xlabel("threshold")
        ax.set_title(key)
        ax.grid(alpha=0.3)
        ax.legend()
    path = os.path.join(charts_dir, "threshold_sweep.png")
    _save_figure(fig, path)
    return path


def plot_overlays(samples, variants, charts_dir, filename="overlays.png", classes=1):
    """Write ``overlays.png``: test slices with ground-truth and predicted outlines, one column per variant.

    Parameters
    ----------
    samples : list of dict
        One row each: ``name`` (str), ``image`` (Y, X) float grey levels, ``mask``
        (Y, X) {0, 1} ground truth and ``preds`` ``{variant: (Y, X) {0, 1}}``.
    variants : sequence of str
        The columns, in order; a variant missing from a row leaves its panel empty.
    charts_dir : str
    filename : str
    classes : int
        K > 1: masks and predictions are label images of K classes; each foreground class is
        outlined in a colour of its own, the ground truth dashed and the prediction solid.

    Returns
    -------
    str, the written path.
    """
    def draw(ax, sample, variant, lo, hi):
        ax.imshow(sample["image"], cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
        if classes == 1:
            _outline(ax, sample["mask"], "lime")
            if variant in sample["preds"]:
                _outline(ax, sample["preds"][variant], "magenta")
        for k in range(1, classes):
            _outline(ax, sample["mask"] == k, CLASS_COLOURS[(k - 1) % len(CLASS_COLOURS)], "dashed")
            if variant in sample["preds"]:
                _outline(ax, sample["preds"][variant] == k, CLASS_COLOURS[(k - 1) % len(CLASS_COLOURS)])
        return variant

    title = ("green: ground truth, magenta: prediction" if classes == 1 else "dashed: ground truth, solid: "
             "prediction; " + ", ".join(f"class {c} {CLASS_COLOURS[(c - 1) % len(CLASS_COLOURS)]}"
                                        for c in range(1, classes)))
    return _sample_grid(samples, variants, draw, title, 9, os.path.join(charts_dir, filename))


def _sample_grid(samples, variants, draw, title, title_size, path):
    """Write a figure of one panel per test slice (rows) and variant (columns) to ``path``; return the path.

    ``draw(ax, sample, variant, lo, hi)`` draws a panel, given the slice's grey levels ``lo`` and ``hi`` (its
    0.5 and 99.5 percentiles), and returns the column's heading (shown above the first row).
    """
    os.makedirs(os.path.dirname(path), exist_ok=True)
    variants = list(variants)
    height, width = samples[0]["image"].shape
    panel = 3.2
    fig = _figure((panel * len(variants), panel * height / width * len(samples) + 0.6))
    axes = fig.subplots(len(samples), len(variants), squeeze=False)
    for r, (row, sample) in enumerate(zip(axes, samples)):
        lo, hi = np.percentile(sample["image"], (0.5, 99.5))
        hi = hi if hi > lo else lo + 1
        for c, (ax, variant) in enumerate(zip(row, variants)):
            heading = draw(ax, sample, variant, lo, hi)
            if r == 0:
                ax.set_title(heading, fontsize=9)
            if c == 0:
                ax.set_ylabel(sample["name"], fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(title, fontsize=title_size)
    fig.tight_layout()
    _save_figure(fig, path)
    return path


def plot_objects(samples, variants, charts_dir, filename="objects.png"):
    """Write ``objects.png``: test slices with each predicted object in a colour of its own, one column per variant.

    ``samples`` as :func:`plot_overlays`', with ``objects`` ``{variant: (Y, X) label image}``; the ground truth
    is outlined in white. Returns the written path.
    """
    from skimage.color import label2rgb
    from skimage.segmentation import find_boundaries

    def draw(ax, sample, variant, lo, hi):
        gray = np.clip((sample["image"] - lo) / (hi - lo), 0, 1)
        labels = sample.get("objects", {}).get(variant)
        shown = np.dstack([gray] * 3) if labels is None else label2rgb(
            _shuffled(labels), gray, alpha=0.35, bg_label=0, colors=OBJECT_COLOURS)
        if labels is not None:
            shown[find_boundaries(labels, mode="inner")] = (1.0, 1.0, 0.0)
        ax.imshow(shown, interpolation="nearest")
        _outline(ax, sample["mask"] > 0, "white", "dashed")
        return f"{variant}: {0 if labels is None else len(np.unique(labels)) - 1} objects"

    return _sample_grid(samples, variants, draw, "objects in colours of their own\nwhite dashed: ground truth", 8,
                        os.path.join(charts_dir, filename))


# Colours of neighbouring ids differ most when ids are shuffled (label2rgb cycles through its colours).
OBJECT_COLOURS = ("red", "blue", "lime", "magenta", "cyan", "orange", "purple", "yellow", "teal", "pink")


def _shuffled(labels):
    ids = np.unique(labels)
    lut = np.zeros(int(ids.max()) + 1, np.int64)
    lut[ids] = np.concatenate([[0], np.random.default_rng(0).permutation(len(ids) - 1) + 1])
    return lut[labels]


def plot_object_sizes(sizes, unit, charts_dir, filename="object_sizes.png"):
    """Write ``object_sizes.png``: the distribution of object sizes of each variant (``{variant: sizes}``), on a
    logarithmic axis of ``unit``; returns the path, or None when there are no objects."""
    values = {v: np.asarray(s, np.float64) for v, s in sizes.items() if len(s)}
    if not values:
        return None
    os.makedirs(charts_dir, exist_ok=True)
    fig = _figure((6, 4))
    ax = fig.subplots()
    low, high = min(v.min() for v in values.values()), max(v.max() for v in values.values())
    bins = np.geomspace(low, high * 1.0001, 30) if high > low else 10
    for variant, v in values.items():
        ax.hist(v, bins=bins, histtype="step", linewidth=1.2, label=f"{variant} ({len(v)} objects, median "
                                                                      f"{np.median(v):.4g})")
    if high > low:
        ax.set_xscale("log")
    ax.set_xlabel(f"object size ({unit})")
    ax.set_ylabel("objects")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = os.path.join(charts_dir, filename)
    _save_figure(fig, path)
    return path


# One colour per foreground class of a multi-class run's overlays (class 1 first).
CLASS_COLOURS = ("lime", "magenta", "cyan", "yellow", "orange", "red", "blue", "white")


def _outline(ax, mask, color, linestyle="solid"):
    mask = np.asarray(mask)
    if mask.min() != mask.max():  # a contour of a constant mask does not exist
        ax.contour(mask.astype(np.float32), levels=[0.5], colors=color, linewidths=0.7, linestyles=linestyle)


# --------------------------------------------------------------------------- pictures to check before a long run

def outline_rgb(image, mask, color=(0, 255, 0)):
    """Picture of ``image`` with the outline of ``mask`` drawn over it, pixel for pixel.

    Parameters
    ----------
    image : float ndarray ``(H, W, C)``
        Any range: grey levels are stretched between the 0.5 and 99.5 percentiles.
        Three channels are shown as colour, otherwise the first channel.
    mask : ndarray ``(H, W)``, binary; its unannotated pixels (``data.ignore_value``: :func:`lib.data.io.ignored`,
        or negative targets) are shown darkened and blue, so that the annotated ones stand out
    color : RGB triple of the outline (default green)

    Returns
    -------
    uint8 ndarray ``(H, W, 3)``
    """
    from skimage.segmentation import find_boundaries

    shown = image[..., :3] if image.shape[-1] == 3 else image[..., :1]
    lo, hi = np.percentile(shown, (0.5, 99.5))
    rgb = np.clip((shown - lo) * (255.0 / (hi - lo if hi > lo else 1.0)), 0, 255).astype(np.uint8)
    rgb = np.repeat(rgb, 3 // rgb.shape[-1], axis=-1)
    mask = np.asarray(mask)
    unannotated = mask < 0 if mask.dtype.kind == "f" else io.ignored(mask)
    if unannotated.any():
        rgb[unannotated] = rgb[unannotated] // 3 + np.array(UNANNOTATED, np.uint8)
    rgb[find_boundaries(io.foreground(mask) if mask.dtype.kind != "f" else mask > 0, mode="inner")] = color
    return rgb


UNANNOTATED = (0, 0, 110)  # added to a third of the grey level of unannotated pixels in the check pictures


def _save_png(path, rgb):
    io.write_atomic(path, lambda tmp: imsave(tmp, rgb, format="png"))


def save_augmentation_samples(images, masks, folder):
    """Write ``sample_000.png``, ... in ``folder``: each training sample with its mask outline in green.

    Parameters
    ----------
    images : sequence of float32 ndarray ``(h, w, C)``, augmented crops as the network sees them
    masks : sequence of ndarray ``(h, w)``, their binary masks

    Returns
    -------
    list of str, the written paths.
    """
    os.makedirs(folder, exist_ok=True)
    paths = []
    for i, (image, mask) in enumerate(zip(images, masks)):
        paths.append(os.path.join(folder, f"sample_{i:03d}.png"))
        _save_png(paths[-1], outline_rgb(image, mask))
    return paths


def save_crop_check(image, mask, crop_shape, path, gap=4):
    """Write a crop-check mosaic: ``image`` cut by the crop grid, the crops apart on a white grid.

    The grid is that of :func:`lib.data.tiling.crop_grid` (validation and per-crop
    prediction): non-overlapping crops from the top-left corner, the last row and
    column completed by reflection, shown darkened. The mask outline is drawn in
    green, so a misaligned mask or a crop cut in the wrong place shows at a glance.

    Parameters
    ----------
    image : float ndarray ``(H, W, C)``
    mask : ndarray ``(H, W)``, binary
    crop_shape : (h, w)
    path : str, PNG to write
    gap : int, width of the grid lines in pixels

    Returns
    -------
    str, the written path.
    """
    from ..data.tiling import pad_to_tile

    crop = tuple(crop_shape)
    padded, (height, width) = pad_to_tile(image, crop, to_multiple=True)
    rgb = outline_rgb(padded, pad_to_tile(np.asarray(mask), crop, to_multiple=True)[0])
    rgb[height:] //= 2
    rgb[:, width:] //= 2
    rows, cols = rgb.shape[0] // crop[0], rgb.shape[1] // crop[1]
    canvas = np.full((rows * (crop[0] + gap) + gap, cols * (crop[1] + gap) + gap, 3), 255, np.uint8)
    for r in range(rows):
        for c in range(cols):
            y, x = gap + r * (crop[0] + gap), gap + c * (crop[1] + gap)
            canvas[y:y + crop[0], x:x + crop[1]] = rgb[r * crop[0]:(r + 1) * crop[0], c * crop[1]:(c + 1) * crop[1]]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    _save_png(path, canvas)
    return path
