"""The steps a template strings together: load and check data, build training data, finish a run.

Kept separate from the templates so that every template and entry script shares
one implementation of each step, while the templates stay short enough to copy.
"""

import os
from dataclasses import dataclass
from typing import List

import numpy as np

from . import data, io, reports
from .errors import UserError


@dataclass
class ImageSet:
    """Normalised 2D images ``(H, W, C)`` float32, binary masks ``(H, W)`` uint8 and file stems."""

    images: List[np.ndarray]
    masks: List[np.ndarray]
    names: List[str]

    @property
    def channels(self):
        return self.images[0].shape[-1]

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], self.masks[i], self.names[i]


def check_crop_shape(cfg, shapes, where):
    """The crop must fit in every image and be divisible by the network's downsampling."""
    from .networks import divisor

    crop = tuple(cfg.data.crop_shape)
    ndim = len(crop)
    smallest = tuple(min(s[i] for s in shapes) for i in range(ndim))
    data.check_crop_fits(smallest, crop, f"the smallest image of {where}")
    factors = divisor(cfg.model, ndim)
    for axis, (c, f) in enumerate(zip(crop, factors)):
        if c % f:
            raise UserError(
                f"data.crop_shape={list(crop)}: size {c} on axis {'zyx'[3 - ndim + axis]} is not divisible by "
                f"{f}, the network's downsampling (model.depth={cfg.model.depth}); use a multiple of {f}"
            )


def load_2d(data_dir, cfg):
    """Read, check and normalise ``DATA_DIR/{train,test}`` as 2D images.

    Returns ``(train, test)`` ImageSets. Raises UserError on any problem with the
    data, before anything is written.
    """
    if len(cfg.data.crop_shape) != 2:
        raise UserError(f"data.crop_shape={cfg.data.crop_shape}: the 2D template needs 2 sizes (y, x)")
    if cfg.data.random_crops and cfg.data.min_fg_fraction > 0:
        raise UserError(
            "data.min_fg_fraction discards fixed crops (data.random_crops=false); "
            "with random crops use data.fg_sampling to favour foreground"
        )
    sets = {}
    for split in ("train", "test"):
        pairs = io.dataset_pairs(data_dir, split)
        images, masks, names = io.load_pairs_2d(pairs)
        check_crop_shape(cfg, [m.shape for m in masks], os.path.join(data_dir, split))
        sets[split] = (images, masks, names)
    if sets["train"][0][0].shape[-1] != sets["test"][0][0].shape[-1]:
        raise UserError(
            f"{data_dir}: training images have {sets['train'][0][0].shape[-1]} channels but test images "
            f"{sets['test'][0][0].shape[-1]}; expected the same"
        )
    stats = data.fit_normalization(sets["train"][0], cfg.data.normalization)
    return tuple(
        ImageSet([data.normalize(x, cfg.data.normalization, stats) for x in images], masks, names)
        for images, masks, names in (sets["train"], sets["test"])
    )


def training_data_2d(train_set, cfg, run_dir):
    """Split training/validation and return ``(CropDataset, (x_val, y_val) or None)``.

    Validation uses the fixed, non-overlapping crop grid of the validation images
    (no augmentation), so its loss is comparable from epoch to epoch.
    """
    from .augment import Augmenter
    from .generators import CropDataset

    crop = tuple(cfg.data.crop_shape)
    train_idx, val_idx = data.split_indices(len(train_set.images), cfg.data.val_fraction,
                                            cfg.data.val_split, cfg.train.seed)
    val = None
    if len(val_idx):
        xs, ys = zip(*(
            (data.crop_grid(train_set.images[i], crop)[0], data.crop_grid(train_set.masks[i], crop)[0])
            for i in val_idx
        ))
        val = (np.concatenate(xs), np.concatenate(ys)[..., None].astype(np.float32))
    images = [train_set.images[i] for i in train_idx]
    masks = [train_set.masks[i] for i in train_idx]
    if not cfg.data.random_crops:
        x = np.concatenate([data.crop_grid(im, crop)[0] for im in images])
        y = np.concatenate([data.crop_grid(m, crop)[0] for m in masks])
        x, y = data.discard_low_foreground(x, y, cfg.data.min_fg_fraction)
        images, masks = list(x), list(y)
    augmenter = Augmenter(cfg.augment, ndim=2) if cfg.augment.enabled else None
    dataset = CropDataset(images, masks, crop, cfg.train.batch_size, augmenter=augmenter,
                          random_crops=cfg.data.random_crops, fg_sampling=cfg.data.fg_sampling,
                          replicate=cfg.data.replicate, seed=cfg.train.seed, workers=cfg.train.workers)
    print(f"Training on {len(images)} {'images (random crops)' if cfg.data.random_crops else 'crops'}, "
          f"validating on {0 if val is None else len(val[0])} crops")
    return dataset, val


def record_model(model, run_dir):
    """Write the model summary and parameter count to ``model.txt`` in the run folder."""
    from .networks import count_params, summary_text

    io.write_text(os.path.join(run_dir, "model.txt"),
                  f"parameters: {count_params(model)}\n\n{summary_text(model)}\n")


def finish(args, run_dir, results, sweeps, info):
    """Charts, ``metrics.json`` (written last: it marks the run finished), table and summary row."""
    from .training import read_history

    charts = os.path.join(run_dir, "charts")
    reports.plot_history(read_history(os.path.join(run_dir, "history.csv")), charts)
    reports.plot_threshold_sweeps(sweeps, charts)
    summary = reports.summary_row(args.id, args.rid, results, info)
    reports.append_summary(args.job_dir, summary)
    reports.write_json(os.path.join(run_dir, "metrics.json"),
                       {"results": results, "threshold_sweeps": sweeps, "training": info})
    print()
    print(reports.metrics_table(results))
    print(f"\nRun folder: {os.path.abspath(run_dir)}")
    print(f"  metrics:     {os.path.join(run_dir, 'metrics.json')}")
    print(f"  charts:      {charts}")
    print(f"  predictions: {os.path.join(run_dir, 'predictions')}")
    print(f"  summary:     {os.path.join(args.job_dir, 'summary.csv')}")
