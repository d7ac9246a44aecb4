"""Options of the Cheng networks that can be checked without Keras.

The entry scripts check the configuration with :func:`check_config` before
they read data or import Keras, so that a wrong option is refused at once
(without TensorFlow's start-up lines) and before anything is written.
"""

import math

from lib.errors import UserError

from . import MODEL_NAMES

# Group size of the stochastic downsampling (the paper's t).
T = 4
# Times the networks halve their input (input block and two downsampling blocks).
HALVINGS = 3
AXES = {2: "yx", 3: "zyx"}


def divisor(t=T):
    """Spatial input sizes must be multiples of this: ``lcm(2**3, 4 t)``.

    The input is halved three times, and the two stochastic downsamplings see
    the input at 1/2 and 1/4 scale, where each axis must split into groups of ``t``.
    """
    return math.lcm(2**HALVINGS, 4 * t)


def check_config(cfg, ndim, t=T):
    """Raise UserError unless the ``ndim``-D network can be built from ``cfg`` and take its crops.

    Called by the entry scripts before anything is written; checks the
    ``model`` options (see :func:`cheng_2017.networks.build_model`) and that ``data.crop_shape``
    has ``ndim`` sizes, each a multiple of :func:`divisor`.

    Parameters
    ----------
    cfg : lib.config.Config
    ndim : int
        2 or 3 spatial dimensions.
    t : int
        Group size of the stochastic downsampling.
    """
    crop = list(cfg.data.crop_shape)
    if len(crop) != ndim:
        raise UserError(f"data.crop_shape={crop}: the {ndim}D network needs {ndim} sizes ({', '.join(AXES[ndim])})")
    check_options(cfg.model, ndim, t)
    div = divisor(t)
    for axis, size in zip(AXES[ndim], crop):
        if size % div:
            raise UserError(
                f"data.crop_shape={crop}: size {size} on axis {axis} is not a multiple of {div}, which the "
                f"Cheng network needs (3 halvings; groups of t={t} at 1/2 and 1/4 scale); "
                f"use e.g. {max(div, size // div * div)}"
            )


def check_options(cfg, ndim, t):
    """Raise UserError for a ``model`` option (lib.config.ModelConfig) the network cannot take."""
    if isinstance(t, bool) or not isinstance(t, int) or t < 2 or t % 2:
        raise ValueError(f"t must be an even integer >= 2, got {t!r}")
    expected = MODEL_NAMES[ndim - 2]
    if cfg.name != expected:
        raise UserError(f"model.name: the Cheng network for {ndim}D input is '{expected}', got '{cfg.name}'")
    if cfg.depth != HALVINGS:
        raise UserError(f"model.depth: the Cheng network halves its input {HALVINGS} times; "
                        f"expected {HALVINGS}, got {cfg.depth}")
    if cfg.pool_size is not None:
        raise UserError(f"model.pool_size: the Cheng network halves every axis; expected null, got {cfg.pool_size}")
    if cfg.deep_supervision:
        raise UserError("model.deep_supervision: the Cheng network has a single output; expected false")
    if cfg.stem_stride != 1:
        raise UserError(f"model.stem_stride: the Cheng network has its own input block; expected 1, "
                        f"got {cfg.stem_stride}")
    if cfg.planar_levels:
        raise UserError(f"model.planar_levels: the Cheng network has its own blocks; expected 0, "
                        f"got {cfg.planar_levels}")
    if isinstance(cfg.dropout, list):
        raise UserError(f"model.dropout: the Cheng network uses one rate in every encoder block; "
                        f"expected a single number, got {cfg.dropout}")
    if cfg.filters < 2:
        raise UserError(f"model.filters: the Cheng network widens by filters // 2 per block; "
                        f"expected at least 2, got {cfg.filters}")
