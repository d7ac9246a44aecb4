"""Layers of Cheng & Varshney (ICIP 2017): stochastic downsampling and channel zero-padding.

Backend-agnostic (``keras.ops``, ``keras.random``) and registered for ``.keras``
saving under the package ``emseg``.
"""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="emseg")
class StochasticDownsampling(keras.layers.Layer):
    """Halve every spatial axis by keeping a random half of each group of ``t`` indices.

    Each spatial axis of length ``L`` is split into ``L / t`` consecutive groups
    of ``t`` indices; in each group ``t / 2`` distinct indices are drawn at
    random (kept in increasing order). The output keeps the input at the
    Cartesian product of the chosen indices of all axes, so an axis of length
    ``L`` becomes ``L / 2``. This is "online feature-level augmentation": the
    network sees a different, slightly jittered sampling grid at every step.

    Training (``training=True``): one choice is drawn per call, i.e. per
    training step, for the whole batch and all channels, and each axis and
    each group draws independently. Inference (``training`` False or None): a
    fixed choice, every other index (0, 2, 4, ...), i.e. plain stride-2
    subsampling on the same grid as the stride-2 convolutions beside it.

    The layer works on 2D ``(N, H, W, C)`` and 3D ``(N, Z, Y, X, C)`` inputs,
    including inputs whose spatial sizes are only known at run time (group
    counts are computed from ``keras.ops.shape``). Every spatial size must be a
    multiple of ``t``: sizes known when the layer is built are checked (a
    ``ValueError`` otherwise); for sizes known only at run time this is the
    caller's duty (the networks of :mod:`cheng_2017.networks` check their input
    crops), since indices past the last whole group would be dropped.

    Parameters
    ----------
    t : int
        Group size, even and >= 2 (the paper's ``t``; 4 by default). ``t = 2``
        keeps one random index of each pair.
    seed : int, optional
        Seed of the layer's ``keras.random.SeedGenerator``; None draws one.

    Input shape
        ``(N, *spatial, C)``, any dtype, 2 or 3 spatial axes.

    Output shape
        ``(N, *(s // 2 for s in spatial), C)``, same dtype.
    """

    def __init__(self, t=4, seed=None, **kwargs):
        super().__init__(**kwargs)
        if isinstance(t, bool) or not isinstance(t, int) or t < 2 or t % 2:
            raise ValueError(f"StochasticDownsampling: t must be an even integer >= 2, got {t!r}")
        self.t = t
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def build(self, input_shape):
        if len(input_shape) not in (4, 5):
            raise ValueError(
                f"StochasticDownsampling: expected a 2D (N, H, W, C) or 3D (N, Z, Y, X, C) input, "
                f"got shape {tuple(input_shape)}"
            )
        for axis, size in enumerate(input_shape[1:-1], start=1):
            if size is not None and size % self.t:
                raise ValueError(
                    f"StochasticDownsampling: spatial size {size} (axis {axis} of {tuple(input_shape)}) "
                    f"is not a multiple of t={self.t}"
                )
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        spatial = [None if s is None else s // 2 for s in input_shape[1:-1]]
        return (input_shape[0], *spatial, input_shape[-1])

    def call(self, inputs, training=None):
        shape = ops.shape(inputs)
        x = inputs
        for axis in range(1, len(inputs.shape) - 1):
            indices = self._random_indices(shape[axis]) if training else ops.arange(0, shape[axis], 2)
            x = ops.take(x, indices, axis=axis)
        return x

    def _random_indices(self, length):
        """Sorted indices, ``t / 2`` drawn without replacement from each group of ``t``: int32 ``(length / 2,)``."""
        groups = length // self.t
        noise = keras.random.uniform((groups, self.t), seed=self.seed_generator)
        # The first t/2 positions of a uniformly random permutation are a uniform draw without replacement.
        chosen = ops.sort(ops.cast(ops.argsort(noise, axis=-1)[:, : self.t // 2], "int32"), axis=-1)
        offsets = ops.arange(0, groups * self.t, self.t, dtype="int32")
        return ops.reshape(chosen + offsets[:, None], (-1,))

    def get_config(self):
        return {**super().get_config(), "t": self.t, "seed": self.seed}


@keras.saving.register_keras_serializable(package="emseg")
class PadChannels(keras.layers.Layer):
    """Append zero channels up to ``channels``: the parameter-free shortcut of a widening residual block.

    Parameters
    ----------
    channels : int
        Channel count of the output; at least the input's.

    Input shape
        ``(N, *spatial, C)`` with ``C <= channels``.

    Output shape
        ``(N, *spatial, channels)``, same dtype; the first ``C`` channels are the input.
    """

    def __init__(self, channels, **kwargs):
        super().__init__(**kwargs)
        self.channels = int(channels)

    def build(self, input_shape):
        if input_shape[-1] is None or input_shape[-1] > self.channels:
            raise ValueError(
                f"PadChannels: input has {input_shape[-1]} channels; expected a known count <= {self.channels}"
            )
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.channels)

    def call(self, inputs):
        extra = self.channels - inputs.shape[-1]
        return ops.pad(inputs, [(0, 0)] * (len(inputs.shape) - 1) + [(0, extra)])

    def get_config(self):
        return {**super().get_config(), "channels": self.channels}
