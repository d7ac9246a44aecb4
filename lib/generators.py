"""Training data as ``keras.utils.PyDataset``: crops, sampling, augmentation.

Reproducible: sample ``i`` of epoch ``e`` is drawn with the random generator
seeded by ``(seed, e, i)``, so results do not depend on worker scheduling.
"""

import numpy as np
import keras

from .errors import UserError


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
    augmenter : callable ``(image, mask, rng) -> (image, mask)`` or None
    random_crops : bool
        True: every sample is a new random crop of a random image each epoch;
        False: ``images`` are already crops of ``crop_shape`` and are used as they are.
    fg_sampling : float in [0, 1]
        Share of random crops centred on a foreground pixel (the rest uniformly),
        i.e. a probability map with this much of its mass on foreground.
    replicate : int
        How many times the training set is seen per epoch.
    seed : int
    shuffle : bool
    workers : int
        Threads preparing batches beside training.
    """

    def __init__(self, images, masks, crop_shape, batch_size, augmenter=None, random_crops=True,
                 fg_sampling=0.0, replicate=1, seed=0, shuffle=True, workers=1):
        super().__init__(workers=workers, use_multiprocessing=False)
        if len(images) != len(masks) or not images:
            raise UserError(f"training data: {len(images)} images and {len(masks)} masks; expected equal, non-zero counts")
        self.images, self.masks = images, masks
        self.crop_shape = tuple(crop_shape)
        self.batch_size = batch_size
        self.augmenter = augmenter
        self.random_crops = random_crops
        self.fg_sampling = fg_sampling
        self.replicate = replicate
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self._fg = [np.flatnonzero(m) for m in masks] if random_crops and fg_sampling > 0 else None
        self._order = self._epoch_order()

    def __len__(self):
        return -(-len(self.images) * self.replicate // self.batch_size)

    def on_epoch_end(self):
        self.epoch += 1
        self._order = self._epoch_order()

    def _epoch_order(self):
        order = np.tile(np.arange(len(self.images)), self.replicate)
        if self.shuffle:
            np.random.default_rng([self.seed, self.epoch]).shuffle(order)
        return order

    def __getitem__(self, index):
        items = self._order[index * self.batch_size:(index + 1) * self.batch_size]
        xs, ys = [], []
        for k, item in enumerate(items):
            rng = np.random.default_rng([self.seed, self.epoch, index * self.batch_size + k])
            x, y = self.sample(item, rng)
            xs.append(x)
            ys.append(y)
        return np.stack(xs), np.stack(ys)[..., None].astype(np.float32)

    def sample(self, item, rng):
        """Return one training pair ``(image (*crop, C) float32, mask (*crop) uint8)``."""
        image, mask = self.images[item], self.masks[item]
        if self.random_crops:
            corner = self._crop_corner(item, rng)
            window = tuple(slice(c, c + s) for c, s in zip(corner, self.crop_shape))
            image, mask = image[window], mask[window]
        if self.augmenter is not None:
            image, mask = self.augmenter(image, mask, rng)
        return np.ascontiguousarray(image, dtype=np.float32), mask

    def _crop_corner(self, item, rng):
        shape = self.masks[item].shape
        fg = self._fg[item] if self._fg is not None else None
        if fg is not None and len(fg) and rng.random() < self.fg_sampling:
            centre = np.unravel_index(fg[rng.integers(len(fg))], shape)
            return [int(np.clip(c - s // 2, 0, n - s)) for c, s, n in zip(centre, self.crop_shape, shape)]
        return [int(rng.integers(0, n - s + 1)) for s, n in zip(self.crop_shape, shape)]
