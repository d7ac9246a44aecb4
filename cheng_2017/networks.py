"""The asymmetric encoder-decoder networks of Cheng & Varshney (ICIP 2017), 2D and 3D from one builder.

A large encoder and a small decoder without skip connections between them
(as in ENet), built from:

- an input block: a strided 3x3(x3) convolution concatenated with a max
  pooling of the image (halves the input; ``filters`` channels in all);
- pyramidal pre-activation residual blocks (Han et al., 2017) whose
  convolutions are factorised into one convolution per axis (1x3 and 3x1 in
  2D; 1x1x3, 1x3x1 and 3x1x1 in 3D), each block ``filters / 2`` channels wider
  than the previous one, with zero-padded identity shortcuts;
- two downsampling blocks, the same with stride-2 convolutions, whose
  shortcut is the stochastic downsampling of
  :class:`cheng_2017.layers.StochasticDownsampling`;
- a decoder of two upsampling steps, each followed by pre-activation
  bottleneck residual blocks (1x1, 3x3(x3), 1x1), and a final upsampling to a
  one-channel sigmoid.

Block counts follow Fig. 1 of the paper as read by the original reproduction
(Franco-Barranco et al., 2021): 2 blocks, downsampling, 3 blocks,
downsampling, 6 blocks in the encoder; 4 and 2 bottleneck blocks in the
decoder; widths 16 + 8k in the encoder, 64 and 32 in the decoder for
``filters=16``.

Keras is imported here, so import this module only after the command line has
chosen the device (:func:`lib.run.devices.select_device`).
"""

import keras
from keras import layers

from lib.errors import UserError
from lib.model.networks.blocks import Ops

from .layers import PadChannels, StochasticDownsampling
from .options import AXES, T, check_options, divisor

ENCODER_BLOCKS = (2, 3, 6)
DECODER_BLOCKS = (4, 2)


def build_model(cfg, input_shape, t=T):
    """Build the 2D or 3D network (not compiled).

    Parameters
    ----------
    cfg : lib.config.ModelConfig
        ``name`` must be ``cheng2d`` for 2D input and ``cheng3d`` for 3D;
        ``depth`` must be 3 (the network's fixed number of halvings); ``filters``
        (>= 2) sets the first width, the widening step (``filters // 2``) and
        the decoder widths (``4 filters``, ``2 filters``); ``dropout`` is one rate
        used inside every encoder block; ``batch_norm``, ``activation``,
        ``spatial_dropout`` and ``upsampling`` apply as in :mod:`lib.model.networks`.
        ``pool_size`` must be unset (every axis is halved) and
        ``deep_supervision`` false.
    input_shape : sequence
        ``(H, W, C)`` or ``(Z, Y, X, C)``; spatial sizes may be None (any
        multiple of :func:`divisor` at run time), the channel count must be given.
    t : int
        Group size of the stochastic downsampling (the paper's 4).

    Returns
    -------
    keras.Model
        Named ``cfg.name``; output ``(N, *spatial, 1)`` float32 sigmoid probabilities (``(N, *spatial, K)``
        softmax ones of ``cfg.classes`` K > 1).

    Raises
    ------
    UserError
        For an option or input shape the network cannot take.
    """
    input_shape = tuple(input_shape)
    ndim = len(input_shape) - 1
    if ndim not in AXES:
        raise UserError(f"model: expected an input shape (y, x, channels) or (z, y, x, channels), got {input_shape}")
    check_options(cfg, ndim, t)
    _check_input_shape(input_shape, cfg.filters, t)
    ops = Ops(ndim, cfg, (2,) * ndim)
    step = cfg.filters // 2

    inputs = keras.Input(shape=input_shape, name="image")
    # As in ENet: the convolution makes up the width that the pooled image channels leave.
    x = layers.Concatenate()([
        ops.conv(inputs, cfg.filters - input_shape[-1], 3, strides=2, use_bias=not cfg.batch_norm),
        ops.pool_down(inputs),
    ])
    width = cfg.filters
    for stage, blocks in enumerate(ENCODER_BLOCKS):
        if stage:
            width += step
            x = encoder_block(ops, x, width, cfg.dropout, downsample=True, t=t)
        for _ in range(blocks):
            width += step
            x = encoder_block(ops, x, width, cfg.dropout)
    for level, blocks in zip((2, 1), DECODER_BLOCKS):
        width = cfg.filters * 2**level
        x = ops.up(x, width)
        for _ in range(blocks):
            x = bottleneck_block(ops, x, width)
    logits = ops.up(ops.act(ops.norm(x)), cfg.classes)
    outputs = layers.Activation("sigmoid" if cfg.classes == 1 else "softmax", dtype="float32", name="output")(logits)
    return keras.Model(inputs, outputs, name=cfg.name)


def factorised_conv(ops, x, filters, strides=1, use_bias=True):
    """One convolution per axis, kernel 3 along it and 1 across, outputs concatenated.

    2D: 1x3 and 3x1; 3D: 1x1x3, 1x3x1 and 3x1x1. The ``filters`` outputs are
    split as evenly as possible between the axes (the first get the remainder).
    """
    n = ops.ndim
    branches = []
    for i, axis in enumerate(reversed(range(n))):
        kernel = tuple(3 if a == axis else 1 for a in range(n))
        branches.append(ops.conv(x, filters // n + (i < filters % n), kernel, strides=strides, use_bias=use_bias))
    return layers.Concatenate()(branches)


def encoder_block(ops, x, width, rate, downsample=False, t=T):
    """Pyramidal pre-activation residual block with factorised convolutions.

    ``BN, act, conv, dropout, BN, act, conv`` plus a shortcut padded with zero
    channels to ``width``. With ``downsample`` the first convolutions have
    stride 2 and the shortcut is the stochastic downsampling of the input.
    """
    shortcut = StochasticDownsampling(t)(x) if downsample else x
    shortcut = PadChannels(width)(shortcut)
    y = ops.act(ops.norm(x))
    y = factorised_conv(ops, y, width, strides=2 if downsample else 1, use_bias=not ops.cfg.batch_norm)
    y = ops.act(ops.norm(ops.dropout(y, rate)))
    y = factorised_conv(ops, y, width)
    return layers.Add()([shortcut, y])


def bottleneck_block(ops, x, width):
    """Pre-activation bottleneck residual block: 1x1 to ``width / 4``, 3x3(x3), 1x1 back to ``width``."""
    inner = max(1, width // 4)
    y = ops.conv(ops.act(ops.norm(x)), inner, 1, use_bias=not ops.cfg.batch_norm)
    y = ops.conv(ops.act(ops.norm(y)), inner, 3, use_bias=not ops.cfg.batch_norm)
    y = ops.conv(ops.act(ops.norm(y)), width, 1)
    return layers.Add()([x, y])


def _check_input_shape(input_shape, filters, t):
    """Raise UserError unless the channel count is known and below ``filters``, and each known spatial size is a
    multiple of the divisor."""
    *spatial, channels = input_shape
    if channels is None or channels < 1:
        raise UserError(f"model: expected a positive channel count, got {channels!r} in {input_shape}")
    if channels >= filters:
        raise UserError(f"model.filters: the Cheng input block concatenates the {channels} image channels with "
                        f"filters - {channels} convolved ones; expected more than {channels}, got {filters}")
    div = divisor(t)
    for axis, size in zip(AXES[len(spatial)], spatial):
        if size is not None and size % div:
            raise UserError(f"model: input size {size} on axis {axis} is not a multiple of {div}, "
                            f"which the Cheng network needs (3 halvings; groups of t={t} at 1/2 and 1/4 scale)")
