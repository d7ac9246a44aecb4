"""AdaBound against the published update rule, step by step, and through a checkpoint."""

import keras
import numpy as np
import pytest

from lib.model.optimizers import AdaBound


def reference_adabound(w, grads_of, lrs, base_lr, final_lr, gamma, b1=0.9, b2=0.999, eps=1e-8):
    """The authors' update (Luo et al. 2019, reference PyTorch implementation) in float64 numpy.

    Returns the weights after each step and, per step, whether the lower / upper bound clipped some weight.
    """
    m, v = np.zeros_like(w), np.zeros_like(w)
    out, clipped = [], []
    for t, lr in enumerate(lrs, start=1):
        g = grads_of(w)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        step = lr * np.sqrt(1 - b2**t) / (1 - b1**t)
        final = final_lr * lr / base_lr
        low, high = final * (1 - 1 / (gamma * t + 1)), final * (1 + 1 / (gamma * t))
        raw = step / (np.sqrt(v) + eps)
        clipped.append(((raw < low).any(), (raw > high).any()))
        w = w - np.clip(raw, low, high) * m
        out.append(w.copy())
    return out, clipped


def quadratic(seed=0):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(12, 5))
    b = rng.normal(size=12)
    return rng.normal(size=5), lambda w: a.T @ (a @ w - b) / len(b)


def test_adabound_follows_the_published_rule_step_by_step():
    w0, grads_of = quadratic()
    base_lr, final_lr, gamma = 0.01, 0.05, 0.2
    # the learning rate drops halfway, as a schedule would: the bounds must follow it (final_lr * lr / base_lr)
    lrs = [base_lr] * 15 + [base_lr / 4] * 15
    expected, clipped = reference_adabound(w0, grads_of, lrs, base_lr, final_lr, gamma)
    assert any(lo for lo, _ in clipped) and any(hi for _, hi in clipped), "the problem must exercise both bounds"

    var = keras.Variable(w0.astype("float32"))
    opt = AdaBound(learning_rate=base_lr, final_lr=final_lr, gamma=gamma)
    for t, lr in enumerate(lrs):
        opt.learning_rate.assign(lr)
        g = grads_of(keras.ops.convert_to_numpy(var).astype(np.float64)).astype("float32")
        opt.apply_gradients([(keras.ops.convert_to_tensor(g), var)])
        np.testing.assert_allclose(keras.ops.convert_to_numpy(var), expected[t], rtol=1e-4, atol=1e-6,
                                   err_msg=f"step {t + 1}")


def test_adabound_differs_from_adam_once_the_bounds_close():
    w0, grads_of = quadratic(1)
    adabound, _ = reference_adabound(w0, grads_of, [0.01] * 20, 0.01, 0.05, 0.2)
    adam, _ = reference_adabound(w0, grads_of, [0.01] * 20, 0.01, 0.05, 1e-12)  # bounds ~ [0, inf): Adam
    assert np.abs(adabound[-1] - adam[-1]).max() > 1e-3


def test_adabound_resumes_from_a_keras_checkpoint(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 4)).astype("float32")
    y = (x @ np.array([1.0, -2.0, 0.5, 3.0], "float32"))[:, None]

    def model():
        keras.utils.set_random_seed(0)
        m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
        m.compile(optimizer=AdaBound(learning_rate=0.01, final_lr=0.1, gamma=0.01), loss="mse")
        return m

    straight = model()
    straight.fit(x, y, batch_size=8, epochs=4, shuffle=False, verbose=0)
    first = model()
    first.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    path = str(tmp_path / "last.keras")
    first.save(path)
    resumed = keras.models.load_model(path)
    assert isinstance(resumed.optimizer, AdaBound)
    assert (resumed.optimizer.final_lr, resumed.optimizer.gamma) == (0.1, 0.01)
    assert int(keras.ops.convert_to_numpy(resumed.optimizer.iterations)) == 8
    resumed.fit(x, y, batch_size=8, epochs=4, initial_epoch=2, shuffle=False, verbose=0)
    for a, b in zip(straight.get_weights(), resumed.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("value, message", [("train.final_lr=0", "train.final_lr"), ("train.gamma=2", "train.gamma")])
def test_adabound_options_are_checked(value, message):
    from lib import config
    from lib.errors import UserError

    cfg = config.apply_overrides(config.Config(), ["train.optimizer=adabound", f"--set {value}"[6:]])
    with pytest.raises(UserError, match=message):
        cfg.validate()
