"""Optimisers Keras lacks, written with ``keras.ops`` only so that they run on every backend.

Each is registered with Keras serialisation, so that a checkpoint (``.keras``)
saved with it loads, optimiser state included, once this module is imported
(:mod:`lib.model.saving` imports it to load a checkpoint; :mod:`lib.train.schedules` uses it).
"""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="lib")
class AdaBound(keras.optimizers.Optimizer):
    """AdaBound (Luo et al. 2019, ICLR): Adam whose per-weight step is clipped into bounds that close on SGD's.

    At step ``t`` (from 1), with the Adam moments ``m``, ``v`` and their bias corrections,
    the step of each weight is ``clip(lr * sqrt(1 - b2**t) / (1 - b1**t) / (sqrt(v) + eps),
    low_t, high_t) * m``, where ``low_t = f * (1 - 1 / (gamma * t + 1))``, ``high_t = f * (1 + 1 / (gamma * t))``
    and ``f = final_lr * lr / base_lr``: as in the authors' implementation, the final rate
    follows the learning rate when a schedule changes it.

    Parameters
    ----------
    learning_rate : float
        Adam's learning rate, assigned by the schedule each step.
    final_lr : float
        The SGD learning rate the bounds converge to, at ``learning_rate == base_lr``.
    gamma : float
        Convergence speed of the bounds (after about ``1 / gamma`` steps they are narrow).
    base_lr : float, optional
        The learning rate ``final_lr`` is given for (default: ``learning_rate``).
    beta_1, beta_2, epsilon : float
        As for :class:`keras.optimizers.Adam`.
    """

    def __init__(self, learning_rate=0.001, final_lr=0.1, gamma=1e-3, base_lr=None, beta_1=0.9, beta_2=0.999,
                 epsilon=1e-8, name="adabound", **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.final_lr = float(final_lr)
        self.gamma = float(gamma)
        self.base_lr = float(learning_rate if base_lr is None else base_lr)
        self.beta_1, self.beta_2, self.epsilon = float(beta_1), float(beta_2), float(epsilon)

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self._momentums, self._velocities = self.add_optimizer_variables(var_list, ["momentum", "velocity"])

    def update_step(self, gradient, variable, learning_rate):
        dtype = variable.dtype
        lr = ops.cast(learning_rate, dtype)
        gradient = ops.cast(gradient, dtype)
        t = ops.cast(self.iterations + 1, dtype)
        m = self._momentums[self._get_variable_index(variable)]
        v = self._velocities[self._get_variable_index(variable)]
        self.assign_add(m, ops.multiply(ops.subtract(gradient, m), 1 - self.beta_1))
        self.assign_add(v, ops.multiply(ops.subtract(ops.square(gradient), v), 1 - self.beta_2))
        beta_1, beta_2 = ops.cast(self.beta_1, dtype), ops.cast(self.beta_2, dtype)
        step = lr * ops.sqrt(1 - ops.power(beta_2, t)) / (1 - ops.power(beta_1, t))
        final = self.final_lr * lr / self.base_lr
        low = final * (1 - 1 / (self.gamma * t + 1))
        high = final * (1 + 1 / (self.gamma * t))
        rate = ops.clip(ops.divide(step, ops.add(ops.sqrt(v), self.epsilon)), low, high)
        self.assign_sub(variable, ops.multiply(rate, m))

    def get_config(self):
        config = super().get_config()
        config.update({"final_lr": self.final_lr, "gamma": self.gamma, "base_lr": self.base_lr,
                       "beta_1": self.beta_1, "beta_2": self.beta_2, "epsilon": self.epsilon})
        return config
