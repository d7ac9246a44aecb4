"""Options of the Xiao et al. network that can be checked without Keras.

The entry script checks the configuration with :func:`check_config` before it
reads data or imports Keras, so that a wrong option is refused at once
(without TensorFlow's start-up lines) and before anything is written.
"""

from lib.errors import UserError
from lib.model.networks import pool_size

from . import MODEL_NAME

# Poolings of the encoder (levels below the first).
DEPTH = 3


def check_config(cfg):
    """Raise UserError unless the network can be built from ``cfg.model`` and train on ``cfg.data.crop_shape``.

    Called by the entry script before anything is written.

    Parameters
    ----------
    cfg : lib.config.Config
    """
    check_model(cfg.model)
    if len(cfg.data.crop_shape) != 3:
        raise UserError(f"data.crop_shape={cfg.data.crop_shape}: the Xiao et al. network is 3D; "
                        "expected 3 sizes (z, y, x)")
    pool_size(cfg.model, 3)


def check_model(model):
    """Raise UserError for a ``model`` option (lib.config.ModelConfig) the network cannot take."""
    if model.name != MODEL_NAME:
        raise UserError(f"model.name: this network is the Xiao et al. network '{MODEL_NAME}', got '{model.name}'")
    if model.depth != DEPTH:
        raise UserError(f"model.depth: the Xiao et al. network pools {DEPTH} times; expected {DEPTH}, "
                        f"got {model.depth}")
    if model.stem_stride != 1:
        raise UserError(f"model.stem_stride: the Xiao et al. network has no stem; expected 1, got {model.stem_stride}")
    if model.planar_levels:
        raise UserError(f"model.planar_levels: the Xiao et al. network has its own blocks; expected 0, "
                        f"got {model.planar_levels}")
    if model.filters < 2:
        raise UserError(f"model.filters: the widths grow by filters // 2 per level; expected at least 2, "
                        f"got {model.filters}")
