"""Instance targets of a network: foreground, contour and distance channels from a label image.

The instance modes of ``model.targets`` (after BiaPy's "BC" and "BCD" channels, Franco-Barranco et al.):

``bc``
    foreground (every object voxel) and contour (the object voxels that touch another value: the background or
    another object);
``bcd``
    both, and the distance of each object voxel to its object's border, divided by the largest distance inside
    that object (1 at each object's centre, falling to the border).

Computed from the labels of each crop as it is cut and augmented (:class:`lib.data.generators.CropDataset`), so
nothing is precomputed on disk. A binary mask is a label image whose objects are its connected components: the
channels of a crop are the same whether its objects carry one id or their own (two objects that touch have one
contour between them only when they carry different ids, which is why touching objects need label masks).
"""

import numpy as np
from scipy import ndimage as ndi

from .io import ignored

# The channels of each instance mode, in the order of the network's outputs.
CHANNELS = {"bc": ("foreground", "contour"), "bcd": ("foreground", "contour", "distance")}


def check_kind(kind):
    if kind not in CHANNELS:
        raise ValueError(f"kind: expected one of {', '.join(CHANNELS)}, got {kind!r}")
    return CHANNELS[kind]


def instance_targets(labels, kind):
    """The target channels of ``kind`` (``bc`` or ``bcd``) of one label image.

    Parameters
    ----------
    labels : integer ndarray, 2D ``(H, W)`` or 3D ``(Z, Y, X)``
        0 background, each object its own id (or a binary mask: its components).
    kind : {"bc", "bcd"}

    Returns
    -------
    float32 ndarray ``(*labels.shape, 2 or 3)``: foreground {0, 1}, contour {0, 1}, and with ``bcd`` the distance
    in [0, 1]; -1 in every channel on unannotated voxels (:func:`lib.data.io.ignored`), the channels elsewhere
    computed as if each took the value of its nearest annotated voxel.
    """
    from skimage.segmentation import find_boundaries

    channels = check_kind(kind)
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer) and labels.dtype != bool:
        raise ValueError(f"labels: expected an integer label image, got dtype {labels.dtype}")
    hidden = ignored(labels)
    if hidden.all():
        return np.full(labels.shape + (len(channels),), -1.0, np.float32)
    if hidden.any():  # each unannotated voxel takes its nearest annotated value, so no border is made up there
        nearest = ndi.distance_transform_edt(hidden, return_distances=False, return_indices=True)
        labels = labels[tuple(nearest)]
    foreground = labels > 0
    # "inner": the object voxels next to another value; between two touching objects, one line in each.
    contour = find_boundaries(labels, mode="inner") & foreground
    out = [foreground, contour]
    if "distance" in channels:
        out.append(normalized_distance(labels, foreground))
    out = np.stack(out, axis=-1).astype(np.float32)
    out[hidden] = -1.0  # unannotated: left out of the loss and the metrics
    return out


def between_objects(labels):
    """The voxels of an object next to a voxel of another object (not the background): where objects meet."""
    labels = np.asarray(labels)
    size = (3,) * labels.ndim
    others = np.where(labels > 0, labels.astype(np.int64), int(labels.max()) + 1)  # the background never lowest
    return (labels > 0) & ((ndi.grey_dilation(labels, size=size) != labels) |
                           (ndi.grey_erosion(others, size=size) != labels))


def normalized_distance(labels, foreground=None):
    """Each object voxel's distance to the nearest voxel outside its object, over the largest in that object.

    Objects that touch are kept apart by the distance transform of the foreground without the borders between
    objects; float32 in [0, 1], 0 on the background.
    """
    labels = np.asarray(labels)
    foreground = labels > 0 if foreground is None else foreground
    if not foreground.any():
        return np.zeros(labels.shape, np.float32)
    # Objects that touch: the voxels next to another object are left out, so that each object's distances
    # end at its own border (the background's voxels are outside already).
    distance = ndi.distance_transform_edt(foreground & ~between_objects(labels)).astype(np.float32)
    ids, index = np.unique(labels[foreground], return_inverse=True)
    peak = np.ones(len(ids), np.float32)  # an object that is all border stays 0
    np.maximum.at(peak, index, distance[foreground])
    out = np.zeros(labels.shape, np.float32)
    out[foreground] = distance[foreground] / peak[index]
    return out
