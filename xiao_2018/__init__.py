"""Reproduction of Xiao et al., Frontiers in Neuroanatomy 2018: a deeply supervised 3D residual U-Net.

Importing this package does not import Keras (the entry script chooses the
device first); :mod:`xiao_2018.network` does. ``model.name`` takes the network's
name anywhere: ``lib.config.MODELS`` maps it to :mod:`xiao_2018.network`,
imported when the network is built.
"""

# model.name of the network (xiao_2018/network.py).
MODEL_NAME = "xiao2018"
