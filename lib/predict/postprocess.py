"""Post-processing of probability maps: thresholding, z-filtering, object filtering and
watershed refinement of boundaries (Oztel et al., 2017).

A probability ``p`` is foreground at threshold ``t`` when ``p >= t``, the convention
of :mod:`lib.evaluate.metrics`.
"""

import numbers

import numpy as np
from scipy import ndimage as ndi
from skimage.filters import sobel
from skimage.measure import label
from skimage.segmentation import watershed

# Default of oztel's min_mean_prob: the uncertain 1-2 pixel rim of a true object pulls the
# mean probability of small objects down towards 0.7, while spurious blobs barely cross
# the binarisation threshold.
DEFAULT_MIN_MEAN_PROB = 0.6


def _check_fraction(name, value, low_open=False):
    in_range = isinstance(value, numbers.Real) and (
        (0 < value <= 1) if low_open else (0 <= value <= 1)
    )
    if not in_range:
        interval = "(0, 1]" if low_open else "[0, 1]"
        raise ValueError(f"{name}: expected a number in {interval}, got {value!r}")


def _check_probs(probs):
    probs = np.asarray(probs)
    if not np.issubdtype(probs.dtype, np.floating):
        raise ValueError(f"probs: expected floating-point probabilities, got dtype {probs.dtype}")
    if probs.size and not (probs.min() >= 0 and probs.max() <= 1):  # also rejects NaN
        raise ValueError(f"probs: expected values in [0, 1], got [{probs.min()}, {probs.max()}]")
    return probs


def _check_radius(value):
    if not isinstance(value, numbers.Real) or value <= 0:
        raise ValueError(f"marker_radius: expected a positive number, got {value!r}")


def threshold_as(threshold, dtype):
    """``threshold`` (a number or an array of them) rounded to the float type ``dtype`` of the probabilities.

    Every comparison ``p >= t`` of the project (:func:`binarize`, the threshold
    sweep of :mod:`lib.evaluate.metrics`) is made in the probabilities' own type, so a
    probability equal to ``float32(t)`` is foreground in all of them alike.
    """
    dtype = np.dtype(dtype)
    return np.asarray(threshold, dtype if dtype.kind == "f" else np.float64)


def binarize(probs, threshold=0.5):
    """Foreground mask of a probability map.

    Parameters
    ----------
    probs : ndarray of float, any shape
        Foreground probabilities in [0, 1].
    threshold : float
        In [0, 1]; ``p >= threshold`` is foreground.

    Returns
    -------
    ndarray of uint8, shape of ``probs``
        1 for foreground, 0 for background.
    """
    _check_fraction("threshold", threshold)
    probs = _check_probs(probs)
    return (probs >= threshold_as(threshold, probs.dtype)).astype(np.uint8)


def most_probable(probs):
    """Label image of multi-class probabilities: the most probable class of each pixel.

    Parameters
    ----------
    probs : ndarray of float, shape ``(*spatial, K)``
        Probabilities of K classes (K <= 256), the class axis last.

    Returns
    -------
    ndarray of uint8, shape ``spatial``: class ids ``0 .. K-1`` (the first of tied classes).
    """
    probs = _check_probs(probs)
    if probs.ndim < 2 or not 2 <= probs.shape[-1] <= 256:
        raise ValueError(f"probs: expected (*spatial, K) probabilities of 2 to 256 classes, got shape {probs.shape}")
    return np.argmax(probs, axis=-1).astype(np.uint8)


def z_filter(stack, size):
    """Median filter along z only, to remove detections that flicker between slices.

    Parameters
    ----------
    stack : ndarray, shape (Z, Y, X), or (Z, Y, X, K)
        Probabilities or binary masks, any real or bool dtype; with K, the probabilities of K
        classes, each filtered along z on its own.
    size : int
        Odd number of consecutive slices in the median window. Slices beyond the
        ends repeat the first and last slice.

    Returns
    -------
    ndarray, shape and dtype of ``stack``
    """
    stack = np.asarray(stack)
    if stack.ndim not in (3, 4):
        raise ValueError(f"stack: expected a (Z, Y, X) or (Z, Y, X, K) array, got shape {stack.shape}")
    if not isinstance(size, numbers.Integral) or size < 1 or size % 2 == 0:
        raise ValueError(f"size: expected a positive odd integer, got {size!r}")
    return ndi.median_filter(stack, size=(size,) + (1,) * (stack.ndim - 1), mode="nearest")


class ZFilterStream:
    """:func:`z_filter` of a stack that arrives one slice at a time.

    Slice ``i`` is given back as soon as slice ``i + size // 2`` has arrived
    (the rest by :meth:`flush`), so memory holds ``size`` slices, not the stack.
    The result is exactly that of :func:`z_filter` on the whole stack, edges
    included (slices beyond the ends repeat the first and last slice).

    Parameters
    ----------
    size : int
        Odd number of consecutive slices in the median window.

    Examples
    --------
    >>> stream = ZFilterStream(3)
    >>> spike = [0, 0, 1, 0, 1, 1]
    >>> out = [s for v in spike for s, _ in stream.push(np.full((1, 1), v))]
    >>> out += [s for s, _ in stream.flush()]
    >>> [int(s[0, 0]) for s in out]
    [0, 0, 0, 1, 1, 1]
    """

    def __init__(self, size):
        if not isinstance(size, numbers.Integral) or size < 1 or size % 2 == 0:
            raise ValueError(f"size: expected a positive odd integer, got {size!r}")
        self.radius = size // 2
        self._slices = {}  # index -> (slice, payload) for the slices a median still needs
        self._count = 0
        self._emitted = 0

    def push(self, slice_, payload=None):
        """Add the next slice; return the ``(filtered slice, payload)`` pairs now complete.

        Parameters
        ----------
        slice_ : ndarray, shape (Y, X) or (Y, X, K)
            Probabilities (of K classes) or binary mask, any real or bool dtype; every slice of
            a stack has one shape.
        payload : object
            Given back with the filtered slice (e.g. its name and ground truth).

        Returns
        -------
        list of ``(ndarray (Y, X), payload)``, in slice order; empty until
        ``size // 2 + 1`` slices have arrived.
        """
        slice_ = np.asarray(slice_)
        if self._slices:
            first = next(iter(self._slices.values()))[0]
            if slice_.shape != first.shape:
                raise ValueError(
                    f"slice {self._count}: shape {slice_.shape} differs from the stack's {first.shape}"
                )
        self._slices[self._count] = (slice_, payload)
        self._count += 1
        return self._emit(self._count - 1 - self.radius)

    def flush(self):
        """Return the remaining filtered slices, the stack being complete; then start a new stack."""
        out = self._emit(self._count - 1)
        self._slices.clear()
        self._count = self._emitted = 0
        return out

    def _emit(self, last):
        out = []
        while self._emitted <= last:
            i = self._emitted
            near = np.clip(np.arange(i - self.radius, i + self.radius + 1), 0, self._count - 1)
            window = np.stack([self._slices[k][0] for k in near])
            out.append((np.partition(window, self.radius, axis=0)[self.radius], self._slices[i][1]))
            self._emitted += 1
            # Slice i - radius is needed by no later median.
            self._slices.pop(i - self.radius, None)
        return out


def remove_low_confidence(probs, threshold=0.5, min_mean_prob=DEFAULT_MIN_MEAN_PROB):
    """Binarise, then drop the connected components of low mean probability.

    Parameters
    ----------
    probs : ndarray of float, shape (Y, X) or (Z, Y, X)
        Foreground probabilities in [0, 1].
    threshold : float
        In (0, 1]; ``p >= threshold`` is foreground.
    min_mean_prob : float
        In [0, 1]; components (full connectivity) whose mean probability is
        below it are removed.

    Returns
    -------
    ndarray of bool, shape of ``probs``
        The kept components.
    """
    _check_fraction("threshold", threshold, low_open=True)
    _check_fraction("min_mean_prob", min_mean_prob)
    probs = _check_probs(probs)
    labels = label(probs >= threshold_as(threshold, probs.dtype))
    size = np.bincount(labels.ravel())
    mass = np.bincount(labels.ravel(), weights=probs.ravel())
    keep = mass >= min_mean_prob * size
    keep[0] = False
    return keep[labels]


def refine_boundaries(mask, image, marker_radius=3):
    """Move object boundaries onto image edges by a marker-controlled watershed.

    Objects eroded by ``marker_radius`` seed the foreground and the background
    eroded by ``marker_radius`` seeds the background; the band between them is
    flooded on the Sobel gradient of ``image``, so the boundary settles on the
    strongest edge within ``marker_radius`` of the original one.

    Parameters
    ----------
    mask : ndarray of bool or {0, 1} integers, shape (Y, X) or (Z, Y, X)
        Objects to refine.
    image : ndarray of real, shape of ``mask``
        Intensity image whose edges guide the boundaries.
    marker_radius : float
        Positive; the largest expected boundary error, in pixels.

    Returns
    -------
    ndarray of bool, shape of ``mask``
    """
    mask = np.asarray(mask, dtype=bool)
    image = np.asarray(image)
    if image.shape != mask.shape:
        raise ValueError(f"image shape {image.shape} differs from mask shape {mask.shape}")
    _check_radius(marker_radius)
    if not mask.any():
        return mask

    depth = ndi.distance_transform_edt(mask)
    labels = label(mask)
    deepest = ndi.maximum(depth, labels, np.arange(labels.max() + 1))
    # Objects thinner than the erosion keep their innermost pixels as seed, so that
    # refinement never deletes an object that the confidence filter kept.
    fg_seed = (depth > marker_radius) | (mask & (depth == deepest[labels]))
    bg_seed = ndi.distance_transform_edt(~mask) > marker_radius
    # Each object floods from its own marker: objects nearer each other than twice the radius
    # have no background seed between them, and one shared label would flood them into one.
    markers = np.where(fg_seed, labels + 1, np.where(bg_seed, 1, 0)).astype(np.int32)
    flooded = watershed(sobel(image.astype(np.float32)), markers)
    objects = flooded > 1
    # Binarised, objects that meet would merge: the pixels where one meets another go back to
    # the background, where they were background in the mask (at least one side always was).
    high = ndi.maximum_filter(np.where(objects, flooded, 0), size=3)
    low = ndi.minimum_filter(np.where(objects, flooded, np.iinfo(np.int32).max), size=3)
    meeting = objects & ((high != flooded) | (low != flooded))
    return objects & ~(meeting & ~mask)


def _oztel_2d(probs, image, threshold, min_mean_prob, marker_radius):
    kept = remove_low_confidence(probs, threshold, min_mean_prob)
    return refine_boundaries(kept, image, marker_radius)


def oztel(probs, image, threshold=0.5, min_mean_prob=DEFAULT_MIN_MEAN_PROB, marker_radius=3):
    """Post-processing of Oztel et al. (2017): confidence filter, then watershed refinement.

    Binarises ``probs``, removes the connected components whose mean probability is
    below ``min_mean_prob`` (:func:`remove_low_confidence`), then snaps the
    boundaries of the kept objects to the edges of ``image``
    (:func:`refine_boundaries`). As in the paper, a stack is processed slice by
    slice, which suits anisotropic EM stacks; follow with :func:`z_filter` for
    consistency along z. For isotropic volumes, the two steps can be called on
    the whole volume instead.

    Parameters
    ----------
    probs : ndarray of float, shape (Y, X) or (Z, Y, X)
        Foreground probabilities in [0, 1].
    image : ndarray of real, shape of ``probs``
        The EM image or stack the probabilities were predicted from.
    threshold : float
        In (0, 1]; ``p >= threshold`` is foreground.
    min_mean_prob : float
        In [0, 1]; minimum mean probability of a kept component.
    marker_radius : float
        Positive; how far, in pixels, a boundary may move.

    Returns
    -------
    ndarray of uint8, shape of ``probs``
        Binary mask, 1 for foreground.

    References
    ----------
    I. Oztel, G. Yolcu, I. Ersoy, T. White and F. Bunyak, "Mitochondria segmentation in
    electron microscopy volumes using deep convolutional neural network", IEEE BIBM 2017.
    """
    probs = _check_probs(probs)
    image = np.asarray(image)
    if probs.ndim not in (2, 3):
        raise ValueError(
            f"probs: expected a (Y, X) image or (Z, Y, X) stack, got shape {probs.shape}"
        )
    if image.shape != probs.shape:
        raise ValueError(f"image shape {image.shape} differs from probs shape {probs.shape}")
    _check_fraction("threshold", threshold, low_open=True)
    _check_fraction("min_mean_prob", min_mean_prob)
    _check_radius(marker_radius)

    args = (threshold, min_mean_prob, marker_radius)
    if probs.ndim == 2:
        return _oztel_2d(probs, image, *args).astype(np.uint8)
    return np.stack([_oztel_2d(p, im, *args) for p, im in zip(probs, image)]).astype(np.uint8)
