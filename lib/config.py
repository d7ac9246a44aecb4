"""Experiment configuration: dataclasses, defaults, validation, JSON and overrides.

A configuration has six sections (``data``, ``augment``, ``model``, ``train``,
``inference``, ``post``). Values come, in increasing priority, from the
dataclass defaults, the template's ``CONFIG`` block, a ``--config FILE.json``
and ``--set section.key=value`` options. Every value is type-checked and
range-checked; a bad one raises :class:`lib.errors.UserError` naming the option.
"""

import ast
import dataclasses
import difflib
import json
import math
import typing
from dataclasses import dataclass, field
from typing import List, Optional, Union

from .errors import UserError

NORMALIZATIONS = ("per_image", "dtype_max", "zscore", "fixed")
VAL_SPLITS = ("random", "last")
OPTIMIZERS = ("sgd", "adam", "adamw", "adabound")
SCHEDULES = ("none", "step", "cosine", "plateau", "onecycle")
MONITORS = ("val_iou", "val_loss")
# Defined here, not in lib.losses, so that checking a configuration does not import Keras.
LOSS_NAMES = ("bce", "weighted_bce", "dice", "bce_dice", "jaccard", "ce", "ce_dice")
# model.classes > 1 (softmax): the cross-entropy losses are categorical; bce and bce_dice name them too
# (binary cross-entropy is its two-class case), ce and ce_dice name bce and bce_dice for one class.
CATEGORICAL_LOSSES = {"bce": "ce", "bce_dice": "ce_dice", "ce": "ce", "ce_dice": "ce_dice", "dice": "dice"}
BINARY_LOSSES = {"ce": "bce", "ce_dice": "bce_dice"}
MAX_CLASSES = 255  # class ids are kept in uint8 masks
UPSAMPLINGS = ("transpose", "resize")
STEM_HEADS = ("conv", "linear")
ACTIVATIONS = ("relu", "elu", "leaky_relu", "gelu", "swish")
WINDOWS = ("gaussian", "spline")
PROB_DTYPES = ("uint8", "float16")
# augment.preset -> the augment options it sets where they have their default value (other values win).
# original: the DeepLearning_EM templates' default (Keras ImageDataGenerator) augmentation: a free rotation of
# every crop in [-180, 180] degrees with reflect filling, and random vertical and horizontal flips; nothing else.
AUGMENT_PRESETS = {
    "none": {},
    "original": {"flip_p": 0.5, "rot90_p": 0.0, "rotation_p": 1.0, "rotation_range": 180.0},
}

PRECISIONS = ("auto", "float32", "bfloat16", "float16")


# model.name -> the module whose ``build_model(cfg, input_shape)`` builds that network. Names are checked
# here, without importing anything; the module is imported only when the network is built
# (:func:`lib.networks.build_network`). So a configuration may name any of these networks in any entry
# script, and nothing has to be registered before it is read. A network of your own: add a line.
MODELS = {
    "unet": "lib.networks", "resunet": "lib.networks", "attention_unet": "lib.networks",
    "seunet": "lib.networks", "multiresunet": "lib.networks",
    "cheng2d": "cheng_2017.networks", "cheng3d": "cheng_2017.networks",  # Cheng & Varshney 2017
    "xiao2018": "xiao_2018.network",                                     # Xiao et al. 2018
}


def loss_for(loss, classes):
    """The loss that ``train.loss`` names for ``model.classes`` (:data:`CATEGORICAL_LOSSES`, :data:`BINARY_LOSSES`)."""
    if classes > 1:
        return CATEGORICAL_LOSSES[loss]
    return BINARY_LOSSES.get(loss, loss)


def uses_weight_maps(loss):
    """True when the loss named ``loss`` (one of :data:`LOSS_NAMES`) needs targets with weight-map channels."""
    return loss == "weighted_bce"


# What a resumed run's checkpoint fixes: the network, and the loss and optimiser compiled with it.
FIXED_ON_RESUME = ("model.", "train.loss", "train.bce_weight", "train.dice_weight", "train.batch_overlap",
                   "train.class_weights",
                   "train.deep_supervision_weights", "train.optimizer",
                   "train.momentum", "train.nesterov", "train.weight_decay", "train.final_lr", "train.gamma",
                   "train.precision")


def fixed_on_resume(dotted):
    """True when option ``dotted`` cannot change when an unfinished run resumes from its checkpoint."""
    return any(dotted == f or (f.endswith(".") and dotted.startswith(f)) for f in FIXED_ON_RESUME)


def option(default, help, choices=None, range=None):
    """A config field with its one-line ``help`` and allowed values: ``choices`` or a ``range`` text.

    ``range`` is an interval as validation messages write it (``[0, 1)``, ``[1, inf)``),
    or a short description for lists; ``python -m lib.config`` prints them all.
    """
    metadata = {"help": help, "choices": choices, "range": range}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class DataConfig:
    normalization: str = option("per_image", "intensity normalisation: per_image (min-max per image or volume), "
                                "dtype_max (x / 255 for uint8), zscore (training mean and std), fixed (data.norm_mean and "
                                "data.norm_std)", NORMALIZATIONS)
    norm_mean: float = option(0.0, "normalization=fixed: the mean subtracted, in raw pixel values (e.g. 128 for "
                              "uint8)", range="(-inf, inf)")
    norm_std: float = option(1.0, "normalization=fixed: the standard deviation divided by, in raw pixel values",
                             range="(0, inf)")
    clip_percentiles: Optional[List[float]] = option(None, "e.g. [0.1, 99.9]: clip every image (training, test, "
                                                     "predict.py) to these percentiles of the training pixels "
                                                     "before normalising; null: no clipping",
                                                     range="null, or [low, high] with 0 <= low < high <= 100")
    val_fraction: float = option(0.1, "share of the training images kept for validation (3D: whole volumes, or the "
                                 "last slices of a single volume); 0 disables validation; unused when "
                                 "DATA_DIR/val/{x,y} exists (it validates)", range="[0, 1)")
    extra_train_dirs: List[str] = option([], "more training folders, each with x/ and y/ (relative to DATA_DIR "
                                         "unless absolute), added to DATA_DIR/train; they never validate",
                                         range="folders")
    extra_train_shares: List[float] = option([], "share of each epoch's crops taken from each of "
                                             "data.extra_train_dirs (same order; DATA_DIR/train gets the rest); "
                                             "[]: by image area, as one set", range="[], or one per folder, "
                                             "each in (0, 1), summing to < 1")
    val_split: str = option("random", "which images (3D: volumes) validate: random, or the last ones (e.g. the end "
                            "of a stack)", VAL_SPLITS)
    crop_shape: List[int] = option([256, 256], "training crop / inference tile, (y, x) or (z, y, x); divisible by "
                                   "the network's downsampling (2**model.depth)",
                                   range="2 (y, x) or 3 (z, y, x) sizes, each >= 2")
    random_crops: bool = option(True, "true: new random crops each epoch; false: a fixed grid of crops (streamed "
                                "data: the grid's last crops aligned with the image's end)")
    min_fg_fraction: float = option(0.0, "fixed crops only: discard training crops with a smaller foreground "
                                    "fraction", range="[0, 1)")
    fg_sampling: float = option(0.0, "random crops: share of crops centred on a foreground pixel (0 = uniform)",
                                range="[0, 1]")
    replicate: int = option(1, "passes over the training images per epoch (the crops covering them, times this)",
                            range="[1, inf)")
    max_val_crops: int = option(256, "most validation crops (also at most 20 % of an epoch's training crops); "
                                "streamed data reads them once and keeps them in memory", range="[1, inf)")

    def validate(self):
        _choice("data.normalization", self.normalization, NORMALIZATIONS)
        _range("data.norm_std", self.norm_std, 0.0, None, low_open=True)
        if self.clip_percentiles is not None:
            low, high = (self.clip_percentiles + [None, None])[:2]
            if len(self.clip_percentiles) != 2 or not 0 <= low < high <= 100:
                raise UserError(f"data.clip_percentiles: expected [low, high] with 0 <= low < high <= 100, e.g. "
                                f"[0.1, 99.9], or null; got {self.clip_percentiles}")
        _choice("data.val_split", self.val_split, VAL_SPLITS)
        _range("data.val_fraction", self.val_fraction, 0.0, 1.0, high_open=True)
        _shape("data.crop_shape", self.crop_shape)
        _range("data.min_fg_fraction", self.min_fg_fraction, 0.0, 1.0, high_open=True)
        _range("data.fg_sampling", self.fg_sampling, 0.0, 1.0)
        _range("data.replicate", self.replicate, 1, None)
        if self.extra_train_shares:
            if len(self.extra_train_shares) != len(self.extra_train_dirs):
                raise UserError(f"data.extra_train_shares: expected one share per folder of data.extra_train_dirs "
                                f"({len(self.extra_train_dirs)}), got {len(self.extra_train_shares)}")
            if any(not 0 < v < 1 for v in self.extra_train_shares) or sum(self.extra_train_shares) >= 1:
                raise UserError(f"data.extra_train_shares: expected shares in (0, 1) summing to less than 1 (the "
                                f"rest is DATA_DIR/train's), got {self.extra_train_shares}")
            if not self.random_crops:
                raise UserError("data.extra_train_shares: shares of crops need data.random_crops=true (fixed crops "
                                "are each seen once per epoch)")
        for path in self.extra_train_dirs:
            if not path.strip():
                raise UserError("data.extra_train_dirs: an empty folder name; expected folders with x/ and y/")
        _range("data.max_val_crops", self.max_val_crops, 1, None)


@dataclass
class AugmentConfig:
    enabled: bool = option(True, "false: no augmentation at all")
    preset: str = option("none", "a set of augment defaults: original (the DeepLearning_EM templates': free "
                         "rotation of every crop, flips, no 90-degree turns); an option set to a non-default value wins "
                         "over it",
                         tuple(AUGMENT_PRESETS))
    flip_p: float = option(0.5, "probability of a flip, per axis", range="[0, 1]")
    rot90_p: float = option(0.5, "probability of an in-plane (y-x) 90/180/270-degree rotation", range="[0, 1]")
    rotation_p: float = option(0.0, "probability of a free in-plane rotation (reflect padding)", range="[0, 1]")
    rotation_range: float = option(180.0, "free rotation angle, degrees, uniform in [-r, r]", range="[0, 360]")
    elastic_p: float = option(0.0, "probability of an in-plane elastic deformation", range="[0, 1]")
    elastic_alpha: float = option(30.0, "elastic displacement strength, pixels", range="[0, inf)")
    elastic_sigma: float = option(5.0, "elastic smoothness, pixels", range="(0, inf)")
    zoom_p: float = option(0.0, "probability of an in-plane zoom", range="[0, 1]")
    zoom_range: List[float] = option([0.8, 1.2], "zoom factor range", range="[min, max], each in (0, inf)")
    shift_p: float = option(0.0, "probability of an in-plane shift", range="[0, 1]")
    shift_range: float = option(0.1, "shift, fraction of the crop size", range="[0, 1]")
    shear_p: float = option(0.0, "probability of an in-plane shear", range="[0, 1]")
    shear_range: float = option(10.0, "shear angle, degrees", range="[0, 89]")
    brightness_p: float = option(0.0, "probability of a brightness change", range="[0, 1]")
    brightness_range: float = option(0.1, "additive brightness change", range="[0, 1]")
    contrast_p: float = option(0.0, "probability of a contrast change", range="[0, 1]")
    contrast_range: List[float] = option([0.8, 1.2], "contrast factor range", range="[min, max], each in (0, inf)")
    gamma_p: float = option(0.0, "probability of a gamma change", range="[0, 1]")
    gamma_range: List[float] = option([0.8, 1.25], "gamma range", range="[min, max], each in (0, inf)")
    blur_p: float = option(0.0, "probability of an in-plane Gaussian blur", range="[0, 1]")
    blur_sigma: List[float] = option([0.0, 1.5], "blur sigma range, pixels", range="[min, max], each in [0, inf)")
    median_p: float = option(0.0, "probability of an in-plane median filter", range="[0, 1]")
    median_size: Union[int, List[int]] = option(3, "median filter size, pixels; or a list of odd sizes, one drawn per "
                                                "sample (e.g. [3, 5, 7], as the original project's 3-7)",
                                                range="each >= 1; in a list, odd")
    noise_p: float = option(0.0, "probability of Gaussian noise", range="[0, 1]")
    noise_std: float = option(0.03, "noise standard deviation", range="[0, inf)")
    missing_section_p: float = option(0.0, "3D only: probability of a blank or duplicated section (serial-section EM)",
                                      range="[0, 1]")
    misalignment_p: float = option(0.0, "3D only: probability of a shifted part of the stack (serial-section EM)",
                                   range="[0, 1]")
    misalignment_max_shift: int = option(10, "3D only: largest misalignment, pixels", range="[0, inf)")
    samples: int = option(0, "N > 0: write N augmented pairs to samples/ for a visual check", range="[0, inf)")

    def validate(self):
        _choice("augment.preset", self.preset, tuple(AUGMENT_PRESETS))
        for f in dataclasses.fields(self):
            if f.name.endswith("_p"):
                _range(f"augment.{f.name}", getattr(self, f.name), 0.0, 1.0)
        _range("augment.rotation_range", self.rotation_range, 0.0, 360.0)
        _range("augment.elastic_alpha", self.elastic_alpha, 0.0, None)
        _range("augment.elastic_sigma", self.elastic_sigma, 0.0, None, low_open=True)
        _interval("augment.zoom_range", self.zoom_range, 0.0, None, low_open=True)
        _range("augment.shift_range", self.shift_range, 0.0, 1.0)
        _range("augment.shear_range", self.shear_range, 0.0, 89.0)
        _range("augment.brightness_range", self.brightness_range, 0.0, 1.0)
        _interval("augment.contrast_range", self.contrast_range, 0.0, None, low_open=True)
        _interval("augment.gamma_range", self.gamma_range, 0.0, None, low_open=True)
        _interval("augment.blur_sigma", self.blur_sigma, 0.0, None)
        if isinstance(self.median_size, list):
            if not self.median_size or any(s < 1 or s % 2 == 0 for s in self.median_size):
                raise UserError(f"augment.median_size: expected a size >= 1 or a non-empty list of odd sizes, "
                                f"got {self.median_size}")
        else:
            _range("augment.median_size", self.median_size, 1, None)
        _range("augment.noise_std", self.noise_std, 0.0, None)
        _range("augment.misalignment_max_shift", self.misalignment_max_shift, 0, None)
        _range("augment.samples", self.samples, 0, None)


@dataclass
class ModelConfig:
    name: str = option("unet", "network: unet, resunet (pre-activation residual), attention_unet, seunet, "
                       "multiresunet, or a paper folder's (cheng2d, cheng3d, xiao2018)", MODELS)
    depth: int = option(4, "number of downsampling levels", range="[1, 8]")
    filters: int = option(16, "filters of the first level, doubled at each level", range="[1, inf)")
    # No dropout by default: it slowed learning in the short CPU budgets measured (README, How the defaults were chosen).
    dropout: Union[float, List[float]] = option(0.0, "dropout rate, one number or one per level (model.depth + 1 "
                                                "values); 0: none", range="each in [0, 1)")
    spatial_dropout: bool = option(False, "drop whole feature maps instead of pixels")
    batch_norm: bool = option(True, "batch normalisation after each convolution")
    activation: str = option("elu", "activation function", ACTIVATIONS)
    upsampling: str = option("transpose", "decoder upsampling: transpose (learned) or resize (+ convolution; "
                             "needs model.batch_norm=true in the lib networks)", UPSAMPLINGS)
    pool_size: Optional[List[int]] = option(None, "3D: pooling per axis (z, y, x), e.g. [1, 2, 2] when sections are "
                                            "much thicker than the pixel size; null: 2 on every axis",
                                            range="null, or 2 or 3 sizes, each >= 1")
    deep_supervision: bool = option(False, "also predict from each coarser decoder level (trained, not used to "
                                    "predict); needs model.depth >= 2")
    stem_stride: Union[int, List[int]] = option(1, "first downsample the input by this factor (one number, or one "
                                                "per axis) with a strided convolution and learn the upsampling "
                                                "back: 2 makes the network about 4x (2D) / 8x (3D) cheaper; "
                                                "1: none", range="each >= 1")
    stem_head: str = option("conv", "with a stem (model.stem_stride > 1), the way back to full resolution: conv "
                            "(upsample to model.filters channels, norm, activation, 1 x 1 output convolution) or "
                            "linear (upsample straight to the output, a linear read-out of the stem's features: "
                            "nothing else runs at full resolution; with a z stem such as [8, 1, 1], a 2.5D network)",
                            STEM_HEADS)
    planar_levels: int = option(0, "3D: the first N levels (full resolution first; N >= model.depth: all) convolve "
                                "within each section (3 x 3, as 2D convolutions), the deeper ones and the bottom "
                                "block in 3D (3 x 3 x 3); 2: about 2x faster on a CPU; 0: all 3D", range="[0, inf)")

    classes: int = option(1, "1: binary segmentation (sigmoid; masks 0 and one foreground value); K > 1: K classes "
                          "(softmax; masks hold class ids 0..K-1, 0 the background; K = 2 also takes binary masks)",
                          range=f"[1, {MAX_CLASSES}]")

    def validate(self):
        _choice("model.name", self.name, tuple(MODELS))
        _range("model.classes", self.classes, 1, MAX_CLASSES)
        _range("model.depth", self.depth, 1, 8)
        _range("model.filters", self.filters, 1, None)
        _choice("model.activation", self.activation, ACTIVATIONS)
        _choice("model.upsampling", self.upsampling, UPSAMPLINGS)
        if self.upsampling == "resize" and not self.batch_norm and MODELS.get(self.name) == "lib.networks":
            # Measured (2D template, ISBI 2012, Adam 1e-3): one class for every pixel within the first epoch, loss 1.9
            # to 5-6; on synthetic crops the U-Net and the residual U-Net went to all background in 15 steps, the
            # latter also with LeCun-initialised upsampling convolutions or an activation after them. With batch norm
            # both learnt (tests/test_networks.py).
            raise UserError("model.upsampling=resize with model.batch_norm=false: without batch norm the resize "
                            "upsampling drives the network to one class for every pixel within its first training "
                            "steps, and it never recovers; set model.upsampling=transpose, or model.batch_norm=true")
        rates = self.dropout if isinstance(self.dropout, list) else [self.dropout]
        if isinstance(self.dropout, list) and len(rates) != self.depth + 1:
            raise UserError(
                f"model.dropout: expected one rate per level ({self.depth + 1} values for "
                f"model.depth={self.depth}) or a single number, got {len(rates)} values"
            )
        for r in rates:
            _range("model.dropout", r, 0.0, 1.0, high_open=True)
        if self.pool_size is not None:
            _shape("model.pool_size", self.pool_size, low=1)
        if isinstance(self.stem_stride, list):
            _shape("model.stem_stride", self.stem_stride, low=1)
        else:
            _range("model.stem_stride", self.stem_stride, 1, None)
        _choice("model.stem_head", self.stem_head, STEM_HEADS)
        _range("model.planar_levels", self.planar_levels, 0, None)
        if self.deep_supervision and self.depth < 2:
            raise UserError(
                f"model.deep_supervision: needs intermediate decoder levels, i.e. model.depth >= 2, "
                f"got model.depth={self.depth}"
            )


@dataclass
class TrainConfig:
    """Training options; the learning-rate schedules are defined in :func:`lib.training.learning_rate_at`."""

    epochs: int = option(200, "maximum number of epochs; 0: predict with train.pretrained, without training",
                         range="[0, inf)")
    batch_size: int = option(4, "crops (3D: subvolumes) per batch", range="[1, inf)")
    optimizer: str = option("adam", "optimiser: sgd (with momentum), adam, adamw, or adabound (Adam whose steps "
                            "are bounded, converging to SGD at train.final_lr; Luo et al. 2019)", OPTIMIZERS)
    learning_rate: float = option(1e-3, "initial (peak) learning rate", range="(0, inf)")
    momentum: float = option(0.9, "sgd only: momentum", range="[0, 1)")
    nesterov: bool = option(False, "sgd only: Nesterov momentum")
    weight_decay: float = option(1e-4, "adamw only: weight decay", range="[0, inf)")
    final_lr: float = option(0.1, "adabound only: the SGD learning rate the step bounds converge to (scaled "
                             "with the schedule's learning rate)", range="(0, inf)")
    gamma: float = option(1e-3, "adabound only: how fast the bounds converge (narrow after about 1/gamma steps)",
                          range="(0, 1]")
    schedule: str = option("plateau", "learning-rate schedule (cosine ends at train.epochs or at the time limit)",
                           SCHEDULES)
    warmup_epochs: int = option(0, "linear warm-up epochs before the schedule (onecycle: its rising phase)",
                                range="[0, train.epochs - 1]")
    min_learning_rate: float = option(1e-6, "cosine / onecycle end, plateau floor", range="[0, train.learning_rate]")
    step_epochs: List[int] = option([], "step: epochs after which the rate drops, e.g. [100, 150]",
                                    range="increasing epochs, each >= 1")
    step_factor: float = option(0.1, "step: factor of each drop", range="(0, 1]")
    plateau_patience: int = option(10, "plateau: epochs without a better monitored value before a drop",
                                   range="[1, inf)")
    plateau_factor: float = option(0.5, "plateau: factor of each drop", range="(0, 1)")
    loss: str = option("bce_dice", "loss; weighted_bce: U-Net weight maps (streamed data: computed crop by crop); "
                       "model.classes > 1: ce, dice (mean over the foreground classes) or ce_dice",
                       LOSS_NAMES)
    bce_weight: float = option(1.0, "bce_dice, ce_dice: weight of the cross-entropy term", range="[0, inf)")
    dice_weight: float = option(1.0, "bce_dice, ce_dice: weight of the dice term", range="[0, inf)")
    class_weights: Union[List[float], str] = option([], "model.classes > 1: loss weight of each class (K values, "
                                                    "background first), 'auto' (median frequency balancing of the "
                                                    "training masks), or [] (all 1)",
                                                    range="[], auto, or model.classes weights >= 0")
    batch_overlap: bool = option(False, "dice, jaccard, bce_dice: sum the overlap over the whole batch instead of "
                                 "per crop (nnU-Net's batch dice; the Cheng paper's loss)")
    weight_w0: float = option(10.0, "weighted_bce: extra weight in narrow gaps between objects", range="[0, inf)")
    weight_sigma: float = option(5.0, "weighted_bce: width of that extra weight, pixels", range="(0, inf)")
    deep_supervision_weights: List[float] = option([], "loss weight per output, main first (model.depth values); "
                                                   "[]: 1, 1/2, 1/4...", range="[], or model.depth weights >= 0, "
                                                   "the first > 0")
    pretrained: Optional[str] = option(None, "fine-tune: a .keras file, a BioImage Model Zoo .zip (keras_v3 weights), a run "
                                       "folder, or a run name ID_RID in JOB_DIR",
                                       range="null or a path or run name")
    freeze_encoder: bool = option(False, "fine-tune: keep the pretrained encoder fixed, train the decoder")
    patience: int = option(30, "early stopping: epochs without a better monitored value", range="[0, inf)")
    time_limit_minutes: float = option(0.0, "stop training after this many minutes (0 = no limit), then predict",
                                       range="[0, inf)")
    seed: int = option(42, "random seed (weights, split, crops, augmentation)", range="[0, 4294967295]")
    workers: int = option(2, "threads preparing batches beside training (1 = in the training loop)",
                          range="[1, inf)")
    steps_per_epoch: int = option(0, "0: an epoch covers the training area once (area / crop area x "
                                  "data.replicate), 20-100 steps", range="[0, inf)")
    monitor: str = option("val_iou", "picks the best checkpoint, early stopping and plateau drops: val_iou "
                          "(foreground IoU of the validation crops, tracks the test metric) or val_loss", MONITORS)
    precision: str = option("float32", "computation in float32, or mixed: bfloat16 (on GPUs and CPUs with bf16) "
                            "or float16 (GPUs; with loss scaling); weights, sigmoid and loss stay float32; "
                            "prediction too; auto: bfloat16 for a 2D network on TensorFlow on a CPU with bf16 "
                            "hardware (AVX-512 BF16, AMX), float32 elsewhere", PRECISIONS)
    deterministic: bool = option(False, "deterministic kernels (TensorFlow op determinism, torch deterministic "
                                 "algorithms, JAX XLA deterministic GPU ops): identical reruns, slower (see README, "
                                 "Reliability)")
    tensorboard: bool = option(True, "write TensorBoard event files under RUN/tensorboard (losses, metrics, "
                               "learning rate per epoch; validation pictures; the model graph)")
    tensorboard_images_every: int = option(10, "TensorBoard: validation crops with their predictions at the first "
                                           "epoch and every this many epochs; 0: none", range="[0, inf)")

    def validate(self):
        _range("train.epochs", self.epochs, 0, None)
        if self.epochs == 0 and self.pretrained is None:
            raise UserError("train.epochs=0 predicts with the weights of train.pretrained without training, but "
                            "train.pretrained is not set; set it to a run or .keras file, or train.epochs >= 1")
        _range("train.batch_size", self.batch_size, 1, None)
        _choice("train.optimizer", self.optimizer, OPTIMIZERS)
        _choice("train.precision", self.precision, PRECISIONS)
        _range("train.learning_rate", self.learning_rate, 0.0, None, low_open=True)
        _range("train.momentum", self.momentum, 0.0, 1.0, high_open=True)
        _range("train.weight_decay", self.weight_decay, 0.0, None)
        _range("train.final_lr", self.final_lr, 0.0, None, low_open=True)
        _range("train.gamma", self.gamma, 0.0, 1.0, low_open=True)
        _choice("train.schedule", self.schedule, SCHEDULES)
        _range("train.warmup_epochs", self.warmup_epochs, 0, max(self.epochs - 1, 0))
        if self.schedule in ("cosine", "plateau", "onecycle"):
            _range("train.min_learning_rate", self.min_learning_rate, 0.0, self.learning_rate)
        if self.schedule == "step" and not self.step_epochs:
            raise UserError("train.step_epochs: train.schedule=step needs the epochs after which the "
                            "learning rate drops, e.g. [100, 150]")
        for e in self.step_epochs:
            _range("train.step_epochs", e, 1, None)
        if any(b <= a for a, b in zip(self.step_epochs, self.step_epochs[1:])):
            raise UserError(f"train.step_epochs: expected increasing epochs, got {self.step_epochs}")
        _range("train.step_factor", self.step_factor, 0.0, 1.0, low_open=True)
        _range("train.plateau_patience", self.plateau_patience, 1, None)
        _range("train.plateau_factor", self.plateau_factor, 0.0, 1.0, low_open=True, high_open=True)
        _choice("train.loss", self.loss, LOSS_NAMES)
        _range("train.bce_weight", self.bce_weight, 0.0, None)
        _range("train.dice_weight", self.dice_weight, 0.0, None)
        if self.loss in ("bce_dice", "ce_dice") and self.bce_weight + self.dice_weight == 0:
            raise UserError("train.bce_weight, train.dice_weight: both are 0; expected at least one positive weight")
        if self.batch_overlap and self.loss not in ("dice", "jaccard", "bce_dice", "ce_dice"):
            raise UserError(f"train.batch_overlap=true: train.loss={self.loss} has no Dice or Jaccard sums to take "
                            "over the batch; expected train.loss dice, jaccard, bce_dice or ce_dice, or "
                            "batch_overlap=false")
        if isinstance(self.class_weights, str) and self.class_weights != "auto":
            raise UserError(f"train.class_weights: unknown value '{self.class_weights}'; expected auto, [] or a list "
                            "of one weight per class")
        for w in self.class_weights if isinstance(self.class_weights, list) else ():
            _range("train.class_weights", w, 0.0, None)
        _range("train.weight_w0", self.weight_w0, 0.0, None)
        _range("train.weight_sigma", self.weight_sigma, 0.0, None, low_open=True)
        for w in self.deep_supervision_weights:
            _range("train.deep_supervision_weights", w, 0.0, None)
        if self.pretrained is not None and not self.pretrained.strip():
            raise UserError("train.pretrained: expected a .keras file, a run folder or a run name ID_RID, or null")
        if self.freeze_encoder and self.pretrained is None:
            raise UserError("train.freeze_encoder=true needs train.pretrained (a random encoder would stay "
                            "random): set it to the run or .keras file whose weights to fine-tune")
        _range("train.patience", self.patience, 0, None)
        _range("train.time_limit_minutes", self.time_limit_minutes, 0.0, None)
        _range("train.steps_per_epoch", self.steps_per_epoch, 0, None)
        _choice("train.monitor", self.monitor, MONITORS)
        _range("train.seed", self.seed, 0, 2**32 - 1)
        _range("train.workers", self.workers, 1, None)
        _range("train.tensorboard_images_every", self.tensorboard_images_every, 0, None)

    def check_model(self, model):
        """Check the options that depend on the model section (``ModelConfig``)."""
        k = model.classes
        if k > 1 and self.loss not in CATEGORICAL_LOSSES:
            raise UserError(f"train.loss={self.loss}: a binary loss, but model.classes={k}; expected ce, dice or "
                            "ce_dice (bce and bce_dice stand for ce and ce_dice)")
        if k == 1 and self.loss in ("dice", "jaccard") and not model.batch_norm and MODELS.get(model.name) == "lib.networks":
            # Measured (2D template, ISBI 2012, 6 slices): both losses alone turned every pixel foreground in the
            # first epoch (fg_iou 0.20) and their saturated sigmoids never recovered; with batch norm, jaccard learnt.
            raise UserError(f"train.loss={self.loss} with model.batch_norm=false: a network without batch norm trained on "
                            f"the {'Dice' if self.loss == 'dice' else 'Jaccard'} loss alone predicts every pixel as "
                            "foreground after its first steps and never recovers; use train.loss=bce_dice, or set "
                            "model.batch_norm=true")
        if k == 1 and self.class_weights:
            raise UserError("train.class_weights: weights of classes need model.classes > 1 (one class here); "
                            "set train.class_weights=[] or model.classes")
        if isinstance(self.class_weights, list) and self.class_weights and len(self.class_weights) != k:
            raise UserError(f"train.class_weights: expected {k} weights for model.classes={k} (background first), "
                            f"got {len(self.class_weights)}")
        if isinstance(self.class_weights, list) and self.class_weights and not any(self.class_weights):
            raise UserError("train.class_weights: every weight is 0; expected at least one positive weight")
        weights = self.deep_supervision_weights
        if weights and not model.deep_supervision:
            raise UserError("train.deep_supervision_weights: given, but model.deep_supervision is false; "
                            "set model.deep_supervision=true or train.deep_supervision_weights=[]")
        if weights and len(weights) != model.depth:
            raise UserError(
                f"train.deep_supervision_weights: expected {model.depth} weights for model.depth={model.depth} "
                f"(the main output first, then aux_1 .. aux_{model.depth - 1}), got {len(weights)}"
            )
        if weights and weights[0] <= 0:
            raise UserError(f"train.deep_supervision_weights: the first weight (main output) must be positive, "
                            f"got {weights[0]}")


@dataclass
class InferenceConfig:
    # The paper protocols, one option away: each is a prediction pass of its own.
    per_crop: bool = option(False, "variant: evaluate crop by crop (mean over crops)")
    merged: bool = option(False, "variant: crops merged into full images (volumes)")
    tiled: bool = option(True, "variant: overlapping tiles with smooth blending")
    # Off by default: 8 (2D) or 16 (3D) predictions per tile, too slow for a CPU run.
    tta: bool = option(False, "variant: tiled + test-time augmentation (8 flips/rotations in 2D, 16 in 3D)")
    overlap: Union[float, List[float]] = option(0.5, "tile overlap of the tiled variants, one value or one per axis",
                                                range="each in [0, 1)")
    window: str = option("gaussian", "blending window of the tiles", WINDOWS)
    threshold: float = option(0.5, "probability threshold for binary masks (pick it on validation data); "
                              "model.classes > 1 takes the most probable class",
                              range="(0, 1)")
    batch_size: int = option(8, "tiles per prediction batch", range="[1, inf)")
    overlays: int = option(3, "test images (3D: slices) drawn with outlines in charts/overlays.png (0 = none)",
                           range="[0, inf)")
    tile_shape: Optional[List[int]] = option(None, "largest tile of the blended variants; null: 4 crops wide (2D), "
                                             "the crop (3D); an axis no longer than the tile is one tile",
                                             range="null, or 2 or 3 sizes, each >= 2")
    block_shape: List[int] = option([32, 1024, 1024], "templates/predict.py: blocks (z, y, x) read, predicted and "
                                    "written one at a time; memory follows them", range="3 sizes, each >= 1")
    prob_dtype: str = option("uint8", "templates/predict.py: probabilities stored as uint8 (0-255) or float16",
                             PROB_DTYPES)

    def validate(self):
        for value in self.overlap if isinstance(self.overlap, list) else [self.overlap]:
            _range("inference.overlap", value, 0.0, 1.0, high_open=True)
        _choice("inference.window", self.window, WINDOWS)
        _range("inference.threshold", self.threshold, 0.0, 1.0, low_open=True, high_open=True)
        _range("inference.batch_size", self.batch_size, 1, None)
        _range("inference.overlays", self.overlays, 0, None)
        if self.tile_shape is not None:
            _shape("inference.tile_shape", self.tile_shape)
        if not (self.per_crop or self.merged or self.tiled or self.tta):
            raise UserError(
                "inference: every prediction variant is switched off; set at least one of "
                "inference.per_crop, inference.merged, inference.tiled, inference.tta to true"
            )
        if len(self.block_shape) != 3:
            raise UserError(f"inference.block_shape: expected 3 sizes (z, y, x), got {self.block_shape}")
        for value in self.block_shape:
            _range("inference.block_shape", value, 1, None)
        _choice("inference.prob_dtype", self.prob_dtype, PROB_DTYPES)


@dataclass
class PostConfig:
    z_filter: bool = option(True, "median filter along z (2D: consecutive test images of one size form the stack)")
    z_filter_size: int = option(5, "slices in the z median window", range="[1, inf), odd")
    tta_z_filter: bool = option(True, "z filter of the tta prediction (needs inference.tta)")
    # Off by default: an extra pass of watershed refinement that helps object scores more than pixel ones.
    oztel: bool = option(False, "Oztel et al. 2017 (3D: slice by slice): drop unsure objects, snap boundaries to "
                         "image edges")
    oztel_min_mean_prob: float = option(0.6, "oztel: objects whose mean probability is below this are dropped",
                                        range="[0, 1]")
    oztel_marker_radius: float = option(3.0, "oztel: how far (pixels) the watershed may move a boundary",
                                        range="(0, inf)")

    def validate(self):
        _range("post.z_filter_size", self.z_filter_size, 1, None)
        if self.z_filter_size % 2 == 0:
            raise UserError(f"post.z_filter_size: expected an odd number, got {self.z_filter_size}")
        _range("post.oztel_min_mean_prob", self.oztel_min_mean_prob, 0.0, 1.0)
        _range("post.oztel_marker_radius", self.oztel_marker_radius, 0.0, None, low_open=True)


@dataclass
class Config:
    """The six sections of lib's options; :func:`config_class` adds an entry script's own sections."""

    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    post: PostConfig = field(default_factory=PostConfig)

    def validate(self):
        """Check every option; raise UserError naming the first bad one."""
        for f in dataclasses.fields(self):
            getattr(self, f.name).validate()
        self.train.check_model(self.model)
        if self.model.classes > 1 and self.post.oztel:
            raise UserError(f"post.oztel=true: Oztel post-processing refines binary objects; with "
                            f"model.classes={self.model.classes} set post.oztel=false")
        return self

    def to_dict(self):
        return dataclasses.asdict(self)


SECTIONS = tuple(f.name for f in dataclasses.fields(Config))


def config_class(sections=None):
    """:class:`Config`, or a subclass with more sections: how an entry script adds options of its own.

    Parameters
    ----------
    sections : dict, optional
        ``{name: dataclass}``: each dataclass has defaults for every field and a
        ``validate()`` that raises UserError naming the option (:func:`check_choice`,
        :func:`check_range` give lib's messages). The section is then read from the
        template ``CONFIG`` block, ``--config`` and ``--set name.key=value`` like lib's
        own, checked with them and written to the run's ``config.json``.

    Returns
    -------
    type: a dataclass whose instances have ``cfg.<name>`` beside lib's six sections.
    """
    if not sections:
        return Config
    clash = sorted(set(sections) & set(SECTIONS))
    if clash:
        raise ValueError(f"sections: {', '.join(clash)} are lib's own")
    return dataclasses.make_dataclass(
        "Config", [(name, cls, field(default_factory=cls)) for name, cls in sections.items()], bases=(Config,))


def apply_preset(cfg):
    """Give the options of ``cfg``'s ``augment.preset`` (:data:`AUGMENT_PRESETS`) its values, in place.

    Only where they still have their default value: a value set to anything else (template ``CONFIG``,
    ``--config``, ``--set``) wins over the preset. Returns ``cfg``.
    """
    defaults = AugmentConfig()
    for key, value in AUGMENT_PRESETS.get(cfg.augment.preset, {}).items():
        if getattr(cfg.augment, key) == getattr(defaults, key):
            set_option(cfg, f"augment.{key}", value, f"augment.preset={cfg.augment.preset}")
    return cfg


def section_names(cfg):
    """The sections of ``cfg`` (lib's six, then those of :func:`config_class`)."""
    return tuple(f.name for f in dataclasses.fields(cfg))


def from_dict(values, base=None, source="configuration", cls=Config, ignore_unknown_sections=False):
    """Build a configuration from nested ``{section: {key: value}}``, on top of ``base`` (else ``cls()``).

    Unknown sections or keys and values of the wrong type raise UserError that
    names ``source`` and the option. ``ignore_unknown_sections``: skip sections
    ``cls`` lacks (a run's ``config.json`` read by a tool that needs lib's only).
    """
    cfg = _copy(base) if base is not None else cls()
    sections = section_names(cfg)
    if not isinstance(values, dict):
        raise UserError(f"{source}: expected a mapping of sections {sections}, got {type(values).__name__}")
    for section, entries in values.items():
        if section not in sections:
            if ignore_unknown_sections:
                continue
            raise UserError(f"{source}: unknown section '{section}'{_suggest(section, sections)}; "
                            f"sections are {', '.join(sections)}")
        if not isinstance(entries, dict):
            raise UserError(f"{source}: section '{section}' must be a mapping of options")
        for key, value in entries.items():
            set_option(cfg, f"{section}.{key}", value, source)
    return cfg


def set_option(cfg, dotted, value, source="--set"):
    """Set ``section.key`` on ``cfg`` to ``value`` after checking its type."""
    section, _, key = dotted.partition(".")
    if section not in section_names(cfg) or not key:
        raise UserError(f"{source}: unknown option '{dotted}'{_suggest(dotted, all_keys(cfg))}; "
                        "expected section.key, e.g. train.epochs")
    sub = getattr(cfg, section)
    names = [f.name for f in dataclasses.fields(sub)]
    if key not in names:
        raise UserError(f"{source}: unknown option '{dotted}'"
                        f"{_suggest(dotted, all_keys(cfg))}")
    hint = typing.get_type_hints(type(sub))[key]
    setattr(sub, key, _coerce(dotted, value, hint))


def apply_overrides(cfg, overrides):
    """Apply ``--set section.key=value`` strings: JSON or Python literals; string options keep the text."""
    for item in overrides or []:
        if "=" not in item:
            raise UserError(f"--set {item}: expected section.key=value, e.g. train.epochs=50")
        dotted, _, text = item.partition("=")
        dotted = dotted.strip()
        set_option(cfg, dotted, _parse_for(cfg, dotted, text.strip()), f"--set {item}")
    return cfg


def _parse_for(cfg, dotted, text):
    """Parse a ``--set`` value; a string option keeps the text as typed (``none``, ``400_0``), unless quoted."""
    section, _, key = dotted.partition(".")
    sub = getattr(cfg, section, None) if section in section_names(cfg) else None
    hint = typing.get_type_hints(type(sub)).get(key) if sub is not None else None
    quoted = len(text) >= 2 and text[0] == text[-1] and text[0] in "'\""
    if hint == str and not quoted:
        return text
    if hint == Optional[str] and not quoted:
        return None if text.lower() in ("none", "null") else text
    return parse_value(text)


def parse_value(text):
    """Parse a command-line value: JSON, then Python literal, then plain string."""
    for parse in (json.loads, ast.literal_eval):
        try:
            return parse(text)
        except (ValueError, SyntaxError):
            continue
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    return text


def load_json(path):
    """Read a configuration JSON file (as written to ``config.json``)."""
    try:
        with open(path) as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise UserError(f"--config {path}: file not found") from None
    except IsADirectoryError:
        raise UserError(f"--config {path}: is a folder; expected a JSON file") from None
    except UnicodeDecodeError:
        raise UserError(f"--config {path}: not a text file; expected a JSON file") from None
    except OSError as exc:
        raise UserError(f"--config {path}: cannot read it ({exc.strerror})") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"--config {path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None


def all_keys(cfg=None):
    """Every ``section.key`` of ``cfg`` (default: lib's options)."""
    cfg = Config() if cfg is None else cfg
    return [f"{s}.{f.name}" for s in section_names(cfg) for f in dataclasses.fields(getattr(cfg, s))]


def _copy(cfg):
    return type(cfg)(**{s: dataclasses.replace(getattr(cfg, s)) for s in section_names(cfg)})


def check_choice(name, value, choices):
    """Raise UserError ``name: expected one of ...`` unless ``value`` is in ``choices`` (for sections' validate)."""
    _choice(name, value, choices)


def check_range(name, value, low=None, high=None, low_open=False, high_open=False):
    """Raise UserError naming option ``name`` unless ``low <= value <= high`` (``<`` where open; None: unbounded)."""
    _range(name, value, low, high, low_open=low_open, high_open=high_open)


def _suggest(word, options):
    close = difflib.get_close_matches(word, list(options), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _type_name(hint):
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _coerce(name, value, hint):
    """Return ``value`` converted to the annotated type, or raise UserError."""
    _check_finite(name, value)
    origin = typing.get_origin(hint)
    if origin is Union:
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(name, value, arg)
            except UserError:
                continue
        raise UserError(f"{name}: expected {' or '.join(_type_name(a) for a in args if a is not type(None))}"
                        f"{' or null' if type(None) in args else ''}, got {value!r}")
    if origin in (list, List):
        (item,) = typing.get_args(hint)
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise UserError(f"{name}: expected a list of {_type_name(item)}, got {value!r}")
        return [_coerce(name, v, item) for v in value]
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise UserError(f"{name}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise UserError(f"{name}: expected an integer, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise UserError(f"{name}: expected a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise UserError(f"{name}: expected a string, got {value!r}")
    raise TypeError(f"unsupported option type {hint} for {name}")


def _check_finite(name, value):
    """NaN passes every range check (all its comparisons are false): refuse it, and infinities, here."""
    if isinstance(value, (list, tuple)):
        for v in value:
            _check_finite(name, v)
    elif isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"{name}: expected a finite number, got {value}")


def _choice(name, value, choices):
    if value not in choices:
        raise UserError(f"{name}: unknown value '{value}'{_suggest(str(value), choices)}; "
                        f"expected one of {', '.join(choices)}")


def _range(name, value, low, high, low_open=False, high_open=False):
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        lo = "-inf" if low is None else low
        hi = "inf" if high is None else high
        interval = f"{'(' if low_open or low is None else '['}{lo}, {hi}{')' if high_open or high is None else ']'}"
        raise UserError(f"{name}: expected a value in {interval}, got {value}")


def _interval(name, value, low, high, low_open=False):
    if len(value) != 2 or value[0] > value[1]:
        raise UserError(f"{name}: expected [min, max] with min <= max, got {value}")
    for v in value:
        _range(name, v, low, high, low_open=low_open)


def _shape(name, value, low=2):
    if len(value) not in (2, 3):
        raise UserError(f"{name}: expected 2 (y, x) or 3 (z, y, x) sizes, got {value}")
    for v in value:
        _range(name, v, low, None)


if __name__ == "__main__":
    import sys

    from .options import main

    sys.exit(main())
