"""Mixed precision: build a network to compute in float32, bfloat16 or float16.
"""

import contextlib

import keras

# train.precision -> Keras dtype policy. The mixed ones keep the weights in float32 and compute in 16 bits, but
# for the sigmoid heads, built in float32 (lib.model.networks.blocks.sigmoid_head), and the loss on their output.
# Keras wraps the optimiser of a mixed_float16 model in a LossScaleOptimizer when it compiles it.
POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}


@contextlib.contextmanager
def precision(name):
    """Build networks inside it to compute in ``name`` (``train.precision``); the previous policy is restored after.

    A model saved from them keeps its layers' policies: loaded to resume or predict, it computes as built.
    """
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(POLICIES[name])
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def set_precision(model, name):
    """Make a built or loaded ``model`` compute in ``name``, as if built under :func:`precision`; returns it.

    Every layer but those of the model's outputs (the float32 sigmoid heads) and the inputs
    takes the policy; the weights are unchanged. Call it before the model first predicts.
    """
    heads = {model.get_layer(n).name for n in model.output_names}
    for layer in model.layers:
        if layer.name not in heads and not isinstance(layer, keras.layers.InputLayer):
            layer.dtype_policy = POLICIES[name]
    return model
