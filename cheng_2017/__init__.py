"""Reproduction of Cheng & Varshney, ICIP 2017: stochastic downsampling and factorised convolutions.

Importing this package does not import Keras (the entry scripts choose the
device first); :mod:`cheng_2017.layers` and :mod:`cheng_2017.networks` do.
``model.name`` takes the two networks' names anywhere: ``lib.config.MODELS``
maps them to :mod:`cheng_2017.networks`, imported when a network is built.
"""

# model.name of the 2D and 3D networks, in that order.
MODEL_NAMES = ("cheng2d", "cheng3d")
