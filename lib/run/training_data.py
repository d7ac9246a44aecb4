"""A run's training and validation data: the split, the crops of an epoch, class weights.

Every refusal of the split and the crops is raised here, before the run folder exists.
"""

import sys

import numpy as np

from .. import config as config_lib
from ..data import io, splits, targets, tiling, weightmaps
from ..data.sets import DiskImageSet
from ..data.tiling import fixed_windows, seeded_choice, training_targets, validation_crops
from ..errors import options


def _check_split(shapes, cfg, ndim, validation_folder=False):
    """Refuse a training/validation split that leaves nothing to train on now, before the run folder exists.

    ``shapes`` are those of the items of ``DATA_DIR/train``; with ``validation_folder`` (``DATA_DIR/val``)
    nothing is split. The same split as :func:`split_plan` makes for ``training_data_*``.
    """
    if not validation_folder:
        split_plan(shapes, [0] * len(shapes), False, cfg, ndim)


def split_plan(shapes, groups, validation_folder, cfg, ndim):
    """Which training items (and parts) train and which validate: ``(train, val)`` lists of ``(item, z range)``.

    ``shapes`` and ``groups`` (:class:`ImageSet`) are those of the training items; a z range
    ``(z0, z1)`` is a part of a volume, None the whole item. Only items of ``DATA_DIR/train``
    (group 0) validate, as ``data.val_fraction`` and ``data.val_split`` say: whole items, or the
    last slices of a single volume (3D). With ``validation_folder`` (``DATA_DIR/val``) every item trains.
    """
    main = [i for i, g in enumerate(groups) if g == 0]
    extra = [(i, None) for i, g in enumerate(groups) if g != 0]
    if validation_folder:
        return [(i, None) for i in range(len(groups))], []
    with options(fraction="data.val_fraction"):
        if ndim == 3 and len(main) == 1:
            depth = shapes[main[0]][0]
            z = splits.split_depth(depth, cfg.data.val_fraction, cfg.data.crop_shape[0])
            return [(main[0], (0, z))] + extra, [(main[0], (z, depth))] if z < depth else []
        train, val = splits.split_indices(len(main), cfg.data.val_fraction, cfg.data.val_split, cfg.train.seed)
    return [(main[k], None) for k in train] + extra, [(main[k], None) for k in val]


def validation_source(train_set, cfg):
    """What validated a run, in words, for its log and ``metrics.json``."""
    if train_set.validation is not None:
        n = len(train_set.validation)
        return f"DATA_DIR/val ({n} {'image' if len(cfg.data.crop_shape) == 2 else 'volume'}{'s' * (n != 1)})"
    if cfg.data.val_fraction == 0:
        return "none (data.val_fraction=0)"
    return f"data.val_fraction={cfg.data.val_fraction} of DATA_DIR/train ({cfg.data.val_split})"


def training_data_2d(train_set, cfg):
    """Split training/validation and return ``(CropDataset, (x_val, y_val) or None)``; writes nothing.

    Validation uses the fixed, non-overlapping crop grid of the validation images
    (no augmentation), so its loss is comparable from epoch to epoch. Every refusal
    of the split and the crops is raised here, before the run folder exists; the
    run folder's records of the training data are :func:`record_training_data`'s.
    """
    return _crop_data(*_split_items(train_set, cfg, ndim=2), cfg, ndim=2)


def training_data_3d(train_set, cfg):
    """Split training/validation and return ``(CropDataset of subvolumes, (x_val, y_val) or None)``.

    Several volumes are split as whole volumes, as 2D images are. A single volume
    is split along z: its last ``data.val_fraction`` of slices (at least one
    subvolume deep) validate, so no validation slice neighbours a training slice
    on both sides. Validation uses the fixed, non-overlapping subvolume grid.
    Volumes in stores (a DiskImageSet from :func:`open_3d_stores`) are split alike
    by :func:`training_data_streamed`. Writes nothing.
    """
    if isinstance(train_set, DiskImageSet):
        return training_data_streamed(train_set, cfg)
    return _crop_data(*_split_items(train_set, cfg, ndim=3), cfg, ndim=3)


def class_weights(train_set, cfg):
    """The loss weight of each class: ``train.class_weights``, or with ``auto`` those of the training masks.

    ``auto`` is median frequency balancing (Eigen and Fergus 2015): class ``k`` of pixel frequency
    ``f_k`` weighs ``median(f) / f_k``, the median over the classes present; a class absent from the
    training masks weighs 1 (with a warning: it cannot be learnt). Returns None for binary runs
    (``model.classes`` 1) and for ``[]``; else a list of ``model.classes`` floats. Writes nothing.
    """
    k, weights = cfg.model.classes, cfg.train.class_weights
    if k == 1:
        return None
    counts = (np.sum(train_set.class_counts, axis=0) if isinstance(train_set, DiskImageSet) else
              sum(np.bincount(m[io.annotated(m)], minlength=k) for m in train_set.masks))
    absent = [c for c in range(k) if counts[c] == 0]
    if absent:
        print(f"warning: no pixel of the training masks is of class {', '.join(map(str, absent))} "
              f"(model.classes={k}): the network cannot learn {'it' if len(absent) == 1 else 'them'}", file=sys.stderr)
    if weights != "auto":
        return [float(w) for w in weights] or None
    freq = counts / counts.sum()
    median = float(np.median(freq[counts > 0]))
    auto = [round(median / f, 6) if f > 0 else 1.0 for f in freq]
    print("train.class_weights=auto: " + ", ".join(f"class {c} {w:.3g} ({f:.1%} of pixels)"
                                                   for c, (w, f) in enumerate(zip(auto, freq))))
    return auto


def _split_items(train_set, cfg, ndim):
    """``((images, masks, groups), (val_images, val_masks))`` of :func:`split_plan`, or with ``DATA_DIR/val``."""
    groups = train_set.groups or [0] * len(train_set)
    validation = train_set.validation
    train, val = split_plan([m.shape for m in train_set.masks], groups, validation is not None, cfg, ndim)

    def part(array, z):
        return array if z is None else array[z[0]:z[1]]

    chosen = ([part(train_set.images[i], z) for i, z in train], [part(train_set.masks[i], z) for i, z in train],
              [groups[i] for i, _ in train])
    if validation is not None:
        return chosen, (list(validation.images), list(validation.masks))
    return chosen, ([part(train_set.images[i], z) for i, z in val], [part(train_set.masks[i], z) for i, z in val])


def _crop_data(train, val, cfg, ndim):
    """CropDataset over ``train = (images, masks)`` and the crop grid of ``val`` as arrays (or None)."""
    from ..data.augment import Augmenter
    from ..data.generators import CropDataset

    crop = tuple(cfg.data.crop_shape)
    (images, masks, groups), (val_images, val_masks) = train, val
    weights, val_weights = _weight_maps(masks, val_masks, cfg)
    if not cfg.data.random_crops:
        x = np.concatenate([tiling.crop_grid(im, crop)[0] for im in images])
        y = np.concatenate([tiling.crop_grid(m, crop)[0] for m in masks])
        with options(min_fraction="data.min_fg_fraction"):
            keep, y = tiling.discard_low_foreground(np.arange(len(y)), y, cfg.data.min_fg_fraction)
        images, masks = [x[i] for i in keep], list(y)
        if weights is not None:
            w = np.concatenate([tiling.crop_grid(m, crop)[0] for m in weights])
            weights = [w[i] for i in keep]
    # Random crops: each image gets the crops that would cover it; fixed crops are seen once each.
    draws = tiling.annotated_draws(masks, crop) if cfg.data.random_crops else None
    samples = epoch_samples(draws or [1] * len(masks), cfg)
    if draws is not None and cfg.data.extra_train_shares:
        draws = tiling.share_draws(draws, groups, cfg.data.extra_train_shares)
    val = None
    instance, val_targets = crop_targets(cfg)
    if val_images:
        def val_crops(y, w):  # instance targets from each crop's labels; masks (and weights) cut as they are
            if val_targets is not None:
                return np.stack([val_targets(c) for c in tiling.crop_grid(y, crop)[0]])
            return tiling.crop_grid(training_targets(y, w), crop)[0]

        xs, ys = zip(*((tiling.crop_grid(x, crop)[0], val_crops(y, w))
                       for x, y, w in zip(val_images, val_masks, val_weights)))
        val = tiling.annotated_crops(np.concatenate(xs), np.concatenate(ys))
        if val is not None:
            keep = seeded_choice(len(val[0]), val_limit(samples, cfg), cfg.train.seed)
            val = (val[0][keep], val[1][keep])
    augmenter = Augmenter(cfg.augment, ndim=ndim) if cfg.augment.enabled else None
    dataset = CropDataset(images, masks, crop, cfg.train.batch_size, augmenter=augmenter,
                          random_crops=cfg.data.random_crops, fg_sampling=cfg.data.fg_sampling,
                          replicate=cfg.data.replicate, seed=cfg.train.seed, workers=cfg.train.workers,
                          weights=weights, draws=draws, samples_per_epoch=samples, targets=instance)
    item, crops = ("images", "crops") if ndim == 2 else ("volumes", "subvolumes")
    print(f"Training on {len(images)} {f'{item} (random {crops})' if cfg.data.random_crops else crops}: "
          f"{len(dataset)} steps of {cfg.train.batch_size} per epoch; validating on "
          f"{0 if val is None else len(val[0])} {crops}")
    return dataset, val


# An automatic epoch (train.steps_per_epoch=0) covers the training area once, within these bounds: not so
# short that validation and checkpoints outweigh training, not so long that a killed run loses much.
MIN_AUTO_STEPS, MAX_AUTO_STEPS = 20, 100


# Validation costs about a third of a training step per crop (forward pass only), so this share of an
# epoch's training samples keeps validation under 10 % of the epoch.
VAL_SHARE = 0.2


def crop_targets(cfg):
    """``(training targets, validation targets)`` of each crop's label image for instance runs (``model.targets``
    bc or bcd; :func:`lib.data.targets.instance_targets`), or ``(None, None)``.

    A validation crop's targets carry its label image as a last channel (float32, exact for ids below 2**24),
    for the F1 of its objects (:func:`object_f1`); the loss reads only the network's channels.
    """
    import functools

    kind = cfg.model.targets
    if kind == "mask":
        return None, None
    train = functools.partial(targets.instance_targets, kind=kind)

    def val(labels):
        channels = train(labels)
        labels = labels[..., None].astype(np.float32)
        labels[channels[..., :1] < 0] = -1.0  # unannotated, as the channels
        return np.concatenate([channels, labels], axis=-1)

    return train, val


def object_f1(val_data, cfg):
    """``model -> {"val_f1": F1}``: the F1 at IoU 0.5 of the objects of the validation crops (instance runs), the
    objects found as the test set's (:func:`lib.predict.instances.from_channels`), pooled over the crops; None
    without validation data or for a semantic run."""
    if val_data is None or cfg.model.targets == "mask":
        return None
    import keras

    from ..evaluate.matching import Matches
    from ..evaluate.objects import reference_objects, without_unannotated
    from ..predict.instances import from_channels

    x, y = val_data
    post, threshold, batch = cfg.post, cfg.inference.threshold, cfg.train.batch_size
    unannotated = y[..., -1] < 0  # the objects are compared on the annotated voxels
    references = [reference_objects(np.maximum(labels, 0).astype(np.uint32)) for labels in y[..., -1]]  # once

    def score(model):
        matches = Matches()
        for start in range(0, len(x), batch):
            out = model(x[start:start + batch], training=False)
            prob = keras.ops.convert_to_numpy(out[0] if isinstance(out, (list, tuple)) else out)
            for k, (p, reference) in enumerate(zip(prob, references[start:start + batch]), start):
                found = from_channels(p, threshold, post.contour_threshold, post.distance_threshold,
                                      post.seed_height, post.min_size)
                matches += Matches.from_labels(without_unannotated(found, unannotated[k]), reference)
        return {"val_f1": float(matches.metrics()["f1_50"])}

    return score


def epoch_samples(draws, cfg):
    """Training samples per epoch: ``train.steps_per_epoch`` batches, or the crops covering the training set.

    Parameters
    ----------
    draws : sequence of int
        Crops covering each training image or volume (``lib.data.tiling.crops_to_cover``), 1 for fixed crops.
    cfg : Config

    Returns
    -------
    int: ``steps_per_epoch * batch_size`` when set; else ``sum(draws) * data.replicate``
    rounded up to whole batches and kept within ``MIN_AUTO_STEPS`` and ``MAX_AUTO_STEPS`` batches.
    """
    batch = cfg.train.batch_size
    if cfg.train.steps_per_epoch:
        return cfg.train.steps_per_epoch * batch
    steps = -(-int(sum(draws)) * cfg.data.replicate // batch)
    return int(np.clip(steps, MIN_AUTO_STEPS, MAX_AUTO_STEPS)) * batch


def val_limit(samples, cfg):
    """Most validation crops for epochs of ``samples`` training samples: ``data.max_val_crops`` and ``VAL_SHARE``."""
    return max(cfg.train.batch_size, min(cfg.data.max_val_crops, int(VAL_SHARE * samples)))


def _weight_maps(masks, val_masks, cfg):
    """``(train maps or None, val maps or Nones)``: U-Net weight maps when ``train.loss`` needs them.

    Computed once per image, after the split and before cropping, with the
    class balance of the training masks for every image.
    """
    if not config_lib.uses_weight_maps(cfg.train.loss):
        return None, [None] * len(val_masks)
    fg = (sum(int(np.count_nonzero(io.foreground(m))) for m in masks) /
          sum(int(np.count_nonzero(io.annotated(m))) for m in masks))
    maps = [[weightmaps.weight_map(m, cfg.train.weight_w0, cfg.train.weight_sigma, fg_fraction=fg) for m in group]
            for group in (masks, val_masks)]
    return maps[0], maps[1]


def training_data_streamed(train_set, cfg):
    """Split the training images (or volumes) and return ``(DiskCropDataset, (x_val, y_val) or None)``.

    Validation crops follow the non-overlapping crop grid of the validation
    images (the last row and column aligned with the image's end, so no padding
    is read); when there are more than :func:`val_limit`, a seeded choice of
    that many. They are read once and kept in memory, like the in-memory template's.
    A single training volume is split along z, as :func:`training_data_3d` splits one. Writes nothing.
    """
    from ..data.augment import Augmenter
    from ..data.generators import DiskCropDataset

    crop = tuple(cfg.data.crop_shape)
    ndim = len(crop)
    fg = train_set.foreground
    groups = train_set.groups or [0] * len(train_set)
    validation = train_set.validation
    train, val = split_plan([m.shape for m in train_set.masks], groups, validation is not None, cfg, ndim)

    def part(array, z):
        return array if z is None else array.part(*z)

    images = [part(train_set.images[i], z) for i, z in train]
    masks = [part(train_set.masks[i], z) for i, z in train]
    foreground = None if fg is None else [fg[i] if z is None else fg[i].head(m, z[1])
                                          for (i, z), m in zip(train, masks)]
    if validation is not None:
        val_images, val_masks = list(validation.images), list(validation.masks)
    else:
        val_images = [part(train_set.images[i], z) for i, z in val]
        val_masks = [part(train_set.masks[i], z) for i, z in val]
    weights = _crop_weights(train_set, cfg)
    with options(min_fraction="data.min_fg_fraction"):
        windows = None if cfg.data.random_crops else fixed_windows(masks, crop, cfg.data.min_fg_fraction)
    # the annotated share of each item, from its scan (a z part of a volume takes the volume's)
    shares = ([train_set.fg_counts[i][1] / max(1, int(np.prod(train_set.masks[i].shape))) for i, _ in train]
              if train_set.fg_counts else None)
    draws = tiling.annotated_draws(masks, crop, shares)
    samples = epoch_samples(draws if windows is None else [1] * len(windows), cfg)
    if cfg.data.extra_train_shares:
        draws = tiling.share_draws(draws, [groups[i] for i, _ in train], cfg.data.extra_train_shares)
    instance, val_targets = crop_targets(cfg)
    val = validation_crops(val_images, val_masks, crop, val_limit(samples, cfg), cfg.train.seed, weights,
                           val_targets)
    augmenter = Augmenter(cfg.augment, ndim=ndim) if cfg.augment.enabled else None
    dataset = DiskCropDataset(images, masks, crop, cfg.train.batch_size, augmenter=augmenter,
                              fg_sampling=cfg.data.fg_sampling, foreground=foreground, replicate=cfg.data.replicate,
                              seed=cfg.train.seed, workers=cfg.train.workers, draws=draws, samples_per_epoch=samples,
                              windows=windows, weight_map=weights, targets=instance)
    item, crops = ("images", "crops") if ndim == 2 else ("volumes", "subvolumes")
    kind = f"random {crops}" if windows is None else f"{len(windows)} fixed {crops}"
    print(f"Training on {len(images)} {item} ({kind} read from disk): {len(dataset)} steps of "
          f"{cfg.train.batch_size} per epoch; validating on {0 if val is None else len(val[0])} {crops}")
    return dataset, val


def _crop_weights(train_set, cfg):
    """The weight map of a streamed crop from its mask, when ``train.loss`` needs one, else None.

    Computed crop by crop as crops are read (so the border term sees the objects of the crop),
    with the class balance of all the training masks, which the scan counted.
    """
    if not config_lib.uses_weight_maps(cfg.train.loss):
        return None
    import functools

    fg, total = map(sum, zip(*train_set.fg_counts))
    return functools.partial(weightmaps.weight_map, w0=cfg.train.weight_w0, sigma=cfg.train.weight_sigma,
                             fg_fraction=fg / total)
