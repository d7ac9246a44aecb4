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

import numpy as np

AXES = "zyx"


def object_table(labels, voxel_size=None, unit="pixel", prob=None):
    """The objects of ``labels`` (0 background) as a list of row dicts, sorted by id.

    Parameters
    ----------
    labels : ndarray of int, (Y, X) or (Z, Y, X)
    voxel_size : sequence of float, one per axis (default 1); the physical size of a voxel in ``unit``
    unit : str, the unit of ``voxel_size`` (``pixel`` when not known)
    prob : ndarray of float, the shape of ``labels``, optional: gives ``mean_probability``
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
    columns = regionprops_table(labels, properties=props, spacing=spacing, **extra)
    axes = AXES[3 - ndim:]
    rows = []
    for k in range(len(columns["label"])):
        size = float(columns["area"][k])  # with spacing: physical area or volume
        row = {"id": int(columns["label"][k]), "voxels": int(round(size / voxel)), "size": size,
               "unit": f"{unit}^{ndim}"}
        row.update({f"centroid_{a}": float(columns[f"centroid-{i}"][k] / spacing[i]) for i, a in enumerate(axes)})
        row.update({f"bbox_{a}_start": int(columns[f"bbox-{i}"][k]) for i, a in enumerate(axes)})
        row.update({f"bbox_{a}_stop": int(columns[f"bbox-{i + ndim}"][k]) for i, a in enumerate(axes)})
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
