"""The table of objects of a label image or volume: what a lab counts and measures, one row per object.

Measured with scikit-image's ``regionprops_table``, in voxels and in the physical unit of the voxel size:

- every object: ``id``, ``voxels``, ``size`` (area in 2D, volume in 3D, in ``unit`` squared or cubed),
  ``centroid_*``, ``bbox_*`` (in voxels, to find it in the image), ``equivalent_diameter`` (the diameter of the disc or ball of that
  size, in ``unit``), ``solidity``, ``major_axis``, ``minor_axis`` (in ``unit``; of the ellipse or ellipsoid with
  the same second moments), ``mean_probability`` (given the probabilities);
- 2D: ``perimeter`` (in ``unit``); 3D: ``surface_area`` (of the marching-cubes mesh, in ``unit`` squared).

:func:`summary` gives one row per image or volume: the count, the density (objects per unit area or volume),
the foreground fraction and the median size.
"""

import warnings

import numpy as np

from ..predict.instances import open_array

AXES = "zyx"


def reference_objects(mask):
    """The objects of a reference mask: a label image's own ids, or the connected components of a binary mask
    (at most one foreground value, e.g. 0/255: touching objects stay one). uint32."""
    from skimage.measure import label

    mask = np.asarray(mask)
    return (label(mask > 0) if is_binary(mask) else mask).astype(np.uint32, copy=False)


def without_unannotated(labels, unannotated):
    """The objects of ``labels`` scored against a partly annotated reference (``data.ignore_value``): an object
    with most of its voxels unannotated is left out (its reference there is unknown), the others keep their
    annotated voxels only. Returns ``labels`` itself when ``unannotated`` is None or empty."""
    if unannotated is None or not unannotated.any():
        return labels
    labels = np.asarray(labels)
    inside = np.bincount(labels[unannotated].ravel(), minlength=int(labels.max()) + 1)
    total = np.bincount(labels.ravel(), minlength=len(inside))
    dropped = np.flatnonzero(2 * inside > total)
    out = np.where(unannotated | np.isin(labels, dropped[dropped > 0]), 0, labels)
    return out.astype(labels.dtype, copy=False)


def is_binary(mask):
    """Whether ``mask`` holds at most one value besides 0 (a binary mask rather than a label image of objects)."""
    mask = np.asarray(mask)
    if not mask.size:
        return True
    high = mask.max()
    return not np.any((mask != 0) & (mask != high))


def columns(ndim, probability=False):
    """The columns of :func:`object_table`'s rows for ``ndim`` axes, in order (``probability``: with
    ``mean_probability``): the header of a table that found no object."""
    axes = AXES[3 - ndim:]
    return (["id", "voxels", "size", "unit"] + [f"centroid_{a}" for a in axes] + [f"bbox_{a}_start" for a in axes]
            + [f"bbox_{a}_stop" for a in axes] + ["equivalent_diameter", "solidity", "major_axis", "minor_axis"]
            + (["mean_probability"] if probability else []) + ["perimeter" if ndim == 2 else "surface_area"])


def object_table(labels, voxel_size=None, unit="pixel", prob=None, origin=None):
    """The objects of ``labels`` (0 background) as a list of row dicts, sorted by id.

    Parameters
    ----------
    labels : ndarray of int, (Y, X) or (Z, Y, X)
    voxel_size : sequence of float, one per axis (default 1); the physical size of a voxel in ``unit``
    unit : str, the unit of ``voxel_size`` (``pixel`` when not known)
    prob : ndarray of float, the shape of ``labels``, optional: gives ``mean_probability``
    origin : sequence of int, optional: where ``labels`` lies in a larger image (added to centroids and boxes)
    """
    from skimage.measure import marching_cubes, mesh_surface_area, regionprops, regionprops_table

    labels = np.asarray(labels)
    if labels.dtype.kind not in "ui":
        raise ValueError(f"labels: expected an integer label image, got {labels.dtype}")
    ndim = labels.ndim
    if ndim not in (2, 3):
        raise ValueError(f"labels: expected a 2D image or a 3D volume, got {ndim} axes")
    spacing = np.ones(ndim) if voxel_size is None else np.asarray(voxel_size, np.float64)
    if spacing.shape != (ndim,) or np.any(spacing <= 0):
        raise ValueError(f"voxel_size: expected {ndim} positive sizes, got {voxel_size}")
    voxel = float(np.prod(spacing))
    props = ["label", "area", "centroid", "bbox", "solidity", "axis_major_length", "axis_minor_length"]
    extra = {} if prob is None else {"intensity_image": np.asarray(prob, np.float32)}
    if prob is not None:
        props.append("intensity_mean")
    with warnings.catch_warnings():  # the convex hull of a flat object (solidity): Qhull warns, the value stands
        warnings.simplefilter("ignore")
        columns = regionprops_table(labels, properties=props, spacing=spacing, **extra)
    axes = AXES[3 - ndim:]
    origin = np.zeros(ndim, np.int64) if origin is None else np.asarray(origin, np.int64)
    rows = []
    for k in range(len(columns["label"])):
        size = float(columns["area"][k])  # with spacing: physical area or volume
        row = {"id": int(columns["label"][k]), "voxels": int(round(size / voxel)), "size": size,
               "unit": f"{unit}^{ndim}"}
        row.update({f"centroid_{a}": float(columns[f"centroid-{i}"][k] / spacing[i] + origin[i])
                    for i, a in enumerate(axes)})
        row.update({f"bbox_{a}_start": int(columns[f"bbox-{i}"][k] + origin[i]) for i, a in enumerate(axes)})
        row.update({f"bbox_{a}_stop": int(columns[f"bbox-{i + ndim}"][k] + origin[i]) for i, a in enumerate(axes)})
        row["equivalent_diameter"] = float((size / np.pi) ** 0.5 * 2 if ndim == 2 else (6 * size / np.pi) ** (1 / 3))
        row["solidity"] = float(columns["solidity"][k])
        row["major_axis"] = float(columns["axis_major_length"][k])
        row["minor_axis"] = float(columns["axis_minor_length"][k])
        if prob is not None:
            row["mean_probability"] = float(columns["intensity_mean"][k])
        rows.append(row)
    for row, region in zip(rows, regionprops(labels)):
        if ndim == 2:
            row["perimeter"] = _perimeter(region.image, spacing)
        else:  # the surface of the object's marching-cubes mesh, in its bounding box padded by one voxel
            verts, faces, _, _ = marching_cubes(np.pad(region.image, 1).astype(np.float32), 0.5,
                                                spacing=tuple(spacing))
            row["surface_area"] = float(mesh_surface_area(verts, faces))
    return rows


def _perimeter(image, spacing):
    """The perimeter of a 2D object: scikit-image's (4-connected boundary) on square pixels, scaled; on pixels
    that are not square, the length of its marching-squares contours in the unit."""
    from skimage.measure import find_contours, perimeter

    if spacing[0] == spacing[1]:
        return float(perimeter(image) * spacing[0])
    length = 0.0
    for contour in find_contours(np.pad(image, 1).astype(np.float32), 0.5):
        length += float(np.sum(np.hypot(*(np.diff(contour, axis=0) * spacing).T)))
    return length


def summary(rows, labels_shape, voxel_size=None, unit="pixel"):
    """One row for an image or volume of ``labels_shape`` whose objects are ``rows`` (:func:`object_table`)."""
    ndim = len(labels_shape)
    spacing = np.ones(ndim) if voxel_size is None else np.asarray(voxel_size, np.float64)
    extent = float(np.prod(labels_shape) * np.prod(spacing))
    sizes = [r["size"] for r in rows]
    return {"objects": len(rows), "extent": extent, "unit": f"{unit}^{ndim}",
            "density": len(rows) / extent, "foreground_fraction": float(sum(sizes)) / extent,
            "median_size": float(np.median(sizes)) if sizes else 0.0}


def store_table(labels, prob, blocks, run_tasks, voxel_size=None, unit="pixel"):
    """:func:`object_table` of a label array of any size (zarr), measured block by block; each object once.

    Parameters
    ----------
    labels, prob : ``(store path, array path)`` of the zarr label array and of the probabilities (uint8 0-255 or
        float; None for no ``mean_probability``; ``(store path, array path, channel)`` for one channel of an
        array whose first axis is channels)
    blocks : list of ``(index, core)``, the blocks (tuples of slices) that tile the array
    run_tasks : ``run_tasks(fn, items, sizes, desc)`` (:mod:`lib.predict.blockwise`): in process or on Dask

    Each block measures the objects that lie within it whole (none of their voxels on a face it shares with
    another block) and gives the boxes of the others; an object cut by block borders is then measured from its
    box, read once. Memory: a block, or the box of the largest object cut by a border.
    """
    import functools
    import math

    shape = open_array(labels).shape
    sizes = [math.prod(s.stop - s.start for s in core) for _, core in blocks]
    rows, boxes = [], {}
    measure = functools.partial(_measure_block, labels, prob, shape, voxel_size, unit)
    for found, cut in run_tasks(measure, [core for _, core in blocks], sizes, "measuring objects"):
        rows += found
        for i, (start, stop) in cut.items():
            old = boxes.get(i, (start, stop))
            boxes[i] = (np.minimum(old[0], start), np.maximum(old[1], stop))
    whole = functools.partial(_measure_box, labels, prob, voxel_size, unit)
    items = sorted(boxes.items())
    for row in run_tasks(whole, items, [1] * len(items), "measuring objects cut by block borders"):
        rows.append(row)
    return sorted(rows, key=lambda r: r["id"])


def _read_prob(prob, window):
    if prob is None:
        return None
    if len(prob) == 3:  # (store, array, channel) of probabilities with a channel axis first
        values = np.asarray(open_array(prob[:2])[(prob[2],) + tuple(window)])
    else:
        values = np.asarray(open_array(prob)[window])
    return values / np.float32(255) if values.dtype == np.uint8 else values.astype(np.float32)


def _measure_block(labels, prob, shape, voxel_size, unit, core):
    """``(rows of the objects whole in block core, {id: (start, stop)} of those on a face shared with a neighbour)``."""
    from scipy.ndimage import find_objects

    block = np.asarray(open_array(labels)[core])
    start = np.array([s.start for s in core])
    cut = {}
    inner = np.zeros(block.shape, bool)  # the voxels on a face that another block shares
    for axis, s in enumerate(core):
        if s.start > 0:
            inner[(slice(None),) * axis + (0,)] = True
        if s.stop < shape[axis]:
            inner[(slice(None),) * axis + (-1,)] = True
    for i in np.unique(block[inner]):
        if i:
            cut[int(i)] = None
    for i, box in enumerate(find_objects(block), start=1):
        if box is not None and i in cut:
            cut[i] = (start + [b.start for b in box], start + [b.stop for b in box])
    whole = np.where(np.isin(block, list(cut)), 0, block) if cut else block
    rows = object_table(whole, voxel_size, unit, _read_prob(prob, core), origin=start) if whole.any() else []
    return rows, cut


def _measure_box(labels, prob, voxel_size, unit, item):
    """The row of object ``id`` measured from its box ``(start, stop)`` in the whole array."""
    i, (start, stop) = item
    window = tuple(slice(int(a), int(b)) for a, b in zip(start, stop))
    crop = np.asarray(open_array(labels)[window])
    alone = np.where(crop == i, crop, 0)
    return object_table(alone, voxel_size, unit, _read_prob(prob, window), origin=start)[0]
