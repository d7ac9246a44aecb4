"""The U-Net skeleton and the five architectures that fill it in.

Every network here is the same encoder-decoder: ``depth`` levels of
block + dropout + pooling, a bottom block, then ``depth`` levels of
upsampling + skip connection + block + dropout, and a 1x1 sigmoid head. An
architecture only chooses the block and what happens to the skip
connection, so 2D and 3D, dropout, upsampling, pooling and deep supervision
are handled once, in :func:`encoder_decoder`.
"""

import keras
from keras import layers

from . import blocks

BOTTLENECK = "bottleneck"


def _attention_skip(ops, skip, gating, filters, level, depth):
    return blocks.attention_gate(ops, skip, gating, filters)


def _res_path_skip(ops, skip, gating, filters, level, depth):
    return blocks.res_path(ops, skip, filters, length=depth - level)


# name -> block for every level, block for the first level (default: the same),
# and a transform of each skip connection (default: none).
ARCHITECTURES = {
    "unet": {"block": blocks.conv_block},
    "resunet": {"block": blocks.residual_block, "first_block": blocks.first_residual_block},
    "attention_unet": {"block": blocks.conv_block, "skip": _attention_skip},
    "seunet": {"block": blocks.se_conv_block},
    "multiresunet": {"block": blocks.multires_block, "skip": _res_path_skip},
}


def encoder_decoder(ops, input_shape, depth, filters, rates, n_outputs, deep_supervision,
                    name, block, first_block=None, skip=None, stem=None, softmax=False):
    """Build a U-Net-shaped ``keras.Model`` from a block and a skip transform.

    Parameters
    ----------
    ops : blocks.Ops
        Layer factory (2D or 3D, model options, pooling factor).
    input_shape : tuple
        ``(*spatial, channels)``; spatial sizes may be None.
    depth : int
        Number of pooling steps.
    filters : int
        Channels at the first level; doubled at each level below.
    rates : sequence of float
        Dropout rate per level, ``depth + 1`` values, bottom last; each
        level's encoder and decoder blocks share its rate.
    n_outputs : int
        Channels of the sigmoid output (with ``softmax``, classes of the softmax output).
    deep_supervision : bool
        Add an auxiliary output at each intermediate decoder level.
    name : str
        Model name.
    block : callable
        ``block(ops, x, filters) -> tensor`` used at every level.
    first_block : callable, optional
        Replaces ``block`` at the first encoder level (which sees the image).
    skip : callable, optional
        ``skip(ops, skip, gating, filters, level, depth) -> tensor`` applied
        to each skip connection; ``gating`` is the upsampled decoder feature.
    stem : tuple of int, optional
        Downsampling per axis before the first level: a convolution with
        kernel = stride = ``stem`` (``filters`` channels, norm, activation);
        after the last decoder level an upsampling of the same shape (``ops.up``)
        brings the features back to the input size before the head, or with
        ``model.stem_head = "linear"`` brings the logits back: every output voxel
        is then a learned linear read-out of the features at the stem's
        resolution, and nothing runs at full resolution but that upsampling.
        The levels then work on ``1 / prod(stem)`` of the voxels.
    softmax : bool
        Softmax over the ``n_outputs`` channels (classes) instead of a sigmoid per channel.

    Returns
    -------
    keras.Model
        The bottom block's output passes through an identity layer named
        :data:`BOTTLENECK`; everything that feeds it is the encoder.
        Output ``(N, *spatial, n_outputs)`` float32 probabilities, or with
        ``deep_supervision`` a list: that output, then one per decoder level
        ``1 .. depth - 1`` (finest first) upsampled to the input size.
    """
    inputs = keras.Input(shape=input_shape, name="image")
    x = inputs
    stem = tuple(stem) if stem is not None and any(s > 1 for s in stem) else None
    if stem is not None:
        x = ops.act(ops.norm(ops.conv(x, filters, stem, strides=stem, use_bias=not ops.cfg.batch_norm)))
    skips = []
    for level in range(depth):
        ops.level = level
        level_block = first_block if (level == 0 and first_block is not None) else block
        x = ops.dropout(level_block(ops, x, filters * 2**level), rates[level])
        skips.append(x)
        x = ops.pool_down(x)
    ops.level = None
    x = ops.dropout(block(ops, x, filters * 2**depth), rates[depth])
    # Marks the end of the encoder: lib.model.networks.encoder_layers finds it by name.
    x = layers.Identity(name=BOTTLENECK)(x)

    aux = []
    for level in reversed(range(depth)):
        width = filters * 2**level
        ops.level = level
        x = ops.up(x, width)
        bridge = skips[level] if skip is None else skip(ops, skips[level], x, width, level, depth)
        x = layers.Concatenate()([bridge, x])
        x = ops.dropout(block(ops, x, width), rates[level])
        if deep_supervision and level > 0:
            factor = tuple(s * p**level for s, p in zip(stem or (1,) * len(ops.pool), ops.pool))
            aux.append(blocks.sigmoid_head(ops, x, n_outputs, f"aux_{level}", upsample=factor, softmax=softmax))

    ops.level = None
    if stem is not None and ops.cfg.stem_head == "linear":
        main = blocks.output_activation(ops.up(x, n_outputs, factor=stem), "output", softmax)
    else:
        if stem is not None:
            x = ops.act(ops.norm(ops.up(x, filters, factor=stem)))
        main = blocks.sigmoid_head(ops, x, n_outputs, "output", softmax=softmax)
    outputs = [main] + aux[::-1] if deep_supervision else main
    return keras.Model(inputs, outputs, name=name)
