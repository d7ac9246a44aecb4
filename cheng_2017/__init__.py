"""Reproduction of Cheng & Varshney, ICIP 2017: stochastic downsampling and factorised convolutions.

Importing this package does not import Keras (the entry scripts choose the
device first); :mod:`cheng_2017.layers` and :mod:`cheng_2017.networks` do.
"""

# model.name of the 2D and 3D networks, in that order.
MODEL_NAMES = ("cheng2d", "cheng3d")


def register_model_names():
    """Let ``model.name`` take this folder's network names; call before ``lib.cli.load_config``.

    ``lib.config`` checks ``model.name`` against ``lib.networks.MODEL_NAMES``,
    which lists lib's own networks only; without this, the configuration of an
    entry script would have to name a network it does not build. Idempotent.
    """
    from lib.networks import register_model_names

    register_model_names(*MODEL_NAMES)
