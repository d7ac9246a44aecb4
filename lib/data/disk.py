"""Images and masks read window by window from their files, normalised as they are read.

Training streamed from disk (the big-data template, 3D stores) cuts its crops from these; a
:class:`ForegroundIndex` lets foreground sampling find objects without reading whole masks.
"""

import numpy as np

from .io import foreground, read_mask

# --------------------------------------------------------------------------- images read window by window

def _bounds(key, shape):
    """``((y0, y1), (x0, x1))`` of an index ``key`` (a tuple of unit-step slices, one per axis of ``shape``),
    clipped like NumPy; ``((z0, z1), (y0, y1), (x0, x1))`` in 3D."""
    if not (isinstance(key, tuple) and len(key) == len(shape) and all(isinstance(k, slice) for k in key)):
        raise TypeError(f"expected a window of {len(shape)} slices, got {key!r}")
    bounds = tuple(k.indices(n) for k, n in zip(key, shape))
    if any(step != 1 for _, _, step in bounds):
        raise TypeError(f"expected unit-step slices, got {key!r}")
    return tuple((start, max(start, stop)) for start, stop, _ in bounds)


class DiskImage:
    """A normalised 2D image (or 3D volume) on disk that reads only the windows asked for.

    Array-like enough for :class:`CropDataset`: ``shape`` is ``(H, W, C)``,
    ``image[y0:y1, x0:x1]`` reads that window as float32 ``(h, w, C)`` and
    ``np.asarray(image)`` reads it all. Nothing is cached between reads. A
    volume (from a zarr / HDF5 store) is ``(Z, Y, X, C)``, indexed by three slices.

    Parameters
    ----------
    source : lib.data.io.FileSlice or lib.data.volumes.StoreRegion
    offset, scale : float
        Normalisation ``(x - offset) / scale``: the image's minimum and range for
        per-image min-max, 0 and the type's maximum for ``dtype_max``, the training
        mean and standard deviation for ``zscore``.
    clip : [low, high], optional
        Levels the raw pixels are clipped to first (``data.clip_percentiles``).
    """

    def __init__(self, source, offset, scale, clip=None):
        self.source, self.offset, self.scale, self.clip = source, float(offset), float(scale), clip

    @property
    def shape(self):
        return tuple(self.source.shape)

    def __len__(self):
        return self.shape[0]

    def part(self, start, stop):
        """The image of the z range ``[start, stop)`` of a volume from a store, normalised alike."""
        return DiskImage(self.source.part(start, stop), self.offset, self.scale, self.clip)

    def read(self, window=None):
        from .intensity import affine_float32, clip_intensities

        return affine_float32(clip_intensities(self.source.read(window), self.clip), self.offset, self.scale)

    def __getitem__(self, key):
        return self.read(_bounds(key, self.shape[:-1]))

    def __array__(self, dtype=None, copy=None):
        x = self.read()
        return x if dtype is None else x.astype(dtype)


class DiskMask:
    """A binary 2D mask (or 3D, from a store) on disk that reads only the windows asked for.

    ``shape`` is ``(H, W)``; ``mask[y0:y1, x0:x1]`` and ``np.asarray(mask)`` read
    uint8 {0, 1}. Values are checked as they are read: a non-binary window raises
    :class:`lib.errors.UserError` naming the file.

    Parameters
    ----------
    source : lib.data.io.FileSlice or lib.data.volumes.StoreRegion
    classes : int
        The mask values accepted (:func:`class_mask`): with ``classes`` > 1 windows read class ids.
    ignore : int, optional
        ``data.ignore_value``: pixels of this value read as unannotated (:func:`lib.data.io.ignored`).
    """

    def __init__(self, source, classes=1, ignore=None):
        self.source = source
        self.classes = classes
        self.ignore = ignore

    @property
    def shape(self):
        return tuple(self.source.shape[:-1])

    def __len__(self):
        return self.shape[0]

    def part(self, start, stop):
        """The mask of the z range ``[start, stop)`` of a volume from a store."""
        return DiskMask(self.source.part(start, stop), self.classes, self.ignore)

    def read(self, window=None):
        return read_mask(self.source, window, self.classes, self.ignore)

    def __getitem__(self, key):
        return self.read(_bounds(key, self.shape))

    def __array__(self, dtype=None, copy=None):
        y = self.read()
        return y if dtype is None else y.astype(dtype)


class ForegroundIndex:
    """The flat indices of a disk mask's foreground pixels, found on demand.

    Stands in for ``np.flatnonzero(mask)`` in :class:`CropDataset`'s foreground
    sampling (``len`` and integer indexing), while keeping only the foreground
    count of each ``cell x cell`` block (``cell`` cubed in 3D): item ``k`` is found
    by locating its block and reading that block of the mask. Items are ordered by
    block, then raster order inside the block, so a uniform index is a uniform
    foreground pixel.

    Parameters
    ----------
    mask : DiskMask, 2D or 3D
    counts : int ndarray ``(ceil(H / cell), ceil(W / cell))`` (one axis more in 3D)
        Foreground pixels per block, from :meth:`block_counts`.
    cell : int
    """

    def __init__(self, mask, counts, cell):
        self.mask, self.cell, self.counts = mask, cell, counts
        self.blocks = np.flatnonzero(counts).astype(np.int64)
        self.ends = np.cumsum(counts.ravel()[self.blocks], dtype=np.int64)

    @staticmethod
    def block_counts(mask, cell):
        """Foreground (annotated and nonzero: any class but the background) pixels of a mask ``(H, W)`` or
        ``(Z, Y, X)`` in each block of side ``cell``, int64."""
        grid = tuple(-(-n // cell) for n in mask.shape)
        padded = np.zeros(tuple(g * cell for g in grid), np.uint8)
        padded[tuple(slice(0, n) for n in mask.shape)] = foreground(mask)
        blocked = padded.reshape(tuple(n for g in grid for n in (g, cell)))
        return blocked.sum(axis=tuple(range(1, 2 * len(grid), 2)), dtype=np.int64)

    def head(self, mask, depth):
        """The index of ``mask``, the first ``depth`` slices (rows in 2D) of ``self.mask``, from these counts.

        Only the blocks that ``depth`` cuts are counted again (reading at most ``cell`` slices).
        """
        full = depth // self.cell
        counts = self.counts[:full]
        if depth % self.cell:
            rest = (slice(full * self.cell, depth),) + (slice(None),) * (len(mask.shape) - 1)
            counts = np.concatenate([counts, self.block_counts(mask[rest], self.cell)])
        return ForegroundIndex(mask, counts, self.cell)

    def __len__(self):
        return int(self.ends[-1]) if len(self.ends) else 0

    def __getitem__(self, k):
        block = int(np.searchsorted(self.ends, k, side="right"))
        rank = int(k) - (int(self.ends[block - 1]) if block else 0)
        corner = [int(b) * self.cell for b in np.unravel_index(self.blocks[block], self.counts.shape)]
        window = self.mask[tuple(slice(c, c + self.cell) for c in corner)]
        inside = np.unravel_index(np.flatnonzero(foreground(window))[rank], window.shape)
        return int(np.ravel_multi_index(tuple(c + int(i) for c, i in zip(corner, inside)), self.mask.shape))
