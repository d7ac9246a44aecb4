"""The outputs of block-wise prediction: zarr stores of OME-Zarr images, and their TIFF exports.

A zarr v3 store is laid out as OME-Zarr 0.5 lays out a segmentation of an image: the probabilities
(uint8 0-255 or float16) are the image at its root (``OUT.zarr/0``), and the mask (uint8) is its label
image ``OUT.zarr/labels/mask`` (``image-label`` metadata), so that a viewer opening ``OUT.zarr`` shows
both. The store records the job that wrote it (:data:`JOB_KEY`), so that a rerun resumes it and a
foreign folder is never taken for one.
"""

import json
import os
import shutil

import numpy as np
import tifffile

from ..data import io
from ..data.volumes import OME_VERSION, ZARR_SUFFIX

JOB_KEY = "em_segmentation"  # root attribute of an output store: the job and its normalisation statistics
# The layout of the outputs, recorded in the job: 2 is the probabilities at the root and the mask under labels/;
# 1 (before 2026-12) held two images prob/ and mask/ side by side. A rerun on an output of another layout
# is another job (replaced with --overwrite, never resumed).
LAYOUT = 2
PROB = "0"                # the probabilities, in an output store
MASK_IMAGE = "labels/mask"  # the mask's label image; its array is MASK_IMAGE/0
INSTANCES_IMAGE = "labels/instances"  # the objects' label image (post.instances), INSTANCES_IMAGE/0
TABLES = ("objects.csv", "objects_summary.csv")  # the table of objects and its summary, in the store's folder
INSTANCES_DONE = "instances_done"  # in the job record: the objects are labelled and measured


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

    if prob_dtype not in ("uint8", "float16"):
        raise ValueError(f"prob_dtype: expected 'uint8' or 'float16', got {prob_dtype!r}")
    if os.path.lexists(path) and not (os.path.isdir(path) and not os.listdir(path)):
        raise FileExistsError(f"{path}: the output store must be new (or an empty folder)")  # never replaces anything
    names = "zyx"[3 - len(shape):]
    root = zarr.open_group(path, mode="w", zarr_format=3)
    channels = classes > 1
    axes = ("c" if channels else "") + names
    root.create_array(PROB, shape=((classes,) if channels else ()) + tuple(shape),
                      chunks=((1,) if channels else ()) + tuple(chunks), dtype=prob_dtype, fill_value=0,
                      dimension_names=tuple(axes))
    root.attrs["ome"] = ome_metadata("prob", axes, (1.0,) + tuple(voxel_size) if channels and voxel_size else
                                     voxel_size, unit)
    images = [(MASK_IMAGE, "uint8")] + ([(INSTANCES_IMAGE, "uint32")] if instances else [])
    root.create_group("labels").attrs["ome"] = {"version": OME_VERSION,
                                                "labels": [name.split("/")[1] for name, _ in images]}
    for name, dtype in images:
        image = root.create_group(name)
        image.create_array("0", shape=tuple(shape), chunks=tuple(chunks), dtype=dtype, fill_value=0,
                           dimension_names=tuple(names))
        image.attrs["ome"] = {**ome_metadata(name.split("/")[1], names, voxel_size, unit),
                              "image-label": {"source": {"image": "../../"}}}  # the image it labels: OUT.zarr
    root.create_array("blocks_done", shape=grid, chunks=(1,) * len(grid), dtype="uint8", fill_value=0)
    root.attrs[JOB_KEY] = {"job": job}
    return root


def ome_metadata(name, axes, voxel_size=None, unit=None):
    """OME-Zarr 0.5 ``multiscales`` of a one-level image with spatial ``axes`` (e.g. ``'zyx'``)."""
    scale = [float(v) for v in voxel_size] if voxel_size else [1.0] * len(axes)
    return {"version": OME_VERSION, "multiscales": [{
        "name": name,
        "axes": [{"name": a, "type": "channel"} if a == "c" else
                 {"name": a, "type": "space", **({"unit": unit} if unit else {})} for a in axes],
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale}]}],
    }]}


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
