"""The outputs of block-wise prediction: zarr stores of OME-Zarr images, and their TIFF exports.

A zarr v3 store holds two OME-Zarr 0.5 images, ``prob`` (uint8 0-255 or float16) and ``mask``
(uint8), and records the job that wrote it (:data:`JOB_KEY`), so that a rerun resumes it and a
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
    """True when every block of the output store at ``path`` is flagged done."""
    import zarr

    return bool(np.all(zarr.open_group(path, mode="r")["blocks_done"][...]))


def create_store(path, shape, chunks, grid, prob_dtype, job, voxel_size=None, unit=None, classes=1):
    """Create the output store: OME-Zarr images ``prob`` and ``mask`` of spatial ``shape``, ``blocks_done``.

    A multi-class model's (``classes`` K > 1): ``prob`` has a channel axis first, ``(K, *shape)``, one
    channel per class, and ``mask`` is the label image (class ids ``0 .. K-1``).

    Parameters
    ----------
    path : str, a new folder ending in ``.zarr``
    shape, chunks : tuple of int, spatial (2 or 3 values)
    grid : tuple of int, the number of blocks per axis
    prob_dtype : {'uint8', 'float16'}
    job : dict, JSON-serialisable description of the job, kept in the root attributes
    voxel_size : tuple of float per axis, optional; ``unit`` its unit
    """
    import zarr

    if prob_dtype not in ("uint8", "float16"):
        raise ValueError(f"prob_dtype: expected 'uint8' or 'float16', got {prob_dtype!r}")
    names = "zyx"[3 - len(shape):]
    root = zarr.open_group(path, mode="w", zarr_format=3)
    for name, dtype in (("prob", prob_dtype), ("mask", "uint8")):
        image = root.create_group(name)
        channels = name == "prob" and classes > 1
        axes = ("c" if channels else "") + names
        image.create_array("0", shape=((classes,) if channels else ()) + tuple(shape),
                           chunks=((1,) if channels else ()) + tuple(chunks), dtype=dtype, fill_value=0,
                           dimension_names=tuple(axes))
        image.attrs["ome"] = ome_metadata(name, axes, (1.0,) + tuple(voxel_size) if channels and voxel_size else
                                          voxel_size, unit)
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
        array = root[name]["0"]
        channels = name == "prob" and classes > 1
        slices = [array] if array.ndim == (3 if channels else 2) else _slices(array, channels)

        def write(tmp, slices=slices, name=name):
            with tifffile.TiffWriter(tmp, bigtiff=True) as tif:
                for i, s in enumerate(slices):
                    tif.write(_tiff_values(name, np.asarray(s), prob_dtype, classes), compression="zlib",
                              description=description if i == 0 else None, metadata=None)

        io.write_atomic(target, write)


def export_slices(store, folder, job, prob_dtype):
    """Write the store as ``folder/prob/slice_00000.tif ...`` and ``folder/mask/...`` (0/255), one file per z."""
    import zarr

    root = zarr.open_group(store, mode="r")
    os.makedirs(folder, exist_ok=True)
    classes = job.get("classes", 1)
    for name in ("prob", "mask"):
        array = root[name]["0"]
        channels = name == "prob" and classes > 1  # (K, [Z,] Y, X): each file holds the K classes of its slice
        os.makedirs(os.path.join(folder, name), exist_ok=True)
        flat = array.ndim == (3 if channels else 2)
        for z, values in enumerate([np.asarray(array)] if flat else _slices(array, channels)):
            io.write_atomic(os.path.join(folder, name, f"slice_{z:05d}.tif"),
                            lambda tmp, v=values, n=name: tifffile.imwrite(
                                tmp, _tiff_values(n, v, prob_dtype, classes), compression="zlib"))
    io.write_text(os.path.join(folder, "job.json"), json.dumps({"job": job}, indent=2) + "\n")


def _slices(array, channels):
    """The z slices of a stored ``(Z, Y, X)`` array, or of a ``(K, Z, Y, X)`` one (``channels``) as ``(K, Y, X)``."""
    if channels:
        return (np.asarray(array[:, z]) for z in range(array.shape[1]))
    return (array[z] for z in range(array.shape[0]))


def _tiff_values(name, values, prob_dtype, classes=1):
    if name == "mask":
        return values * np.uint8(255) if classes == 1 else values
    return values.astype(np.float32) if prob_dtype == "float16" else values


def remove_output(path):
    """Delete an output (a store, a TIFF pair or a folder) and its staging store, renaming it away first."""
    for target in (path, prob_tiff_path(path) if output_kind(path) == "tiff" else None, staging_store(path)):
        if target is None or not os.path.lexists(target):
            continue
        trash = os.path.join(os.path.dirname(os.path.abspath(target)), f".{os.path.basename(target)}.removing")
        if os.path.lexists(trash):
            shutil.rmtree(trash) if os.path.isdir(trash) else os.remove(trash)
        os.rename(target, trash)
        shutil.rmtree(trash) if os.path.isdir(trash) else os.remove(trash)
