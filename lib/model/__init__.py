"""Model: the networks and what is compiled with them.

Modules:

- ``networks``: one dimension-generic U-Net family for 2D and 3D (``build_network``), and its blocks
- ``losses``, ``optimizers``, ``metrics``: Keras objects written with ``keras.ops`` for every backend
- ``mixed_precision``: float32, bfloat16 or float16 computation
- ``saving``: ``.keras`` files written atomically, checkpoint names, Model Zoo packages loaded as models

May import: :mod:`lib.errors`, :mod:`lib.config`, :mod:`lib.data`. Takes its own section of the
configuration (:class:`lib.config.ModelConfig`).
"""
