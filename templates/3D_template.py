"""3D U-Net for EM volumes: random subvolumes for training, blended sliding windows for inference.

Usage::

    python templates/3D_template.py CODE_DIR DATA_DIR JOB_DIR --id 400 --rid 0 --gpu 0 \
        [--set train.epochs=50 ...] [--config FILE.json] [--threads N] [--overwrite]

CODE_DIR is the folder holding this project's ``lib/``; DATA_DIR holds
``train/{x,y}`` and ``test/{x,y}``, each a folder of sorted 2D slices (one
volume) or of multi-page TIFF stacks (one volume per file); results go to
``JOB_DIR/<id>_<rid>/``. Metrics are computed on the whole merged test
volume(s); ``predictions/tiled/{prob,binary}/`` hold them as TIFF stacks.
Copy this file to start a new experiment and edit CONFIG below; any option can
also be changed from the command line with ``--set section.key=value``.
"""

CONFIG = {
    "data": {
        "normalization": "per_image",  # per_image (min-max per volume) | dtype_max (x / 255 for uint8) | zscore (training mean/std) | fixed (norm_mean, norm_std)
        "norm_mean": 0.0,              # normalization=fixed: mean subtracted, raw pixel values (e.g. 128 for uint8)
        "norm_std": 1.0,               # normalization=fixed: standard deviation divided by, raw pixel values
        "clip_percentiles": None,      # e.g. [0.1, 99.9]: clip images to these training percentiles first
        "val_fraction": 0.1,           # one volume: its last slices validate (at least one subvolume deep); several: whole volumes
        "val_split": "last",           # several volumes: random | last (the last volumes)
        "extra_train_dirs": [],        # more training folders with x/ and y/ (relative to DATA_DIR)
        "extra_train_shares": [],      # share of each epoch's crops from each extra folder; []: by area
        "crop_shape": [8, 256, 256],   # training subvolume / inference tile (z, y, x); divisible by the network's downsampling
        "random_crops": True,          # True: new random subvolumes each epoch; False: fixed grid of subvolumes
        "min_fg_fraction": 0.0,        # fixed subvolumes only: discard those with less foreground (0-1)
        "fg_sampling": 0.1,            # share of subvolumes centred on a foreground voxel (0 = uniform)
        "replicate": 1,                # passes over the training volumes per epoch (subvolumes covering them, times this)
        "max_val_crops": 256,          # most validation subvolumes (also at most 20 % of an epoch's training subvolumes)
        "voxel_size": None,            # pixel size (y, x) / voxel size (z, y, x) for the table of objects
        "voxel_unit": "pixel",         # its unit, e.g. "nm"
        "ignore_value": None,          # mask value of unannotated pixels (e.g. 128), counted nowhere
    },
    "augment": {
        "enabled": True,               # False: no augmentation at all
        "preset": "none",              # none | original (DeepLearning_EM: free rotation, flips; other values win)
        "flip_p": 0.5,                 # probability of a flip, per axis (z, y, x)
        "rot90_p": 0.5,                # probability of an in-plane (y-x) 90/180/270-degree rotation
        "rotation_p": 0.0,             # probability of a free in-plane rotation (reflect padding)
        "rotation_range": 180.0,       # free rotation angle, degrees, uniform in [-r, r]
        "elastic_p": 0.0,              # probability of an in-plane elastic deformation
        "elastic_alpha": 30.0,         # elastic displacement strength, pixels
        "elastic_sigma": 5.0,          # elastic smoothness, pixels
        "zoom_p": 0.0,                 # probability of an in-plane zoom
        "zoom_range": [0.8, 1.2],      # zoom factor range
        "shift_p": 0.0,                # probability of an in-plane shift
        "shift_range": 0.1,            # shift, fraction of the subvolume size
        "shear_p": 0.0,                # probability of an in-plane shear
        "shear_range": 10.0,           # shear angle, degrees
        "brightness_p": 0.0,           # probability of a brightness change
        "brightness_range": 0.1,       # additive brightness change
        "contrast_p": 0.0,             # probability of a contrast change
        "contrast_range": [0.8, 1.2],  # contrast factor range
        "gamma_p": 0.0,                # probability of a gamma change
        "gamma_range": [0.8, 1.25],    # gamma range
        "blur_p": 0.0,                 # probability of an in-plane Gaussian blur
        "blur_sigma": [0.0, 1.5],      # blur sigma range, pixels
        "median_p": 0.0,               # probability of an in-plane median filter
        "median_size": 3,              # median filter size, pixels, or a list of odd sizes drawn per sample
        "noise_p": 0.0,                # probability of Gaussian noise
        "noise_std": 0.03,             # noise standard deviation
        "missing_section_p": 0.0,      # probability of a blank or duplicated section (serial-section EM)
        "misalignment_p": 0.0,         # probability of a shifted part of the stack (serial-section EM)
        "misalignment_max_shift": 10,  # largest misalignment, pixels
        "samples": 0,                  # augmented pairs to save in samples/ for a visual check
    },
    "model": {
        "name": "unet",                # unet | resunet (pre-activation residual) | attention_unet | seunet | multiresunet
        "depth": 4,                    # number of downsampling levels
        "filters": 16,                 # filters of the first level, doubled at each level
        "dropout": 0.0,                # dropout per level (depth + 1 values) or one number; 0: none (learns faster)
        "spatial_dropout": False,      # drop whole feature maps instead of voxels
        "batch_norm": True,            # batch normalisation after each convolution
        "activation": "elu",           # relu | elu | leaky_relu | gelu | swish
        "upsampling": "transpose",     # transpose (learned) | resize (+ convolution; needs batch_norm)
        "pool_size": [1, 2, 2],        # per-axis pooling (z, y, x); None = 2 everywhere; [1, 2, 2]: in-plane only
                                       # (here the z stem has made each 8-section slab one section; also for thick sections)
        "deep_supervision": False,     # also predict from each coarser decoder level (trained, not used to predict)
        "stem_stride": [8, 1, 1],      # downsample the input first by this factor (strided convolution, learned upsampling
                                       # back); [8, 1, 1]: the levels see 8-section slabs, at 2D cost (2.5D); 1: none
        "stem_head": "linear",         # with a stem, the way back: conv (features, norm, activation, 1 x 1 output)
                                       # | linear (upsample straight to the output: nothing else at full resolution)
        "planar_levels": 4,            # the first N levels (full resolution first) convolve within each section
                                       # (3 x 3), deeper ones in 3D (3 x 3 x 3): about 2x faster on a CPU; 0: all 3D
        "classes": 1,                  # 1: binary (sigmoid); K > 1: masks hold class ids 0..K-1 (softmax)
        "targets": "mask",             # mask (semantic) | bc / bcd: objects from label masks (foreground, contour[, distance])
    },
    "train": {
        "epochs": 200,                 # maximum number of epochs
        "batch_size": 4,               # subvolumes per batch
        "optimizer": "adam",           # sgd (with momentum) | adam | adamw | adabound
        "learning_rate": 1e-3,         # initial (peak) learning rate
        "momentum": 0.9,               # sgd only
        "nesterov": False,             # sgd only: Nesterov momentum
        "weight_decay": 1e-4,          # adamw only
        "final_lr": 0.1,               # adabound only: SGD rate the step bounds converge to
        "gamma": 1e-3,                 # adabound only: convergence speed of the bounds
        "schedule": "cosine",          # none | step | cosine (ends at train.epochs or at the time limit) | plateau | onecycle
        "warmup_epochs": 0,            # linear warm-up epochs before the schedule (onecycle: its rising phase)
        "min_learning_rate": 1e-6,     # cosine / onecycle end, plateau floor
        "step_epochs": [],             # step: epochs after which the rate drops, e.g. [100, 150]
        "step_factor": 0.1,            # step: factor of each drop
        "plateau_patience": 10,        # plateau: epochs without a better validation loss before a drop
        "plateau_factor": 0.5,         # plateau: factor of each drop
        "loss": "bce_dice",            # bce | weighted_bce (U-Net weight maps) | dice | bce_dice | jaccard | ce | ce_dice (classes > 1)
        "bce_weight": 1.0,             # bce_dice / ce_dice: weight of the cross-entropy term
        "dice_weight": 1.0,            # bce_dice / ce_dice: weight of the dice term
        "class_weights": [],           # model.classes > 1: one loss weight per class, "auto" (from the masks) or []
        "batch_overlap": False,        # dice / jaccard / bce_dice: sum the overlap over the whole batch, not per subvolume
        "weight_w0": 10.0,             # weighted_bce: extra weight in narrow gaps between objects
        "weight_sigma": 5.0,           # weighted_bce: width of that extra weight, voxels
        "channel_weights": [],         # targets bc / bcd: loss weight per channel; [] = 1 each
        "deep_supervision_weights": [],  # loss weight per output, main first (depth values); [] = 1, 1/2, 1/4...
        "pretrained": None,            # fine-tune: a .keras file, a zoo .zip, a run folder, or a run name "ID_RID" in JOB_DIR
        "freeze_encoder": False,       # fine-tune: keep the pretrained encoder fixed, train the decoder
        "patience": 30,                # early stopping: epochs without a better validation loss
        "time_limit_minutes": 0,       # training (validation and checkpoints included) ends within this many minutes (0 = no limit), then predict
        "seed": 42,                    # random seed (weights, split, subvolumes, augmentation)
        "workers": 1,                  # threads preparing batches beside training
        "steps_per_epoch": 0,          # 0: an epoch covers the training volumes once (volume / subvolume x data.replicate), 20-100 steps
        "monitor": "auto",             # auto (val_f1 for objects, else val_iou) | val_iou | val_f1 | val_loss
        "precision": "float32",        # float32 | bfloat16 | float16 (mixed; float16 with loss scaling); also for prediction
        "deterministic": False,        # deterministic kernels: identical reruns, slower (see docs/reliability.md)
        "tensorboard": True,           # TensorBoard event files under RUN/tensorboard (tensorboard --logdir JOB_DIR)
        "tensorboard_images_every": 10,  # validation crops with predictions in TensorBoard every N epochs; 0: none
    },
    "inference": {                     # each variant is evaluated on whole volumes and reported side by side
        "per_crop": False,             # evaluate subvolume by subvolume (mean over subvolumes)
        "merged": False,               # non-overlapping subvolumes merged into whole volumes
        "tiled": True,                 # overlapping windows (reflect-padded borders) blended into whole volumes
        "tta": False,                  # tiled + test-time augmentation (16 flips/rotations: 16x the prediction time)
        "overlap": [0.75, 0.5, 0.5],   # window overlap, one value or one per axis (z, y, x), each in [0, 1)
                                       # (z 0.75: each section is predicted at 4 positions in the 8-section slab)
        "window": "gaussian",          # blending window: gaussian | spline
        "threshold": 0.5,              # probability threshold for binary masks (pick it on validation data)
        "batch_size": 8,               # windows per prediction batch (memory: the output volume plus one batch)
        "tile_shape": [8, 1024, 1024], # largest prediction window (z, y, x); None: the subvolume; a 768 x 1024 slice fits whole
        "overlays": 3,                 # test slices drawn with outlines in charts/overlays.png (0 = none)
        "block_shape": [32, 1024, 1024],  # templates/predict.py with this run: blocks (z, y, x) predicted one at a time
        "prob_dtype": "uint8",         # templates/predict.py with this run: probabilities stored as uint8 (0-255) | float16
        "overview_side": 256,          # templates/predict.py, OME-Zarr outputs: levels halved until every side <= this (0: none)
    },
    "post": {                          # post-processing variants, computed from the tiled (and tta) predictions
        "z_filter": True,              # median filter along z
        "z_filter_size": 5,            # slices in the z median window (odd)
        "tta_z_filter": True,          # z filter of the tta prediction (needs inference.tta)
        "oztel": False,                # Oztel et al. 2017, slice by slice: drop unsure objects, snap boundaries to edges
        "oztel_min_mean_prob": 0.6,    # objects whose mean probability is below this are dropped
        "oztel_marker_radius": 3.0,    # how far (pixels) the watershed may move a boundary
        "instances": False,            # True: objects (connected components; with targets bc/bcd always) and objects.csv
        "min_size": 0,                 # objects smaller than this (pixels / voxels) are left out
        "contour_threshold": 0.5,      # targets bc / bcd: object interiors where the contour probability is below this
        "distance_threshold": 0.5,     # ... and (bcd) the distance to the border above this;
        "seed_height": 3.0,            # ... each peak of the distance inside them this high (pixels) seeds an object
    },
}

import os  # noqa: E402
import sys  # noqa: E402

# CODE_DIR (first argument) holds lib/; fall back to this file's project so the template runs from anywhere.
sys.path[:0] = [os.path.abspath(p) for p in sys.argv[1:2] + [os.path.join(os.path.dirname(__file__), "..")]]

from lib.run import cli, runner  # noqa: E402


def main(argv=None):
    """Check the options and data (nothing is written until all pass), train, evaluate on the test set, report.

    The steps, in order, are those of :func:`lib.run.runner.run` (see lib/run/runner.py).
    """
    runner.run(CONFIG, argv, data="3d", description=__doc__.splitlines()[0])


if __name__ == "__main__":
    with cli.user_errors():
        main()
