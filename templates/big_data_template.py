"""2D U-Net for EM segmentation, with the dataset streamed from disk.

Usage::

    python templates/big_data_template.py CODE_DIR DATA_DIR JOB_DIR --id 400 --rid 0 --gpu 0 \
        [--set train.epochs=50 ...] [--config FILE.json] [--threads N] [--overwrite]

For datasets larger than memory; no image is held in memory. Before the run
folder is made, file headers are checked (pairing, counts, sizes), then every
file is read once, one at a time, to check its mask and take its normalisation
statistics (per image: its own minimum and maximum, so crops are normalised as
whole images are; zscore: the training mean and std). In training, each batch
reads just its random crops (for TIFF, only the strips or tiles a crop touches)
in ``train.workers`` threads; validation uses at most ``data.max_val_crops``
crops, read once; test images are read, predicted and written one at a time.

DATA_DIR holds ``train/{x,y}`` and ``test/{x,y}`` (or ``train/x/x``,
``train/y/y``..., flow_from_directory style), one 2D image or multi-page TIFF
stack per file, paired by sorted name. The run folder, metrics and reports are
those of ``template.py``. Copy this file to start a new experiment and edit
CONFIG below; any option can also be changed with ``--set section.key=value``.
"""

CONFIG = {
    "data": {
        "normalization": "per_image",  # per_image (min-max per image) | dtype_max (x / 255 for uint8) | zscore (training mean/std) | fixed (norm_mean, norm_std)
        "norm_mean": 0.0,              # normalization=fixed: mean subtracted, raw pixel values (e.g. 128 for uint8)
        "norm_std": 1.0,               # normalization=fixed: standard deviation divided by, raw pixel values
        "clip_percentiles": None,      # e.g. [0.1, 99.9]: clip images to these training percentiles first
        "val_fraction": 0.1,           # share of training images kept for validation (0 disables validation)
        "val_split": "random",         # random | last (the last images, e.g. the end of a stack)
        "extra_train_dirs": [],        # more training folders with x/ and y/ (relative to DATA_DIR)
        "extra_train_shares": [],      # share of each epoch's crops from each extra folder; []: by area
        "crop_shape": [256, 256],      # training crop / inference tile (y, x); divisible by 2**model.depth
        "random_crops": True,          # True: random crops read from disk; False: fixed grid of crops
        "min_fg_fraction": 0.0,        # fixed crops only: discard training crops with less foreground (0-1)
        "fg_sampling": 0.0,            # random crops: share of crops centred on foreground (0 = uniform)
        "replicate": 1,                # passes over the training images per epoch (crops covering them, times this)
        "max_val_crops": 256,          # validation crops read from the validation images once, kept in memory
        "voxel_size": None,            # pixel size (y, x) / voxel size (z, y, x) for the table of objects
        "voxel_unit": "pixel",         # its unit, e.g. "nm"
        "ignore_value": None,          # mask value of unannotated pixels (e.g. 128), counted nowhere
    },
    "augment": {
        "enabled": True,               # False: no augmentation at all
        "preset": "none",              # none | original (DeepLearning_EM: free rotation, flips; other values win)
        "flip_p": 0.5,                 # probability of a flip, per axis
        "rot90_p": 0.5,                # probability of a 90/180/270-degree rotation
        "rotation_p": 0.0,             # probability of a free rotation (reflect padding)
        "rotation_range": 180.0,       # free rotation angle, degrees, uniform in [-r, r]
        "elastic_p": 0.0,              # probability of an elastic deformation
        "elastic_alpha": 30.0,         # elastic displacement strength, pixels
        "elastic_sigma": 5.0,          # elastic smoothness, pixels
        "zoom_p": 0.0,                 # probability of a zoom
        "zoom_range": [0.8, 1.2],      # zoom factor range
        "shift_p": 0.0,                # probability of a shift
        "shift_range": 0.1,            # shift, fraction of the crop size
        "shear_p": 0.0,                # probability of a shear
        "shear_range": 10.0,           # shear angle, degrees
        "brightness_p": 0.3,           # probability of a brightness change (on with contrast, gamma, blur, noise: docs/defaults.md)
        "brightness_range": 0.1,       # additive brightness change
        "contrast_p": 0.3,             # probability of a contrast change
        "contrast_range": [0.8, 1.2],  # contrast factor range
        "gamma_p": 0.3,                # probability of a gamma change
        "gamma_range": [0.8, 1.25],    # gamma range
        "blur_p": 0.2,                 # probability of a Gaussian blur
        "blur_sigma": [0.0, 1.5],      # blur sigma range, pixels
        "median_p": 0.0,               # probability of a median filter
        "median_size": 3,              # median filter size, pixels, or a list of odd sizes drawn per sample
        "noise_p": 0.5,                # probability of Gaussian noise
        "noise_std": 0.08,             # noise standard deviation, on the normalised image ([0, 1] with per_image)
        "missing_section_p": 0.0,      # 3D only: probability of a blank or duplicated slice
        "misalignment_p": 0.0,         # 3D only: probability of a shifted part of the stack
        "misalignment_max_shift": 10,  # 3D only: largest misalignment, pixels
        "samples": 0,                  # N > 0: write N augmented crops to samples/augmentation/, crop checks to samples/crops/
    },
    "model": {
        "name": "unet",                # unet | resunet (pre-activation residual) | attention_unet | seunet | multiresunet
        "depth": 4,                    # number of downsampling levels
        "filters": 16,                 # filters of the first level, doubled at each level
        "dropout": 0.0,                # dropout per level (depth + 1 values) or one number; 0: none (learns faster)
        "spatial_dropout": False,      # drop whole feature maps instead of pixels
        "batch_norm": False,           # batch normalisation after each convolution (off: 1.24x the crops per second, CPU, float32)
        "activation": "elu",           # relu | elu | leaky_relu | gelu | swish
        "upsampling": "transpose",     # transpose (learned) | resize (+ convolution; needs batch_norm)
        "pool_size": None,             # 3D only: per-axis pooling, e.g. [1, 2, 2] for anisotropic stacks
        "deep_supervision": False,     # also predict from each coarser decoder level (trained, not used to predict)
        "stem_stride": 1,              # downsample the input first by this factor (strided convolution, learned upsampling
                                       # back): 2 makes the network about 4x (2D) / 8x (3D) cheaper; 1: none
        "stem_head": "conv",           # with a stem, the way back: conv (features, norm, activation, 1 x 1 output)
                                       # | linear (upsample straight to the output: nothing else at full resolution)
        "planar_levels": 0,            # 3D only (0 in 2D): the first N levels convolve within each z section
        "classes": 1,                  # 1: binary (sigmoid); K > 1: masks hold class ids 0..K-1 (softmax)
        "targets": "mask",             # mask (semantic) | bc / bcd: objects from label masks (foreground, contour[, distance])
    },
    "train": {
        "epochs": 200,                 # maximum number of epochs
        "batch_size": 6,               # crops per batch
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
        "loss": "bce_dice",            # bce | weighted_bce (U-Net weight maps, per crop) | dice | bce_dice | jaccard | ce | ce_dice (classes > 1)
        "bce_weight": 1.0,             # bce_dice / ce_dice: weight of the cross-entropy term
        "dice_weight": 1.0,            # bce_dice / ce_dice: weight of the dice term
        "class_weights": [],           # model.classes > 1: one loss weight per class, "auto" (from the masks) or []
        "batch_overlap": False,        # dice / jaccard / bce_dice: sum the overlap over the whole batch, not per crop
        "weight_w0": 10.0,             # weighted_bce: extra weight in narrow gaps between objects
        "weight_sigma": 5.0,           # weighted_bce: width of that extra weight, pixels
        "channel_weights": [],         # targets bc / bcd: loss weight per channel; [] = 1 each
        "deep_supervision_weights": [],  # loss weight per output, main first (depth values); [] = 1, 1/2, 1/4...
        "pretrained": None,            # fine-tune: a .keras file, a zoo .zip, a run folder, or a run name "ID_RID" in JOB_DIR
        "freeze_encoder": False,       # fine-tune: keep the pretrained encoder fixed, train the decoder
        "patience": 30,                # early stopping: epochs without a better validation loss
        "time_limit_minutes": 0,       # training (validation and checkpoints included) ends within this many minutes (0 = no limit), then predict
        "seed": 42,                    # random seed (weights, split, crops, augmentation)
        "workers": 2,                  # threads reading and augmenting crops beside training (1 = in the training loop)
        "steps_per_epoch": 0,          # 0: an epoch covers the training area once (area / crop area x data.replicate), 20-100 steps
        "monitor": "auto",             # auto (val_f1 for objects, else val_iou) | val_iou | val_f1 | val_loss
        "precision": "auto",           # auto (bfloat16 on CPUs with bf16 hardware, else float32) | float32 | bfloat16 | float16 (mixed; float16 with loss scaling); also for prediction
        "deterministic": False,        # deterministic kernels: identical reruns, slower (see docs/reliability.md)
        "tensorboard": True,           # TensorBoard event files under RUN/tensorboard (tensorboard --logdir JOB_DIR)
        "tensorboard_images_every": 10,  # validation crops with predictions in TensorBoard every N epochs; 0: none
    },
    "inference": {                     # each variant is evaluated and reported side by side
        "per_crop": False,             # evaluate crop by crop (mean over crops): a pass of its own
        "merged": False,               # crops merged into full images: a pass of its own
        "tiled": True,                 # overlapping tiles with smooth blending
        "tta": False,                  # tiled + test-time augmentation (8 flips/rotations: 8x the prediction time)
        "overlap": 0.5,                # tile overlap for the tiled variants, [0, 1)
        "window": "gaussian",          # blending window: gaussian | spline
        "threshold": 0.5,              # probability threshold for binary masks (pick it on validation data)
        "batch_size": 8,               # tiles per prediction batch
        "tile_shape": None,            # largest prediction tile; None: 4 crops wide (2D), the crop (3D); smaller images in one pass
        "overlays": 3,                 # test images drawn with outlines in charts/overlays.png (0 = none)
        "block_shape": [32, 1024, 1024],  # templates/predict.py with this run: blocks (z, y, x) predicted one at a time
        "prob_dtype": "uint8",         # templates/predict.py with this run: probabilities stored as uint8 (0-255) | float16
        "overview_side": 256,          # templates/predict.py, OME-Zarr outputs: levels halved until every side <= this (0: none)
    },
    "post": {                          # post-processing variants, computed from the tiled (and tta) predictions
        "z_filter": True,              # median filter along z; consecutive test images of one size form the stack
        "z_filter_size": 5,            # slices in the z median window (odd)
        "tta_z_filter": True,          # z filter of the tta prediction (needs inference.tta)
        "oztel": False,                # Oztel et al. 2017: drop unsure objects, snap boundaries to image edges
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
    runner.run(CONFIG, argv, data="streamed", description=__doc__.splitlines()[0])


if __name__ == "__main__":
    with cli.user_errors():
        main()
