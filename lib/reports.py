"""Charts, metrics tables, ``metrics.json`` and ``JOB_DIR/summary.csv``."""

import csv
import json
import os

import numpy as np

from . import io

import matplotlib

matplotlib.use("Agg")  # files only: runs on clusters without a display
import matplotlib.pyplot as plt  # noqa: E402

METRIC_ORDER = ("fg_iou", "mean_iou", "dice", "precision", "recall", "det", "seg")


def _save_figure(fig, path):
    io.write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)


def plot_history(rows, charts_dir):
    """Write ``loss.png`` and ``iou.png`` (training and validation curves) from history rows.

    Returns the written paths.
    """
    os.makedirs(charts_dir, exist_ok=True)
    epochs = [int(r["epoch"]) for r in rows]
    paths = []
    for key, title in (("loss", "Loss"), ("iou", "Foreground IoU")):
        fig, ax = plt.subplots(figsize=(6, 4))
        for name, style in ((key, "-"), (f"val_{key}", "--")):
            values = [r.get(name, np.nan) for r in rows]
            if not np.all(np.isnan(values)):
                ax.plot(epochs, values, style, label=name)
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
        path = os.path.join(charts_dir, f"{key}.png")
        _save_figure(fig, path)
        paths.append(path)
    return paths


def metrics_table(results):
    """A plain-text table of ``{variant: {metric: value}}``, one row per variant."""
    metrics = [m for m in METRIC_ORDER if any(m in r for r in results.values())]
    width = max([len("variant")] + [len(v) for v in results])
    lines = ["  ".join(["variant".ljust(width)] + [m.rjust(9) for m in metrics])]
    for variant, values in results.items():
        cells = [f"{values[m]:9.4f}" if m in values else " " * 9 for m in metrics]
        lines.append("  ".join([variant.ljust(width)] + cells))
    return "\n".join(lines)


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
    while the lock is held.
    """
    import fcntl

    path = os.path.join(job_dir, "summary.csv")
    with open(os.path.join(job_dir, ".summary.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        rows = []
        if os.path.exists(path):
            with open(path, newline="") as fh:
                rows = list(csv.DictReader(fh))
        rows.append({k: ("" if v is None else str(v)) for k, v in row.items()})
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
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
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
