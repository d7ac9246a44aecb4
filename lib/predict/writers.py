"""The outputs of block-wise prediction: zarr stores of OME-Zarr images, and their TIFF exports.

A zarr v3 store is laid out as OME-Zarr 0.5 lays out a segmentation of an image: the probabilities
(uint8 0-255 or float16) are the image at its root (``OUT.zarr/0``), and the mask (uint8) is its label
image ``OUT.zarr/labels/mask`` (``image-label`` metadata), so that a viewer opening ``OUT.zarr`` shows
both. Each image is a pyramid (:func:`add_pyramid`): level 0 at full resolution, then levels halved until
every side of the smallest is at most the job's ``overview_side``, so that a viewer shows an overview without
reading the full resolution. The OME-Zarr metadata is written by ome-zarr-py, the OME's reference
implementation. The store records the job that wrote it (:data:`JOB_KEY`), so that a rerun resumes it and a
foreign folder is never taken for one.
"""

import json
import os
import shutil

import numpy as np
import tifffile

from ..data import io
from ..data.volumes import ZARR_SUFFIX

JOB_KEY = "em_segmentation"  # root attribute of an output store: the job and its normalisation statistics
# The layout of the outputs, recorded in the job: 3 is the probabilities at the root and the mask under labels/,
# each a pyramid when the job's overview_side asks for one; 2 had the full resolution only; 1 (before 2026-12)
# held two images prob/ and mask/ side by side.
# A rerun on an output of another layout is another job (replaced with --overwrite, never resumed).
LAYOUT = 3
PROB = "0"                # the probabilities, in an output store
MASK_IMAGE = "labels/mask"  # the mask's label image; its array is MASK_IMAGE/0
INSTANCES_IMAGE = "labels/instances"  # the objects' label image (post.instances), INSTANCES_IMAGE/0
TABLES = ("objects.csv", "objects_summary.csv")  # the table of objects and its summary, in the store's folder
INSTANCES_DONE = "instances_done"  # in the job record: the objects are labelled and measured
PYRAMID_DONE = "pyramid_done"  # in the job record: the downsampled levels are written


# --------------------------------------------------------------------------- outputs

def output_kind(path):
    """``'zarr'``, ``'tiff'`` (one BigTIFF file) or ``'folder'`` (a folder of TIFF slices), from the path."""
    if path.rstrip("/").endswith(ZARR_SUFFIX):
        return "zarr"
    if path.lower().endswith(io.TIFF_EXTENSIONS):
        return "tiff"
    return "folder"


def prob_tiff_path(path):
    """Where a TIFF output keeps the probabilities: ``seg.tif`` -> ``seg_prob.tif``."""
    stem, ext = os.path.splitext(path)
    return f"{stem}_prob{ext}"


def staging_store(path):
    """The zarr store that TIFF outputs are predicted into before their export: hidden, beside ``path``."""
    path = path.rstrip("/")
    return os.path.join(os.path.dirname(os.path.abspath(path)), f".{os.path.basename(path)}.partial.zarr")


def read_job(path):
    """The job description stored with an output (a store, a TIFF or a folder), or None when there is none."""
    try:
        kind = output_kind(path)
        if kind == "zarr":
            import zarr

            return dict(zarr.open_group(path, mode="r").attrs).get(JOB_KEY, {}).get("job")
        if kind == "tiff":
            with tifffile.TiffFile(path) as tif:
                return json.loads(tif.pages[0].description).get(JOB_KEY, {}).get("job")
        with open(os.path.join(path, "job.json")) as fh:
            return json.load(fh)["job"]
    except Exception:  # anything unreadable is not one of our outputs
        return None


def store_complete(path):
    """True when every block of the output store at ``path`` is flagged done, and its objects too when asked."""
    import zarr

    root = zarr.open_group(path, mode="r")
    record = dict(root.attrs)[JOB_KEY]
    if record["job"].get("instances") and not record.get(INSTANCES_DONE):
        return False
    if record["job"].get("overview_side") and not record.get(PYRAMID_DONE):
        return False
    return bool(np.all(root["blocks_done"][...]))


def prob_array(root):
    """The probabilities of an output store's root group (:func:`create_store`)."""
    return root[PROB]


def mask_array(root):
    """The mask (class ids for a multi-class job) of an output store's root group (:func:`create_store`)."""
    return root[MASK_IMAGE]["0"]


def instances_array(root):
    """The objects (uint32 label image) of an output store made with ``instances=True``."""
    return root[INSTANCES_IMAGE]["0"]


def create_store(path, shape, chunks, grid, prob_dtype, job, voxel_size=None, unit=None, classes=1,
                 instances=False):
    """Create the output store at a new ``path``: the OME-Zarr image of the probabilities with the mask as
    its label image, and ``blocks_done``.

    A multi-class model's (``classes`` K > 1): the probabilities have a channel axis first, ``(K, *shape)``,
    one channel per class, and the mask is the label image of class ids ``0 .. K-1``.

    Parameters
    ----------
    path : str, a folder ending in ``.zarr`` that does not exist, or an empty one
    shape, chunks : tuple of int, spatial (2 or 3 values)
    grid : tuple of int, the number of blocks per axis
    prob_dtype : {'uint8', 'float16'}
    job : dict, JSON-serialisable description of the job, kept in the root attributes
    voxel_size : tuple of float per axis, optional; ``unit`` its unit
    instances : bool, also a label image ``labels/instances`` for the objects (uint32)
    """
    import zarr
    from ome_zarr.writer import add_metadata, write_label_metadata

    if prob_dtype not in ("uint8", "float16"):
        raise ValueError(f"prob_dtype: expected 'uint8' or 'float16', got {prob_dtype!r}")
    if os.path.lexists(path) and not (os.path.isdir(path) and not os.listdir(path)):
        raise FileExistsError(f"{path}: the output store must be new (or an empty folder)")  # never replaces anything
    names = "zyx"[3 - len(shape):]
    root = zarr.open_group(path, mode="w", zarr_format=3)
    channels = int(classes > 1)
    axes = ("c" if channels else "") + names
    root.create_array(PROB, shape=((classes,) if channels else ()) + tuple(shape),
                      chunks=((1,) if channels else ()) + tuple(chunks), dtype=prob_dtype, fill_value=0,
                      dimension_names=tuple(axes))
    _write_multiscales(root, "prob", axes, [(1.0,) * channels + tuple(voxel_size or (1.0,) * len(shape))], unit)
    images = [(MASK_IMAGE, "uint8")] + ([(INSTANCES_IMAGE, "uint32")] if instances else [])
    labels = root.create_group("labels")
    for name, dtype in images:
        image = root.create_group(name)
        image.create_array("0", shape=tuple(shape), chunks=tuple(chunks), dtype=dtype, fill_value=0,
                           dimension_names=tuple(names))
        _write_multiscales(image, name.split("/")[1], names, [tuple(voxel_size or (1.0,) * len(shape))], unit)
        write_label_metadata(labels, name.split("/")[1], fmt=_ome_format(), source={"image": "../../"})
    add_metadata(labels, {"version": _ome_format().version})  # ome-zarr-py 0.18 leaves it out of labels/
    root.create_array("blocks_done", shape=grid, chunks=(1,) * len(grid), dtype="uint8", fill_value=0)
    root.attrs[JOB_KEY] = {"job": job}
    return root


def _write_multiscales(group, name, axes, scales, unit=None):
    """The OME-Zarr 0.5 ``multiscales`` of ``group``: its levels ``0, 1, ...`` with their ``scales`` (one value per
    axis of ``axes``, e.g. ``'czyx'``); ``unit`` that of the space axes."""
    from ome_zarr.writer import write_multiscales_metadata

    ome_axes = [{"name": a, "type": "channel"} if a == "c" else
                {"name": a, "type": "space", **({"unit": unit} if unit else {})} for a in axes]
    datasets = [{"path": str(k), "coordinateTransformations": [{"type": "scale", "scale": [float(v) for v in scale]}]}
                for k, scale in enumerate(scales)]
    write_multiscales_metadata(group, datasets, fmt=_ome_format(), axes=ome_axes, name=name)


def _ome_format():
    """ome-zarr-py's OME-Zarr 0.5 (zarr v3), the format of every output store."""
    from ome_zarr.format import FormatV05

    return FormatV05()


def pyramid_steps(shape, scale, overview):
    """The factors (1 or 2 per axis) from each level of a pyramid to the next, for a level 0 of spatial ``shape``
    with voxel size ``scale``: halve the axes longer than one voxel whose voxels are at most twice the finest
    (an anisotropic volume is halved in y and x until its voxels are about cubic), until every side is at
    most ``overview`` (at least 1)."""
    if overview < 1:
        raise ValueError(f"overview: expected at least 1, got {overview}")
    shape, scale, steps = list(shape), [float(s) for s in scale], []
    while max(shape) > overview:
        finest = min(s for s, n in zip(scale, shape) if n > 1)
        step = tuple(2 if n > 1 and s <= 2 * finest else 1 for n, s in zip(shape, scale))  # the finest always
        steps.append(step)
        shape = [n // f for n, f in zip(shape, step)]
        scale = [s * f for s, f in zip(scale, step)]
    return steps


def add_pyramid(path, overview):
    """Add the downsampled levels ``1, 2, ...`` to each image of the output store at ``path``, whose level 0 is
    complete: the mean of 2 x 2 (x 2) voxels for the probabilities, every second voxel (nearest) for the mask
    and the objects, whose ids must stay ids. Each level is computed from the stored one above it, chunk by
    chunk with Dask (memory: a few chunks, on the Dask cluster when one is connected), and has the chunks of
    level 0 (no larger than itself). Written once: a rerun after a kill writes the levels again.

    Returns the number of levels added.
    """
    import dask.array as da
    import zarr
    from ome_zarr import dask_utils

    root = zarr.open_group(path, mode="r+")
    record = dict(root.attrs)[JOB_KEY]
    if record.get(PYRAMID_DONE):
        return 0
    labels = dict(root["labels"].attrs)["ome"]["labels"]
    added = 0
    for group, nearest in [(root, False)] + [(root["labels"][name], True) for name in labels]:
        multiscale = dict(group.attrs)["ome"]["multiscales"][0]
        axes = [a["name"] for a in multiscale["axes"]]
        space = [a["type"] == "space" for a in multiscale["axes"]]
        scale = multiscale["datasets"][0]["coordinateTransformations"][0]["scale"]
        base = group["0"]
        steps = pyramid_steps([n for n, s in zip(base.shape, space) if s], [v for v, s in zip(scale, space) if s],
                              overview)
        scales, above = [scale], base
        for k, step in enumerate(steps, 1):
            it = iter(step)
            factors = tuple(next(it) if s else 1 for s in space)
            shape = tuple(n // f for n, f in zip(above.shape, factors))
            source = da.from_zarr(above)[tuple(slice(0, n * f) for n, f in zip(shape, factors))]
            if nearest:
                level = dask_utils.downscale_nearest(source, factors)
            else:
                level = dask_utils.local_mean(source, shape)
            chunks = tuple(min(c, n) for c, n in zip(base.chunks, shape))
            array = group.create_array(str(k), shape=shape, chunks=chunks, dtype=base.dtype, fill_value=0,
                                       dimension_names=tuple(axes), overwrite=True)
            da.store(level.astype(base.dtype).rechunk(chunks), array, lock=False)
            scales.append([v * f for v, f in zip(scales[-1], factors)])
            above = array
        unit = next((a.get("unit") for a in multiscale["axes"] if a.get("unit")), None)
        _write_multiscales(group, multiscale.get("name"), axes, scales, unit)
        added = max(added, len(steps))
    root.attrs[JOB_KEY] = {**record, PYRAMID_DONE: True}
    return added


def export_tiff(store, path, job, prob_dtype):
    """Write the store's mask (0/255) to ``path`` and probabilities to ``prob_tiff_path(path)``.

    BigTIFF, written slice by slice (memory: one slice), atomically; probabilities
    are uint8 (0-255) or float32 (float16 TIFFs open in few viewers). The job
    description goes into the first page's description, so a rerun recognises it.
    A multi-class job's (``job["classes"]`` K > 1) mask holds the class ids, and its
    probabilities are K pages per slice (slice by slice, class 0 first).
    """
    import zarr

    root = zarr.open_group(store, mode="r")
    description = json.dumps({JOB_KEY: {"job": job}})
    classes = job.get("classes", 1)
    for name, target in (("prob", prob_tiff_path(path)), ("mask", path)):
        array = prob_array(root) if name == "prob" else mask_array(root)
        channels = name == "prob" and classes > 1
        slices = [array] if array.ndim == (3 if channels else 2) else _slices(array, channels)

        def write(tmp, slices=slices, name=name):
            with tifffile.TiffWriter(tmp, bigtiff=True) as tif:
                for i, s in enumerate(slices):
                    tif.write(_tiff_values(name, np.asarray(s), prob_dtype, mask_classes(job)), compression="zlib",
                              description=description if i == 0 else None, metadata=None)

        io.write_atomic(target, write)


def export_slices(store, folder, job, prob_dtype):
    """Write the store as ``folder/prob/slice_00000.tif ...`` and ``folder/mask/...`` (0/255), one file per z."""
    import zarr

    root = zarr.open_group(store, mode="r")
    os.makedirs(folder, exist_ok=True)
    classes = job.get("classes", 1)
    for name in ("prob", "mask"):
        array = prob_array(root) if name == "prob" else mask_array(root)
        channels = name == "prob" and classes > 1  # (K, [Z,] Y, X): each file holds the K classes of its slice
        os.makedirs(os.path.join(folder, name), exist_ok=True)
        flat = array.ndim == (3 if channels else 2)
        for z, values in enumerate([np.asarray(array)] if flat else _slices(array, channels)):
            io.write_atomic(os.path.join(folder, name, f"slice_{z:05d}.tif"),
                            lambda tmp, v=values, n=name: tifffile.imwrite(
                                tmp, _tiff_values(n, v, prob_dtype, mask_classes(job)), compression="zlib"))
    if job.get("instances"):  # the objects: uint32 label slices, and their tables
        os.makedirs(os.path.join(folder, "instances"), exist_ok=True)
        array = instances_array(root)
        for z, values in enumerate([np.asarray(array)] if array.ndim == 2 else _slices(array, False)):
            io.write_tiff(os.path.join(folder, "instances", f"slice_{z:05d}.tif"), np.asarray(values))
        for name in TABLES:
            shutil.copyfile(os.path.join(store, name), os.path.join(folder, name))
    io.write_text(os.path.join(folder, "job.json"), json.dumps({"job": job}, indent=2) + "\n")


def _slices(array, channels):
    """The z slices of a stored ``(Z, Y, X)`` array, or of a ``(K, Z, Y, X)`` one (``channels``) as ``(K, Y, X)``."""
    if channels:
        return (np.asarray(array[:, z]) for z in range(array.shape[1]))
    return (array[z] for z in range(array.shape[0]))


def mask_classes(job):
    """The classes of a job's mask: its ``classes``, or 1 (binary: the foreground) for instance channels."""
    return 1 if job.get("targets", "mask") != "mask" else job.get("classes", 1)


def _tiff_values(name, values, prob_dtype, classes=1):
    if name == "mask":
        return values * np.uint8(255) if classes == 1 else values
    return values.astype(np.float32) if prob_dtype == "float16" else values
