"""Paired image/mask (and weight map) augmentation for 2D images and 3D volumes.

One :class:`Augmenter` draws a random augmentation per sample from an
:class:`lib.config.AugmentConfig` and applies it to an image, its mask and,
optionally, a per-pixel weight map, in this order:

1. flips and 90-degree rotations: exact array views, no interpolation;
2. rotation, zoom, shift, shear and elastic deformation, combined into a
   single coordinate map and resampled once (linear for the image and the
   weight map, nearest for the mask, ``'reflect'`` borders for all);
3. intensity changes (brightness, contrast, gamma, blur, median, noise), image
   only;
4. 3D section defects: a missing section (image only) and misalignment (every
   array together).

Every transform is drawn once and applied to every array it concerns, so the
mask and the weight map move exactly as the image does.

Defects come last because in EM they are made after imaging, when sections are
lost, duplicated or registered badly, so a duplicated or blank section carries
no noise or blur of its own.

In 3D, every in-plane transform acts on the y-x plane and is the same for all
z: EM volumes are usually anisotropic, and sections are imaged one by one.
Pure NumPy/SciPy: no Keras import, so it can run in data-loading workers.
"""

import numpy as np
from scipy import ndimage as ndi


class Augmenter:
    """Random paired augmentation of an image, its binary mask and an optional weight map.

    Parameters
    ----------
    cfg : lib.config.AugmentConfig
        Probabilities (``*_p``) and ranges of each transform; ``enabled=False``
        makes the augmenter the identity. ``missing_section_p`` and
        ``misalignment_p`` apply to 3D only and are ignored in 2D.
    ndim : int
        Number of spatial dimensions: 2 for ``(H, W)`` images, 3 for
        ``(Z, Y, X)`` volumes.

    Raises
    ------
    ValueError
        If ``ndim`` is not 2 or 3.
    lib.errors.UserError
        If a value of ``cfg`` is out of range.
    """

    def __init__(self, cfg, ndim):
        if ndim not in (2, 3):
            raise ValueError(f"Augmenter: ndim must be 2 or 3, got {ndim}")
        cfg.validate()
        self.cfg = cfg
        self.ndim = ndim

    def __call__(self, image, mask, rng, weight=None):
        """Augment one sample.

        Parameters
        ----------
        image : ndarray, shape (*spatial, C)
            The image, ``(H, W, C)`` in 2D or ``(Z, Y, X, C)`` in 3D; converted
            to float32.
        mask : integer ndarray, shape spatial
            Binary mask with values in {0, 1} (or class ids, or a label image of objects: its dtype is kept),
            aligned with ``image``.
        rng : numpy.random.Generator
            Source of every random choice: the same generator state gives the
            same output, with or without ``weight``.
        weight : ndarray, shape spatial, optional
            Per-pixel loss weights aligned with ``mask``
            (:func:`lib.data.weightmaps.weight_map`); converted to float32. They follow
            every geometric transform and section defect of the mask, resampled
            linearly, and no intensity change.

        Returns
        -------
        image : ndarray of float32, shape (*spatial, C)
            The augmented image, a new array.
        mask : ndarray of uint8, shape spatial
            The augmented mask, a new array, still binary and aligned with the
            returned image.
        weight : ndarray of float32, shape spatial
            Only when ``weight`` is given: the augmented weight map, a new array.

        Raises
        ------
        ValueError
            If the shapes of ``image``, ``mask`` and ``weight`` do not match ``ndim``.
        """
        image = np.array(image, dtype=np.float32)
        mask = np.asarray(mask)
        labels = [np.array(mask, dtype=mask.dtype if np.issubdtype(mask.dtype, np.integer) else np.uint8)]
        if weight is not None:
            labels.append(np.array(weight, dtype=np.float32))
        if image.ndim != self.ndim + 1 or any(a.shape != image.shape[:-1] for a in labels):
            got = ", ".join(f"{name} {a.shape}" for name, a in zip(("image", "mask", "weight"), (image, *labels)))
            raise ValueError(
                f"Augmenter({self.ndim}D): expected image (*spatial, C) with {self.ndim} spatial axes, and mask "
                f"and weight of shape spatial; got {got}"
            )
        if self.cfg.enabled:
            # Channels first, so that the image shares its trailing spatial axes with the other arrays.
            moved = self._geometry([np.moveaxis(image, -1, 0), *labels], rng)
            image, labels = np.moveaxis(moved[0], 0, -1), moved[1:]
            image = self._intensity(image, rng)
            if self.ndim == 3 and image.shape[0] > 1:
                image = self._section_defects(image, labels, rng)
        return tuple(np.ascontiguousarray(a) for a in (image, *labels))

    def _geometry(self, arrays, rng):
        """Flip, turn and warp every array of ``arrays`` (shapes ``(..., *spatial)``) alike.

        Float arrays are resampled linearly, integer ones (masks) by nearest neighbour.
        """
        cfg = self.cfg
        for axis in range(-self.ndim, 0):
            if rng.random() < cfg.flip_p:
                arrays = [np.flip(a, axis) for a in arrays]
        if rng.random() < cfg.rot90_p:
            height, width = arrays[0].shape[-2:]
            # A quarter turn of a non-square plane would change the sample shape.
            k = int(rng.integers(1, 4)) if height == width else 2
            arrays = [np.rot90(a, k, axes=(-2, -1)) for a in arrays]
        coords = self._coordinate_map(arrays[0].shape[-2:], rng)
        if coords is not None:
            arrays = [_warp(a, coords, order=0 if np.issubdtype(a.dtype, np.integer) else 1) for a in arrays]
        return arrays

    def _coordinate_map(self, plane, rng):
        """Draw the in-plane geometric transforms as one sampling map.

        Returns ``None`` when none of them fires, else float64 coordinates of
        shape ``(2, Y, X)``: for each output pixel, the (y, x) position in the
        input to sample.
        """
        cfg = self.cfg
        forward = np.eye(2)
        shift = np.zeros(2)
        fired = False
        if rng.random() < cfg.rotation_p:
            theta = np.deg2rad(rng.uniform(-cfg.rotation_range, cfg.rotation_range))
            cos, sin = np.cos(theta), np.sin(theta)
            forward = np.array([[cos, -sin], [sin, cos]]) @ forward
            fired = True
        if rng.random() < cfg.shear_p:
            phi = np.deg2rad(rng.uniform(-cfg.shear_range, cfg.shear_range))
            forward = np.array([[1.0, 0.0], [np.tan(phi), 1.0]]) @ forward
            fired = True
        if rng.random() < cfg.zoom_p:
            # Isotropic: EM pixels are square in the imaging plane.
            forward = rng.uniform(*cfg.zoom_range) * forward
            fired = True
        if rng.random() < cfg.shift_p:
            shift = rng.uniform(-cfg.shift_range, cfg.shift_range, size=2) * np.array(plane)
            fired = True
        elastic = rng.random() < cfg.elastic_p
        if not (fired or elastic):
            return None
        # Pull-back: output pixel p samples the input at F^-1(p - centre - shift) + centre.
        centre = (np.array(plane) - 1) / 2.0
        inverse = np.linalg.inv(forward)
        offset = centre - inverse @ (centre + shift)
        yy = np.arange(plane[0], dtype=np.float64)[:, None]
        xx = np.arange(plane[1], dtype=np.float64)[None, :]
        coords = np.empty((2, *plane))
        coords[0] = inverse[0, 0] * yy + inverse[0, 1] * xx + offset[0]
        coords[1] = inverse[1, 0] * yy + inverse[1, 1] * xx + offset[1]
        if elastic:
            # Simard et al. (2003): uniform noise smoothed by a Gaussian, scaled by alpha.
            noise = rng.uniform(-1.0, 1.0, size=coords.shape)
            coords += cfg.elastic_alpha * ndi.gaussian_filter(
                noise, sigma=(0, cfg.elastic_sigma, cfg.elastic_sigma), mode="reflect"
            )
        return coords

    def _intensity(self, image, rng):
        cfg = self.cfg
        spatial = tuple(range(self.ndim))
        if rng.random() < cfg.brightness_p:
            image += np.float32(rng.uniform(-cfg.brightness_range, cfg.brightness_range))
        if rng.random() < cfg.contrast_p:
            mean = image.mean(axis=spatial, keepdims=True)
            image = (image - mean) * np.float32(rng.uniform(*cfg.contrast_range)) + mean
        if rng.random() < cfg.gamma_p:
            # Gamma needs values in [0, 1]; z-scored images are rescaled there and back.
            low = image.min(axis=spatial, keepdims=True)
            span = np.maximum(image.max(axis=spatial, keepdims=True) - low, np.finfo(np.float32).tiny)
            gamma = np.float32(rng.uniform(*cfg.gamma_range))
            image = ((image - low) / span) ** gamma * span + low
        # Blur and median act within each section only, like defocus of one EM image.
        in_plane = (0,) * (self.ndim - 2) + (1, 1, 0)
        if rng.random() < cfg.blur_p:
            sigma = rng.uniform(*cfg.blur_sigma)
            image = ndi.gaussian_filter(image, sigma=tuple(sigma * s for s in in_plane), mode="reflect")
        if rng.random() < cfg.median_p:
            sizes = cfg.median_size if isinstance(cfg.median_size, list) else [cfg.median_size]
            side = int(sizes[rng.integers(len(sizes))])
            size = tuple(side if s else 1 for s in in_plane)
            image = ndi.median_filter(image, size=size, mode="reflect")
        if rng.random() < cfg.noise_p:
            image = image + cfg.noise_std * rng.standard_normal(image.shape, dtype=np.float32)
        return image.astype(np.float32, copy=False)

    def _section_defects(self, image, labels, rng):
        """Misalign ``image`` ``(Z, Y, X, C)`` and every ``(Z, Y, X)`` array of ``labels`` together, in place.

        A missing section blanks or duplicates a section of the image only. Returns the image.
        """
        cfg = self.cfg
        depth = image.shape[0]
        if rng.random() < cfg.misalignment_p and cfg.misalignment_max_shift > 0:
            start = int(rng.integers(1, depth))
            dy, dx = _nonzero_offset(cfg.misalignment_max_shift, rng)
            for array in (image, *labels):
                array[start:] = _shift_plane(array[start:], dy, dx, axes=(1, 2))
        if rng.random() < cfg.missing_section_p:
            z = int(rng.integers(depth))
            if rng.random() < 0.5:
                # The mean rather than zeros: zero is mid-grey in a z-scored image.
                image[z] = image.mean(axis=(0, 1, 2))
            else:
                neighbours = [n for n in (z - 1, z + 1) if 0 <= n < depth]
                image[z] = image[neighbours[int(rng.integers(len(neighbours)))]]
        return image


def _warp(stack, coords, order):
    """Resample every 2D plane of ``stack`` at ``coords``.

    Parameters
    ----------
    stack : ndarray, shape (..., Y, X)
        Planes to resample, e.g. ``(C, Z, Y, X)``.
    coords : ndarray of float64, shape (2, Y, X)
        Input (y, x) position sampled by each output pixel.
    order : int
        Spline order: 1 (linear) for images and weight maps, 0 (nearest) for masks.

    Returns
    -------
    ndarray, same shape and dtype as ``stack``
    """
    # One 2D call per plane sharing the map is exact and about 2.5 times faster
    # than a 3D map_coordinates with an identity z coordinate, which interpolates
    # 8 neighbours instead of 4 and needs a (3, Z, Y, X) coordinate array.
    planes = np.ascontiguousarray(stack).reshape(-1, *stack.shape[-2:])
    out = np.empty_like(planes)
    for plane, target in zip(planes, out):
        ndi.map_coordinates(plane, coords, output=target, order=order, mode="reflect")
    return out.reshape(stack.shape)


def _nonzero_offset(max_shift, rng):
    """Draw integer ``(dy, dx)`` uniformly in ``[-max_shift, max_shift]^2`` minus ``(0, 0)``."""
    side = 2 * max_shift + 1
    index = int(rng.integers(side * side - 1))
    centre = side * side // 2
    index += index >= centre
    return index // side - max_shift, index % side - max_shift


def _shift_plane(array, dy, dx, axes):
    """Shift ``array`` by whole pixels along two axes, filling borders by reflection.

    Matches ``np.roll(array, (dy, dx), axes)`` except in the uncovered border,
    which reflects the edge as ``map_coordinates(mode='reflect')`` does.

    Parameters
    ----------
    array : ndarray
        Any dtype; values are copied, never interpolated.
    dy, dx : int
        Shift in pixels along ``axes[0]`` and ``axes[1]``.
    axes : tuple of int
        The two axes of the plane.

    Returns
    -------
    ndarray, same shape and dtype as ``array``
    """
    for axis, step in zip(axes, (dy, dx)):
        size = array.shape[axis]
        array = np.take(array, _reflect_index(np.arange(size) - step, size), axis=axis)
    return array


def _reflect_index(index, size):
    """Fold integer indices into ``[0, size)`` as ``mode='reflect'`` does (``d c b a | a b c d``)."""
    index = np.mod(index, 2 * size)
    return np.where(index >= size, 2 * size - 1 - index, index)
