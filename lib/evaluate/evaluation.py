"""Predict a test set with every enabled inference variant, one item at a time; save and score.

Variants, reported in this order; each can be switched off in the configuration:

``per_crop`` (``inference.per_crop``)
    non-overlapping crops of the tile size; metrics computed per crop and
    averaged over crops (how patch-based papers often report).
``merged`` (``inference.merged``)
    the same crop predictions merged into whole images or volumes.
``tiled`` (``inference.tiled``)
    overlapping tiles (``inference.overlap``) blended with a smooth window.
``tta`` (``inference.tta``)
    ``tiled`` with test-time augmentation: 8 flips/rotations in 2D, 16 in 3D.
``z_filter`` (``post.z_filter``)
    ``tiled``, median-filtered along z over ``post.z_filter_size`` slices.
``tta_z_filter`` (``post.tta_z_filter``, with ``inference.tta``)
    ``tta``, median-filtered along z.
``oztel`` (``post.oztel``)
    ``tiled``, post-processed as Oztel et al. (2017): connected components of low
    mean probability dropped, boundaries refined by a watershed on the image
    gradient (:func:`lib.predict.postprocess.oztel`).

The tiled prediction is computed whenever ``tiled``, ``z_filter`` or ``oztel`` needs it.

Z-filtering of 2D test sets: consecutive images are taken as the slices of one
stack, in the order of the test set (the usual case: the sorted slices of a
volume). If the images differ in shape they cannot be a stack: the z variants
are then skipped, with a printed note. A 3D item is filtered along its own z axis.

Streaming: items are read, predicted, written and scored one at a time, so
memory holds one item and its predictions, never the whole set. What is kept
across items is bounded: pixel and object counts, threshold-sweep histograms, a
window of ``post.z_filter_size`` predictions for 2D z-filtering, and the few
slices drawn as overlays.

Metrics of each variant, pooled over the set: ``fg_iou``, ``mean_iou``, ``dice``,
``precision``, ``recall`` from summed pixel counts; ``det`` and ``seg`` of the Cell
Tracking Challenge, objects being the connected components of each 2D image or
3D volume; for probability variants, a threshold sweep and its ``best_threshold``.

Multi-class segmentation (``model.classes`` K > 1): a prediction is the label image of the most
probable class of each pixel (:func:`lib.predict.postprocess.most_probable`), of the probabilities of
each class blended, turned (tta) and z-filtered each on its own. Each foreground class ``c``
(1 .. K-1), and the background 0, is scored as a binary mask (its pixels against the others):
keys ``c<c>_<metric>``; ``fg_iou``, ``dice``, ``precision``, ``recall``, ``det`` and ``seg`` are
the macro means of the foreground classes (their unweighted mean) and ``mean_iou`` the mean IoU
of all K classes, background included. No threshold sweep (no threshold is used).
"""

import math
import os
import shutil
import time

import numpy as np
from skimage.measure import label
from tqdm import tqdm

from .. import progress
from ..data import io
from ..errors import UserError
from ..predict.inference import (crop_windows, fit_tile, predict_crops, predict_tiled, tile_batch, tile_progress,
                                 tiled_inputs)
from ..predict.instances import connected_components, drop_small, from_channels
from ..predict.postprocess import ZFilterStream, binarize, most_probable, oztel, z_filter
from . import objects, reports
from .matching import Matches
from .metrics import PIXEL_METRICS, ObjectCounts, PixelCounts, SweepHistogram

VARIANTS = ("per_crop", "merged", "tiled", "tta", "z_filter", "tta_z_filter", "oztel")


PROBABILITY_VARIANTS = ("merged", "tiled", "tta", "z_filter", "tta_z_filter")


OBJECT_METRICS = ("det", "seg")


# Instance metrics (lib.evaluate.matching) of the objects: connected components, without those smaller than
# post.min_size
INSTANCE_METRICS = ("f1_50", "f1_75", "ap_50", "ap_75", "map", "precision_50", "recall_50", "precision_75",
                    "recall_75")


def object_scores(pred, gt_labels, prob=None, min_size=0, objects=None):
    """``(ObjectCounts, Matches)`` of a binary prediction against reference objects: the CTC's DET/SEG on its
    connected components, the instance metrics on its objects (:func:`lib.predict.instances.connected_components`,
    without those smaller than ``min_size``) scored by their mean ``prob``. Given ``objects`` (a label image: those
    of an instance run, or the components already labelled), both are scored on them instead."""
    if objects is not None:
        return ObjectCounts.from_labels(objects, gt_labels), Matches.from_labels(objects, gt_labels, prob)
    components = label(pred)
    return ObjectCounts.from_labels(components, gt_labels), Matches.from_labels(drop_small(components, min_size),
                                                                                gt_labels, prob)


def inference_tile(cfg, crop):
    """The largest tile of the blended variants: ``inference.tile_shape``, or by default 4 crops wide in y and x
    (2D) and the crop itself (3D, whose activations are far larger per voxel)."""
    if cfg.inference.tile_shape:
        return tuple(cfg.inference.tile_shape)
    crop = tuple(int(c) for c in crop)
    return tuple(4 * c for c in crop) if len(crop) == 2 else crop


def inference_divisor(cfg, crop):
    """The downsampling that fitted tiles are multiples of: that of ``cfg.model``, per axis, gcd'd with the crop.

    The crop is a multiple of the network's downsampling (checked with the options); the gcd keeps tiles
    valid for a predictor whose network differs from cfg.model's.
    """
    from ..model.networks import divisor

    return tuple(math.gcd(d, int(t)) for d, t in zip(divisor(cfg.model, len(crop)), crop))


def enabled_variants(cfg):
    """The variants ``cfg`` (a full Config) switches on, in :data:`VARIANTS` order."""
    inf, post = cfg.inference, cfg.post
    on = {"per_crop": inf.per_crop, "merged": inf.merged, "tiled": inf.tiled, "tta": inf.tta,
          "z_filter": post.z_filter, "tta_z_filter": inf.tta and post.tta_z_filter, "oztel": post.oztel}
    return [v for v in VARIANTS if on[v]]


def save_prediction(pred_dir, variant, name, binary, prob=None, classes=1):
    """Write ``<variant>/binary/<name>.tif`` (0/255 uint8) and, given ``prob``, ``<variant>/prob/<name>.tif``.

    ``binary`` is {0, 1} and ``prob`` float probabilities (written as float32), of one shape.
    With ``classes`` K > 1, ``binary`` is the label image (class ids ``0 .. K-1``), written as they are
    to ``<variant>/labels/<name>.tif`` (uint8), and ``prob`` ``(*spatial, K)`` is written with the class
    axis before y and x: ``(K, Y, X)`` of an image, ``(Z, K, Y, X)`` of a volume (ImageJ's channel order).
    """
    if classes == 1:
        outputs = [("binary", binary.astype(np.uint8) * np.uint8(255))]
    else:
        outputs = [("labels", binary.astype(np.uint8))]
    if prob is not None:
        prob = prob.astype(np.float32, copy=False)
        outputs.append(("prob", prob if classes == 1 else np.moveaxis(prob, -1, -3)))
    for kind, array in outputs:
        folder = os.path.join(pred_dir, variant, kind)
        os.makedirs(folder, exist_ok=True)
        io.write_tiff(os.path.join(folder, f"{name}.tif"), array)


def class_pairs(binary, mask, classes=1):
    """The binary ``(prediction, ground truth)`` pairs scored: ``[(binary, mask)]`` for one class, else one pair
    per class ``c`` in ``0 .. classes - 1`` (``labels == c``, ``mask == c``) of a label image and its mask."""
    if classes == 1:
        return [(binary, mask)]
    return [(binary == c, mask == c) for c in range(classes)]


def class_scores(pixels, objects, classes=1):
    """Metrics from per-class counts: those of :meth:`PixelCounts.metrics`, ``det``, ``seg`` and the instance metrics.

    ``pixels`` and ``objects`` hold one count of each pair of :func:`class_pairs` (``objects``: the
    ``(ObjectCounts, Matches)`` of :func:`object_scores`). For ``classes`` > 1:
    ``c<c>_<metric>`` of each class (the background's, ``c0_``, too: with two classes, e.g. cell interior
    against membrane, both are of interest), the macro means of the foreground classes 1 .. K-1 under
    the plain names, and ``mean_iou`` over all classes.
    """
    def one(c):
        counts, matches = objects[c]
        found = counts.metrics()
        return {**pixels[c].metrics(), **{k: found[k] for k in OBJECT_METRICS}, **matches.metrics()}

    if classes == 1:
        return one(0)
    per_class = {c: one(c) for c in range(classes)}
    names = PIXEL_METRICS + OBJECT_METRICS + INSTANCE_METRICS
    keys = [k for k in names if k != "mean_iou"]
    out = {k: float(np.mean([p.metrics()["fg_iou"] for p in pixels]) if k == "mean_iou" else
                    np.mean([per_class[c][k] for c in range(1, classes)])) for k in names}
    for c, values in per_class.items():
        out.update({f"c{c}_{k}": values[k] for k in keys})
    return out


class _Score:
    """Pooled pixel and object counts (of each class) and, for binary probabilities, the threshold sweep of one
    variant."""

    def __init__(self, sweep, classes=1, min_size=0):
        self.classes, self.min_size = classes, min_size
        self.pixels = [PixelCounts() for _ in range(max(classes, 1))]
        self.objects = [(ObjectCounts(), Matches()) for _ in range(max(classes, 1))]
        self.sweep = SweepHistogram() if sweep and classes == 1 else None

    def add(self, binary, mask, gt_labels, prob=None, objects=None):
        for c, (p, g) in enumerate(class_pairs(binary, mask, self.classes)):
            self.pixels[c] += PixelCounts.from_arrays(p, g)
            score = None if prob is None else (prob if self.classes == 1 else prob[..., c])
            counts, matches = object_scores(p, gt_labels[c], score, self.min_size, objects)
            self.objects[c] = (self.objects[c][0] + counts, self.objects[c][1] + matches)
        if self.sweep is not None:
            self.sweep.update(prob, mask)

    def results(self):
        return class_scores(self.pixels, self.objects, self.classes)


class _PerCropScore:
    """Pixel and object metrics (per class) of each crop of the grid, averaged over crops."""

    def __init__(self, tile, classes=1, min_size=0):
        self.tile, self.classes, self.min_size = tile, classes, min_size
        self.sums = {}
        self.count = 0

    def add(self, binary, mask):
        for w in crop_windows(mask.shape, self.tile):
            pairs = class_pairs(binary[w], mask[w], self.classes)
            values = class_scores([PixelCounts.from_arrays(p, g) for p, g in pairs],
                                  [object_scores(p, label(g), None, self.min_size) for p, g in pairs],
                                  self.classes)
            for k, v in values.items():
                self.sums[k] = self.sums.get(k, 0.0) + v
            self.count += 1

    def results(self):
        return {k: v / self.count for k, v in self.sums.items()}


class _Evaluation:
    """The state of one streamed evaluation: scores, z-filter windows, overlay slices."""

    def __init__(self, cfg, tile, pred_dir, n_items):
        self.cfg, self.tile, self.pred_dir = cfg, tile, pred_dir
        self.ndim = len(tile)
        self.max_tile = inference_tile(cfg, tile)
        self.divisor = inference_divisor(cfg, tile)
        self.classes = cfg.model.classes
        self.instance = cfg.model.targets != "mask"  # objects from instance channels (lib.predict.instances)
        min_size = cfg.post.min_size
        self.scores = {v: _PerCropScore(tile, self.classes, min_size) if v == "per_crop" else
                       _Score(v in PROBABILITY_VARIANTS, self.classes, min_size) for v in enabled_variants(cfg)}
        self.tables = {} if not (cfg.post.instances or self.instance) else {v: ObjectTables(pred_dir, v, cfg)
                                                          for v in self.scores if v != "per_crop"}
        self.streams = {}
        if self.ndim == 2:
            self.streams = {v: ZFilterStream(cfg.post.z_filter_size)
                            for v in ("z_filter", "tta_z_filter") if v in self.scores}
        self.stack_shape = None
        count = min(cfg.inference.overlays, n_items)
        self.overlay_items = set(np.linspace(0, n_items - 1, count).round().astype(int).tolist()) if count else set()
        self.samples = {}  # item index -> [(z or None, sample dict)]
        self.ground_truth = None  # whether the items have masks: all of them or none, set by the first

    def add_item(self, index, image, mask, name, predict):
        """Predict one item with every enabled variant; write, score and sample each prediction.

        An item without a mask (None) is predicted and written, not scored nor drawn.
        """
        _check_item(image, mask, name, self.tile)
        if self.ground_truth is None:
            self.ground_truth = mask is not None
        elif self.ground_truth != (mask is not None):
            raise UserError(f"test item {name}: {'no' if self.ground_truth else 'a'} mask, unlike the items before "
                            "it; expected a mask for every test item or for none")
        if self.streams:
            self._check_stack(image.shape[:self.ndim], name)
        gray = image[..., 0] if image.shape[-1] == 1 else image.mean(axis=-1)
        # Unannotated pixels (data.ignore_value) are background in the mask and in every prediction scored, so
        # the foreground metrics are those of the annotated pixels.
        unannotated = None if mask is None else io.ignored(mask)
        if unannotated is not None and unannotated.any():
            mask = np.where(unannotated, 0, mask).astype(mask.dtype)
        else:
            unannotated = None
        gt_labels = None if mask is None else (
            [objects.reference_objects(mask)] if self.classes == 1 else [label(mask == c) for c in range(self.classes)])
        if mask is not None and self.instance:  # a label image: its foreground is scored as a mask
            mask = (mask > 0).astype(np.uint8)
        if self.ground_truth:
            self._keep_samples(index, gray, mask, name)
        item = (name, mask, gt_labels, index, unannotated)
        # One method per prediction: its arrays are freed before the next one is made.
        if "per_crop" in self.scores or "merged" in self.scores:
            self._crops(predict, image, item)
        if {"tiled", "z_filter", "oztel"} & set(self.scores):
            self._tiled(predict, image, gray, item)
        if "tta" in self.scores:
            self._tta(predict, image, item)

    def _crops(self, predict, image, item):
        inf = self.cfg.inference
        with tile_progress(len(crop_windows(image.shape[:self.ndim], self.tile)), "crops") as bar:
            prob = predict_crops(predict, image, self.tile, inf.batch_size, bar.update)
        binary = self.segment(prob)
        if "per_crop" in self.scores and self.ground_truth:
            self.scores["per_crop"].add(_scored(binary, item[4]), item[1])
        if "merged" in self.scores:
            self.record("merged", item, binary, prob)

    def _blended(self, predict, image, tta=False):
        """The tiled (blended) prediction of ``image``, its tiles fitted to its size (:func:`fit_tile`).

        An image of many tiles shows a bar of its tiles below the bar of items (:func:`tile_progress`).
        """
        inf = self.cfg.inference
        spatial = image.shape[:self.ndim]
        tile, overlap = fit_tile(spatial, self.max_tile, self.divisor, inf.overlap)
        with tile_progress(tiled_inputs(spatial, tile, overlap, tta), "tta" if tta else "tiled") as bar:
            return predict_tiled(predict, image, tile, overlap, inf.window,
                                 tile_batch(inf.batch_size, self.tile, tile), tta=tta, progress=bar.update)

    def _tiled(self, predict, image, gray, item):
        inf, post = self.cfg.inference, self.cfg.post
        prob = self._blended(predict, image)
        if "tiled" in self.scores:
            self.record("tiled", item, self.segment(prob), prob)
        if "oztel" in self.scores:
            self.record("oztel", item, oztel(prob, gray, inf.threshold, post.oztel_min_mean_prob,
                                             post.oztel_marker_radius))
        self._z_filter("z_filter", prob, item)

    def _tta(self, predict, image, item):
        prob = self._blended(predict, image, tta=True)
        self.record("tta", item, self.segment(prob), prob)
        self._z_filter("tta_z_filter", prob, item)

    def segment(self, prob):
        """The mask of probabilities: thresholded (binary; the foreground channel of instance channels), or the
        most probable class (``model.classes`` > 1)."""
        if self.instance:
            return binarize(prob[..., 0], self.cfg.inference.threshold)
        return binarize(prob, self.cfg.inference.threshold) if self.classes == 1 else most_probable(prob)

    def record(self, variant, item, binary, prob=None):
        """Write one prediction of ``variant``, add it to the scores and to the overlay samples.

        The objects of a binary prediction are labelled once here, for its table and its scores: grown from the
        seeds of the instance channels (instance runs), else the connected components (``post.instances``).
        """
        name, mask, gt_labels, index, unannotated = item
        found = None
        if self.instance and prob is not None:
            post = self.cfg.post
            found = from_channels(prob, self.cfg.inference.threshold, post.contour_threshold,
                                  post.distance_threshold, post.seed_height, post.min_size)
            # The channels as ImageJ orders them: (K, Y, X) of an image, (Z, K, Y, X) of a volume.
            save_prediction(self.pred_dir, variant, name, binary, np.moveaxis(prob, -1, -3))
            prob = prob[..., 0]
        else:
            save_prediction(self.pred_dir, variant, name, binary, prob, self.classes)
            if self.classes == 1 and (variant in self.tables or mask is not None):
                found = connected_components(binary, self.cfg.post.min_size)
        if variant in self.tables:
            found = self.tables[variant].add(name, binary, prob, found)
            for z, sample in self.samples.get(index, ()) if found is not None else ():
                sample.setdefault("objects", {})[variant] = (found if z is None else found[z]).copy()
        if mask is not None:
            self.scores[variant].add(_scored(binary, unannotated), mask, gt_labels, _scored(prob, unannotated),
                                     None if found is None else objects.without_unannotated(found, unannotated))
        for z, sample in self.samples.get(index, ()):
            sample["preds"][variant] = (binary if z is None else binary[z]).copy()

    def _z_filter(self, variant, prob, item):
        if variant not in self.scores:
            return
        if self.ndim == 3:
            filtered = z_filter(prob, self.cfg.post.z_filter_size)
            self.record(variant, item, self.segment(filtered), filtered)
            return
        for filtered, slice_item in self.streams[variant].push(prob, item):
            self.record(variant, slice_item, self.segment(filtered), filtered)

    def _check_stack(self, shape, name):
        if self.stack_shape is None:
            self.stack_shape = shape
        elif shape != self.stack_shape:
            tqdm.write(f"Note: test image {name} ({'x'.join(map(str, shape))}) differs in size from the first "
                  f"({'x'.join(map(str, self.stack_shape))}): the test images are not the slices of one "
                  f"stack, so the z-filter variants ({', '.join(self.streams)}) are skipped")
            for variant in self.streams:
                del self.scores[variant]
                shutil.rmtree(os.path.join(self.pred_dir, variant), ignore_errors=True)
                for samples in self.samples.values():
                    for _, sample in samples:
                        sample["preds"].pop(variant, None)
            self.streams = {}

    def _keep_samples(self, index, gray, mask, name):
        if index not in self.overlay_items:
            return
        # Copies: a view would keep the whole image or volume alive until the end.
        if self.ndim == 2:
            self.samples[index] = [(None, {"name": name, "image": gray.copy(), "mask": mask.copy(), "preds": {}})]
            return
        per_item = -(-self.cfg.inference.overlays // len(self.overlay_items))
        zs = sorted({int(z) for z in np.linspace(0, len(mask), per_item + 2)[1:-1]})
        self.samples[index] = [(z, {"name": f"{name} z={z}", "image": gray[z].copy(), "mask": mask[z].copy(),
                                    "preds": {}}) for z in zs]

    def finish(self, charts_dir):
        for variant, stream in self.streams.items():
            for filtered, item in stream.flush():
                self.record(variant, item, self.segment(filtered), filtered)
        for table in self.tables.values():
            table.write()
        if self.tables:
            reports.plot_object_sizes({v: t.sizes() for v, t in self.tables.items()},
                                      next(iter(self.tables.values())).size_unit, charts_dir)
        results, sweeps = {}, {}
        for variant, score in self.scores.items() if self.ground_truth else ():
            results[variant] = score.results()
            if getattr(score, "sweep", None) is not None:
                sweeps[variant] = score.sweep.result()
                results[variant]["best_threshold"] = sweeps[variant]["best_threshold"]
        samples = [s for index in sorted(self.samples) for _, s in self.samples[index]]
        columns = [v for v in self.scores if v != "per_crop"]  # per_crop's masks are merged's
        if samples and columns:
            reports.plot_overlays(samples, columns, charts_dir, classes=self.classes)
        if samples and self.tables and self.classes == 1:
            reports.plot_objects(samples, list(self.tables), charts_dir)
        return results, sweeps


class ObjectTables:
    """The instances of one variant's predictions (``post.instances``): each item's label image, written as it
    comes, and the rows of its objects, written as ``objects.csv`` and ``objects_summary.csv`` by :meth:`write`.

    A multi-class prediction gives the objects of each foreground class (column ``class``), numbered per class.
    """

    def __init__(self, pred_dir, variant, cfg):
        self.folder = os.path.join(pred_dir, variant)
        self.min_size, self.classes = cfg.post.min_size, cfg.model.classes
        self.voxel_size, self.unit = cfg.data.voxel_size, cfg.data.voxel_unit
        self.size_unit = f"{self.unit}^{len(cfg.data.crop_shape)}"
        self.rows, self.summaries, self.header = [], [], []

    def sizes(self):
        return [row["size"] for row in self.rows]

    def add(self, name, mask, prob=None, labels=None):
        """Label, write and measure the objects of one item's prediction (``labels``: its objects, already
        labelled); returns its label image (binary runs; None for multi-class, whose objects are per class)."""
        out = os.path.join(self.folder, "instances")
        os.makedirs(out, exist_ok=True)
        for c in range(1, max(self.classes, 2)):
            if labels is None or self.classes > 1:
                labels = connected_components(mask == c if self.classes > 1 else mask, self.min_size)
            score = None if prob is None else (prob if self.classes == 1 else prob[..., c])
            found = objects.object_table(labels, self.voxel_size, self.unit, score)
            head = {"image": name, **({"class": c} if self.classes > 1 else {})}
            self.header = self.header or list(head) + objects.columns(labels.ndim, score is not None)
            self.rows += [{**head, **row} for row in found]
            self.summaries.append({**head, **objects.summary(found, labels.shape, self.voxel_size, self.unit)})
            suffix = f"_c{c}" if self.classes > 1 else ""
            io.write_tiff(os.path.join(out, f"{name}{suffix}.tif"), labels)
        return labels if self.classes == 1 else None

    def write(self):
        io.write_text(os.path.join(self.folder, "objects.csv"), io.rows_to_csv(self.rows, self.header))
        io.write_text(os.path.join(self.folder, "objects_summary.csv"), io.rows_to_csv(self.summaries))


def _scored(array, unannotated):
    """``array`` (a prediction) as scored against a mask with ``unannotated`` pixels: 0 there."""
    if array is None or unannotated is None:
        return array
    return np.where(unannotated if array.ndim == unannotated.ndim else unannotated[..., None], 0, array
                    ).astype(array.dtype)


def _check_item(image, mask, name, tile):
    ndim = len(tile)
    if image.ndim != ndim + 1:
        raise UserError(f"test item {name}: expected an image with {ndim} spatial axes and channels last "
                        f"(tile {list(tile)}), got shape {image.shape}")
    if mask is not None and mask.shape != image.shape[:ndim]:
        raise UserError(f"test item {name}: mask shape {mask.shape} differs from image shape {image.shape[:ndim]}")


def evaluate_test_set(predict, test_set, tile, cfg, pred_dir, charts_dir=None, record=None):
    """Predict, write and evaluate a test set with every enabled variant, one item at a time.

    Parameters
    ----------
    predict : callable ``f(batch (N, *tile, C) float32) -> (N, *tile) float32``
        From :func:`lib.predict.inference.make_predictor` (``(N, *tile, K)`` for ``model.classes`` K > 1).
    test_set : sequence of ``(image (*spatial, C) float32, mask spatial uint8 {0, 1} or None, name str)``
        2D images or 3D volumes (``len(tile)`` spatial axes); ``len(test_set)``
        and ``test_set[i]`` are all that is used, and each item is read once, so
        a set may load its items lazily from disk. Without ground truth (every
        mask None) the predictions are written and nothing is scored.
    tile : sequence of int, crop/tile spatial shape
    cfg : lib.config.Config
        Its ``inference`` and ``post`` sections choose the variants and their options.
    pred_dir : str
        The run's ``predictions/`` folder: ``<variant>/binary/<name>.tif`` (0/255) for
        every variant but ``per_crop``, ``<variant>/prob/<name>.tif`` (float32) for
        probability variants; multi-class runs write ``<variant>/labels/<name>.tif`` (class ids)
        instead of ``binary`` (:func:`save_prediction`).
    charts_dir : str, optional
        Where ``overlays.png`` goes (image, ground-truth and prediction outlines of
        ``inference.overlays`` test slices); default the ``charts/`` folder beside
        ``pred_dir``.
    record : dict, optional
        Receives ``predict_seconds`` (the whole pass: reading, predicting, writing,
        scoring), ``predict_megavoxels``, ``predict_seconds_per_megavoxel`` and
        ``ground_truth`` (whether the test set had masks; :func:`lib.run.record.finish` reads it).

    Returns
    -------
    results : dict ``{variant: {metric: float}}``
        The metrics of :data:`PIXEL_METRICS` and ``det``, ``seg`` for each enabled
        variant, plus ``best_threshold`` (highest ``fg_iou`` of the sweep) for
        probability variants; empty without ground truth.
    sweeps : dict ``{variant: threshold sweep}``
        For probability variants, as :func:`lib.evaluate.metrics.threshold_sweep` returns it; empty without
        ground truth.
    """
    tile = tuple(int(t) for t in tile)
    if not len(test_set):
        raise UserError("the test set is empty: nothing to evaluate")
    if charts_dir is None:
        charts_dir = os.path.join(os.path.dirname(os.path.normpath(pred_dir)), "charts")
    for variant in set(VARIANTS) - set(enabled_variants(cfg)):
        # Left by an earlier attempt of a resumed run with other variants on: metrics.json would not list them.
        shutil.rmtree(os.path.join(pred_dir, variant), ignore_errors=True)
    evaluation = _Evaluation(cfg, tile, pred_dir, len(test_set))
    start, voxels = time.perf_counter(), 0
    for i in progress.bar(range(len(test_set)), desc="predicting", unit="item"):
        image, mask, name = test_set[i]
        evaluation.add_item(i, image, mask, name, predict)
        voxels += int(np.prod(image.shape[:len(tile)]))
    outcome = evaluation.finish(charts_dir)
    seconds = time.perf_counter() - start
    if record is not None:
        record.update(predict_seconds=round(seconds, 1), predict_megavoxels=round(voxels / 1e6, 3),
                      predict_seconds_per_megavoxel=round(seconds / (voxels / 1e6), 3),
                      ground_truth=evaluation.ground_truth)
    return outcome
