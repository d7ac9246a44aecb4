"""Xiao et al. (2018): deeply supervised 3D residual U-Net for mitochondria in EM volumes.

Usage::

    python xiao_2018/xiao_template.py CODE_DIR DATA_DIR JOB_DIR --id 400 --rid 0 --gpu 0 \
        [--set train.epochs=50 ...] [--set xiao.equalize=none ...] [--config FILE.json] [--threads N] [--overwrite]

The same command line, data layout (each of ``train/{x,y}`` and ``test/{x,y}``
a folder of sorted 2D slices or of multi-page TIFF stacks) and run folder
(``JOB_DIR/<id>_<rid>/``) as ``templates/3D_template.py``. The defaults below
are the paper's training settings (Adam, learning rate 1e-4, batch 2,
subvolumes of 20x256x256, flips and rotations, loss = main + 0.15 aux_1 +
0.3 aux_2); the ``xiao`` section holds the paper's pre-processing (histogram
equalisation) and 3D post-processing (3D connection), see xiao_2018/README.md.
Subvolume sizes must be multiples of ``model.pool_size ** 3`` (1, 8, 8).
"""

CONFIG = {
    "data": {
        "normalization": "per_image",  # per_image (min-max per volume) | dtype_max (x / 255 for uint8) | zscore (training mean/std)
        "val_fraction": 0.1,           # one volume: its last slices validate (at least one subvolume deep); several: whole volumes
        "val_split": "last",           # several volumes: random | last (the last volumes)
        "crop_shape": [20, 256, 256],  # the paper's training subvolume / inference tile (z, y, x)
        "random_crops": True,          # True: new random subvolumes each epoch; False: fixed grid of subvolumes
        "fg_sampling": 0.0,            # share of subvolumes centred on a foreground voxel (0 = uniform)
        "replicate": 1,                # passes over the training volume per epoch (train.steps_per_epoch sets the length here)
    },
    "augment": {
        "enabled": True,               # False: no augmentation at all
        "flip_p": 0.5,                 # the paper's flips: probability of a flip, per axis (z, y, x)
        "rot90_p": 0.5,                # the paper's rotations: an in-plane (y-x) 90/180/270-degree rotation
    },
    "model": {
        "name": "xiao2018",            # the paper's network (xiao_2018/network.py)
        "depth": 3,                    # fixed: three poolings
        "filters": 32,                 # first width; levels f, 1.5f, 2f and 2.5f at the bottom (32, 48, 64, 80)
        "dropout": 0.0,                # dropout after each residual block (one rate, or 4 values, bottom last)
        "batch_norm": True,            # batch normalisation before each activation
        "activation": "elu",           # relu | elu | leaky_relu | gelu | swish
        "upsampling": "transpose",     # transpose (learned) | resize (+ convolution)
        "pool_size": [1, 2, 2],        # no pooling along z (anisotropic stacks); [2, 2, 2] for isotropic voxels
        "deep_supervision": True,      # the two auxiliary outputs; false trains the main output alone
    },
    "train": {
        "epochs": 200,                 # maximum number of epochs
        "batch_size": 2,               # the paper's: subvolumes per batch
        "optimizer": "adam",           # the paper's optimiser
        "learning_rate": 1e-4,         # the paper's learning rate
        "schedule": "none",            # the paper's constant rate | step | cosine | plateau | onecycle
        "loss": "bce",                 # bce | dice | bce_dice | jaccard, on every output
        "deep_supervision_weights": [1.0, 0.15, 0.3],  # output, aux_1, aux_2: each against the ground truth
        "pretrained": None,            # fine-tune: a .keras file, a run folder, or a run name "ID_RID" in JOB_DIR
        "freeze_encoder": False,       # fine-tune: keep the pretrained encoder fixed, train the decoder
        "patience": 30,                # early stopping: epochs without a better validation loss (main output)
        "time_limit_minutes": 0,       # stop training after this many minutes (0 = no limit), then predict
        "seed": 42,                    # random seed (weights, split, subvolumes, augmentation)
        "workers": 1,                  # threads preparing batches beside training
        "steps_per_epoch": 50,          # the paper's epoch, in steps
    },
    "inference": {                     # each variant is evaluated on whole volumes and reported side by side
        "per_crop": False,             # evaluate subvolume by subvolume (mean over subvolumes)
        "merged": False,               # non-overlapping subvolumes merged into whole volumes
        "tiled": True,                 # overlapping windows (reflect-padded borders) blended into whole volumes
        "tta": False,                  # tiled + test-time augmentation (16 flips/rotations: 16x the prediction time)
        "overlap": [0.5, 0.5, 0.5],    # window overlap, one value or one per axis (z, y, x), each in [0, 1)
        "window": "gaussian",          # blending window: gaussian | spline
        "threshold": 0.5,              # probability threshold for binary masks
        "batch_size": 2,               # windows per prediction batch
        "overlays": 3,                 # test slices drawn with outlines in charts/overlays.png (0 = none)
    },
    "post": {
        "z_filter": False,             # median filter along z of the tiled prediction (not in the paper)
        "z_filter_size": 5,            # slices in the z median window (odd)
        "oztel": False,                # Oztel et al. post-processing, slice by slice (not in the paper)
    },
    "xiao": {                          # the paper's pre- and post-processing (xiao_2018/pipeline.py)
        "equalize": "hist",            # every slice, training and test alike: hist (the paper's) | adapthist (CLAHE) | none
        "clip_limit": 0.01,            # adapthist only: CLAHE clip limit
        "connect_3d": True,            # the paper's 3D connection: label 3D objects of the tiled prediction (connected_3d)
        "min_object_voxels": 0,        # connected_3d: drop 3D objects smaller than this (0 keeps all, as the paper)
    },
}

import os  # noqa: E402
import sys  # noqa: E402

# CODE_DIR (first argument) holds lib/; fall back to this file's project so the script runs from anywhere.
sys.path[:0] = [os.path.abspath(p) for p in sys.argv[1:2] + [os.path.join(os.path.dirname(__file__), "..")]]

from lib.run import cli, runner  # noqa: E402
from xiao_2018 import pipeline  # noqa: E402


def main(argv=None):
    """Check the options and data (nothing is written until all pass), train, evaluate on the test set, report.

    The steps of :func:`lib.run.runner.run`, with the method's own: its ``xiao`` option section
    (:class:`xiao_2018.pipeline.XiaoConfig`), its checks, the histogram equalisation of every slice before
    training, and the ``connected_3d`` variant after lib's; ``model.name=xiao2018`` builds the network of
    :mod:`xiao_2018.network`.
    """
    runner.run(CONFIG, argv, data="3d", description=__doc__.splitlines()[0],
               sections={pipeline.SECTION: pipeline.XiaoConfig}, check=pipeline.check_options,
               prepare=pipeline.equalize_sets, variants=pipeline.connected_variant)


if __name__ == "__main__":
    with cli.user_errors():
        main()
