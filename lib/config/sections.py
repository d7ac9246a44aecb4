"""The six option sections (``data``, ``augment``, ``model``, ``train``, ``inference``, ``post``).

Each field has its default, its one-line help and its allowed values (:func:`lib.config.values.option`);
each section's ``validate()`` checks its values and raises :class:`lib.errors.UserError` naming the option.
"""

import dataclasses
from dataclasses import dataclass, field
from typing import List, Optional, Union

from ..errors import UserError
from .choices import (ACTIVATIONS, AUGMENT_PRESETS, CATEGORICAL_LOSSES, LOSS_NAMES, MAX_CLASSES, MODELS, MONITORS,
                      NORMALIZATIONS, OPTIMIZERS, PRECISIONS, PROB_DTYPES, SCHEDULES, STEM_HEADS, TARGETS,
                      UPSAMPLINGS, VAL_SPLITS, WINDOWS)
from .values import _choice, _interval, _range, _shape, option


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
    voxel_size: Optional[List[float]] = option(None, "the size of a pixel (y, x) or voxel (z, y, x) in "
                                               "data.voxel_unit, for the table of objects (post.instances); null: 1",
                                               range="null, or 2 or 3 sizes, each > 0")
    ignore_value: Optional[int] = option(None, "the mask value of pixels left unannotated: they count in no loss, "
                                         "metric, statistic or weight (binary masks: 0, one foreground value and "
                                         "this one, e.g. 0/1/255 or 0/255/128; K classes: a value >= K; label "
                                         "images: any id); a 3D mask folder may then hold fewer slices than its "
                                         "images, each named by the number of the image slice it annotates; null: "
                                         "every pixel is annotated", range="null, or an integer >= 1")
    voxel_unit: str = option("pixel", "the unit of data.voxel_size, e.g. nm or micrometer", range="a unit name")

    def validate(self):
        _choice("data.normalization", self.normalization, NORMALIZATIONS)
        _range("data.norm_std", self.norm_std, 0.0, None, low_open=True)
        if self.clip_percentiles is not None:
            low, high = (self.clip_percentiles + [None, None])[:2]
            if len(self.clip_percentiles) != 2 or not 0 <= low < high <= 100:
                raise UserError(f"data.clip_percentiles: expected [low, high] with 0 <= low < high <= 100, e.g. "
                                f"[0.1, 99.9], or null; got {self.clip_percentiles}")
        _choice("data.val_split", self.val_split, VAL_SPLITS)
        if self.voxel_size is not None and (len(self.voxel_size) not in (2, 3) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in self.voxel_size)):
            raise UserError(f"data.voxel_size: expected null or 2 (y, x) or 3 (z, y, x) positive sizes, got "
                            f"{self.voxel_size}")
        if not self.voxel_unit.strip():
            raise UserError("data.voxel_unit: expected a unit such as nm, got an empty string")
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
        if self.ignore_value is not None:
            _range("data.ignore_value", self.ignore_value, 1, None)


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
    # No dropout by default: it slowed learning in the short CPU budgets measured (docs/defaults.md).
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
    targets: str = option("mask", "what the network learns: mask (semantic segmentation), or objects (instances) "
                          "from label masks: bc (foreground + contour channels) or bcd (foreground + contour + "
                          "distance to the object's border); the objects are then split by a watershed from seeds "
                          "(post.contour_threshold, post.distance_threshold, post.seed_height)", TARGETS)

    def validate(self):
        _choice("model.name", self.name, tuple(MODELS))
        _range("model.classes", self.classes, 1, MAX_CLASSES)
        _choice("model.targets", self.targets, TARGETS)
        if self.targets != "mask" and self.classes > 1:
            raise UserError(f"model.targets={self.targets}: objects of one kind from label masks, but "
                            f"model.classes={self.classes}; set model.classes=1 (or model.targets=mask for classes)")
        if self.targets != "mask" and MODELS.get(self.name) != "lib.model.networks":
            raise UserError(f"model.targets={self.targets}: the {self.name} network of a paper folder has one output "
                            "per class; instance channels need one of lib's networks (unet, resunet, "
                            "attention_unet, seunet, multiresunet), or model.targets=mask")
        _range("model.depth", self.depth, 1, 8)
        _range("model.filters", self.filters, 1, None)
        _choice("model.activation", self.activation, ACTIVATIONS)
        _choice("model.upsampling", self.upsampling, UPSAMPLINGS)
        if self.upsampling == "resize" and not self.batch_norm and MODELS.get(self.name) == "lib.model.networks":
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
    """Training options; the learning-rate schedules are defined in :func:`lib.train.schedules.learning_rate_at`."""

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
    time_limit_minutes: float = option(0.0, "training (validation and checkpoints included) ends within this many "
                                       "minutes (0 = no limit), then predict", range="[0, inf)")
    seed: int = option(42, "random seed (weights, split, crops, augmentation)", range="[0, 4294967295]")
    workers: int = option(2, "threads preparing batches beside training (1 = in the training loop)",
                          range="[1, inf)")
    steps_per_epoch: int = option(0, "0: an epoch covers the training area once (area / crop area x "
                                  "data.replicate), 20-100 steps", range="[0, inf)")
    monitor: str = option("auto", "picks the best checkpoint, early stopping and plateau drops: val_iou "
                          "(foreground IoU of the validation crops, tracks the test metric), val_f1 (F1 of the "
                          "objects of the validation crops at IoU 0.5; model.targets bc or bcd), val_loss, or auto "
                          "(val_f1 for bc and bcd, else val_iou)", MONITORS)
    channel_weights: List[float] = option([], "model.targets bc or bcd: the loss weight of each channel "
                                          "(foreground, contour[, distance]); []: 1 each", range="[], or one "
                                          "weight >= 0 per channel")
    precision: str = option("float32", "computation in float32, or mixed: bfloat16 (on GPUs and CPUs with bf16) "
                            "or float16 (GPUs; with loss scaling); weights, sigmoid and loss stay float32; "
                            "prediction too; auto: bfloat16 for a 2D network on TensorFlow on a CPU with bf16 "
                            "hardware (AVX-512 BF16, AMX), float32 elsewhere", PRECISIONS)
    deterministic: bool = option(False, "deterministic kernels (TensorFlow op determinism, torch deterministic "
                                 "algorithms, JAX XLA deterministic GPU ops): identical reruns, slower (see "
                                 "docs/reliability.md)")
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
        for w in self.channel_weights:
            _range("train.channel_weights", w, 0.0, None)
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
        channels = {"mask": 0, "bc": 2, "bcd": 3}[model.targets]
        if self.monitor == "val_f1" and not channels:
            raise UserError("train.monitor=val_f1: the F1 of objects needs an instance run (model.targets bc or "
                            "bcd); use val_iou, val_loss or auto")
        if self.channel_weights and len(self.channel_weights) != channels:
            raise UserError(f"train.channel_weights: expected {channels} weights for model.targets={model.targets} "
                            f"(foreground, contour{', distance' if channels == 3 else ''}), got "
                            f"{self.channel_weights}" if channels else "train.channel_weights: weights of channels "
                            "need model.targets bc or bcd; set train.channel_weights=[]")
        if self.channel_weights and not any(self.channel_weights):
            raise UserError("train.channel_weights: every weight is 0; expected at least one positive weight")
        if channels and self.loss in ("weighted_bce", "ce", "ce_dice"):
            raise UserError(f"train.loss={self.loss}: model.targets={model.targets} trains each channel with a binary "
                            "loss (bce, dice, bce_dice or jaccard; the distance channel with squared error)")
        if k > 1 and self.loss not in CATEGORICAL_LOSSES:
            raise UserError(f"train.loss={self.loss}: a binary loss, but model.classes={k}; expected ce, dice or "
                            "ce_dice (bce and bce_dice stand for ce and ce_dice)")
        if (k == 1 and self.loss in ("dice", "jaccard") and not model.batch_norm
                and MODELS.get(model.name) == "lib.model.networks"):
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
    overview_side: int = option(256, "templates/predict.py, OME-Zarr outputs: levels halved in size are added until "
                                "every side is at most this, for viewers (0: full resolution only)", range="[0, inf)")

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
        _range("inference.overview_side", self.overview_side, 0, None)


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
    instances: bool = option(False, "the objects of each variant: a label image of each test item "
                             "(predictions/<variant>/instances/, connected components) and their table "
                             "(objects.csv: size, shape, mean probability; objects_summary.csv: counts, density)")
    min_size: int = option(0, "objects smaller than this (pixels or voxels) are left out of the instances and of the "
                           "instance metrics (f1_50, ap_50 ...)", range="[0, inf)")
    contour_threshold: float = option(0.5, "model.targets bc/bcd: the interior of the objects is the foreground "
                                      "(inference.threshold) where the contour probability is below this ...",
                                      range="(0, 1)")
    distance_threshold: float = option(0.5, "... and (model.targets=bcd) the predicted distance to the border above "
                                       "this (1 at an object's centre)", range="[0, 1)")
    seed_height: float = option(3.0, "model.targets bc/bcd: each peak of the distance to the interior's border that "
                                "rises this many pixels (voxels) above its surroundings seeds an object, which "
                                "grows over the foreground (a watershed)", range="(0, inf)")

    def validate(self):
        _range("post.z_filter_size", self.z_filter_size, 1, None)
        if self.z_filter_size % 2 == 0:
            raise UserError(f"post.z_filter_size: expected an odd number, got {self.z_filter_size}")
        _range("post.oztel_min_mean_prob", self.oztel_min_mean_prob, 0.0, 1.0)
        _range("post.oztel_marker_radius", self.oztel_marker_radius, 0.0, None, low_open=True)
        _range("post.min_size", self.min_size, 0, None)
        _range("post.seed_height", self.seed_height, 0.0, None, low_open=True)
        _range("post.contour_threshold", self.contour_threshold, 0.0, 1.0, low_open=True, high_open=True)
        _range("post.distance_threshold", self.distance_threshold, 0.0, 1.0, high_open=True)


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
        if self.model.targets != "mask" and self.post.oztel:
            raise UserError(f"post.oztel=true: Oztel post-processing refines connected components; "
                            f"model.targets={self.model.targets} splits objects by its own watershed; set "
                            "post.oztel=false")
        ignore, k = self.data.ignore_value, self.model.classes
        if ignore is not None and k > 1 and ignore < k:
            raise UserError(f"data.ignore_value={ignore} is a class id of model.classes={k} (0-{k - 1}); expected "
                            f"a value the classes do not use, >= {k} (e.g. 255)")
        if self.model.classes > 1 and self.post.oztel:
            raise UserError(f"post.oztel=true: Oztel post-processing refines binary objects; with "
                            f"model.classes={self.model.classes} set post.oztel=false")
        return self

    def to_dict(self):
        return dataclasses.asdict(self)


SECTIONS = tuple(f.name for f in dataclasses.fields(Config))
