"""Dimension-generic layers and blocks shared by every network.

Every function takes a :class:`Ops` first: it holds the number of spatial
dimensions and the model options, and picks ``Conv2D`` or ``Conv3D`` (and the
pooling, upsampling and dropout layers) accordingly, so each block below is
written once for 2D and 3D.
"""

import math
import random

import keras
import numpy as np
from keras import layers

# Reduction ratio of the squeeze-and-excitation bottleneck (Hu et al. 2018 use
# 16; our default 16 filters at the first level would squeeze to a single unit).
SE_RATIO = 8


# Width multiplier of a MultiRes block (Ibtehaz & Rahman 2020, alpha = 1.67)
# and the split of its width over the 3x3, "5x5" and "7x7" chains.
MULTIRES_ALPHA = 1.67


MULTIRES_SPLIT = (0.167, 0.333, 0.5)


@keras.saving.register_keras_serializable(package="emseg")
class VarianceScaling(keras.initializers.VarianceScaling):
    """Keras' ``VarianceScaling`` initialiser, drawn with NumPy instead of the backend's random ops.

    Same distributions (a normal truncated at two standard deviations, or a
    uniform), same fans, same seed rule (None draws one from Python's ``random``,
    which ``keras.utils.set_random_seed`` seeds). The backend's random ops cost
    one XLA compilation per weight shape on JAX (minutes for the Cheng network
    under load, paid again by every resume and prediction, which rebuild the
    network from its ``.keras`` file); NumPy costs none, and gives the same
    initial weights on every backend.
    """

    def __call__(self, shape, dtype=None):
        shape = tuple(int(n) for n in shape)
        receptive = math.prod(shape[:-2])
        fan_in, fan_out = (shape[-2] * receptive, shape[-1] * receptive) if len(shape) > 1 else (shape or (1,)) * 2
        scale = self.scale / max(1.0, {"fan_in": fan_in, "fan_out": fan_out}.get(self.mode, (fan_in + fan_out) / 2))
        rng = np.random.default_rng(self.seed)
        if self.distribution == "uniform":
            limit = math.sqrt(3.0 * scale)
            values = rng.uniform(-limit, limit, shape)
        else:
            values = rng.standard_normal(shape)
            stddev = math.sqrt(scale)
            if self.distribution == "truncated_normal":  # redrawn beyond two standard deviations, as Keras does
                while (outside := np.abs(values) > 2.0).any():
                    values[outside] = rng.standard_normal(int(outside.sum()))
                stddev /= 0.87962566103423978  # the truncated standard normal's deviation: the values keep sqrt(scale)
            values *= stddev
        return values.astype(keras.backend.standardize_dtype(dtype or keras.config.floatx()))


def he_normal():
    """A new He normal initialiser (its own seed), as ``kernel_initializer="he_normal"``."""
    return VarianceScaling(2.0, "fan_in", "truncated_normal")


def lecun_normal():
    """A new LeCun normal initialiser (its own seed): keeps the variance of a linear map (no activation after it)."""
    return VarianceScaling(1.0, "fan_in", "truncated_normal")


def glorot_uniform():
    """A new Glorot uniform initialiser (its own seed), Keras' default for kernels."""
    return VarianceScaling(1.0, "fan_avg", "uniform")


@keras.saving.register_keras_serializable(package="emseg")
class SectionConv(layers.Layer):
    """A 3 x 3 convolution of every z section of a 3D feature map, run as one 2D convolution.

    The same as a ``Conv3D`` with a (1, 3, 3) kernel and 'same' padding, but the
    sections are folded into the batch axis and convolved by a ``Conv2D``: on a CPU,
    TensorFlow's ``Conv3D`` runs an in-plane kernel 1.7x slower than ``Conv2D`` runs
    the same arithmetic. Input and output ``(N, Z, Y, X, C)``; any Z, Y, X.
    """

    def __init__(self, filters, use_bias=True, **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.use_bias = bool(use_bias)
        self.conv = layers.Conv2D(self.filters, 3, padding="same", use_bias=self.use_bias,
                                  kernel_initializer=he_normal(), dtype=self.dtype_policy, name="section_conv2d")

    def build(self, input_shape):
        self.conv.build((None, input_shape[2], input_shape[3], input_shape[4]))

    def call(self, x):
        shape = keras.ops.shape(x)
        out = self.conv(keras.ops.reshape(x, (-1, shape[2], shape[3], x.shape[-1])))
        return keras.ops.reshape(out, (shape[0], shape[1], shape[2], shape[3], self.filters))

    def compute_output_shape(self, input_shape):
        return (*input_shape[:4], self.filters)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "use_bias": self.use_bias}


class Ops:
    """Layer factory for one network: 2D or 3D, with the model's options.

    Parameters
    ----------
    ndim : int
        Number of spatial dimensions, 2 or 3.
    cfg : lib.config.ModelConfig
        Supplies ``activation``, ``batch_norm``, ``spatial_dropout``,
        ``upsampling`` and ``planar_levels``.
    pool : tuple of int
        Pooling factor per spatial axis, e.g. ``(2, 2)`` or ``(1, 2, 2)``.

    Attributes
    ----------
    level : int or None
        The U-Net level whose layers are being built (0: full resolution; None:
        the bottom block, the stem, the head). In 3D, the 3 x 3 x 3 convolutions
        of levels below ``cfg.planar_levels`` are in-plane (:class:`SectionConv`).
    """

    def __init__(self, ndim, cfg, pool):
        self.ndim = ndim
        self.cfg = cfg
        self.pool = tuple(pool)
        self.level = None

    def _layer(self, kind, suffix=""):
        return getattr(layers, f"{kind}{self.ndim}D{suffix}")

    def _planar(self):
        return self.ndim == 3 and self.level is not None and self.level < self.cfg.planar_levels

    def conv(self, x, filters, kernel_size=3, strides=1, use_bias=True, init=None):
        """Convolution with 'same' padding and He initialisation (or the initialiser ``init``), no activation.

        A 3 x 3 x 3 convolution at a planar level (``model.planar_levels``) is a
        :class:`SectionConv`, 3 x 3 within each section (He-initialised).
        """
        if kernel_size == 3 and strides == 1 and self._planar():
            return SectionConv(filters, use_bias=use_bias)(x)
        return self._layer("Conv")(
            filters, kernel_size, strides=strides, padding="same",
            use_bias=use_bias, kernel_initializer=init or he_normal(),
        )(x)

    def shortcut(self, x, filters):
        """The 1x1 projection shortcut of a residual block, normalised.

        Without batch norm it is LeCun-initialised: a linear map that keeps the variance of its
        input, where He initialisation (made for a rectifier after the convolution) doubles it at
        every block, and a chain of them saturates the output before the first step (see :meth:`residual`).
        """
        init = None if self.cfg.batch_norm else lecun_normal()
        return self.norm(self.conv(x, filters, 1, use_bias=not self.cfg.batch_norm, init=init))

    def residual(self, shortcut, branch):
        """``shortcut + branch``; without batch norm scaled by 1/sqrt(2), so that the sum of two signals of
        unit variance keeps unit variance.

        With batch norm every block's output is normalised; without it, unscaled sums compound from block
        to block: the residual and MultiRes U-Nets then started with 94 % and 74 % of their output saturated
        (probabilities below 1e-4 or above 1 - 1e-4; 16 filters, depth 4, an EM crop) and never learnt.
        """
        total = layers.Add()([shortcut, branch])
        return total if self.cfg.batch_norm else layers.Rescaling(2 ** -0.5)(total)

    def norm(self, x):
        """Batch normalisation, or ``x`` unchanged when ``model.batch_norm`` is off.

        Momentum 0.9 rather than Keras' 0.99: with the few steps per epoch of small EM
        training sets, 0.99 leaves the inference-time statistics far from the training
        ones for dozens of epochs, and validation predictions collapse to one class.
        """
        return layers.BatchNormalization(momentum=0.9)(x) if self.cfg.batch_norm else x

    def act(self, x):
        """The model's activation (``model.activation``)."""
        return layers.Activation(self.cfg.activation)(x)

    def conv_norm_act(self, x, filters, kernel_size=3, activate=True):
        """Convolution, optional batch norm, optional activation.

        The convolution has no bias when batch norm follows, whose offset
        makes it redundant.
        """
        x = self.conv(x, filters, kernel_size, use_bias=not self.cfg.batch_norm)
        x = self.norm(x)
        return self.act(x) if activate else x

    def pool_down(self, x):
        """Max pooling by the model's pooling factor."""
        return self._layer("MaxPooling")(pool_size=self.pool)(x)

    def up(self, x, filters, factor=None):
        """Upsample by ``factor`` per axis (default: the pooling factor), with ``filters`` output channels.

        ``transpose`` learns the upsampling (a transposed convolution with
        kernel = stride = factor); ``resize`` repeats voxels and then convolves,
        which avoids the checkerboard artefacts of transposed convolutions.
        """
        factor = self.pool if factor is None else tuple(factor)
        if self.cfg.upsampling == "transpose":
            return self._layer("Conv", "Transpose")(
                filters, factor, strides=factor, padding="same",
                kernel_initializer=he_normal(),
            )(x)
        x = self._layer("UpSampling")(size=factor)(x)
        return self.conv(x, filters)

    def upsample_by(self, x, factor):
        """Nearest-neighbour upsampling by ``factor`` per axis (no weights)."""
        return self._layer("UpSampling")(size=factor)(x)

    def dropout(self, x, rate):
        """(Spatial) dropout at ``rate``; no layer at all when the rate is 0."""
        if rate <= 0:
            return x
        kind = self._layer("SpatialDropout") if self.cfg.spatial_dropout else layers.Dropout
        # A seed of its own, drawn as Keras draws one for seed=None: without it, Dropout on torch draws from
        # torch's global generator, which EpochSeeds cannot set, and a resumed run draws other masks.
        return kind(rate, seed=random.randint(1, int(1e9)))(x)

    def global_pool(self, x):
        """Global average over the spatial axes, kept as size-1 axes for broadcasting."""
        return self._layer("GlobalAveragePooling")(keepdims=True)(x)


def conv_block(ops, x, filters):
    """Two 3x3(x3) convolutions, each followed by batch norm and activation (U-Net)."""
    x = ops.conv_norm_act(x, filters)
    return ops.conv_norm_act(x, filters)


def residual_block(ops, x, filters, preactivate=True):
    """Pre-activation residual block (He et al. 2016; Zhang et al. 2018).

    ``[BN, act,] conv, BN, act, conv`` plus a 1x1 projection shortcut. The
    shortcut is always projected because every block of the network changes
    the channel count (input to ``filters``, pooled or concatenated features).

    Parameters
    ----------
    preactivate : bool
        False for the first block of the network, whose input is the image:
        an activation there would discard the negative half of normalised
        intensities.
    """
    shortcut = ops.shortcut(x, filters)
    if preactivate:
        x = ops.act(ops.norm(x))
    x = ops.conv_norm_act(x, filters)
    x = ops.conv(x, filters)
    return ops.residual(shortcut, x)


def first_residual_block(ops, x, filters):
    """:func:`residual_block` without pre-activation, for the image input."""
    return residual_block(ops, x, filters, preactivate=False)


def squeeze_excite(ops, x, filters):
    """Squeeze-and-excitation (Hu et al. 2018): rescale channels by global context."""
    s = ops.global_pool(x)
    s = layers.Dense(max(1, filters // SE_RATIO), activation="relu", kernel_initializer=he_normal())(s)
    s = layers.Dense(filters, activation="sigmoid", kernel_initializer=glorot_uniform())(s)
    return layers.Multiply()([x, s])


def se_conv_block(ops, x, filters):
    """:func:`conv_block` followed by :func:`squeeze_excite`."""
    return squeeze_excite(ops, conv_block(ops, x, filters), filters)


def attention_gate(ops, skip, gating, filters):
    """Additive attention gate (Oktay et al. 2018) weighting a skip connection.

    ``alpha = sigmoid(psi(relu(W_x skip + W_g gating)))`` and the gate returns
    ``alpha * skip``. Here the gating signal is the decoder feature already
    upsampled to the skip's resolution, so the attention map is computed at
    full resolution and needs no resampling.

    Parameters
    ----------
    skip : tensor, shape (N, *spatial, F)
        Encoder feature to be gated.
    gating : tensor, shape (N, *spatial, G)
        Decoder feature at the same resolution.
    filters : int
        Channels of the skip; the intermediate space has half as many.
    """
    inter = max(1, filters // 2)
    theta = ops.conv(skip, inter, 1, use_bias=False)
    phi = ops.conv(gating, inter, 1)
    f = layers.Activation("relu")(layers.Add()([theta, phi]))
    alpha = layers.Activation("sigmoid")(ops.conv(f, 1, 1))
    return layers.Multiply()([skip, alpha])


def multires_block(ops, x, filters):
    """MultiRes block (Ibtehaz & Rahman 2020).

    Three chained 3x3 convolutions approximate 3x3, 5x5 and 7x7 receptive
    fields; their outputs are concatenated and added to a 1x1 shortcut.
    The block is ``MULTIRES_ALPHA`` times wider than ``filters``.
    """
    width = MULTIRES_ALPHA * filters
    sizes = [max(1, int(width * s)) for s in MULTIRES_SPLIT]
    shortcut = ops.shortcut(x, sum(sizes))
    chain = []
    for size in sizes:
        x = ops.conv_norm_act(x, size)
        chain.append(x)
    x = ops.norm(layers.Concatenate()(chain))
    x = ops.act(ops.residual(shortcut, x))
    return ops.norm(x)


def res_path(ops, x, filters, length):
    """Res path (Ibtehaz & Rahman 2020): ``length`` residual 3x3 convolutions.

    Applied to a skip connection to narrow the semantic gap between encoder
    and decoder features; deeper skips, which are closer semantically, get
    shorter paths.
    """
    for _ in range(length):
        shortcut = ops.shortcut(x, filters)
        x = ops.conv_norm_act(x, filters)
        x = ops.act(ops.residual(shortcut, x))
        x = ops.norm(x)
    return x


def sigmoid_head(ops, x, n_outputs, name, upsample=None, softmax=False):
    """1x1 convolution to ``n_outputs`` logits, optional upsampling, float32 sigmoid (``softmax``: over channels).

    Upsampling (nearest neighbour, by ``upsample`` per axis) acts on the
    logits and so adds no weights; the activation runs in float32 so that
    probabilities, and the loss on them, stay accurate under mixed precision.
    ``softmax`` makes the channels the probabilities of ``n_outputs`` classes (multi-class segmentation).
    """
    x = ops.conv(x, n_outputs, 1)
    if upsample is not None:
        x = ops.upsample_by(x, upsample)
    return output_activation(x, name, softmax)


def output_activation(logits, name, softmax=False):
    """The float32 sigmoid (``softmax``: over channels) of ``logits``, named ``name``."""
    return layers.Activation("softmax" if softmax else "sigmoid", dtype="float32", name=name)(logits)
