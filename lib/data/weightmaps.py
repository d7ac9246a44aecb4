"""U-Net weight maps (Ronneberger et al. 2015): class balance and narrow gaps between objects.
"""

import numpy as np
from scipy import ndimage as ndi

from .io import foreground, ignored

# --------------------------------------------------------------------------- weight maps

# Distances are computed only this many sigmas around each object: farther, the
# border term is below exp(-6**2 / 2) w0 = 1.5e-8 w0 and is left out.
_WEIGHT_REACH = 6.0


def weight_map(mask, w0=10.0, sigma=5.0, fg_fraction=None):
    """Per-pixel loss weights of U-Net (Ronneberger et al. 2015): class balance plus borders.

    ``w = w_c + w0 exp(-(d1 + d2)^2 / (2 sigma^2))``, the border term on
    background pixels only, where ``d1`` and ``d2`` are the distances to the
    nearest and second-nearest object (connected component of the mask). It
    peaks in narrow gaps between objects, which the network must learn to keep
    open. ``w_c`` balances the classes: ``1 / (2 f)`` on foreground and
    ``1 / (2 (1 - f))`` on background for a foreground share ``f``, so its mean
    over pixels with that share is 1.

    Distances are computed object by object in the object's bounding box grown
    by ``6 sigma``, so the cost grows with the number and size of the objects,
    not with their number times the image size.

    Parameters
    ----------
    mask : ndarray ``spatial`` (2D or 3D), binary (nonzero is foreground); unannotated pixels
        (:func:`lib.data.io.ignored`) weigh 0 and count in no class share
    w0 : float
        Height of the border term, >= 0.
    sigma : float
        Width of the border term, pixels (voxels in 3D), > 0.
    fg_fraction : float in [0, 1], optional
        Foreground share ``f`` for the class balance; by default this mask's.
        Pass the share of the whole training set so that every image gets the
        same class weights. With ``f`` 0 or 1 the class weights are all 1.

    Returns
    -------
    ndarray of float32, shape ``spatial``
    """
    hidden = ignored(mask)
    mask = foreground(mask)
    if w0 < 0 or sigma <= 0:
        raise ValueError(f"weight_map: expected w0 >= 0 and sigma > 0, got w0={w0}, sigma={sigma}")
    share = float(mask.sum()) / max(1, mask.size - int(hidden.sum()))  # of the annotated pixels
    f = share if fg_fraction is None else float(fg_fraction)
    if not 0.0 <= f <= 1.0:
        raise ValueError(f"weight_map: fg_fraction must be in [0, 1], got {fg_fraction}")
    if 0.0 < f < 1.0:
        weights = np.where(mask, np.float32(0.5 / f), np.float32(0.5 / (1.0 - f)))
    else:
        weights = np.ones(mask.shape, np.float32)
    weights[hidden] = 0.0  # unannotated pixels weigh nothing (their targets are left out of the loss too)
    labels, count = ndi.label(mask)
    if count < 2 or w0 == 0:
        return weights
    pad = int(np.ceil(_WEIGHT_REACH * sigma))
    nearest = np.full(mask.shape, np.inf, np.float32)
    second = np.full(mask.shape, np.inf, np.float32)
    for index, box in enumerate(ndi.find_objects(labels), start=1):
        window = tuple(slice(max(0, s.start - pad), min(n, s.stop + pad)) for s, n in zip(box, mask.shape))
        # The window holds the whole object, so these are its exact distances.
        d = ndi.distance_transform_edt(labels[window] != index).astype(np.float32)
        first, other = nearest[window], second[window]
        np.minimum(other, np.maximum(first, d), out=other)
        np.minimum(first, d, out=first)
    border = np.float32(w0) * np.exp(-((nearest + second) ** 2) / np.float32(2.0 * sigma ** 2))
    weights[~mask & ~hidden] += border[~mask & ~hidden]
    return weights
