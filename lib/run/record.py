"""What a run folder records beside training: normalisation, check pictures, the model, the end report.
"""

import os
import sys

import numpy as np

from ..data import io
from ..evaluate import reports
from . import folders


def record_training_data(train_set, dataset, cfg, run_dir):
    """What the run folder records of the training data: ``normalization.json`` and, if asked, ``samples/``.

    Called once the run folder exists, with the set and the dataset of a ``training_data_*`` function.
    """
    record_normalization(train_set, cfg, run_dir)
    if cfg.augment.samples:
        write_samples(dataset, train_set, cfg, run_dir)


def record_normalization(train_set, cfg, run_dir):
    """Write ``normalization.json`` in the run folder when the normalisation has values of its own.

    Those are the mean and std (``zscore``: of the training pixels; ``fixed``: the options') and the
    clipping levels of ``data.clip_percentiles``. ``templates/predict.py`` normalises new data with them,
    as the training and test data were.
    """
    stats = getattr(train_set, "normalization", None)
    if not stats:
        return
    import json

    from .predicting import NORMALIZATION_FILE

    record = {"method": cfg.data.normalization}
    if "mean" in stats:
        record.update(mean=float(stats["mean"]), std=float(stats["std"]))
    if "clip" in stats:
        record.update(clip=[float(v) for v in stats["clip"]], clip_percentiles=list(cfg.data.clip_percentiles))
    io.write_text(os.path.join(run_dir, NORMALIZATION_FILE), json.dumps(record, indent=2) + "\n")


# --------------------------------------------------------------------------- pictures to check before a long run

CROP_CHECKS = 4  # crop-check mosaics are of whole images, which can be large: a few are enough


def write_samples(dataset, image_set, cfg, run_dir):
    """Write the pictures to check before a long run (``augment.samples`` > 0).

    ``samples/augmentation/sample_NNN.png``: the first ``augment.samples``
    training samples of epoch 1 as the network receives them (cropped,
    augmented, normalised), the mask outline in green.
    ``samples/crops/<name>.png``: crop-check mosaics of the first training
    images (at most ``CROP_CHECKS``), the crop grid over the full image.
    Of volumes (3D), both show the middle z slice: of each subvolume, and of
    each training volume under the y-x crop grid.

    Parameters
    ----------
    dataset : CropDataset (or a subclass), batches ``(x, y)`` with the mask in ``y[..., 0]``
    image_set : ImageSet or DiskImageSet, the full training images or volumes
    cfg : Config
    run_dir : str
    """
    n = cfg.augment.samples
    volumes = len(cfg.data.crop_shape) == 3
    images, masks = [], []
    for index in range(len(dataset)):
        x, y = dataset[index][:2]
        images += [v[len(v) // 2] for v in x] if volumes else list(x)
        masks += [v[len(v) // 2, ..., 0] for v in y] if volumes else list(y[..., 0])
        if len(images) >= n:
            break
    folder = os.path.join(run_dir, "samples")
    reports.save_augmentation_samples(images[:n], masks[:n], os.path.join(folder, "augmentation"))
    for i in range(min(n, CROP_CHECKS, len(image_set))):
        if volumes:  # the middle slice alone: a volume in a store is never read whole
            image, mask = image_set.images[i], image_set.masks[i]
            z = mask.shape[0] // 2
            key = (slice(z, z + 1), slice(0, mask.shape[1]), slice(0, mask.shape[2]))
            image, mask, crop = np.asarray(image[key])[0], np.asarray(mask[key])[0], cfg.data.crop_shape[1:]
        else:
            (image, mask, _), crop = image_set[i], cfg.data.crop_shape
        path = os.path.join(folder, "crops", f"{image_set.names[i]}.png")
        reports.save_crop_check(image, mask, crop, path)
    print(f"Check pictures: {folder}")


def record_model(model, run_dir):
    """Write the model summary and parameter count to ``model.txt``, and its picture ``model.png``, in the run folder.

    The picture needs pydot and Graphviz's ``dot`` program (``apt-get install graphviz``); without them a
    line says so and the run goes on.
    """
    from ..model.networks import count_params, summary_text

    io.write_text(os.path.join(run_dir, "model.txt"),
                  f"parameters: {count_params(model)}\n\n{summary_text(model)}\n")
    missing = model_picture_missing()
    if missing:
        print(f"No model.png: {missing}")
        return
    import keras

    path = os.path.join(run_dir, "model.png")
    tmp = os.path.join(run_dir, ".model.tmp.png")
    keras.utils.plot_model(model, to_file=tmp, show_shapes=True, dpi=72)
    os.replace(tmp, path)


def model_picture_missing():
    """Why ``model.png`` cannot be drawn here (pydot or Graphviz's ``dot`` missing), or None when it can."""
    import importlib.util
    import shutil

    if importlib.util.find_spec("pydot") is None:
        return "the Python package pydot is not installed (pip install -r env/requirements.txt)"
    if shutil.which("dot") is None:
        return "Graphviz's dot program is not installed (e.g. apt-get install graphviz)"
    return None


def finish(args, run_dir, results, sweeps, info):
    """Charts, summary row, ``metrics.json`` (it marks the run finished), the run put in place, table.

    ``info["ground_truth"]`` (set by :func:`lib.evaluate.evaluation.evaluate_test_set`) is taken out of ``info``:
    ``metrics.json`` has it at the top, beside ``results`` (empty without ground truth), and the table
    says when no ground truth was given.
    """
    from ..train.loop import read_history

    ground_truth = bool(info.pop("ground_truth", True))
    charts = os.path.join(run_dir, "charts")
    reports.plot_history(read_history(os.path.join(run_dir, "history.csv")), charts)
    reports.plot_threshold_sweeps(sweeps, charts)
    summary = reports.summary_row(args.id, args.rid, results, info)
    reports.append_summary(args.job_dir, summary)
    reports.write_json(os.path.join(run_dir, "metrics.json"),
                       {"ground_truth": ground_truth, "results": results, "threshold_sweeps": sweeps,
                        "training": info})
    run_dir = folders.commit_run(args, run_dir)
    charts = os.path.join(run_dir, "charts")
    print()
    print(reports.metrics_table(results) if ground_truth else reports.NO_GROUND_TRUTH)
    for line in run_notes(info):
        print(line)
    if sweeps:
        # Chosen on the test set itself, so optimistic: choose on validation data for inference.threshold.
        print("Best threshold of each sweep (fg_iou): " + ", ".join(
            f"{v} {s['best_threshold']:.2f} ({s['best_fg_iou']:.4f})" for v, s in sweeps.items()))
    print(f"\nRun folder: {os.path.abspath(run_dir)}")
    print(f"  metrics:     {os.path.join(run_dir, 'metrics.json')}")
    print(f"  charts:      {charts}")
    if os.path.exists(os.path.join(charts, "overlays.png")):
        print(f"  overlays:    {os.path.join(charts, 'overlays.png')}")
    print(f"  predictions: {os.path.join(run_dir, 'predictions')}")
    print(f"  summary:     {os.path.join(args.job_dir, 'summary.csv')}")
    return run_dir


def reset_peak_rss():
    """Restart the count of this process's peak resident memory (Linux ``VmHWM``) from its current RSS.

    Lets ``peak_rss_mb`` report the peak of one phase (e.g. inference) rather
    than of the whole run. Returns the resident memory in MB at the reset, the
    floor of the new peak (memory still held from earlier phases), or None where
    the kernel does not allow a reset.
    """
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return None
    return _status_mb("VmRSS")


def peak_rss_mb():
    """Peak resident memory of this process in MB, since ``reset_peak_rss`` or else since it started."""
    peak = _status_mb("VmHWM")
    if peak is not None:
        return peak
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # bytes on macOS, KiB on Linux
    return round(peak / (2**20 if sys.platform == "darwin" else 1024), 1)


def _status_mb(field):
    """A memory field of ``/proc/self/status`` (Linux) in MB, or None elsewhere."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(f"{field}:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


# Fewer validation crops than this make the choice of the best checkpoint a matter of chance.
FEW_VAL_CROPS = 16


def run_notes(info):
    """Lines for the end-of-run table from a run's ``info``: training, the checkpoint used, prediction time.

    Says so when the checkpoint used is the first epoch's (a network that barely
    trained) or was chosen on few validation crops.
    """
    lines = []
    if "epochs" in info:
        best = info.get("best_value")
        chosen = f" ({info['monitor']} {best:.4f})" if best is not None and "monitor" in info else ""
        computed = f", computed in {info['precision']}" if "precision" in info else ""
        lines.append(f"Training: {info['epochs']} epochs, {info['seconds']:.0f} s{computed}, stopped by "
                     f"{str(info.get('stopped_by')).replace('_', ' ')}; predicting with epoch "
                     f"{info['best_epoch']}{chosen}")
        if info["best_epoch"] == 1 and info["epochs"] > 1:
            lines.append("note: the best checkpoint is the first epoch's: the network barely learnt after it; "
                         "train longer, or check the data and the learning rate")
        if "validation" in info:
            lines.append(f"Validation set: {info['validation']}")
        crops = info.get("val_crops", 0)
        if 0 < crops < FEW_VAL_CROPS:
            lines.append(f"note: the checkpoint was chosen on {crops} validation crops only, a noisy choice; "
                         "more validation images (data.val_fraction) make it reliable")
    if "predict_seconds" in info:
        lines.append(f"Prediction: {info['predict_megavoxels']:.1f} megavoxels in {info['predict_seconds']:.1f} s "
                     f"({info['predict_seconds_per_megavoxel']:.2f} s per megavoxel)")
    return lines
