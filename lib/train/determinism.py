"""Deterministic kernels (``train.deterministic``): identical reruns on every backend, at some speed.

Keras-free at import: the command line reads :data:`DETERMINISTIC_XLA_FLAG` before Keras starts.
"""

import os

from ..errors import UserError

DETERMINISTIC_XLA_FLAG = "--xla_gpu_deterministic_ops=true"


def enable_determinism():
    """Make the backend run deterministic kernels: identical runs then give identical results.

    TensorFlow: ``enable_op_determinism`` (for the rest of the process; an op
    without a deterministic kernel then raises an error). torch:
    ``use_deterministic_algorithms``. JAX: deterministic on the CPU already; on
    a GPU it needs ``XLA_FLAGS=--xla_gpu_deterministic_ops=true`` in the
    environment before it starts (:func:`lib.run.devices.deterministic_environment`,
    which the entry scripts call), else a UserError. Costs speed, see docs/reliability.md.
    """
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    elif backend == "torch":
        import torch

        torch.use_deterministic_algorithms(True)
    elif backend == "jax":
        import jax

        if jax.default_backend() != "cpu" and DETERMINISTIC_XLA_FLAG not in os.environ.get("XLA_FLAGS", "").split():
            raise UserError(f"train.deterministic on JAX ({jax.default_backend()}): XLA_FLAGS={DETERMINISTIC_XLA_FLAG} "
                            "must be set before JAX starts (the entry scripts set it); set it in the environment")
