"""Training data as ``keras.utils.PyDataset``: crops, sampling, augmentation.

Reproducible: sample ``i`` of epoch ``e`` is drawn with the random generator
seeded by ``(seed, e, i)``, so results do not depend on worker scheduling.
"""

import threading
from multiprocessing.pool import ThreadPool

import keras
import numpy as np

from ..errors import UserError
from .io import annotated, foreground, ignored
from .tiling import training_targets


class CropDataset(keras.utils.PyDataset):
    """Batches of (augmented) crops from in-memory images and masks.

    Parameters
    ----------
    images : list of float32 ndarray ``(*spatial, C)``
        Normalised images (2D ``(H, W, C)`` or 3D ``(Z, Y, X, C)``), possibly of different sizes.
    masks : list of uint8 ndarray ``spatial``
        Binary {0, 1} masks aligned with ``images``.
    crop_shape : sequence of int
        Spatial size of a training sample.
    batch_size : int
    augmenter : lib.data.augment.Augmenter, or callable ``(image, mask, rng) -> (image, mask)``, or None
        With ``weights``, it is called ``(image, mask, rng, weight=weight)`` and
        returns ``(image, mask, weight)``, as :class:`lib.data.augment.Augmenter` does.
    random_crops : bool
        True: every sample is a new random crop of a random image each epoch;
        False: ``images`` are already crops of ``crop_shape`` and are used as they are.
    fg_sampling : float in [0, 1]
        Share of random crops centred on a foreground pixel (the rest uniformly),
        i.e. a probability map with this much of its mass on foreground.
    replicate : int
        How many times the training set is seen per epoch.
    draws : sequence of int, optional
        Samples of each image in one pass over the training set (default 1
        each); e.g. the number of crops that cover the image.
    samples_per_epoch : int, optional
        Samples per epoch; default ``sum(draws) * replicate``. Fewer than that
        take a seeded random part of the passes each epoch, more cycle through them.
    seed : int
    shuffle : bool
    workers : int
        Threads preparing batches beside training (1: in the training loop),
        up to ``max_queue_size`` (10) batches of the current epoch ahead.
    weights : list of float32 ndarray ``spatial``, optional
        Per-pixel loss weights aligned with ``masks`` (:func:`lib.data.weightmaps.weight_map`),
        cropped with the same window and moved by the same augmentation call
        as the mask. With them the targets ``y`` have two
        channels, mask then weight, for :func:`lib.model.losses.weighted_bce`.

    targets : callable ``mask (*crop) -> (*crop, K) float32``, optional
        The targets of each crop computed from its mask once cut and augmented (e.g. the instance channels of
        :func:`lib.data.targets.instance_targets` of a label image); default the mask (and weight) itself.

    Batches are ``(x (N, *crop, C) float32, y (N, *crop, 1 or 2) float32)`` (``K`` channels with ``targets``).
    """

    def __init__(self, images, masks, crop_shape, batch_size, augmenter=None, random_crops=True,
                 fg_sampling=0.0, replicate=1, seed=0, shuffle=True, workers=1, weights=None, draws=None,
                 samples_per_epoch=None, targets=None):
        # Keras gets one worker, i.e. no enqueuer of its own: on JAX and torch, fit() peeks at a batch before the
        # first epoch, and the enqueuer keeps the batches it prepared then (with the dataset's state before
        # set_epoch) and serves them in the first epoch, so a resumed run would not see an uninterrupted one's
        # data. The threads here prepare batches keyed by (epoch, index) instead.
        super().__init__(workers=1, use_multiprocessing=False)
        if len(images) != len(masks) or not images:
            raise UserError(f"training data: {len(images)} images and {len(masks)} masks; expected equal, non-zero counts")
        if weights is not None and [w.shape for w in weights] != [m.shape for m in masks]:
            raise ValueError("CropDataset: expected one weight map of the shape of each mask")
        self.images, self.masks, self.weights, self.targets = images, masks, weights, targets
        self.crop_shape = tuple(crop_shape)
        self.batch_size = batch_size
        self.augmenter = augmenter
        self.random_crops = random_crops
        self.fg_sampling = fg_sampling
        self.replicate = replicate
        self.draws = np.ones(len(images), int) if draws is None else np.asarray(draws, int)
        if len(self.draws) != len(images) or (self.draws < 1).any():
            raise ValueError("CropDataset: expected one positive number of draws per image")
        self.samples = int(samples_per_epoch or self.draws.sum() * replicate)
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.threads = workers
        self._pool, self._ahead, self._lock = None, {}, threading.Lock()
        self._fg = [np.flatnonzero(foreground(m)) for m in masks] if random_crops and fg_sampling > 0 else None
        # masks with unannotated pixels (data.ignore_value): their random crops must hold annotated ones
        self._partial = ([isinstance(m, np.ndarray) and bool(ignored(m).any()) for m in masks] if random_crops
                         else None)
        self._annotated = {}  # item -> flat indices of its annotated pixels, made when rejection fails
        self._order = self._epoch_order()

    def __len__(self):
        return -(-self.samples // self.batch_size)

    def on_epoch_end(self):
        self.set_epoch(self.epoch + 1)

    def set_epoch(self, epoch):
        """Draw the order and crops of epoch ``epoch`` (0-based) next, whatever came before.

        Called by :func:`lib.train.loop.train` as each epoch begins, so that a
        resumed run sees the data of an uninterrupted one.
        """
        with self._lock:
            self.epoch = epoch
            self._order = self._epoch_order()
            self._ahead = {key: batch for key, batch in self._ahead.items() if key[0] == epoch}

    def release(self):
        """Drop the training arrays so that their memory is returned; the dataset is unusable afterwards.

        Keras (TensorFlow backend) keeps a reference to a PyDataset after ``fit``
        until the process ends, and with it every image the dataset holds.
        """
        if self._pool is not None:
            self._pool.terminate()
        self.images = self.masks = self.weights = self._fg = self._pool = None
        self._ahead = {}

    def _epoch_order(self):
        passes = np.repeat(np.arange(len(self.draws)), self.draws)
        order = np.tile(passes, -(-self.samples // len(passes)))
        if self.shuffle:
            np.random.default_rng([self.seed, self.epoch]).shuffle(order)
        return order[:self.samples]

    def __getitem__(self, index):
        if self.threads <= 1:
            return self._batch(self._order, self.epoch, index)
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPool(self.threads)  # daemon threads, as Keras' own: an exit does not wait for them
            for ahead in range(index, min(index + 1 + self.max_queue_size, len(self))):
                if (self.epoch, ahead) not in self._ahead:
                    self._ahead[self.epoch, ahead] = self._pool.apply_async(self._ahead_batch,
                                                                            (self._order, self.epoch, ahead))
            batch = self._ahead.pop((self.epoch, index))
        return batch.get()

    def _ahead_batch(self, order, epoch, index):
        """:meth:`_batch`, or None when epoch ``epoch`` is no longer the current one (nobody will ask for it)."""
        return self._batch(order, epoch, index) if epoch == self.epoch else None

    def _batch(self, order, epoch, index):
        """Batch ``index`` of epoch ``epoch``, whose sample order is ``order``."""
        items = order[index * self.batch_size:(index + 1) * self.batch_size]
        xs, ys = [], []
        for k, item in enumerate(items):
            rng = np.random.default_rng([self.seed, epoch, index * self.batch_size + k])
            x, *target = self.sample(item, rng)
            xs.append(x)
            ys.append(training_targets(*target) if self.targets is None else self.targets(target[0]))
        return np.stack(xs), np.stack(ys).astype(np.float32)

    def sample(self, item, rng):
        """Return one training pair ``(image (*crop, C) float32, mask (*crop) uint8)``.

        With ``weights``, a triple: the pair and the crop's weight map ``(*crop)`` float32.
        """
        image, mask = self.images[item], self.masks[item]
        weight = None if self.weights is None else self.weights[item]
        if self.random_crops:
            corner = self._crop_corner(item, rng)
            window = tuple(slice(c, c + s) for c, s in zip(corner, self.crop_shape))
            image, mask = image[window], mask[window]
            weight = None if weight is None else weight[window]
        if self.augmenter is not None and weight is None:
            image, mask = self.augmenter(image, mask, rng)
        elif self.augmenter is not None:
            image, mask, weight = self.augmenter(image, mask, rng, weight=weight)
        image = np.ascontiguousarray(image, dtype=np.float32)
        return (image, mask) if weight is None else (image, mask, weight)

    def _crop_corner(self, item, rng):
        """The corner of a random crop of item ``item``: centred on a foreground pixel (``fg_sampling``), or
        uniform; of a mask with unannotated pixels, a uniform crop holding annotated ones (drawn again until it
        does, at most ``ANNOTATED_TRIES`` times, then centred on a uniform annotated pixel)."""
        shape = self.masks[item].shape
        fg = self._fg[item] if self._fg is not None else None
        if fg is not None and len(fg) and rng.random() < self.fg_sampling:
            return self._centred(fg[rng.integers(len(fg))], shape)
        for _ in range(ANNOTATED_TRIES):
            corner = [int(rng.integers(0, n - s + 1)) for s, n in zip(self.crop_shape, shape)]
            if not (self._partial and self._partial[item]):
                return corner
            window = tuple(slice(c, c + s) for c, s in zip(corner, self.crop_shape))
            if annotated(self.masks[item][window]).any():
                return corner
        if item not in self._annotated:
            self._annotated[item] = np.flatnonzero(annotated(np.asarray(self.masks[item])))
        pixels = self._annotated[item]
        return self._centred(pixels[rng.integers(len(pixels))], shape)

    def _centred(self, pixel, shape):
        """The corner of the crop centred on the flat index ``pixel`` of a mask of ``shape``, moved inside it."""
        centre = np.unravel_index(pixel, shape)
        return [int(np.clip(c - s // 2, 0, n - s)) for c, s, n in zip(centre, self.crop_shape, shape)]


# Uniform random crops drawn for a crop that holds annotated pixels before one is centred on an annotated pixel.
ANNOTATED_TRIES = 20


# --------------------------------------------------------------------------- streamed from disk

class DiskCropDataset(CropDataset):
    """Batches of random (or fixed), augmented crops (or subvolumes) read from image files or stores as needed.

    Each sample reads only its crop's window (for TIFF, only the strips or tiles
    it touches; for zarr / HDF5, only the chunks) in the worker preparing the batch, and nothing is kept between
    batches, so memory does not grow with the dataset. Order, replication,
    seeding and augmentation are those of :class:`CropDataset`.

    Parameters
    ----------
    images : list of lib.data.disk.DiskImage, 2D images or 3D volumes
    masks : list of lib.data.disk.DiskMask
    crop_shape, batch_size, augmenter, replicate, seed, shuffle, workers, draws, samples_per_epoch
        As for :class:`CropDataset`.
    fg_sampling : float in [0, 1]
        Share of random crops centred on a foreground pixel.
    foreground : list of lib.data.disk.ForegroundIndex, aligned with ``masks``
        Needed when ``fg_sampling > 0``.
    windows : list of ``(item, corner)``, optional
        Fixed crops: each sample is the crop of ``images[item]`` at ``corner``, each seen once per pass
        (``draws`` and ``fg_sampling`` are then unused); None: random crops.
    weight_map : callable ``mask (*crop) uint8 -> weights (*crop) float32``, optional
        Per-pixel loss weights computed from each crop's mask as it is read (e.g.
        :func:`lib.data.weightmaps.weight_map`), moved by the same augmentation; the targets then have two
        channels, mask then weight.
    targets : as :class:`CropDataset`'s
    """

    def __init__(self, images, masks, crop_shape, batch_size, augmenter=None, fg_sampling=0.0,
                 foreground=None, replicate=1, seed=0, shuffle=True, workers=1, draws=None,
                 samples_per_epoch=None, windows=None, weight_map=None, targets=None):
        # CropDataset would index the foreground by reading every mask whole;
        # the per-block ForegroundIndex takes the place of its pixel index.
        super().__init__(images, masks, crop_shape, batch_size, augmenter=augmenter, random_crops=True,
                         fg_sampling=0.0, replicate=replicate, seed=seed, shuffle=shuffle, workers=workers,
                         draws=None if windows is not None else draws, samples_per_epoch=samples_per_epoch,
                         targets=targets)
        if fg_sampling > 0 and windows is None and (foreground is None or len(foreground) != len(masks)):
            raise ValueError("DiskCropDataset: fg_sampling needs one ForegroundIndex per mask")
        self.windows, self.weight_map = windows, weight_map
        if windows is not None:
            if not windows:
                raise ValueError("DiskCropDataset: windows is empty; expected at least one crop")
            self.draws = np.ones(len(windows), int)
            self.samples = int(samples_per_epoch or len(windows) * replicate)
            self._order = self._epoch_order()
            fg_sampling = 0.0
        self.fg_sampling = fg_sampling
        self._fg = list(foreground) if fg_sampling > 0 else None
        # streamed masks are not read whole: those read with data.ignore_value may hold unannotated pixels
        self._partial = None if windows is not None else [getattr(m, "ignore", None) is not None for m in masks]

    def sample(self, item, rng):
        """One training pair ``(image (*crop, C) float32, mask (*crop) uint8)``, read from disk; with
        ``weight_map``, the pair and the crop's weights ``(*crop)`` float32."""
        index, corner = self.windows[item] if self.windows is not None else (item, self._crop_corner(item, rng))
        window = tuple(slice(c, c + s) for c, s in zip(corner, self.crop_shape))
        image, mask = self.images[index][window], self.masks[index][window]
        if self.weight_map is None:
            if self.augmenter is not None:
                image, mask = self.augmenter(image, mask, rng)
            return np.ascontiguousarray(image, dtype=np.float32), mask
        weight = self.weight_map(mask)
        if self.augmenter is not None:
            image, mask, weight = self.augmenter(image, mask, rng, weight=weight)
        return np.ascontiguousarray(image, dtype=np.float32), mask, weight
