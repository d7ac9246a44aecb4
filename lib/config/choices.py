"""The allowed values of the options that take a name, and the networks ``model.name`` may name.

Defined here, not beside the code that uses them (losses, networks), so that checking a
configuration imports nothing heavy.
"""



NORMALIZATIONS = ("per_image", "dtype_max", "zscore", "fixed")


VAL_SPLITS = ("random", "last")


OPTIMIZERS = ("sgd", "adam", "adamw", "adabound")


SCHEDULES = ("none", "step", "cosine", "plateau", "onecycle")


MONITORS = ("auto", "val_iou", "val_f1", "val_loss")


# model.targets: what the network learns; bc and bcd are the instance modes (lib.data.targets.CHANNELS).
TARGETS = ("mask", "bc", "bcd")


# Defined here, not in lib.model.losses, so that checking a configuration does not import Keras.
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
# (:func:`lib.model.networks.build_network`). So a configuration may name any of these networks in any entry
# script, and nothing has to be registered before it is read. A network of your own: add a line.
MODELS = {
    "unet": "lib.model.networks", "resunet": "lib.model.networks", "attention_unet": "lib.model.networks",
    "seunet": "lib.model.networks", "multiresunet": "lib.model.networks",
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
