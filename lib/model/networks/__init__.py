"""Segmentation networks: one dimension-generic builder for 2D and 3D.

:func:`build_model` turns a :class:`lib.config.ModelConfig` and an input
shape into a ``keras.Model`` that outputs sigmoid probabilities (softmax ones of
``model.classes`` > 1 classes). The
networks (:data:`MODEL_NAMES`) share the U-Net skeleton of
:mod:`lib.model.networks.architectures` and differ in their blocks
(:mod:`lib.model.networks.blocks`).

Keras is imported only inside the functions that need it: the command line
chooses the device (``CUDA_VISIBLE_DEVICES``) after importing this package
and before Keras is loaded.
"""

import numbers
import os

from ...config import MODELS
from ...errors import UserError

# lib's own networks: those of lib.config.MODELS that this package builds.
MODEL_NAMES = tuple(name for name, module in MODELS.items() if module == __name__)


def build_network(cfg, input_shape):
    """Build the network named by ``cfg.name``, wherever it is defined (:data:`lib.config.MODELS`).

    Imports the module that defines it (lib's networks, a paper folder's) only now, so that
    naming a network needs no registration and no import order. That module's
    ``build_model(cfg, input_shape)`` builds it.
    """
    import importlib

    cfg.validate()  # an unknown model.name is refused there, with a suggestion
    return importlib.import_module(MODELS[cfg.name]).build_model(cfg, input_shape)


_AXES = {2: ("y", "x"), 3: ("z", "y", "x")}


def pool_size(cfg, ndim):
    """Pooling factor per spatial axis.

    Parameters
    ----------
    cfg : lib.config.ModelConfig
    ndim : int
        Number of spatial dimensions, 2 or 3.

    Returns
    -------
    tuple of int
        ``cfg.pool_size``, or 2 on every axis when it is None.
    """
    if ndim not in _AXES:
        raise UserError(f"model: expected 2 or 3 spatial axes, got {ndim}")
    if cfg.pool_size is None:
        return (2,) * ndim
    if len(cfg.pool_size) != ndim:
        raise UserError(
            f"model.pool_size: expected {ndim} sizes ({', '.join(_AXES[ndim])}) for "
            f"{ndim}D input, got {list(cfg.pool_size)}"
        )
    return tuple(int(p) for p in cfg.pool_size)


def stem_stride(cfg, ndim):
    """Downsampling of the input by the stem (``model.stem_stride``) per spatial axis; 1 everywhere: no stem."""
    stride = cfg.stem_stride
    if not isinstance(stride, list):
        return (int(stride),) * ndim
    if len(stride) != ndim:
        raise UserError(f"model.stem_stride: expected {ndim} sizes ({', '.join(_AXES[ndim])}) for {ndim}D input, "
                        f"got {list(stride)}")
    return tuple(int(s) for s in stride)


def check_planar_levels(cfg, ndim):
    """Raise UserError for ``model.planar_levels`` > 0 with 2D input, where it means nothing."""
    if ndim == 2 and cfg.planar_levels:
        raise UserError(f"model.planar_levels: in-plane levels are for 3D input (every level of a 2D network is "
                        f"in-plane); expected 0, got {cfg.planar_levels}")


def divisor(cfg, ndim):
    """Total downsampling factor per spatial axis: ``pool ** depth``.

    Every spatial input size must be a multiple of it, so data code pads
    tiles to it.

    Parameters
    ----------
    cfg : lib.config.ModelConfig
    ndim : int
        Number of spatial dimensions, 2 or 3.

    Returns
    -------
    tuple of int
        One factor per spatial axis, e.g. ``(16, 16)`` for 2D with
        ``depth=4``, or ``(1, 16, 16)`` with ``pool_size=[1, 2, 2]``.
    """
    return tuple(s * p**cfg.depth for s, p in zip(stem_stride(cfg, ndim), pool_size(cfg, ndim)))


def build_model(cfg, input_shape, n_outputs=None, deep_supervision=None):
    """Build the network named by ``cfg.name`` (not compiled).

    Parameters
    ----------
    cfg : lib.config.ModelConfig
        Architecture and options; validated here.
    input_shape : sequence
        Channels-last input without the batch axis: ``(H, W, C)`` for 2D or
        ``(Z, Y, X, C)`` for 3D. Spatial sizes may be None (any size that is
        a multiple of :func:`divisor`); the channel count must be given.
    n_outputs : int, optional
        Number of output channels (one sigmoid per channel); default ``cfg.classes``, which with
        ``cfg.classes > 1`` are the classes of a softmax output, or with ``cfg.targets`` bc (bcd) 2 (3)
        sigmoid channels (foreground, contour[, distance]).
    deep_supervision : bool, optional
        Also output a prediction from each intermediate decoder level;
        default ``cfg.deep_supervision``.

    Returns
    -------
    keras.Model
        Output float32 probabilities of shape ``(N, *spatial, n_outputs)``.
        With ``deep_supervision`` the outputs are a list: the main one
        (named ``output``), then ``aux_1 .. aux_{depth-1}`` from the decoder
        levels 1 (finest) to ``depth - 1``, each upsampled to full size.

    Raises
    ------
    UserError
        For a bad option, or an input shape the network cannot take.
    """
    cfg.validate()
    if cfg.name not in MODEL_NAMES:
        raise UserError(f"model.name={cfg.name}: not one of lib's networks ({', '.join(MODEL_NAMES)}); "
                        "lib.model.networks.build_network builds it from its own folder")
    if deep_supervision is None:
        deep_supervision = cfg.deep_supervision
    input_shape = tuple(input_shape)
    ndim = len(input_shape) - 1
    if ndim not in _AXES:
        raise UserError(
            f"model: expected an input shape (y, x, channels) or (z, y, x, channels), "
            f"got {input_shape}"
        )
    _check_input_shape(cfg, input_shape)
    check_planar_levels(cfg, ndim)
    input_shape = tuple(None if s is None else int(s) for s in input_shape)
    softmax = n_outputs is None and cfg.classes > 1
    if n_outputs is None:  # one sigmoid per class, or per instance channel (model.targets bc, bcd)
        n_outputs = {"bc": 2, "bcd": 3}.get(cfg.targets, cfg.classes)
    if not _positive_int(n_outputs):
        raise UserError(f"model: expected a positive number of output channels, got {n_outputs!r}")
    if deep_supervision and cfg.depth < 2:
        raise UserError(
            f"model: deep supervision needs intermediate decoder levels, i.e. model.depth >= 2, "
            f"got model.depth={cfg.depth}"
        )

    from . import architectures, blocks

    ops = blocks.Ops(ndim, cfg, pool_size(cfg, ndim))
    n_outputs = int(n_outputs)
    rates = cfg.dropout if isinstance(cfg.dropout, list) else [cfg.dropout] * (cfg.depth + 1)
    return architectures.encoder_decoder(
        ops, input_shape, cfg.depth, cfg.filters, rates, n_outputs, deep_supervision,
        name=cfg.name, stem=stem_stride(cfg, ndim), softmax=softmax, **architectures.ARCHITECTURES[cfg.name],
    )


def encoder_layers(model):
    """The layers of ``model``'s encoder: every layer that feeds its bottleneck.

    Parameters
    ----------
    model : keras.Model
        Built by :func:`build_model`.

    Returns
    -------
    list of keras.layers.Layer
        In the model's order, the input layer excluded.

    Raises
    ------
    UserError
        If ``model`` has no layer named ``bottleneck`` (not built by this package).
    """
    import keras

    from .architectures import BOTTLENECK

    try:
        bottleneck = model.get_layer(BOTTLENECK)
    except ValueError:
        raise UserError(f"model '{model.name}' has no '{BOTTLENECK}' layer: its encoder is unknown, "
                        "so it cannot be frozen (train.freeze_encoder)") from None
    # A model from the input to the bottleneck holds exactly the layers that feed it.
    encoder = {id(layer) for layer in keras.Model(model.inputs, bottleneck.output).layers}
    return [layer for layer in model.layers
            if id(layer) in encoder and not isinstance(layer, keras.layers.InputLayer)]


def count_params(model):
    """Total number of weights (trainable and not) of ``model``, as an int."""
    return int(model.count_params())


def summary_text(model, width=120):
    """The Keras summary of ``model`` as a plain-text string (no colours).

    Keras sizes the table from the terminal width, which would truncate layer
    names in a narrow terminal and make the recorded summary depend on where
    the run started; ``COLUMNS`` (read by Keras and by its table renderer) is
    set to ``width`` while the summary is rendered.
    """
    parts = []
    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(width)
    try:
        model.summary(line_length=width, print_fn=parts.append)
    finally:
        if saved is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = saved
    return "\n".join(parts).rstrip() + "\n"


def _check_input_shape(cfg, input_shape):
    """Raise UserError unless each spatial size is None or a multiple of the divisor."""
    *spatial, channels = input_shape
    if not _positive_int(channels):
        raise UserError(f"model: expected a positive channel count, got {channels!r} in {input_shape}")
    ndim = len(spatial)
    pools = pool_size(cfg, ndim)
    divisors = divisor(cfg, ndim)
    anisotropic = len(set(divisors)) > 1
    for axis, size, pool, stem, div in zip(_AXES[ndim], spatial, pools, stem_stride(cfg, ndim), divisors):
        if size is None:
            continue
        if not _positive_int(size):
            raise UserError(f"model: expected a positive size on axis {axis}, got {size!r} in {input_shape}")
        if size % div:
            where = f" on axis {axis}" if anisotropic else ""
            raise UserError(
                f"model: input size {size} on axis {axis} is not divisible by {div} "
                f"({f'model.stem_stride {stem} x ' if stem > 1 else ''}{pool}^depth for model.depth={cfg.depth}); "
                f"choose input sizes divisible by {div}{where}"
            )


def _positive_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value > 0
