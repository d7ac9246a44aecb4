"""Reproduction of Xiao et al., Frontiers in Neuroanatomy 2018: a deeply supervised 3D residual U-Net.

Importing this package does not import Keras (the entry script chooses the
device first); :mod:`xiao_2018.network` does.
"""

# model.name of the network (xiao_2018/network.py).
MODEL_NAME = "xiao2018"


def register_model_name():
    """Let ``model.name`` take this folder's network name; call before :func:`xiao_2018.pipeline.load_config`.

    ``lib.config`` checks ``model.name`` against ``lib.networks.MODEL_NAMES``,
    which lists lib's own networks only. Idempotent.
    """
    from lib.networks import register_model_names

    register_model_names(MODEL_NAME)
