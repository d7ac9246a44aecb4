"""The steps a template strings together: load and check data, build training data, finish a run.

Kept separate from the templates so that every template and entry script shares
one implementation of each step, while the templates stay short enough to copy.
"""

import os
import sys
from dataclasses import dataclass
from typing import List, NamedTuple, Optional

import numpy as np

from . import cli
from . import config as config_lib
from . import data, io, reports
from .errors import UserError, options


@dataclass
class ImageSet:
    """Normalised images float32 ``(*spatial, C)`` (2D images or 3D volumes), masks ``spatial`` uint8, names.

    Masks are binary {0, 1}, or class ids ``0 .. model.classes - 1`` (multi-class segmentation).

    A test set without ground truth (no ``DATA_DIR/test/y``) has None masks.

    ``normalization``: the training statistics the images were normalised with (``zscore``: mean and std), or None.

    A training set also has ``groups``: the folder each item comes from (0: ``DATA_DIR/train``, k: the k-th
    of ``data.extra_train_dirs``; None: all 0), and ``validation``: the set of ``DATA_DIR/val`` when it
    exists (then no training item validates), else None.
    """

    images: List[np.ndarray]
    masks: List[np.ndarray]
    names: List[str]
    normalization: Optional[dict] = None
    groups: Optional[List[int]] = None
    validation: Optional["ImageSet"] = None

    @property
    def channels(self):
        return self.images[0].shape[-1]

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], self.masks[i], self.names[i]


def check_crop_shape(cfg, shapes, where):
    """The crop must fit in every image and be divisible by the network's downsampling."""
    from .networks import check_planar_levels, divisor

    crop = tuple(cfg.data.crop_shape)
    ndim = len(crop)
    check_planar_levels(cfg.model, ndim)
    smallest = tuple(min(s[i] for s in shapes) for i in range(ndim))
    with options(crop="data.crop_shape"):
        data.check_crop_fits(smallest, crop, f"the smallest image of {where}")
    factors = divisor(cfg.model, ndim)
    shapes = [("data.crop_shape", crop)]
    if cfg.inference.tile_shape:
        shapes.append(("inference.tile_shape", tuple(cfg.inference.tile_shape)))
        if len(cfg.inference.tile_shape) != ndim:
            raise UserError(f"inference.tile_shape={cfg.inference.tile_shape}: expected {ndim} sizes like "
                            f"data.crop_shape={list(crop)}")
    for option, sizes in shapes:
        for axis, (c, f) in enumerate(zip(sizes, factors)):
            if c % f:
                raise UserError(
                    f"{option}={list(sizes)}: size {c} on axis {'zyx'[3 - ndim + axis]} is not divisible by "
                    f"{f}, the network's downsampling (model.depth={cfg.model.depth}"
                    f"{'' if cfg.model.stem_stride == 1 else f', model.stem_stride={cfg.model.stem_stride}'}); "
                    f"use a multiple of {f}"
                )
    if cfg.inference.tta and factors[-1] != factors[-2]:
        raise UserError(
            f"inference.tta=true turns tiles by 90 degrees, which needs the same downsampling in y and x; the "
            f"network's is {factors[-2]} in y and {factors[-1]} in x (model.pool_size={cfg.model.pool_size}, "
            f"model.stem_stride={cfg.model.stem_stride}); make them equal or set inference.tta=false"
        )


def load_2d(data_dir, cfg):
    """Read, check and normalise ``DATA_DIR/{train,test}`` as 2D images.

    Returns ``(train, test)`` ImageSets. Raises UserError on any problem with the
    data, before anything is written.
    """
    return _load(data_dir, cfg, ndim=2)


def load_3d(data_dir, cfg):
    """Read, check and normalise ``DATA_DIR/{train,test}`` as 3D volumes.

    Each folder holds sorted 2D slices (one volume) or multi-page TIFF stacks
    (one volume each), see ``io.load_pairs_3d``; ``per_image`` normalisation is
    per volume. Returns ``(train, test)`` ImageSets of volumes ``(Z, Y, X, C)``
    float32 and masks ``(Z, Y, X)`` uint8. Raises UserError on any problem with
    the data, before anything is written.

    When ``DATA_DIR/train/x`` holds zarr / HDF5 volumes (``.zarr``, ``.h5``), nothing
    is loaded: :func:`open_3d_stores` returns DiskImageSets whose subvolumes are read
    from the stores as training needs them.
    """
    if has_stores(data_dir):
        return open_3d_stores(data_dir, cfg)
    return _load(data_dir, cfg, ndim=3)


def _load(data_dir, cfg, ndim):
    sets, training, groups = _read_folders(data_dir, cfg, ndim, lambda pairs, name: (
        io.load_pairs_2d(pairs, cfg.model.classes) if ndim == 2 else io.load_pairs_3d(pairs, name, cfg.model.classes)))
    _check_split([x.shape for x in sets["train"][0]], cfg, ndim, "val" in sets)
    check_tile_count(cfg, [x.shape[:ndim] for x in sets["test"][0]])
    check_foreground({split: (sum(int(np.count_nonzero(m)) for m in masks), sum(m.size for m in masks))
                      for split, (_, masks, _) in sets.items() if split != "val" and masks[0] is not None}, data_dir)
    train = tuple(sum((list(items[k]) for items in training), []) for k in range(3))
    stats = data.fit_normalization(train[0], cfg.data.normalization, cfg.data.clip_percentiles,
                                   (cfg.data.norm_mean, cfg.data.norm_std))
    with options(method="data.normalization"):
        def normalized(images, masks, names, **more):
            return ImageSet([data.normalize(x, cfg.data.normalization, stats) for x in images], masks, names,
                            stats or None, **more)

        validation = normalized(*sets["val"]) if "val" in sets else None
        return normalized(*train, groups=groups, validation=validation), normalized(*sets["test"])


def _read_folders(data_dir, cfg, ndim, read):
    """Check the options every loader checks, then read each folder of :func:`data_folders`.

    ``read(pairs, name) -> (images, masks, names)`` reads one folder (arrays or disk sources,
    channels last). Returns ``(sets, training, groups)``: ``{role: (images, masks, names)}`` of
    ``train``, ``val`` (when it exists) and ``test``; the items of ``DATA_DIR/train`` and of each
    extra folder, in that order; and the group (folder) of each training item (:class:`ImageSet`).
    """
    if len(cfg.data.crop_shape) != ndim:
        raise UserError(f"data.crop_shape={cfg.data.crop_shape}: the {ndim}D template needs {ndim} sizes "
                        f"({', '.join('zyx'[3 - ndim:])})")
    with options(overlap="inference.overlap"):
        data.per_axis(cfg.inference.overlap, ndim, "overlap")
    check_crop_options(cfg)
    loaded = []
    for role, parent, name in data_folders(data_dir, cfg):
        images, masks, names = read(io.dataset_pairs(parent, name, masks_optional=role == "test"), name)
        folder = os.path.join(parent, name)
        check_crop_shape(cfg, [x.shape[:ndim] for x in images], folder)
        loaded.append((role, folder, (images, masks, names)))
    check_channels([(folder, images[0].shape[-1]) for _, folder, (images, _, _) in loaded])
    sets = {role: items for role, _, items in loaded if role != "extra"}
    training = [items for role, _, items in loaded if role in ("train", "extra")]
    groups = [k for k, (images, _, _) in enumerate(training) for _ in images]
    return sets, training, groups


def check_crop_options(cfg):
    """Refuse ``data.min_fg_fraction`` with random crops: it discards crops of the fixed grid only."""
    if cfg.data.random_crops and cfg.data.min_fg_fraction > 0:
        raise UserError(
            "data.min_fg_fraction discards fixed crops (data.random_crops=false); "
            "with random crops use data.fg_sampling to favour foreground"
        )


def data_folders(data_dir, cfg):
    """The folders of a run's data, ``[(role, parent, name)]`` with the folder ``parent/name`` holding x/ and y/.

    Roles: ``train`` (``DATA_DIR/train``), ``extra`` (each of ``data.extra_train_dirs``, relative to
    DATA_DIR unless absolute), ``val`` (``DATA_DIR/val``, when it exists) and ``test``.
    """
    folders = [("train", data_dir, "train")]
    for path in cfg.data.extra_train_dirs:
        full = os.path.normpath(os.path.join(data_dir, os.path.expanduser(path)))
        if not os.path.isdir(full):
            raise UserError(f"data.extra_train_dirs: {full}: folder not found; expected a folder with x/ (images) "
                            "and y/ (masks), paired by sorted name")
        folders.append(("extra", os.path.dirname(full), os.path.basename(full)))
    if os.path.isdir(os.path.join(data_dir, "val")):
        folders.append(("val", data_dir, "val"))
    folders.append(("test", data_dir, "test"))
    return folders


def check_channels(folders):
    """Refuse folders whose images have other channel counts than the first's: ``folders`` ``[(path, channels)]``."""
    first, channels = folders[0]
    for folder, n in folders[1:]:
        if n != channels:
            raise UserError(f"{folder}: images with {n} channels, but those of {first} have {channels}; "
                            "expected the same")


def check_foreground(counts, data_dir):
    """Refuse training masks without foreground or without background; warn of test masks without either.

    ``counts`` maps ``'train'`` and ``'test'`` to ``(foreground pixels, pixels)`` over all their masks.
    """
    for split, (fg, total) in counts.items():
        problem = ("hold no foreground (every pixel is 0)" if fg == 0 else
                   "hold no background (every pixel is foreground)" if fg == total else None)
        if problem is None:
            continue
        folder = os.path.join(data_dir, split, "y")
        if split == "train":
            raise UserError(f"{folder}: the training masks {problem}; expected masks with both objects and "
                            "background, as there is nothing to learn otherwise")
        print(f"warning: {folder}: the test masks {problem}; foreground metrics (fg_iou, dice, det...) "
              "compare against an empty class", file=sys.stderr)


MAX_TILES_PER_AREA = 64  # tiles predicted per tile-sized area of an image: 4 at overlap 0.5, 100 at 0.9


def check_tile_count(cfg, shapes):
    """Refuse an ``inference.overlap`` that makes the tiled prediction of the test images absurdly long.

    ``shapes`` are the spatial shapes of the test items. Counted as
    :func:`lib.inference.predict_tiled` tiles them, before anything is predicted.
    """
    if not (cfg.inference.tiled or cfg.inference.tta or cfg.post.z_filter or cfg.post.oztel):
        return
    tile = tuple(cfg.data.crop_shape)
    for shape in sorted(set(map(tuple, shapes))):
        count = data.tile_count(shape, tile, cfg.inference.overlap)
        per_area = count * np.prod(tile) / np.prod(shape)
        if per_area > MAX_TILES_PER_AREA:
            raise UserError(
                f"inference.overlap={cfg.inference.overlap}: the tiled prediction of a {'x'.join(map(str, shape))} "
                f"test image takes {count:,} tiles of {'x'.join(map(str, tile))} (each pixel predicted about "
                f"{per_area:.0f} times; at most {MAX_TILES_PER_AREA} accepted); lower inference.overlap, e.g. 0.5"
            )


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
            z = data.split_depth(depth, cfg.data.val_fraction, cfg.data.crop_shape[0])
            return [(main[0], (0, z))] + extra, [(main[0], (z, depth))] if z < depth else []
        train, val = data.split_indices(len(main), cfg.data.val_fraction, cfg.data.val_split, cfg.train.seed)
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
              sum(np.bincount(m.ravel(), minlength=k) for m in train_set.masks))
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
    from .augment import Augmenter
    from .generators import CropDataset

    crop = tuple(cfg.data.crop_shape)
    (images, masks, groups), (val_images, val_masks) = train, val
    weights, val_weights = _weight_maps(masks, val_masks, cfg)
    if not cfg.data.random_crops:
        x = np.concatenate([data.crop_grid(im, crop)[0] for im in images])
        y = np.concatenate([data.crop_grid(m, crop)[0] for m in masks])
        with options(min_fraction="data.min_fg_fraction"):
            keep, y = data.discard_low_foreground(np.arange(len(y)), y, cfg.data.min_fg_fraction)
        images, masks = [x[i] for i in keep], list(y)
        if weights is not None:
            w = np.concatenate([data.crop_grid(m, crop)[0] for m in weights])
            weights = [w[i] for i in keep]
    # Random crops: each image gets the crops that would cover it; fixed crops are seen once each.
    draws = [data.crops_to_cover(m.shape, crop) for m in masks] if cfg.data.random_crops else None
    samples = epoch_samples(draws or [1] * len(masks), cfg)
    if draws is not None and cfg.data.extra_train_shares:
        draws = data.share_draws(draws, groups, cfg.data.extra_train_shares)
    val = None
    if val_images:
        xs, ys = zip(*((data.crop_grid(x, crop)[0], data.crop_grid(_targets(y, w), crop)[0])
                       for x, y, w in zip(val_images, val_masks, val_weights)))
        val = (np.concatenate(xs), np.concatenate(ys))
        keep = _choose(len(val[0]), val_limit(samples, cfg), cfg.train.seed)
        val = (val[0][keep], val[1][keep])
    augmenter = Augmenter(cfg.augment, ndim=ndim) if cfg.augment.enabled else None
    dataset = CropDataset(images, masks, crop, cfg.train.batch_size, augmenter=augmenter,
                          random_crops=cfg.data.random_crops, fg_sampling=cfg.data.fg_sampling,
                          replicate=cfg.data.replicate, seed=cfg.train.seed, workers=cfg.train.workers,
                          weights=weights, draws=draws, samples_per_epoch=samples)
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


def epoch_samples(draws, cfg):
    """Training samples per epoch: ``train.steps_per_epoch`` batches, or the crops covering the training set.

    Parameters
    ----------
    draws : sequence of int
        Crops covering each training image or volume (``data.crops_to_cover``), 1 for fixed crops.
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


def _choose(n, limit, seed):
    """Sorted indices of a seeded choice of ``limit`` of ``n`` items, or all of them."""
    if n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, limit, replace=False))


def _weight_maps(masks, val_masks, cfg):
    """``(train maps or None, val maps or Nones)``: U-Net weight maps when ``train.loss`` needs them.

    Computed once per image, after the split and before cropping, with the
    class balance of the training masks for every image.
    """
    if not config_lib.uses_weight_maps(cfg.train.loss):
        return None, [None] * len(val_masks)
    fg = sum(int(np.count_nonzero(m)) for m in masks) / sum(m.size for m in masks)
    maps = [[data.weight_map(m, cfg.train.weight_w0, cfg.train.weight_sigma, fg_fraction=fg) for m in group]
            for group in (masks, val_masks)]
    return maps[0], maps[1]


def _targets(mask, weight):
    """Training targets ``(*spatial, 1)``, or ``(*spatial, 2)`` (mask, weight) with a weight map, float32."""
    return np.stack([mask] if weight is None else [mask, weight], axis=-1).astype(np.float32)


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


# --------------------------------------------------------------------------- 2D data streamed from disk

# Side of the blocks whose foreground counts drive data.fg_sampling on streamed data, per number of axes:
# a foreground sample reads one block of the mask (64 x 64 pixels, 32 x 32 x 32 voxels).
FG_BLOCK = {2: 64, 3: 32}
SLAB_VOXELS = 2 ** 24  # voxels read at once when an item is scanned (64 MB as float32): z slabs of a volume


@dataclass
class DiskImageSet:
    """2D images (or 3D volumes) and masks on disk, read one item at a time, and their names.

    ``[i]`` reads item ``i`` whole: ``(image (H, W, C) float32`` normalised like
    the training data, ``mask (H, W) uint8 {0, 1}`` or None without ground truth, ``name)``; nothing is kept, so a
    set of any size is used in bounded memory (``evaluation.evaluate_test_set``
    takes it as a test set). Volumes are ``(Z, Y, X, C)`` and ``(Z, Y, X)``.

    Attributes
    ----------
    images : list of io.DiskImage
    masks : list of io.DiskMask (None without ground truth)
    names : list of str
    foreground : list of io.ForegroundIndex, or None
        Per-block foreground index of each mask (training set with ``data.fg_sampling > 0``).
    normalization : dict or None
        The training statistics of ``zscore`` normalisation (mean and std), as :class:`ImageSet`.
    groups, validation
        As :class:`ImageSet`'s.
    fg_counts : list of (foreground pixels, pixels), or None
        Of each training mask, as the scan counted them (the class balance of weight maps).
    class_counts : list of int ndarray (model.classes,), or None
        With ``model.classes > 1``: the pixels of each class in each mask (for ``train.class_weights=auto``).
    """

    images: list
    masks: list
    names: List[str]
    foreground: Optional[list] = None
    normalization: Optional[dict] = None
    groups: Optional[List[int]] = None
    validation: Optional["DiskImageSet"] = None
    fg_counts: Optional[list] = None
    class_counts: Optional[list] = None  # model.classes > 1: pixels of each class in each mask, from the scan

    @property
    def channels(self):
        return self.images[0].shape[-1]

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        mask = self.masks[i]
        return np.asarray(self.images[i]), None if mask is None else np.asarray(mask), self.names[i]


def open_2d_streamed(data_dir, cfg):
    """Index and check ``DATA_DIR/{train,test}`` for training streamed from disk; keep no pixels.

    Pairing, counts, sizes, channels and pixel types are checked from the file
    headers (``io.index_pairs_2d``; a zarr / HDF5 volume gives its z slices).
    Then every file is read once, one at a time
    per thread (``train.workers`` threads): this checks every mask, and computes
    each image's normalisation (its minimum and maximum for ``per_image``, the
    training mean and standard deviation for ``zscore``, computed in one pass)
    and, with ``data.fg_sampling > 0``, the foreground count of every block of
    ``FG_BLOCK`` pixels of each training mask.

    Returns
    -------
    train, test : DiskImageSet

    Raises
    ------
    UserError
        On any problem with the data or an option the streamed path does not
        support, before anything is written.
    """
    return _open_streamed(data_dir, cfg, 2, io.index_pairs_2d)


def has_stores(data_dir):
    """True when ``DATA_DIR/train/x`` holds zarr or HDF5 volumes (then read window by window, never whole)."""
    folder = os.path.join(data_dir, "train", "x")
    return os.path.isdir(folder) and any(io.is_store(f) for f in os.listdir(folder))


def open_3d_stores(data_dir, cfg):
    """Open and check ``DATA_DIR/{train,test}`` of zarr / HDF5 volumes for 3D training read from the stores.

    Each store of ``x/`` is one volume, paired with the store of ``y/`` of the same
    sorted rank (``test/y`` is optional). Nothing but headers is read here, then each volume
    once, in z slabs of ``SLAB_VOXELS``: the checks and statistics of :func:`open_2d_streamed`,
    with per-volume normalisation for ``per_image``. Returns ``(train, test)`` DiskImageSets
    of volumes; training reads each subvolume from its store (:func:`training_data_streamed`).
    """
    from .volumes import store_volume

    def sources(pairs):
        for x_path, y_path in pairs:
            for path in (x_path, y_path):
                if path is not None and not io.is_store(path):
                    raise UserError(f"{path}: DATA_DIR/train/x holds zarr / HDF5 volumes, so every volume of "
                                    "DATA_DIR/{train,test}/{x,y} must be one (.zarr, .h5); convert it or the others")
        images = [store_volume(x) for x, _ in pairs]
        masks = [None if y is None else store_volume(y) for _, y in pairs]
        for (x_path, y_path), x, y in zip(pairs, images, masks):
            if y is not None and x.shape[:-1] != y.shape[:-1]:
                raise UserError(f"{x_path}: volume shape {'x'.join(map(str, x.shape[:-1]))} differs from its mask "
                                f"{y_path} ({'x'.join(map(str, y.shape[:-1]))})")
            if y is not None and y.shape[-1] != 1:
                raise UserError(f"{y_path}: a mask with {y.shape[-1]} channels; expected one")
        io.check_same_kind(images)
        return images, masks, [os.path.splitext(os.path.basename(x.rstrip("/")))[0] for x, _ in pairs]

    return _open_streamed(data_dir, cfg, 3, sources)


def _open_streamed(data_dir, cfg, ndim, sources_of):
    """Check the options and the data of ``sources_of(pairs) -> (image sources, mask sources, names)``; scan them.

    ``pairs`` are those of each folder of :func:`data_folders`.
    """
    sources, training, groups = _read_folders(data_dir, cfg, ndim, lambda pairs, name: sources_of(pairs))
    sources["train"] = tuple(sum((list(items[k]) for items in training), []) for k in range(3))
    main = [i for i, g in enumerate(groups) if g == 0]
    _check_split([sources["train"][0][i].shape for i in main], cfg, ndim, "val" in sources)
    check_tile_count(cfg, [x.shape[:-1] for x in sources["test"][0]])
    method = cfg.data.normalization
    for x in (sources["train"][0][0], sources["test"][0][0]):
        if method == "dtype_max" and x.dtype.kind not in "ui":
            raise UserError(f"data.normalization=dtype_max needs integer images, got {x.dtype} ({x.path}); "
                            "use per_image or zscore for float images")
    fg = cfg.data.fg_sampling > 0
    cell = FG_BLOCK[ndim]
    classes = cfg.model.classes
    stats = {}
    if cfg.data.clip_percentiles is not None:  # a first pass for the levels, which the statistics depend on
        train_x, train_y = sources["train"][:2]
        samples = _scan(train_x, train_y, cfg.train.workers, False, None, "train (percentiles)", classes,
                        sample=data.CLIP_SAMPLE // len(train_x))
        stats["clip"] = data.clip_levels([s.sample for s in samples], cfg.data.clip_percentiles)
    scans = {split: _scan(sources[split][0], sources[split][1], cfg.train.workers, method == "zscore",
                          cell if fg and split == "train" else None, split, classes, clip=stats.get("clip"))
             for split in sources}
    # DATA_DIR/train's own masks must hold both classes (an extra folder may hold background only)
    check_foreground({split: tuple(map(sum, zip(*(scans[split][i].fg for i in items))))
                      for split, items in (("train", main), ("test", range(len(scans["test"]))))
                      if sources[split][1][0] is not None}, data_dir)
    if method == "zscore":
        stats.update(_zscore_stats([s.stats for s in scans["train"]]))
    if method == "fixed":
        stats.update(mean=cfg.data.norm_mean, std=cfg.data.norm_std)

    def disk_set(split, **more):
        images, masks, names = sources[split]
        disk_masks = [None if m is None else io.DiskMask(m, classes) for m in masks]
        disk_images = [io.DiskImage(x, *_affine(x, scan.stats, method, stats), clip=stats.get("clip"))
                       for x, scan in zip(images, scans[split])]
        foreground = ([io.ForegroundIndex(m, scan.counts, cell) for m, scan in zip(disk_masks, scans[split])]
                      if fg and split == "train" else None)
        class_counts = [scan.per_class for scan in scans[split]] if classes > 1 and masks[0] is not None else None
        return DiskImageSet(disk_images, disk_masks, names, foreground, stats or None, class_counts=class_counts,
                            **more)

    validation = disk_set("val") if "val" in sources else None
    return (disk_set("train", groups=groups, validation=validation, fg_counts=[scan.fg for scan in scans["train"]]),
            disk_set("test"))


def _slabs(shape, cell):
    """Windows ``((z0, z1), (0, Y), ...)`` along axis 0 of an item of spatial ``shape``, each of about
    ``SLAB_VOXELS`` voxels and a multiple of ``cell`` deep; ``[None]`` (the whole item) when one covers it."""
    depth = max(cell, SLAB_VOXELS // max(1, int(np.prod(shape[1:]))) // cell * cell)
    if depth >= shape[0]:
        return [None]
    return [((z, min(z + depth, shape[0])),) + tuple((0, n) for n in shape[1:]) for z in range(0, shape[0], depth)]


class Scan(NamedTuple):
    """What :func:`_scan` found in one image/mask pair (None where it has no mask, or was not asked)."""

    stats: tuple                 # (min, max), then (count, mean, m2) with moments
    counts: Optional[np.ndarray]  # foreground pixels per block of side cell
    fg: Optional[tuple]          # (foreground pixels, pixels)
    sample: Optional[np.ndarray]  # about ``sample`` pixels, for percentiles
    per_class: Optional[np.ndarray]  # pixels of each class (classes > 1)


def _scan(images, masks, workers, moments, cell, split, classes=1, clip=None, sample=0):
    """Read each image/mask pair once: a :class:`Scan` of each.

    An image without a mask (None) has no counts, fg or per_class. Pixels per class (int array of
    ``classes``) are counted when ``classes`` > 1, masks then holding class ids. Statistics are
    those of the pixels clipped to ``clip`` (``[low, high]``, :func:`lib.data.clip_intensities`) when given;
    ``sample`` > 0: about that many pixels of each image (:func:`lib.data.pixel_sample`), for percentiles.
    Statistics are ``(min, max)``, with ``moments`` followed by ``(count, mean, m2)``
    (``m2``: sum of squared deviations from the mean, in float64 blocks of rows,
    so the memory used stays a few rows per image). Block counts (of blocks of side
    ``cell``) are made when ``cell`` is given. A large item is read in slabs (:func:`_slabs`).
    """
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    def one(pair):
        x_source, y_source = pair
        parts, counts, fg, samples = [], [], 0, []
        per_class = np.zeros(classes, np.int64) if classes > 1 else None
        windows = _slabs(x_source.shape[:-1], cell or max(FG_BLOCK.values()))
        for window in windows:
            x = data.clip_intensities(x_source.read(window), clip)
            if sample:
                samples.append(data.pixel_sample(x, -(-sample // len(windows))))
            part = (float(x.min()), float(x.max()))
            if not np.isfinite(part).all():
                raise UserError(f"{x_source.path}: some pixels are NaN or infinite; expected finite values "
                                "(replace them, e.g. by the background level)")
            if moments:
                mean = float(x.sum(dtype=np.float64)) / x.size
                m2 = sum(float(np.square(rows.astype(np.float64) - mean).sum())
                         for rows in np.array_split(x, -(-len(x) // 256)))
                part += (x.size, mean, m2)
            parts.append(part)
            del x
            if y_source is not None:
                y = io.read_mask(y_source, window, classes)
                fg += int(np.count_nonzero(y))
                if per_class is not None:
                    per_class += np.bincount(y.ravel(), minlength=classes)
                if cell:
                    counts.append(io.ForegroundIndex.block_counts(y, cell))
        stats = (min(p[0] for p in parts), max(p[1] for p in parts))
        if moments:
            stats += _merge_moments([p[2:] for p in parts])
        samples = np.concatenate(samples) if sample else None
        if y_source is None:
            return Scan(stats, None, None, samples, None)
        return Scan(stats, np.concatenate(counts) if cell else None, (fg, int(np.prod(x_source.shape[:-1]))),
                    samples, per_class)

    with ThreadPoolExecutor(max(1, workers)) as pool:
        return list(tqdm(pool.map(one, zip(images, masks)), total=len(images),
                         desc=f"checking {split} files", unit="image"))


def _merge_moments(parts):
    """``(count, mean, m2)`` of the union of parts given as ``(count, mean, m2)``.

    Merged pairwise (Chan, Golub and LeVeque), which stays accurate over many parts.
    """
    count, mean, m2 = 0, 0.0, 0.0
    for n, m, s in parts:
        delta = m - mean
        total = count + n
        mean += delta * (n / total)  # exactly the part's mean when it is the first
        m2 += s + delta * delta * count * n / total
        count = total
    return count, mean, m2


def _zscore_stats(moments):
    """Mean and standard deviation over all pixels from per-image ``(min, max, count, mean, m2)``."""
    count, mean, m2 = _merge_moments([m[2:] for m in moments])
    return {"mean": mean, "std": max((m2 / count) ** 0.5, 1e-8)}


def _affine(source, image_stats, method, stats):
    """``(offset, scale)`` with ``(x - offset) / scale`` equal to ``data.normalize(x, method, stats)``."""
    lo, hi = image_stats[:2]
    if method == "per_image":
        return lo, (hi - lo if hi > lo else 1.0)
    if method == "dtype_max":
        return 0.0, float(np.iinfo(source.dtype).max)
    return stats["mean"], stats["std"]  # zscore, fixed


def training_data_streamed(train_set, cfg):
    """Split the training images (or volumes) and return ``(DiskCropDataset, (x_val, y_val) or None)``.

    Validation crops follow the non-overlapping crop grid of the validation
    images (the last row and column aligned with the image's end, so no padding
    is read); when there are more than :func:`val_limit`, a seeded choice of
    that many. They are read once and kept in memory, like the in-memory template's.
    A single training volume is split along z, as :func:`training_data_3d` splits one. Writes nothing.
    """
    from .augment import Augmenter
    from .generators import DiskCropDataset

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
    windows = None if cfg.data.random_crops else _fixed_windows(masks, crop, cfg.data.min_fg_fraction)
    draws = [data.crops_to_cover(m.shape, crop) for m in masks]
    samples = epoch_samples(draws if windows is None else [1] * len(windows), cfg)
    if cfg.data.extra_train_shares:
        draws = data.share_draws(draws, [groups[i] for i, _ in train], cfg.data.extra_train_shares)
    val = _validation_crops(val_images, val_masks, crop, val_limit(samples, cfg), cfg.train.seed, weights)
    augmenter = Augmenter(cfg.augment, ndim=ndim) if cfg.augment.enabled else None
    dataset = DiskCropDataset(images, masks, crop, cfg.train.batch_size, augmenter=augmenter,
                              fg_sampling=cfg.data.fg_sampling, foreground=foreground, replicate=cfg.data.replicate,
                              seed=cfg.train.seed, workers=cfg.train.workers, draws=draws, samples_per_epoch=samples,
                              windows=windows, weight_map=weights)
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
    return functools.partial(data.weight_map, w0=cfg.train.weight_w0, sigma=cfg.train.weight_sigma,
                             fg_fraction=fg / total)


def _fixed_windows(masks, crop, min_fraction):
    """``[(item, corner)]`` of the fixed crop grid of disk masks (:func:`lib.data.tile_grid`, the last crop of
    each axis aligned with the end, so nothing is padded), without those of less foreground than ``min_fraction``.

    Raises UserError naming ``data.min_fg_fraction`` when no crop is left.
    """
    windows = [(i, corner) for i, m in enumerate(masks) for corner in data.tile_grid(m.shape, crop)]
    if min_fraction <= 0:
        return windows
    fractions = np.array([float(np.count_nonzero(masks[i][_window(corner, crop)])) / np.prod(crop)
                          for i, corner in windows])
    keep = fractions >= min_fraction
    if not keep.any():
        raise UserError(f"data.min_fg_fraction={min_fraction} discards every training crop (largest foreground "
                        f"fraction {fractions.max():.3f}); lower it")
    return [w for w, k in zip(windows, keep) if k]


def _window(corner, crop):
    return tuple(slice(c, c + s) for c, s in zip(corner, crop))


def _validation_crops(images, masks, crop, limit, seed, weight_map=None):
    """At most ``limit`` grid crops of disk images: ``(x (N, *crop, C) float32, y (N, *crop, 1) float32)`` or None.

    With ``weight_map`` (``mask -> weights``), ``y`` has a second channel: each crop's weights.
    """
    windows = [(i, corner) for i, m in enumerate(masks) for corner in data.tile_grid(m.shape, crop)]
    if not windows:
        return None
    windows = [windows[k] for k in _choose(len(windows), limit, seed)]
    keys = [(i, _window(corner, crop)) for i, corner in windows]
    x = np.stack([images[i][key] for i, key in keys])
    y = np.stack([masks[i][key] for i, key in keys])
    return x, np.stack([_targets(m, None if weight_map is None else weight_map(m)) for m in y])


def record_model(model, run_dir):
    """Write the model summary and parameter count to ``model.txt``, and its picture ``model.png``, in the run folder.

    The picture needs pydot and Graphviz's ``dot`` program (``apt-get install graphviz``); without them a
    line says so and the run goes on.
    """
    from .networks import count_params, summary_text

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

    ``info["ground_truth"]`` (set by :func:`lib.evaluation.evaluate_test_set`) is taken out of ``info``:
    ``metrics.json`` has it at the top, beside ``results`` (empty without ground truth), and the table
    says when no ground truth was given.
    """
    from .training import read_history

    ground_truth = bool(info.pop("ground_truth", True))
    charts = os.path.join(run_dir, "charts")
    reports.plot_history(read_history(os.path.join(run_dir, "history.csv")), charts)
    reports.plot_threshold_sweeps(sweeps, charts)
    summary = reports.summary_row(args.id, args.rid, results, info)
    reports.append_summary(args.job_dir, summary)
    reports.write_json(os.path.join(run_dir, "metrics.json"),
                       {"ground_truth": ground_truth, "results": results, "threshold_sweeps": sweeps,
                        "training": info})
    run_dir = cli.commit_run(args, run_dir)
    charts = os.path.join(run_dir, "charts")
    print()
    print(reports.metrics_table(results) if ground_truth else reports.NO_GROUND_TRUTH)
    for line in reports.run_notes(info):
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
