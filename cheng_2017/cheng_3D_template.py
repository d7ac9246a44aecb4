"""Cheng & Varshney (ICIP 2017) 3D network: stochastic downsampling and factorised 3D convolutions.

Usage::

    python cheng_2017/cheng_3D_template.py CODE_DIR DATA_DIR JOB_DIR --id 400 --rid 0 --gpu 0 \
        [--set train.epochs=50 ...] [--config FILE.json] [--threads N] [--overwrite]

The same command line, data layout (each of ``train/{x,y}`` and ``test/{x,y}``
a folder of sorted 2D slices or of multi-page TIFF stacks) and run folder
(``JOB_DIR/<id>_<rid>/``) as ``templates/3D_template.py``; the defaults below
are the paper's training settings as far as they are known (see
cheng_2017/README.md). Subvolume sizes must be multiples of 16 on every axis:
the network halves z as well, as the paper's isotropic FIB-SEM volume allows.
"""

CONFIG = {
    "data": {
        "normalization": "per_image",  # per_image (min-max per volume) | dtype_max (x / 255 for uint8) | zscore (training mean/std)
        "val_fraction": 0.0,           # one volume: its last slices validate; 0: train on all of it, as the paper
        "val_split": "last",           # several volumes: random | last (the last volumes)
        "crop_shape": [96, 128, 128],  # training subvolume / inference tile (z, y, x); multiples of 16
        "random_crops": True,          # True: new random subvolumes each epoch; False: fixed grid of subvolumes
        "fg_sampling": 0.0,            # share of subvolumes centred on a foreground voxel (0 = uniform)
        "replicate": 1,                # passes over the training volume per epoch (train.steps_per_epoch sets the length here)
    },
    "augment": {
        "enabled": True,               # False: no augmentation at all
        "flip_p": 0.0,                 # probability of a flip, per axis (z, y, x)
        "rot90_p": 0.5,                # probability of an in-plane (y-x) 90/180/270-degree rotation
    },
    "model": {
        "name": "cheng3d",             # the paper's 3D asymmetric encoder-decoder (cheng_2017/networks.py)
        "depth": 3,                    # fixed: the network halves its input 3 times, on every axis
        "filters": 16,                 # width of the input block; blocks widen by filters/2; decoder 4x and 2x filters
        "dropout": 0.1,                # dropout inside every encoder block (one number)
        "spatial_dropout": False,      # drop whole feature maps instead of voxels
        "batch_norm": True,            # batch normalisation before each activation
        "activation": "relu",          # relu | elu | leaky_relu | gelu | swish
        "upsampling": "transpose",     # transpose (learned) | resize (+ convolution)
    },
    "train": {
        "epochs": 545,                 # maximum number of epochs
        "batch_size": 3,               # subvolumes per batch
        "optimizer": "sgd",            # sgd (with momentum) | adam | adamw
        "learning_rate": 0.1,          # initial learning rate
        "momentum": 0.9,               # sgd only
        "nesterov": False,             # sgd only: Nesterov momentum
        "schedule": "step",            # none | step | cosine | plateau | onecycle (resumed runs continue it)
        "step_epochs": [272, 408],     # step: the rate drops after 50 % and 75 % of the epochs
        "step_factor": 0.1,            # step: factor of each drop
        "loss": "jaccard",             # the paper's loss: 1 - (sum(y p) + 1) / (sum(y) + sum(p) - sum(y p) + 1)
        "batch_overlap": True,         # Jaccard sums over the whole batch (per crop, empty crops reward empty output)
        "patience": 200,               # early stopping: epochs without a better (validation) loss
        "time_limit_minutes": 0,       # stop training after this many minutes (0 = no limit), then predict
        "seed": 42,                    # random seed (weights, split, subvolumes, augmentation, stochastic downsampling)
        "workers": 1,                  # threads preparing batches beside training
        "steps_per_epoch": 48,          # the paper's epoch, in steps
    },
    "inference": {                     # each variant is evaluated on whole volumes and reported side by side
        "per_crop": False,             # evaluate subvolume by subvolume (mean over subvolumes)
        "merged": False,               # non-overlapping subvolumes merged into whole volumes
        "tiled": True,                 # overlapping windows (reflect-padded borders) blended into whole volumes
        "overlap": [0.5, 0.5, 0.5],    # window overlap, one value or one per axis (z, y, x), each in [0, 1)
        "window": "gaussian",          # blending window: gaussian | spline
        "threshold": 0.5,              # probability threshold for binary masks
        "batch_size": 8,               # windows per prediction batch (memory: the output volume plus one batch)
        "overlays": 3,                 # test slices drawn with outlines in charts/overlays.png (0 = none)
    },
    "post": {
        "z_filter": False,             # median filter along z of the tiled prediction (not in the paper)
        "oztel": False,                # Oztel et al. post-processing of the tiled prediction (not in the paper)
    },
}

import os  # noqa: E402
import sys  # noqa: E402

# CODE_DIR (first argument) holds lib/; fall back to this file's project so the script runs from anywhere.
sys.path[:0] = [os.path.abspath(p) for p in sys.argv[1:2] + [os.path.join(os.path.dirname(__file__), "..")]]

from cheng_2017 import options  # noqa: E402
from lib.run import cli, runner  # noqa: E402


def main(argv=None):
    """Check the options and data (nothing is written until all pass), train, evaluate on the test set, report.

    The steps of :func:`lib.run.runner.run`, with the Cheng options checked first (``cheng_2017.options``);
    ``model.name=cheng3d`` builds the network of :mod:`cheng_2017.networks`.
    """
    runner.run(CONFIG, argv, data="3d", description=__doc__.splitlines()[0],
               check=lambda cfg: options.check_config(cfg, ndim=3))


if __name__ == "__main__":
    with cli.user_errors():
        main()
