"""Predict a test set with every enabled inference variant, save predictions, compute metrics.

Variants (2D):

``per_crop``
    non-overlapping crops of the training size; metrics computed per crop and
    averaged over crops (how patch-based papers often report).
``merged``
    the same crop predictions merged into full images; metrics over the whole set.
``tiled``
    overlapping tiles (``inference.overlap``) blended with a smooth window;
    metrics over the whole set.
"""

import os

import numpy as np
from tqdm import tqdm

from . import io, metrics
from .inference import crop_windows, predict_crops, predict_tiled


def binarize(prob, threshold):
    """Probabilities to a binary uint8 {0, 1} map (foreground where ``prob >= threshold``)."""
    return (prob >= threshold).astype(np.uint8)


def save_prediction(pred_dir, variant, name, prob, threshold):
    """Write ``<variant>/prob/<name>.tif`` (float32) and ``<variant>/binary/<name>.tif`` (0/255 uint8)."""
    for kind, array in (("prob", prob.astype(np.float32)), ("binary", binarize(prob, threshold) * np.uint8(255))):
        folder = os.path.join(pred_dir, variant, kind)
        os.makedirs(folder, exist_ok=True)
        io.write_tiff(os.path.join(folder, f"{name}.tif"), array)


def predict_test_set(predict, images, names, tile, cfg, pred_dir):
    """Predict every image with the enabled variants and write the predictions.

    Parameters
    ----------
    predict : callable from ``inference.make_predictor``
    images : list of float32 ndarray ``(*spatial, C)``
    names : list of str, file stems for the outputs
    tile : tuple of int, crop/tile spatial shape
    cfg : InferenceConfig
    pred_dir : str, the run's ``predictions/`` folder

    Returns
    -------
    dict ``{variant: list of float32 probability maps}`` for 'merged' and/or 'tiled'.
    """
    probs = {}
    for image, name in zip(tqdm(images, desc="predicting", unit="image"), names):
        if cfg.per_crop or cfg.merged:
            prob = predict_crops(predict, image, tile, cfg.batch_size)
            probs.setdefault("merged", []).append(prob)
            save_prediction(pred_dir, "merged", name, prob, cfg.threshold)
        if cfg.tiled:
            prob = predict_tiled(predict, image, tile, cfg.overlap, cfg.window, cfg.batch_size)
            probs.setdefault("tiled", []).append(prob)
            save_prediction(pred_dir, "tiled", name, prob, cfg.threshold)
    return probs


def evaluate(probs, masks, tile, cfg):
    """Metrics of every variant: ``{variant: {metric: value}}`` plus threshold sweeps.

    Parameters
    ----------
    probs : dict from ``predict_test_set``
    masks : list of uint8 {0, 1} ndarray, ground truth aligned with the predictions
    tile : tuple of int, crop shape (for the per-crop variant)
    cfg : InferenceConfig

    Returns
    -------
    results : dict ``{variant: {metric: float}}``
    sweeps : dict ``{variant: threshold_sweep result}``
    """
    results, sweeps = {}, {}
    if cfg.per_crop:
        pairs = [(binarize(p[w], cfg.threshold), m[w])
                 for p, m in zip(probs["merged"], masks) for w in crop_windows(m.shape, tile)]
        results["per_crop"] = metrics.mean_per_item_metrics([p for p, _ in pairs], [m for _, m in pairs])
    for variant in ("merged", "tiled"):
        if variant == "merged" and not cfg.merged or variant not in probs:
            continue
        results[variant] = metrics.pixel_metrics([binarize(p, cfg.threshold) for p in probs[variant]], masks)
        sweeps[variant] = metrics.threshold_sweep(probs[variant], masks)
    return results, sweeps


def evaluate_test_set(predict, test_set, tile, cfg, pred_dir):
    """Predict and evaluate a whole test set with every enabled variant.

    Parameters
    ----------
    predict : callable from ``inference.make_predictor``
    test_set : sequence of ``(image (*spatial, C) float32, mask spatial uint8 {0, 1}, name)``
        2D images or 3D volumes; ``len(test_set)`` and ``test_set[i]`` are all that is used,
        so a set may read its items from disk lazily.
    tile : sequence of int, crop/tile spatial shape
    cfg : Config (its ``inference`` and ``post`` sections are used)
    pred_dir : str, the run's ``predictions/`` folder

    Returns
    -------
    results : dict ``{variant: {metric: float}}``
    sweeps : dict ``{variant: threshold sweep}``
    """
    items = [test_set[i] for i in range(len(test_set))]
    images, masks, names = (list(v) for v in zip(*items))
    tile = tuple(tile)
    probs = predict_test_set(predict, images, names, tile, cfg.inference, pred_dir)
    return evaluate(probs, masks, tile, cfg.inference)
