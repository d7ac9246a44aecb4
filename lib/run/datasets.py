"""A run's data read and checked against its options, before anything is written.

``load_2d`` / ``load_3d`` read and normalise in memory; ``open_2d_streamed`` / ``open_3d_stores``
index files and stores read as training needs them. Every refusal names the file or the option.
"""

import os
import sys

import numpy as np

from ..data import disk, intensity, io, layout, tiling
from ..data.scanning import FG_BLOCK, normalization_affine, scan_pairs, zscore_stats
from ..data.sets import DiskImageSet, ImageSet
from ..errors import UserError, options
from .training_data import _check_split


def check_crop_shape(cfg, shapes, where, fit=True):
    """The crop must be divisible by the network's downsampling, and fit in every image that is cut into crops
    (``fit``: training and validation images; test images are predicted whole or in tiles, padded as needed)."""
    from ..model.networks import check_planar_levels, divisor

    crop = tuple(cfg.data.crop_shape)
    ndim = len(crop)
    check_planar_levels(cfg.model, ndim)
    if fit:
        smallest = tuple(min(s[i] for s in shapes) for i in range(ndim))
        with options(crop="data.crop_shape"):
            tiling.check_crop_fits(smallest, crop, f"the smallest image of {where}")
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
    (one volume each), see ``lib.data.layout.load_pairs_3d``; ``per_image`` normalisation is
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


def mask_values(cfg):
    """What the masks hold, as the readers' ``classes`` take it: ``model.classes``, or label images of objects
    (:data:`lib.data.io.LABELS`) for an instance run (``model.targets`` bc or bcd)."""
    return cfg.model.classes if cfg.model.targets == "mask" else io.LABELS


def note_binary_objects(cfg, masks):
    """Say when an instance run's training masks are binary: their objects are connected components."""
    from ..evaluate.objects import is_binary

    if cfg.model.targets != "mask" and all(m is None or is_binary(np.where(io.ignored(m), 0, m)) for m in masks):
        print(f"Note: model.targets={cfg.model.targets} with binary training masks: each connected component is "
              "an object, so objects that touch stay one; label images (each object its own id) teach the "
              "network to split them")


@options(classes="model.classes")  # the masks' values are checked as they are read
def _load(data_dir, cfg, ndim):
    values, ignore = mask_values(cfg), cfg.data.ignore_value
    sets, training, groups = _read_folders(data_dir, cfg, ndim, lambda pairs, name: (
        layout.load_pairs_2d(pairs, values, ignore) if ndim == 2 else
        layout.load_pairs_3d(pairs, name, values, ignore)))
    note_binary_objects(cfg, sets["train"][1])
    _check_split([x.shape for x in sets["train"][0]], cfg, ndim, "val" in sets)
    check_tile_count(cfg, [x.shape[:ndim] for x in sets["test"][0]])
    counts = {split: [(int(np.count_nonzero(io.foreground(m))), int(np.count_nonzero(io.annotated(m))))
                      for m in masks] for split, (_, masks, _) in sets.items() if masks[0] is not None}
    check_foreground({split: tuple(map(sum, zip(*pixels))) for split, pixels in counts.items() if split != "val"},
                     data_dir)
    train = tuple(sum((list(items[k]) for items in training), []) for k in range(3))
    stats = intensity.fit_normalization(train[0], cfg.data.normalization, cfg.data.clip_percentiles,
                                        (cfg.data.norm_mean, cfg.data.norm_std))
    with options(method="data.normalization"):
        def normalized(images, masks, names, **more):
            return ImageSet([intensity.normalize(x, cfg.data.normalization, stats) for x in images], masks, names,
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
        tiling.per_axis(cfg.inference.overlap, ndim, "overlap")
    if cfg.data.voxel_size is not None and len(cfg.data.voxel_size) != ndim:
        raise UserError(f"data.voxel_size={cfg.data.voxel_size}: the {ndim}D template needs {ndim} sizes "
                        f"({', '.join('zyx'[3 - ndim:])})")
    check_crop_options(cfg)
    loaded = []
    sparse = ndim == 3 and cfg.data.ignore_value is not None  # masks of some slices of a volume
    for role, parent, name in data_folders(data_dir, cfg):
        images, masks, names = read(layout.dataset_pairs(parent, name, masks_optional=role == "test", sparse=sparse),
                                    name)
        folder = os.path.join(parent, name)
        check_crop_shape(cfg, [x.shape[:ndim] for x in images], folder, fit=role != "test")
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
    :func:`lib.predict.inference.predict_tiled` tiles them, before anything is predicted.
    """
    if not (cfg.inference.tiled or cfg.inference.tta or cfg.post.z_filter or cfg.post.oztel):
        return
    tile = tuple(cfg.data.crop_shape)
    for shape in sorted(set(map(tuple, shapes))):
        count = tiling.tile_count(shape, tile, cfg.inference.overlap)
        per_area = count * np.prod(tile) / np.prod(shape)
        if per_area > MAX_TILES_PER_AREA:
            raise UserError(
                f"inference.overlap={cfg.inference.overlap}: the tiled prediction of a {'x'.join(map(str, shape))} "
                f"test image takes {count:,} tiles of {'x'.join(map(str, tile))} (each pixel predicted about "
                f"{per_area:.0f} times; at most {MAX_TILES_PER_AREA} accepted); lower inference.overlap, e.g. 0.5"
            )


def open_2d_streamed(data_dir, cfg):
    """Index and check ``DATA_DIR/{train,test}`` for training streamed from disk; keep no pixels.

    Pairing, counts, sizes, channels and pixel types are checked from the file
    headers (``lib.data.layout.index_pairs_2d``; a zarr / HDF5 volume gives its z slices).
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
    return _open_streamed(data_dir, cfg, 2, layout.index_pairs_2d)


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
    from ..data.volumes import store_volume

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


@options(classes="model.classes")  # the masks' values are checked as they are scanned
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
    classes, ignore = mask_values(cfg), cfg.data.ignore_value
    stats = {}
    if cfg.data.clip_percentiles is not None:  # a first pass for the levels, which the statistics depend on
        train_x, train_y = sources["train"][:2]
        samples = scan_pairs(train_x, train_y, cfg.train.workers, False, None, "train (percentiles)", classes,
                             sample=intensity.CLIP_SAMPLE // len(train_x), ignore=ignore)
        stats["clip"] = intensity.clip_levels([s.sample for s in samples], cfg.data.clip_percentiles)
    scans = {split: scan_pairs(sources[split][0], sources[split][1], cfg.train.workers, method == "zscore",
                               cell if fg and split == "train" else None, split, classes, clip=stats.get("clip"),
                               ignore=ignore)
             for split in sources}
    for split in sources if ignore is not None else ():  # each mask needs annotated pixels
        for mask, scan in zip(sources[split][1], scans[split]):
            if scan.fg is not None and scan.fg[1] == 0:
                raise io.unannotated(mask.path)
    # DATA_DIR/train's own masks must hold both classes (an extra folder may hold background only)
    check_foreground({split: tuple(map(sum, zip(*(scans[split][i].fg for i in items))))
                      for split, items in (("train", main), ("test", range(len(scans["test"]))))
                      if sources[split][1][0] is not None}, data_dir)
    if method == "zscore":
        stats.update(zscore_stats([s.stats for s in scans["train"]]))
    if method == "fixed":
        stats.update(mean=cfg.data.norm_mean, std=cfg.data.norm_std)

    def disk_set(split, **more):
        images, masks, names = sources[split]
        disk_masks = [None if m is None else disk.DiskMask(m, classes, ignore) for m in masks]
        disk_images = [disk.DiskImage(x, *normalization_affine(x, scan.stats, method, stats), clip=stats.get("clip"))
                       for x, scan in zip(images, scans[split])]
        foreground = ([disk.ForegroundIndex(m, scan.counts, cell) for m, scan in zip(disk_masks, scans[split])]
                      if fg and split == "train" else None)
        class_counts = [scan.per_class for scan in scans[split]] if classes > 1 and masks[0] is not None else None
        return DiskImageSet(disk_images, disk_masks, names, foreground, stats or None, class_counts=class_counts,
                            **more)

    validation = disk_set("val") if "val" in sources else None
    return (disk_set("train", groups=groups, validation=validation, fg_counts=[scan.fg for scan in scans["train"]]),
            disk_set("test"))
