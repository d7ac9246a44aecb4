"""The steps of Xiao et al. (2018) around the network: options, histogram equalisation, 3D connection.

The method's own options form a ``xiao`` configuration section beside lib's
six (:class:`XiaoConfig`, given to :func:`lib.run.runner.run` as ``sections``): it is
read from the entry script's ``CONFIG`` block, from a ``--config`` file and from
``--set xiao.key=value``, like the others, and recorded in the run's ``config.json``.
The other functions given to the runner are :func:`check_options`,
:func:`equalize_sets` and :func:`connected_variant`.

No Keras import at module level: the options are read before the command line
has chosen the device.
"""

import os
from dataclasses import dataclass

import numpy as np
from skimage import exposure
from skimage.measure import label
from skimage.segmentation import relabel_sequential

from lib import config as config_lib
from lib.data import io
from lib.errors import UserError
from lib.predict.postprocess import binarize

SECTION = "xiao"
EQUALIZATIONS = ("none", "hist", "adapthist")
# Name of the 3D-connection variant in metrics.json and of its folder in predictions/.
CONNECTED = "connected_3d"


@dataclass
class XiaoConfig:
    """The method's options (section ``xiao``).

    Attributes
    ----------
    equalize : str
        Pre-processing of every slice of the training and test volumes:
        ``hist`` (histogram equalisation, the paper's), ``adapthist`` (CLAHE)
        or ``none``.
    clip_limit : float
        ``adapthist`` only: CLAHE clip limit in (0, 1].
    connect_3d : bool
        Post-processing: label the 3D connected components of the tiled
        prediction (the paper's 3D connection) as the ``connected_3d`` variant.
    min_object_voxels : int
        ``connect_3d``: drop connected components smaller than this (0 keeps all).
    """

    equalize: str = "hist"
    clip_limit: float = 0.01
    connect_3d: bool = True
    min_object_voxels: int = 0

    def validate(self):
        config_lib.check_choice(f"{SECTION}.equalize", self.equalize, EQUALIZATIONS)
        config_lib.check_range(f"{SECTION}.clip_limit", self.clip_limit, 0.0, 1.0, low_open=True)
        config_lib.check_range(f"{SECTION}.min_object_voxels", self.min_object_voxels, 0, None)
        return self


# --------------------------------------------------------------------------- pre-processing

def equalize(volume, method, clip_limit=0.01):
    """Histogram-equalise each z-slice and channel of a volume.

    Each slice is first stretched to [0, 1] (CLAHE needs that range); the
    equalised volume is then in [0, 1] whatever the normalisation before it.

    Parameters
    ----------
    volume : ndarray ``(Z, Y, X, C)``, real
    method : {'none', 'hist', 'adapthist'}
        ``hist``: :func:`skimage.exposure.equalize_hist` (256 bins);
        ``adapthist``: :func:`skimage.exposure.equalize_adapthist` (CLAHE);
        ``none``: ``volume`` is returned unchanged.
    clip_limit : float
        CLAHE clip limit in (0, 1].

    Returns
    -------
    ndarray ``(Z, Y, X, C)`` float32
    """
    if method == "none":
        return volume
    if method not in EQUALIZATIONS:
        raise ValueError(f"method: expected one of {', '.join(EQUALIZATIONS)}, got {method!r}")
    volume = np.asarray(volume)
    if volume.ndim != 4:
        raise ValueError(f"volume: expected a (Z, Y, X, C) array, got shape {volume.shape}")
    out = np.empty(volume.shape, np.float32)
    for z in range(volume.shape[0]):
        for c in range(volume.shape[3]):
            plane = exposure.rescale_intensity(volume[z, :, :, c].astype(np.float32), out_range=(0.0, 1.0))
            out[z, :, :, c] = (exposure.equalize_hist(plane) if method == "hist"
                               else exposure.equalize_adapthist(plane, clip_limit=clip_limit))
    return out


def equalize_sets(cfg, *image_sets):
    """Apply :func:`equalize` (``cfg.xiao.equalize``) to every volume of each ImageSet, in place.

    Volumes read from zarr / HDF5 stores (lib.data.sets.DiskImageSet) are never loaded whole, so they
    cannot be equalised: refused, naming the option.
    """
    xcfg = cfg.xiao
    if xcfg.equalize == "none":
        return
    from lib.data.sets import DiskImageSet

    if any(isinstance(image_set, DiskImageSet) for image_set in image_sets):
        raise UserError(f"{SECTION}.equalize={xcfg.equalize}: volumes read from zarr / HDF5 stores are not "
                        f"equalised (that needs them in memory); set {SECTION}.equalize=none, or use TIFF volumes")
    for image_set in image_sets:
        image_set.images = [equalize(v, xcfg.equalize, xcfg.clip_limit) for v in image_set.images]
    print(f"Histogram equalisation ({xcfg.equalize}) of every slice, training and test volumes alike")


# --------------------------------------------------------------------------- 3D connection

def connect_3d(binary, min_voxels=0):
    """Label the 3D connected components of a binary volume (26-connectivity) and drop the small ones.

    The 3D connection of Xiao et al. relates the mitochondria of successive
    sections into 3D objects, as MATLAB's ``bwconncomp`` does (Li et al.,
    BioData Mining 2018): connected components with full 3D connectivity.

    Parameters
    ----------
    binary : ndarray ``(Z, Y, X)`` of bool or {0, 1}
    min_voxels : int
        Components with fewer voxels are removed (0 or 1 keep all).

    Returns
    -------
    ndarray ``(Z, Y, X)`` uint32
        Objects labelled 1..n, 0 for background.
    """
    binary = np.asarray(binary)
    if binary.ndim != 3:
        raise ValueError(f"binary: expected a (Z, Y, X) volume, got shape {binary.shape}")
    labels = label(binary.astype(bool), connectivity=3)
    if min_voxels > 1:
        small = np.bincount(labels.ravel()) < min_voxels
        small[0] = False
        labels[small[labels]] = 0
        labels = relabel_sequential(labels)[0]
    return labels.astype(np.uint32)


def connected_variant(cfg, test_set, pred_dir):
    """``{'connected_3d': metrics}`` (:func:`evaluate_connected`) with ``xiao.connect_3d``, scored; else ``{}``."""
    if not cfg.xiao.connect_3d:
        return {}
    connected = evaluate_connected(test_set, cfg, cfg.xiao, pred_dir)
    return {} if connected is None else {CONNECTED: connected}


def evaluate_connected(test_set, cfg, xcfg, pred_dir):
    """The ``connected_3d`` variant: 3D connection of the tiled predictions, written and scored.

    Reads ``predictions/tiled/prob/<name>.tif`` (written by
    :func:`lib.evaluate.evaluation.evaluate_test_set`), binarises it at
    ``inference.threshold``, applies :func:`connect_3d` and writes
    ``predictions/connected_3d/labels/<name>.tif`` (uint32 objects) and
    ``.../binary/<name>.tif``.

    Returns
    -------
    dict, or None for a test set without ground truth (masks None: predictions written, nothing scored)
        The pixel metrics, ``det``, ``seg`` and ``objects`` (the number of 3D
        objects) over the test set, as the other variants in ``metrics.json``.
    """
    from lib.evaluate.evaluation import OBJECT_METRICS, save_prediction
    from lib.evaluate.metrics import ObjectCounts, PixelCounts

    pixels, objects, count = PixelCounts(), ObjectCounts(), 0
    for i in range(len(test_set)):
        _, mask, name = test_set[i]
        prob = io.read_image(os.path.join(pred_dir, "tiled", "prob", f"{name}.tif"))
        labels = connect_3d(binarize(prob, cfg.inference.threshold), xcfg.min_object_voxels)
        folder = os.path.join(pred_dir, CONNECTED, "labels")
        os.makedirs(folder, exist_ok=True)
        io.write_tiff(os.path.join(folder, f"{name}.tif"), labels)
        save_prediction(pred_dir, CONNECTED, name, labels > 0)
        if mask is None:
            continue
        pixels += PixelCounts.from_arrays(labels > 0, mask)
        objects += ObjectCounts.from_labels(labels, label(mask, connectivity=3))
        count += int(labels.max())
    if mask is None:
        return None
    scores = objects.metrics()
    return {**pixels.metrics(), **{k: scores[k] for k in OBJECT_METRICS}, "objects": count}


def check_options(cfg):
    """Raise UserError for options the network cannot take, or combinations of lib's and the method's that cannot run."""
    from . import options

    options.check_config(cfg)
    if cfg.xiao.connect_3d and cfg.model.classes > 1:
        raise UserError(f"{SECTION}.connect_3d=true connects binary objects in 3D; with model.classes="
                        f"{cfg.model.classes} set {SECTION}.connect_3d=false")
    if cfg.xiao.connect_3d and not cfg.inference.tiled:
        raise UserError(f"{SECTION}.connect_3d=true post-processes the tiled prediction; set inference.tiled=true "
                        f"or {SECTION}.connect_3d=false")
