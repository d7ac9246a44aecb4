"""Cheng & Varshney (ICIP 2017) 2D network: stochastic downsampling and factorised convolutions.

Usage::

    python cheng_2017/cheng_2D_template.py CODE_DIR DATA_DIR JOB_DIR --id 400 --rid 0 --gpu 0 \
        [--set train.epochs=50 ...] [--config FILE.json] [--threads N] [--overwrite]

The same command line and run folder (``JOB_DIR/<id>_<rid>/``) as
``templates/template.py``; the defaults below are the paper's training
settings as far as they are known (see cheng_2017/README.md). Crop sizes must
be multiples of 16.
"""

CONFIG = {
    "data": {
        "normalization": "per_image",  # per_image (min-max per image) | dtype_max (x / 255 for uint8) | zscore (training mean/std)
        "val_fraction": 0.1,           # share of training images kept for validation (0 disables validation)
        "val_split": "random",         # random | last (the last images, e.g. the end of a stack)
        "crop_shape": [256, 256],      # training crop / inference tile (y, x); multiples of 16
        "random_crops": True,          # True: a new random crop per image per epoch; False: fixed grid of crops
        "fg_sampling": 0.0,            # random crops: share of crops centred on foreground (0 = uniform)
        "replicate": 1,                # times each training image is sampled per epoch
    },
    "augment": {
        "enabled": True,               # False: no augmentation at all
        "flip_p": 0.5,                 # probability of a flip, per axis (the paper's only augmentation)
        "rot90_p": 0.0,                # probability of a 90/180/270-degree rotation
    },
    "model": {
        "name": "cheng2d",             # the paper's 2D asymmetric encoder-decoder (cheng_2017/networks.py)
        "depth": 3,                    # fixed: the network halves its input 3 times
        "filters": 16,                 # width of the input block; blocks widen by filters/2; decoder 4x and 2x filters
        "dropout": 0.1,                # dropout inside every encoder block (one number)
        "spatial_dropout": False,      # drop whole feature maps instead of pixels
        "batch_norm": True,            # batch normalisation before each activation
        "activation": "relu",          # relu | elu | leaky_relu | gelu | swish
        "upsampling": "transpose",     # transpose (learned) | resize (+ convolution)
    },
    "train": {
        "epochs": 4000,                # maximum number of epochs
        "batch_size": 24,              # crops per batch
        "optimizer": "sgd",            # sgd (with momentum) | adam | adamw
        "learning_rate": 0.05,         # initial learning rate
        "momentum": 0.9,               # sgd only
        "nesterov": False,             # sgd only: Nesterov momentum
        "schedule": "step",            # none | step | cosine | plateau | onecycle (resumed runs continue it)
        "step_epochs": [2000, 3000],   # step: the rate drops after 50 % and 75 % of the epochs
        "step_factor": 0.1,            # step: factor of each drop
        "loss": "jaccard",             # the paper's loss: 1 - (sum(y p) + 1) / (sum(y) + sum(p) - sum(y p) + 1)
        "batch_overlap": True,         # Jaccard sums over the whole batch (per crop, empty crops reward empty output)
        "patience": 200,               # early stopping: epochs without a better validation loss
        "time_limit_minutes": 0,       # stop training after this many minutes (0 = no limit), then predict
        "seed": 42,                    # random seed (weights, split, crops, augmentation, stochastic downsampling)
        "workers": 1,                  # threads preparing batches beside training
    },
    "inference": {
        "per_crop": True,              # evaluate crop by crop (mean over crops)
        "merged": True,                # crops merged into full images
        "tiled": True,                 # overlapping tiles with smooth blending
        "overlap": 0.5,                # tile overlap for the tiled variant, [0, 1)
        "window": "gaussian",          # blending window: gaussian | spline
        "threshold": 0.5,              # probability threshold for binary masks
        "batch_size": 8,               # tiles per prediction batch
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
    ``model.name=cheng2d`` builds the network of :mod:`cheng_2017.networks`.
    """
    runner.run(CONFIG, argv, data="2d", description=__doc__.splitlines()[0],
               check=lambda cfg: options.check_config(cfg, ndim=2))


if __name__ == "__main__":
    with cli.user_errors():
        main()
