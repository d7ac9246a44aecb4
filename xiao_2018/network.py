"""The network of Xiao et al. (2018): a deeply supervised 3D residual U-Net with additive skips.

Encoder: residual blocks of ``f``, ``1.5 f`` and ``2 f`` filters (32, 48, 64
for ``model.filters=32``), each followed by max pooling by ``model.pool_size``
(``[1, 2, 2]``: the anisotropic Lucchi-style stacks are not pooled along z),
and a bottom residual block of ``2.5 f`` (80) filters. Decoder, mirrored:
upsampling to the skip's width, the skip *added* (not concatenated), and a
residual block of that width. Outputs, all ``(N, Z, Y, X, 1)`` float32 sigmoid
probabilities of the input's spatial shape:

``output``
    the main prediction, from the last (full-resolution) decoder block;
``aux_1``
    from the decoder block of ``2 f`` (64) filters, at 1/4 of the in-plane
    resolution, upsampled by ``pool ** 2``;
``aux_2``
    from the decoder block of ``1.5 f`` (48) filters, at 1/2 of the in-plane
    resolution, upsampled by ``pool``.

Training weighs them ``1, 0.15, 0.3`` (:data:`LOSS_WEIGHTS`, passed as
``train.deep_supervision_weights`` to :func:`lib.train.loop.train`), every output
against the ground truth. Which decoder stages feed ``aux_1`` and ``aux_2``
follows the reproduction of Franco-Barranco et al. (2021), see xiao_2018/README.md.

The blocks, the heads and the layer factory are lib's
(:mod:`lib.model.networks.blocks`): pre-activation residual blocks with a 1x1x1
projection shortcut, ``model.activation``, ``model.batch_norm``,
``model.upsampling`` and ``model.dropout`` (one rate, or one per level, bottom
last) apply as in the other networks. Only ``keras.layers`` are used, so the
model runs on every Keras backend and saves to ``.keras`` without custom objects.

Keras is imported here, so import this module only after the command line has
chosen the device (:func:`lib.run.devices.select_device`).
"""

import keras
from keras import layers

from lib.errors import UserError
from lib.model.networks import divisor, pool_size
from lib.model.networks.architectures import BOTTLENECK
from lib.model.networks.blocks import Ops, first_residual_block, residual_block, sigmoid_head

from . import MODEL_NAME
from .options import DEPTH, check_model

# Loss weights of (output, aux_1, aux_2): main + 0.15 aux_1 + 0.3 aux_2.
LOSS_WEIGHTS = (1.0, 0.15, 0.3)
OUTPUT_NAMES = ("output", "aux_1", "aux_2")
# Decoder level (0 = full resolution) that feeds each auxiliary output.
AUX_LEVELS = {"aux_1": 2, "aux_2": 1}


def level_widths(filters):
    """Filters of the residual blocks, first level to bottom: ``f + k f // 2`` (32, 48, 64, 80 for 32)."""
    return [filters + k * (filters // 2) for k in range(DEPTH + 1)]


def build_model(cfg, input_shape):
    """Build the network (not compiled).

    Parameters
    ----------
    cfg : lib.config.ModelConfig
        ``name`` must be ``xiao2018`` and ``depth`` 3; ``filters`` (>= 2) is the
        first width; ``pool_size`` the pooling per axis (z, y, x), e.g.
        ``[1, 2, 2]``; ``deep_supervision`` adds ``aux_1`` and ``aux_2``.
    input_shape : sequence
        ``(Z, Y, X, C)``; spatial sizes may be None (any multiple of
        ``pool ** 3`` per axis at run time), the channel count must be given.

    Returns
    -------
    keras.Model
        Named ``xiao2018``. With ``cfg.deep_supervision`` the outputs are
        ``[output, aux_1, aux_2]``, else ``output`` alone; each
        ``(N, Z, Y, X, 1)`` float32 probabilities (``(N, Z, Y, X, K)`` softmax ones of ``cfg.classes`` K > 1).

    Raises
    ------
    UserError
        For an option or input shape the network cannot take.
    """
    cfg.validate()
    check_model(cfg)
    input_shape = tuple(input_shape)
    if len(input_shape) != 4:
        raise UserError(f"model: the Xiao et al. network is 3D; expected an input shape (z, y, x, channels), "
                        f"got {input_shape}")
    *spatial, channels = input_shape
    if channels is None or channels < 1:
        raise UserError(f"model: expected a positive channel count, got {channels!r} in {input_shape}")
    for axis, size, div in zip("zyx", spatial, divisor(cfg, 3)):
        if size is not None and size % div:
            raise UserError(f"model: input size {size} on axis {axis} is not divisible by {div}, the network's "
                            f"downsampling (model.pool_size ** {DEPTH}); choose data.crop_shape accordingly")

    pool = pool_size(cfg, 3)
    ops = Ops(3, cfg, pool)
    widths = level_widths(cfg.filters)
    rates = cfg.dropout if isinstance(cfg.dropout, list) else [cfg.dropout] * (DEPTH + 1)

    inputs = keras.Input(shape=input_shape, name="image")
    x = inputs
    skips = []
    for level in range(DEPTH):
        block = first_residual_block if level == 0 else residual_block
        x = ops.dropout(block(ops, x, widths[level]), rates[level])
        skips.append(x)
        x = ops.pool_down(x)
    x = ops.dropout(residual_block(ops, x, widths[DEPTH]), rates[DEPTH])
    # lib.model.networks.encoder_layers finds the end of the encoder by this name (train.freeze_encoder).
    x = layers.Identity(name=BOTTLENECK)(x)

    heads = {}
    for level in reversed(range(DEPTH)):
        x = ops.up(x, widths[level])
        x = layers.Add()([skips[level], x])
        x = ops.dropout(residual_block(ops, x, widths[level]), rates[level])
        for name, aux_level in AUX_LEVELS.items():
            if cfg.deep_supervision and level == aux_level:
                heads[name] = sigmoid_head(ops, x, cfg.classes, name, upsample=tuple(p**level for p in pool),
                                             softmax=cfg.classes > 1)
    main = sigmoid_head(ops, x, cfg.classes, OUTPUT_NAMES[0], softmax=cfg.classes > 1)
    outputs = [main] + [heads[name] for name in OUTPUT_NAMES[1:]] if cfg.deep_supervision else main
    return keras.Model(inputs, outputs, name=MODEL_NAME)
