"""The steps of ``templates/predict.py``: check model, input, options and output, then predict block-wise.

The top layer: it knows option names, run folders and :class:`UserError`;
:mod:`lib.data.volumes`, :mod:`lib.predict.blockwise` and :mod:`lib.predict.writers` do the work. :func:`plan` makes
every check before anything is written; :func:`run` writes.
"""

import dataclasses
import json
import os
import time
from dataclasses import dataclass

from .. import config as config_lib
from ..data import io, volumes
from ..errors import UserError, options
from ..predict import blockwise, writers
from . import devices, folders, paths

NORMALIZATION_FILE = "normalization.json"  # a run's training mean and std (zscore)


@dataclass
class Plan:
    args: object
    job: blockwise.BlockJob
    description: dict
    kind: str         # output kind: zarr, tiff, folder
    store: str        # the zarr store written (OUTPUT itself, or a staging store beside it)
    state: str        # new, resume (an unfinished store of the same job), done (OUTPUT holds this job, complete)
    replace: bool = False  # OUTPUT holds another job of ours (--overwrite): swapped for the new one at the end
    objects: dict = None   # post.instances: {"min_size", "voxel_size", "unit"} of the objects and their table
    client: object = None
    cluster: object = None


def resolve_model(model):
    """``(.keras path, config dict or None, run folder or None)`` for ``--model``; UserError otherwise."""
    if os.path.isdir(model):
        config_path = os.path.join(model, "config.json")
        weights = folders.run_checkpoint(model)
        if weights is not None and os.path.isfile(config_path):
            return weights, config_lib.load_json(config_path), model
        raise UserError(f"--model {model}: a folder but not a run folder (expected config.json and "
                        "checkpoints/best.keras in it)")
    if os.path.isfile(model) and model.endswith(".keras"):
        return model, None, None
    raise UserError(f"--model {model}: " + ("not found" if not os.path.exists(model) else "neither a run folder nor "
                                            "a .keras file") + "; expected a run folder JOB_DIR/ID_RID or a .keras file")


def plan(args):
    """Check everything (model, options, input, output, scheduler) and decide what to do; write nothing."""
    weights, run_config, run_dir = resolve_model(args.model)
    check_paths(args, run_dir or weights)
    # A paper script's own sections (e.g. xiao) do not change how its network predicts.
    cfg = config_lib.from_dict(run_config or {}, source=f"--model {args.model} config.json",
                               ignore_unknown_sections=True)
    config_lib.apply_overrides(cfg, args.overrides)
    cfg.validate()
    if any(o.replace(" ", "").lower() == "post.oztel=true" for o in args.overrides):
        raise UserError("--set post.oztel=true: Oztel post-processing works on whole objects and cannot be done "
                        "block by block; predict.py writes probabilities and masks (thresholded, z-filtered)")
    volume = volumes.open_volume(args.input)
    normalization = _normalization(cfg, run_dir, args.model, volume)
    # The run's train.precision (or --set's); a bare .keras file predicts in the precision it was saved with.
    precision = cfg.train.precision if run_config is not None or _sets(args.overrides, "train.precision") else None
    if precision is not None:  # auto: what this machine runs fastest (lib.run.devices.run_precision)
        precision = devices.run_precision(precision, len(cfg.data.crop_shape), args.gpu)
    devices.check_backend_gpus(args.gpu)
    try:
        model, predict = blockwise.load_predictor(os.path.abspath(weights), precision)
    except Exception as exc:
        raise UserError(f"--model {args.model}: cannot read {weights} as a Keras model ({exc})") from None
    model_ndim, channels = len(model.input_shape) - 2, model.input_shape[-1]
    classes = int(model.outputs[0].shape[-1])  # a multi-class model (softmax) has one output channel per class
    targets = model_targets(cfg, run_config, model, args.model)
    tile = tuple(cfg.data.crop_shape)
    if len(tile) != model_ndim:
        raise UserError(f"data.crop_shape={list(tile)}: the model is {model_ndim}D; expected {model_ndim} tile sizes")
    _check_tile(predict, tile, channels)
    if channels > 1:  # an array (A, B, C) is a 2D image with channels when C is the model's channel count
        volume = volumes.open_volume(args.input, channels)
    if volume.ndim < model_ndim:
        raise UserError(f"INPUT {args.input}: a 2D image ({'x'.join(map(str, volume.shape[:-1]))}) but the model is "
                        "3D; expected a volume")
    if volume.shape[-1] != channels:
        raise UserError(f"INPUT {args.input}: {volume.shape[-1]} channels, but the model takes {channels}")
    tile, overlap, batch_size = fitted_tiles(cfg, volume.shape[:-1][-model_ndim:])
    if tile != tuple(cfg.data.crop_shape):
        _check_tile(predict, tile, channels, f"the tile {list(tile)} fitted to the input (inference.tile_shape)")
    if cfg.inference.tta and tile[-1] != tile[-2]:  # a quarter turn transposes a tile not square in y-x
        turned = tile[:-2] + (tile[-1], tile[-2])
        _check_tile(predict, turned, channels, f"inference.tta=true: the tile {list(tile)} turned by 90 degrees "
                                               f"({list(turned)})")
    block = block_shape(cfg, volume.shape[:-1], model_ndim, _sets(args.overrides, "inference.block_shape"))
    z_size = cfg.post.z_filter_size if cfg.post.z_filter and volume.ndim == 3 else 0
    kind = writers.output_kind(args.output)
    objects = _objects(cfg, args, kind, classes, volume, targets)
    job = blockwise.BlockJob(volume, normalization, os.path.abspath(weights), tile, block, None,
                             overlap, cfg.inference.window, batch_size,
                             cfg.inference.tta, z_size, cfg.inference.threshold, cfg.inference.prob_dtype, classes,
                             targets, precision)
    description = describe(job, args.input)
    if objects is not None:
        description.update(instances=True, **{k: v for k, v in objects.items() if k not in ("voxel_size", "unit")})
    if kind == "zarr":
        description["overview_side"] = cfg.inference.overview_side
    store, state, replace = _output_state(args, kind, description)
    job = dataclasses.replace(job, store=os.path.abspath(store))
    result = Plan(args, job, description, kind, store, state, replace, objects)
    if args.scheduler and state != "done":
        try:
            result.client, result.cluster = blockwise.connect(args.scheduler, args.threads)
        except ValueError as exc:
            raise UserError(f"--scheduler {args.scheduler}: {str(exc).split(': ', 1)[-1]}") from None
        except (OSError, TimeoutError) as exc:
            raise UserError(f"--scheduler {args.scheduler}: cannot reach the Dask scheduler ({exc})") from None
    if cfg.post.oztel:
        print("note: post.oztel is not applied (object-level post-processing needs whole objects, not blocks)")
    return result


# A 2D model's default block: whole slices in y and x (no tile is then predicted for two blocks), as many as
# fit in this many voxels, the size of the default inference.block_shape (32 x 1024 x 1024): memory as with it.
SLICE_BLOCK_VOXELS = 32 * 1024 * 1024


def block_shape(cfg, shape, model_ndim, overridden=False):
    """The spatial block of an input of spatial ``shape`` (2 or 3 sizes) predicted by a ``model_ndim`` model.

    ``inference.block_shape`` (its last 2 sizes for a 2D input), unless the model is 2D and the block shape
    neither ``overridden`` (given with ``--set``) nor changed from its default: then whole slices in y and x,
    at most ``inference.block_shape``'s z of them and at most :data:`SLICE_BLOCK_VOXELS` voxels, so that no tile
    straddles two blocks. A slice larger than :data:`SLICE_BLOCK_VOXELS` keeps ``inference.block_shape``.
    """
    block = tuple(cfg.inference.block_shape[3 - len(shape):])
    default = list(config_lib.InferenceConfig().block_shape)
    plane = shape[-2] * shape[-1]
    if model_ndim != 2 or overridden or list(cfg.inference.block_shape) != default or plane > SLICE_BLOCK_VOXELS:
        return block
    if len(shape) == 2:
        return tuple(shape)
    return (max(1, min(block[0], SLICE_BLOCK_VOXELS // plane)),) + tuple(shape[1:])


def _sets(overrides, key):
    """True when one of the ``--set`` ``overrides`` sets ``key``."""
    return any(o.split("=", 1)[0].strip() == key for o in overrides)


def fitted_tiles(cfg, image_shape):
    """``(tile, per-axis overlap, tiles per batch)`` for images (a 2D model: slices) of ``image_shape``.

    Exactly those of the run's ``tiled`` variant (``lib.evaluate.evaluation``): the largest tile
    ``evaluation.inference_tile``, fitted to the whole image or slice (not to a block,
    so that blocks are cut from the whole image's tile grid) by ``inference.fit_tile``.
    """
    from ..evaluate.evaluation import inference_divisor, inference_tile
    from ..predict.inference import fit_tile, tile_batch

    crop = tuple(cfg.data.crop_shape)
    largest = inference_tile(cfg, crop)
    if len(largest) != len(crop):
        raise UserError(f"inference.tile_shape={list(largest)}: expected {len(crop)} sizes like "
                        f"data.crop_shape={list(crop)}")
    with options(overlap="inference.overlap", tile=f"inference.tile_shape={list(largest)}"):
        tile, overlap = fit_tile(image_shape, largest, inference_divisor(cfg, crop), cfg.inference.overlap)
    return tile, overlap, tile_batch(cfg.inference.batch_size, crop, tile)


def _check_tile(predict, tile, channels, what=None):
    import numpy as np

    try:
        predict(np.zeros((1,) + tile + (channels,), np.float32))
    except Exception as exc:
        raise UserError(f"{what or f'data.crop_shape={list(tile)}'}: the model cannot predict tiles of this shape "
                        f"({type(exc).__name__}); use the run's tile shape or multiples of its downsampling") from None


def _normalization(cfg, run_dir, model, volume):
    method = cfg.data.normalization
    if method == "dtype_max" and volume.dtype.kind not in "ui":
        raise UserError(f"data.normalization=dtype_max needs integer pixels, but INPUT is {volume.dtype}")
    record = {}
    if method == "zscore" or cfg.data.clip_percentiles is not None:
        what = ("the training mean and std" if method == "zscore" else
                f"the clipping levels of data.clip_percentiles={cfg.data.clip_percentiles}")
        path = os.path.join(run_dir, NORMALIZATION_FILE) if run_dir else None
        if path is None or not os.path.isfile(path):
            raise UserError(f"--model {model}: data.normalization={method} needs {what}, which "
                            f"{'a .keras file does not hold' if path is None else f'this run lacks ({path})'}; "
                            "give a run folder that records them")
        with open(path) as fh:
            record = json.load(fh)
        if cfg.data.clip_percentiles is not None and "clip" not in record:
            raise UserError(f"--model {model}: {path} lacks {what}; give the run folder trained with them")
    clip = record.get("clip")
    if method == "dtype_max":
        return blockwise.Normalization("dtype_max", clip=clip)
    if method == "zscore":
        return blockwise.Normalization("zscore", float(record["mean"]), float(record["std"]), clip)
    if method == "fixed":
        return blockwise.Normalization("fixed", float(record.get("mean", cfg.data.norm_mean)),
                                       float(record.get("std", cfg.data.norm_std)), clip)
    return blockwise.Normalization("per_image", clip=clip)  # statistics filled in by the scan of run()


def describe(job, input_spec):
    """The job as JSON-able values: what makes two runs write the same output."""
    stat = os.stat(job.model_path)
    clip = {} if job.normalization.clip is None else {"clip": list(job.normalization.clip)}
    return {
        "input": os.path.abspath(input_spec) if "://" not in input_spec else input_spec,
        "input_shape": list(job.volume.shape), "input_dtype": str(job.volume.dtype),
        "model": job.model_path, "model_bytes": stat.st_size, "model_mtime": int(stat.st_mtime),
        "normalization": job.normalization.method if job.normalization.method in ("per_image", "dtype_max") else
        [job.normalization.method, job.normalization.offset, job.normalization.scale],
        **clip,
        "tile": list(job.tile), "block": list(job.block), "overlap": job.overlap, "window": job.window,
        "tta": job.tta, "z_filter_size": job.z_filter_size, "threshold": job.threshold,
        "prob_dtype": job.prob_dtype, "classes": job.classes, "layout": writers.LAYOUT,
        **({"targets": job.targets} if job.targets != "mask" else {}),
    }


def model_targets(cfg, run_config, model, spec):
    """What the model predicts: ``model.targets`` of its run, or for a bare ``.keras`` file ``bc`` / ``bcd`` when
    its output is 2 / 3 sigmoid channels (instance channels), else ``mask``."""
    channels = int(model.outputs[0].shape[-1])
    if run_config is not None:
        targets = cfg.model.targets
    else:
        layer = model.get_layer("output") if "output" in [layer.name for layer in model.layers] else None
        sigmoid = getattr(getattr(layer, "activation", None), "__name__", "") == "sigmoid"
        targets = {2: "bc", 3: "bcd"}.get(channels, "mask") if sigmoid else "mask"
    expected = {"bc": 2, "bcd": 3}.get(targets)
    if expected is not None and channels != expected:
        raise UserError(f"--model {spec}: model.targets={targets} needs {expected} output channels, the model has "
                        f"{channels}")
    return targets


def _objects(cfg, args, kind, classes, volume, targets="mask"):
    """The objects asked for (``post.instances``, and always those of an instance model: ``targets`` bc or bcd):
    ``{min_size, voxel_size, unit}`` (and the seed thresholds of instance channels), or None; UserError where
    they cannot be made. Sizes are in ``data.voxel_size`` given with ``--set``, else in the input's voxel size."""
    if not cfg.post.instances and targets == "mask":
        return None
    if classes > 1 and targets == "mask":
        raise UserError(f"post.instances=true: predict.py writes the objects of a binary mask; this model has "
                        f"model.classes={classes}")
    if kind == "tiff":
        raise UserError(f"{'post.instances=true' if targets == 'mask' else f'model.targets={targets}'}: OUTPUT "
                        f"{args.output} is a TIFF file; the objects (a label image and their tables) need an "
                        "OUT.zarr or a folder")
    ndim = volume.ndim
    size, unit = volume.voxel_size, volume.unit
    if _sets(args.overrides, "data.voxel_size") or _sets(args.overrides, "data.voxel_unit"):
        size, unit = cfg.data.voxel_size, cfg.data.voxel_unit
        if size is not None and len(size) != ndim:
            raise UserError(f"data.voxel_size={size}: INPUT {args.input} has {ndim} spatial axes; expected {ndim} "
                            "sizes")
    post = cfg.post
    seeds = {} if targets == "mask" else {"contour_threshold": post.contour_threshold,
                                           "distance_threshold": post.distance_threshold,
                                           "seed_height": post.seed_height}
    return {"min_size": post.min_size, **seeds, "voxel_size": None if size is None else [float(v) for v in size],
            "unit": unit or "pixel"}


def check_paths(args, model):
    """Refuse an OUTPUT that is, lies inside or contains INPUT or MODEL (real paths); before anything is read."""
    written = [args.output]
    if writers.output_kind(args.output) == "tiff":
        written.append(writers.prob_tiff_path(args.output))
    read = [("INPUT", volumes.input_path(args.input)), ("MODEL", model)]
    for path in written:
        paths.check_apart(("OUTPUT", path), read)


def _output_state(args, kind, description):
    """``(store, state, replace)``: the store to predict into, ``new``, ``resume`` or ``done``, and whether
    OUTPUT, which holds another job of predict.py, is replaced at the end (``--overwrite``).

    Only what predict.py wrote (its job description inside) is ever resumed or replaced; anything else
    at OUTPUT, or at the staging store beside it, is refused, with or without ``--overwrite``.
    """
    output = args.output.rstrip("/")
    staging = writers.staging_store(output)
    targets = [output] + ([writers.prob_tiff_path(output)] if kind == "tiff" else [])
    replace = False
    for target in targets:
        if not os.path.lexists(target) or (os.path.isdir(target) and not os.listdir(target)):
            continue  # nothing there, or an empty folder
        previous = writers.read_job(target)
        if previous is None:
            raise UserError(f"OUTPUT {target}: already exists and is not an output of predict.py ({_found(target)}); "
                            "it is never written in or replaced, even with --overwrite; choose another OUTPUT")
        if previous == description:
            if target == output and kind == "zarr" and not writers.store_complete(output):
                return output, "resume", False
            continue
        if not args.overwrite:
            changed = [k for k in description if previous.get(k) != description[k]]
            raise UserError(f"OUTPUT {target}: holds another job of predict.py (differs in {', '.join(changed)}); "
                            "use --overwrite to replace it, or choose another OUTPUT")
        replace = True
    if all(os.path.lexists(t) for t in targets) and not replace and not (os.path.isdir(output) and
                                                                         not os.listdir(output)):
        return (output if kind == "zarr" else staging), "done", False
    if os.path.lexists(staging):  # a replacement or a TIFF export that a kill interrupted
        previous = writers.read_job(staging)
        if previous is None:
            raise UserError(f"OUTPUT {args.output}: {staging} beside it is not predict.py's staging store "
                            f"({_found(staging)}); it is never replaced; move it away or choose another OUTPUT")
        if previous == description:
            return staging, "resume", replace
        if not args.overwrite:
            changed = [k for k in description if previous.get(k) != description[k]]
            raise UserError(f"OUTPUT {args.output}: {staging}, an unfinished prediction into it, holds another job "
                            f"(differs in {', '.join(changed)}); use --overwrite to replace it, or choose another "
                            "OUTPUT")
    parent = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
        raise UserError(f"OUTPUT {args.output}: cannot write in {parent} (" +
                        ("no such folder)" if not os.path.isdir(parent) else "no write permission)"))
    return (staging if replace or kind != "zarr" else output), "new", replace


def _found(path):
    """What is at ``path``, in a few words: ``a file of 12 bytes``, ``a folder holding a.txt, b/``."""
    if not os.path.isdir(path):
        return f"a file of {os.path.getsize(path):,} bytes"
    names = sorted(n + ("/" if os.path.isdir(os.path.join(path, n)) else "") for n in os.listdir(path))
    return "a folder holding " + ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")


def run(plan):
    """Create or reopen the store, scan intensities if needed, predict the pending blocks, then put the output
    in place: a new zarr OUTPUT is the store itself; a replaced one is swapped for the store beside it only
    now; TIFF outputs are exported from the staging store, which is then removed."""
    args, job = plan.args, plan.job
    if plan.state == "done":
        print(f"{args.output} is complete (the same job ran before); nothing to do")
        return
    if plan.replace:
        print(f"{args.output} holds another job of predict.py: it is replaced when this one is complete "
              f"({job.store} until then)")
    run_tasks = blockwise.run_tasks_on(plan.client) if plan.client else blockwise.run_tasks_in_process
    try:
        spatial = job.volume.shape[:-1]
        grid, blocks = blockwise.block_grid(spatial, job.block)
        if plan.state == "new":
            if job.store == writers.staging_store(args.output):
                io.remove_tree(job.store)  # a staging store of another job of ours (checked by plan)
            writers.create_store(job.store, spatial, blockwise.output_chunks(job.block, spatial), grid,
                                 job.prob_dtype, plan.description, job.volume.voxel_size, job.volume.unit,
                                 job.classes, instances=plan.objects is not None)
        else:
            print(f"Resuming the unfinished prediction in {job.store}")
        job = _with_statistics(job, blocks, run_tasks)
        total, skipped, seconds = blockwise.run_job(job, run_tasks)
        if plan.objects is not None:
            _find_objects(plan, job, blocks, run_tasks)
        if plan.description.get("overview_side"):  # a viewer's overview; on the Dask cluster when there is one
            start = time.perf_counter()
            levels = writers.add_pyramid(job.store, plan.description["overview_side"])
            if levels:
                print(f"Pyramid: {levels} levels halved in size (inference.overview_side="
                      f"{plan.description['overview_side']}) in {time.perf_counter() - start:.1f} s")
    finally:
        if plan.client is not None:
            plan.client.close()
            plan.cluster is not None and plan.cluster.close()
    _put_in_place(plan, job)
    print(f"Predicted {total - skipped} blocks ({skipped} already done) in {seconds:.1f} s")
    outputs = {"zarr": [args.output + " (probabilities; the mask in labels/mask" +
                        (", the objects in labels/instances and objects.csv)" if plan.objects else ")")],
               "tiff": [args.output, writers.prob_tiff_path(args.output)],
               "folder": [os.path.join(args.output, "prob"), os.path.join(args.output, "mask")]}[plan.kind]
    print("Outputs: " + ", ".join(outputs))


def _find_objects(plan, job, blocks, run_tasks):
    """Label the mask's objects block-wise (ids unique across block borders) and measure them, once per store."""
    import zarr

    from ..evaluate import objects
    from ..predict import instances

    root = zarr.open_group(job.store, mode="r+")
    record = dict(root.attrs)[writers.JOB_KEY]
    if record.get(writers.INSTANCES_DONE):
        return
    start = time.perf_counter()
    out, found_by = (job.store, f"{writers.INSTANCES_IMAGE}/0"), plan.objects
    if job.targets == "mask":
        found = instances.label_store((job.store, f"{writers.MASK_IMAGE}/0"), out, job.block, run_tasks,
                                      found_by["min_size"])
        prob = (job.store, writers.PROB)
    else:  # seeds found and grown block by block, each block read with a halo of half a tile (z: 4 for a 2D model)
        halves = (4,) * (len(job.block) - len(job.tile)) + tuple(t // 2 for t in job.tile)
        halo = tuple(min(t, n) for t, n in zip(halves, job.volume.shape[:-1]))
        found = instances.objects_of_channels(
            (job.store, writers.PROB), out, job.block, halo, run_tasks, job.threshold, found_by["contour_threshold"],
            found_by["distance_threshold"], found_by["seed_height"], found_by["min_size"])
        prob = (job.store, writers.PROB, 0)
    size, unit = plan.objects["voxel_size"], plan.objects["unit"]
    rows = objects.store_table(out, prob, blocks, run_tasks, size, unit)
    spatial = job.volume.shape[:-1]
    io.write_text(os.path.join(job.store, writers.TABLES[0]),
                  io.rows_to_csv(rows, objects.columns(len(spatial), probability=True)))
    io.write_text(os.path.join(job.store, writers.TABLES[1]),
                  io.rows_to_csv([objects.summary(rows, spatial, size, unit)]))
    root.attrs[writers.JOB_KEY] = {**record, writers.INSTANCES_DONE: True}
    print(f"Objects: {found} (post.min_size={plan.objects['min_size']}), labelled and measured in "
          f"{time.perf_counter() - start:.1f} s")


def _put_in_place(plan, job):
    """The complete store becomes OUTPUT: swapped in (zarr), or exported then removed (TIFF, folder)."""

    output = plan.args.output.rstrip("/")
    if plan.kind == "zarr":  # a store predicted beside OUTPUT (a replacement, or one whose swap a kill cut short)
        if os.path.abspath(job.store) != os.path.abspath(output):
            io.swap_into(job.store, output)
        return
    if plan.kind == "tiff":  # each file replaced atomically
        writers.export_tiff(job.store, output, plan.description, job.prob_dtype)
    elif plan.replace:  # a folder of slices: exported beside the old one, then swapped
        fresh = os.path.join(os.path.dirname(os.path.abspath(output)), f".{os.path.basename(output)}.replacing")
        if os.path.lexists(fresh):
            io.remove_tree(fresh)
        writers.export_slices(job.store, fresh, plan.description, job.prob_dtype)
        io.swap_into(fresh, output)
    else:
        writers.export_slices(job.store, output, plan.description, job.prob_dtype)
    io.remove_tree(job.store)


def _with_statistics(job, blocks, run_tasks):
    """``job`` with its per_image minima and maxima: from the store when a previous run scanned, else scanned now."""
    import dataclasses

    import zarr

    if job.normalization.method != "per_image":
        return job
    root = zarr.open_group(job.store, mode="r+")
    record = dict(root.attrs)[writers.JOB_KEY]
    if "ranges" not in record:
        lows, highs = blockwise.intensity_ranges(job.volume, blocks, run_tasks)
        record = {**record, "ranges": {"lows": lows, "highs": highs}}
        root.attrs[writers.JOB_KEY] = record
    ranges = record["ranges"]
    # A 2D model was trained on 2D images, each normalised by itself: per slice of a volume (one image: its own).
    per_slice = len(job.tile) == 2 and job.volume.ndim == 3
    return dataclasses.replace(job, normalization=blockwise.Normalization.from_ranges(
        ranges["lows"], ranges["highs"], per_slice, job.normalization.clip, job.volume.dtype))
