"""Cheng & Varshney (ICIP 2017): the stochastic downsampling layer, both networks, the entry scripts."""

import csv
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tifffile
from keras import ops

from cheng_2017.layers import PadChannels, StochasticDownsampling
from cheng_2017.networks import build_model
from cheng_2017.options import check_config, divisor
from conftest import REPO
from lib.config import Config, ModelConfig
from lib.errors import UserError
from lib.model.losses import BatchOverlap
from lib.model.metrics import ForegroundIoU  # noqa: F401  registered for loading the checkpoints

# one pytest worker runs this file (make test: --dist loadgroup): its fixtures that run templates run once
pytestmark = pytest.mark.xdist_group("test_cheng_2017")

SCRIPT_2D = os.path.join(REPO, "cheng_2017", "cheng_2D_template.py")
SCRIPT_3D = os.path.join(REPO, "cheng_2017", "cheng_3D_template.py")


@pytest.fixture(autouse=True)
def seed():
    keras.utils.set_random_seed(0)


def coordinates(spatial, batch=2):
    """float32 ``(batch, *spatial, ndim)``: channel ``a`` holds each voxel's index on axis ``a``."""
    grids = np.meshgrid(*(np.arange(s) for s in spatial), indexing="ij")
    return np.broadcast_to(np.stack(grids, -1), (batch, *spatial, len(spatial))).astype("float32")


def kept_indices(out, axis):
    """Input indices kept on spatial ``axis``, checking they form one grid shared by batch and channels."""
    values = np.asarray(out)[..., axis]
    line = np.moveaxis(values, axis + 1, -1).reshape(-1, values.shape[axis + 1])
    assert (line == line[0]).all(), "the kept indices differ across the batch or the other axes"
    return line[0].astype(int)


# --- the layer ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape, t", [((2, 16, 24, 3), 4), ((1, 8, 16, 32, 2), 4), ((3, 12, 6, 1), 2),
                                      ((1, 16, 16, 1), 8)])
def test_output_shape_halves_each_spatial_axis(shape, t):
    layer = StochasticDownsampling(t)
    expected = (shape[0], *(s // 2 for s in shape[1:-1]), shape[-1])
    x = np.random.default_rng(0).random(shape).astype("float32")
    for training in (True, False):
        assert tuple(layer(x, training=training).shape) == expected
    assert layer.compute_output_shape((None, *shape[1:])) == (None, *expected[1:])


@pytest.mark.parametrize("spatial, t", [((16, 24), 4), ((8, 12, 16), 4), ((16, 16), 8), ((6, 10), 2)])
def test_exactly_half_of_each_group_kept_on_each_axis(spatial, t):
    layer = StochasticDownsampling(t, seed=3)
    x = coordinates(spatial)
    for _ in range(5):
        out = layer(x, training=True)
        for axis, size in enumerate(spatial):
            kept = kept_indices(out, axis)
            groups = kept // t
            assert (np.diff(kept) > 0).all()  # sorted, no repeats
            assert np.array_equal(np.bincount(groups, minlength=size // t), np.full(size // t, t // 2))


def test_training_calls_differ_inference_calls_are_identical_stride_2():
    layer = StochasticDownsampling(4, seed=1)
    x = coordinates((32, 32))
    first, second = (np.asarray(layer(x, training=True)) for _ in range(2))
    assert not np.array_equal(first, second)
    inference = [np.asarray(layer(x, training=False)) for _ in range(2)] + [np.asarray(layer(x))]
    assert all(np.array_equal(inference[0], other) for other in inference[1:])
    np.testing.assert_array_equal(inference[0], x[:, ::2, ::2])


def test_every_choice_of_a_group_occurs_in_training():
    layer = StochasticDownsampling(4, seed=0)
    x = coordinates((4, 4), batch=1)
    seen = {tuple(kept_indices(layer(x, training=True), 0)) for _ in range(200)}
    assert seen == {(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)}


def test_unknown_spatial_size_stays_stochastic():
    inputs = keras.Input((None, None, 2))
    model = keras.Model(inputs, StochasticDownsampling(4)(inputs))
    assert model.output_shape == (None, None, None, 2)
    for spatial in ((8, 16), (24, 12)):
        x = coordinates(spatial)
        outs = [np.asarray(model(x, training=True)) for _ in range(3)]
        assert outs[0].shape == (2, spatial[0] // 2, spatial[1] // 2, 2)
        assert any(not np.array_equal(outs[0], o) for o in outs[1:])
        np.testing.assert_array_equal(model.predict(x, verbose=0), x[:, ::2, ::2])
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        # A graph traced for any size: group counts come from the run-time shape.
        step = tf.function(lambda z: model(z, training=True),
                           input_signature=[tf.TensorSpec((None, None, None, 2), tf.float32)])
        x = tf.constant(coordinates((16, 20)))
        out = step(x)
        assert tuple(out.shape) == (2, 8, 10, 2)
        assert np.array_equal(np.bincount(kept_indices(out, 1) // 4), [2] * 5)
        # Drawn anew at each run of the compiled graph (the seed generator's state advances).
        assert any(not np.array_equal(out, step(x)) for _ in range(3))


class _Image(keras.layers.Layer):
    """The image ``x`` as a trainable weight (the input is ignored), so that a training step shows its gradient."""

    def __init__(self, x):
        super().__init__()
        self.image = self.add_weight(shape=x.shape, initializer=keras.initializers.Constant(x), trainable=True)

    def call(self, inputs):
        return self.image + 0.0 * ops.sum(inputs)


def test_gradient_reaches_the_kept_inputs_only():
    x = coordinates((8, 8), batch=1)[..., :1]
    inputs = keras.Input((1,))
    image = _Image(x)
    model = keras.Model(inputs, StochasticDownsampling(4, seed=2)(image(inputs)))
    # One step of plain gradient descent at rate 1 on the loss sum(output): the weight drops by the gradient.
    model.compile(keras.optimizers.SGD(learning_rate=1.0), loss=lambda y_true, y_pred: ops.sum(y_pred))
    model.train_on_batch(np.zeros((1, 1), "float32"), np.zeros((1, 4, 4, 1), "float32"))
    grad = x - ops.convert_to_numpy(image.image)
    assert grad.sum() == 4 * 4 and set(np.unique(grad)) == {0.0, 1.0}


def test_bad_t_and_sizes_are_refused():
    with pytest.raises(ValueError, match="t must be an even integer >= 2, got 3"):
        StochasticDownsampling(3)
    with pytest.raises(ValueError, match="spatial size 18 .* is not a multiple of t=4"):
        StochasticDownsampling(4)(np.zeros((1, 18, 16, 1), "float32"))
    with pytest.raises(ValueError, match="expected a 2D"):
        StochasticDownsampling(4)(np.zeros((1, 16, 1), "float32"))


def test_pad_channels_appends_zeros():
    x = np.random.default_rng(0).random((2, 4, 4, 3)).astype("float32")
    out = np.asarray(PadChannels(5)(x))
    np.testing.assert_array_equal(out[..., :3], x)
    assert out.shape == (2, 4, 4, 5) and not out[..., 3:].any()
    with pytest.raises(ValueError, match="expected a known count <= 2"):
        PadChannels(2)(x)


def test_layer_survives_keras_save_and_load(tmp_path):
    inputs = keras.Input((None, None, 2))
    model = keras.Model(inputs, PadChannels(3)(StochasticDownsampling(4, seed=5)(inputs)))
    path = str(tmp_path / "sd.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    layer = next(la for la in loaded.layers if isinstance(la, StochasticDownsampling))
    assert (layer.t, layer.seed) == (4, 5)
    x = coordinates((8, 8))
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    assert tuple(loaded(x, training=True).shape) == (2, 4, 4, 3)


# --- the networks ------------------------------------------------------------------------------------------


def tiny(ndim, **overrides):
    values = {"name": f"cheng{ndim}d", "depth": 3, "filters": 4, "dropout": 0.0}
    values.update(overrides)
    return ModelConfig(**values)


def boxes(spatial, n=4):
    """Bright boxes on noise and the boxes as masks, float32 ``(n, *spatial, 1)``."""
    rng = np.random.default_rng(0)
    y = np.zeros((n, *spatial, 1), "float32")
    for i in range(n):
        y[(i, *(slice(s // 4 + i, s // 2 + i + 2) for s in spatial), 0)] = 1.0
    return y + 0.3 * rng.standard_normal(y.shape).astype("float32"), y


@pytest.mark.parametrize("ndim", [2, 3])
def test_network_has_the_paper_blocks(ndim):
    model = build_model(tiny(ndim), (None,) * ndim + (1,))
    assert model.name == f"cheng{ndim}d" and model.output_shape == (None,) * (ndim + 1) + (1,)
    sd = [la for la in model.layers if isinstance(la, StochasticDownsampling)]
    assert len(sd) == 2 and all(la.t == 4 for la in sd)
    kernels = {la.kernel_size for la in model.layers if isinstance(la, getattr(keras.layers, f"Conv{ndim}D"))}
    factorised = {tuple(3 if a == axis else 1 for a in range(ndim)) for axis in range(ndim)}
    assert factorised <= kernels and (3,) * ndim in kernels  # input block and decoder bottlenecks
    # Encoder-decoder without skips: the only concatenations are the input block and the factorised branches.
    concatenations = [la for la in model.layers if isinstance(la, keras.layers.Concatenate)]
    assert len(concatenations) == 1 + 2 * (2 + 1 + 3 + 1 + 6)


def test_2d_network_learns():
    model = build_model(tiny(2), (None, None, 1))
    x, y = boxes((32, 32))
    model.compile(keras.optimizers.Adam(1e-2), "binary_crossentropy", run_eagerly=True)
    losses = model.fit(x, y, batch_size=4, epochs=8, verbose=0).history["loss"]
    assert losses[-1] < 0.8 * losses[0], losses
    prob = ops.convert_to_numpy(model(x))
    assert prob.shape == y.shape and prob.dtype == np.float32 and 0 <= prob.min() and prob.max() <= 1


def test_3d_network_trains_a_few_steps():
    model = build_model(tiny(3), (None, None, None, 1))
    x, y = boxes((16, 16, 16), n=2)
    model.compile(keras.optimizers.Adam(1e-2), "binary_crossentropy", run_eagerly=True)
    before = [w.copy() for w in model.get_weights()]
    losses = model.fit(x, y, batch_size=2, epochs=2, verbose=0).history["loss"]
    assert np.isfinite(losses).all()
    assert all(not np.array_equal(a, b) for a, b in zip(before, model.get_weights()) if a.ndim > 1)
    assert tuple(model(x).shape) == y.shape


def test_paper_width_schedule():
    model = build_model(tiny(2, filters=16), (64, 64, 1))
    assert next(la for la in model.layers if isinstance(la, keras.layers.Concatenate)).output.shape[-1] == 16
    sd_inputs = [la.input.shape[-1] for la in model.layers if isinstance(la, StochasticDownsampling)]
    assert sd_inputs == [32, 64]  # widths 16 + 8k: 16 after the input block, then 24, 32 | 40..64 | 72..120
    adds = [la.output.shape[-1] for la in model.layers if isinstance(la, keras.layers.Add)]
    assert adds == list(range(24, 121, 8)) + [64] * 4 + [32] * 2


@pytest.mark.parametrize("overrides, shape, message", [
    ({"name": "cheng3d"}, (32, 32, 1), "model.name: the Cheng network for 2D input is 'cheng2d', got 'cheng3d'"),
    ({"depth": 4}, (32, 32, 1), "model.depth: the Cheng network halves its input 3 times; expected 3, got 4"),
    ({"dropout": [0.1, 0.2, 0.3, 0.4]}, (32, 32, 1), "model.dropout: the Cheng network uses one rate"),
    ({"pool_size": [1, 2, 2]}, (32, 32, 1), "model.pool_size: the Cheng network halves every axis"),
    ({"deep_supervision": True}, (32, 32, 1), "model.deep_supervision: the Cheng network has a single output"),
    ({"filters": 1}, (32, 32, 1), "model.filters: the Cheng network widens by filters // 2"),
    ({"planar_levels": 1}, (32, 32, 1), "model.planar_levels: the Cheng network has its own blocks; expected 0"),
    ({}, (40, 32, 1), "input size 40 on axis y is not a multiple of 16"),
    ({}, (32, 32, 4), "model.filters: the Cheng input block concatenates the 4 image channels"),
])
def test_bad_network_options_raise_one_clear_error(overrides, shape, message):
    with pytest.raises(UserError) as err:
        build_model(tiny(2, **overrides), shape)
    assert message in str(err.value)


def test_crop_shape_must_be_a_multiple_of_4t():
    assert divisor(4) == 16 and divisor(2) == 8 and divisor(8) == 32
    cfg = Config()
    cfg.model = tiny(3)
    cfg.data.crop_shape = [96, 128, 120]
    with pytest.raises(UserError, match=r"data.crop_shape=\[96, 128, 120\]: size 120 on axis x is not a multiple "
                                        r"of 16.*use e.g. 112"):
        check_config(cfg, ndim=3)
    cfg.data.crop_shape = [96, 128, 128]
    check_config(cfg, ndim=3)
    with pytest.raises(UserError, match=r"data.crop_shape=\[96, 128, 128\]: the 2D network needs 2 sizes \(y, x\)"):
        check_config(cfg, ndim=2)


# --- the entry scripts -------------------------------------------------------------------------------------

FAST_2D = ["--set", "train.epochs=2", "--set", "data.crop_shape=[64,64]", "--set", "data.replicate=2",
           "--set", "model.filters=4", "--set", "train.batch_size=8", "--set", "inference.overlap=0.25",
           "--set", "train.steps_per_epoch=2"]


def run_script(script, *args):
    return subprocess.run([sys.executable, script, REPO, *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "CI": "1"})


def check_run_folder(run, name, variants, n_test):
    for item in ("config.json", "environment.json", "history.csv", "metrics.json", "model.txt",
                 "checkpoints/best.keras", "checkpoints/last.keras", "charts/loss.png"):
        assert (run / item).is_file(), item
    assert json.loads((run / "config.json").read_text())["model"]["name"] == name
    assert f'Model: "{name}"' in (run / "model.txt").read_text()
    results = json.loads((run / "metrics.json").read_text())["results"]
    for variant in variants:
        assert 0.0 <= results[variant]["fg_iou"] <= 1.0, results
        if variant != "per_crop":
            assert len(list((run / "predictions" / variant / "binary").iterdir())) == n_test
    model = keras.models.load_model(run / "checkpoints" / "best.keras")
    assert isinstance(model.loss, BatchOverlap) and model.loss.kind == "jaccard"  # the paper: sums over the batch
    assert sum(isinstance(la, StochasticDownsampling) for la in model.layers) == 2


def test_2d_script_end_to_end(dataset_2d, tmp_path):
    result = run_script(SCRIPT_2D, dataset_2d, str(tmp_path), "--id", "c2", "--gpu", "cpu", *FAST_2D)
    assert result.returncode == 0, result.stderr[-3000:]
    check_run_folder(tmp_path / "c2_0", "cheng2d", ("per_crop", "merged", "tiled"), 2)
    config = json.loads((tmp_path / "c2_0" / "config.json").read_text())
    assert (config["train"]["optimizer"], config["train"]["learning_rate"], config["train"]["loss"]) == \
        ("sgd", 0.05, "jaccard")
    with open(tmp_path / "summary.csv") as fh:
        assert [row["id"] for row in csv.DictReader(fh)] == ["c2"]


@pytest.mark.parametrize("option, message", [
    ("data.crop_shape=[56,64]", "size 56 on axis y is not a multiple of 16"),
    ("model.name=unet", "model.name: the Cheng network for 2D input is 'cheng2d', got 'unet'"),
])
def test_2d_script_refuses_what_the_network_cannot_take(dataset_2d, tmp_path, option, message):
    result = run_script(SCRIPT_2D, dataset_2d, str(tmp_path), "--id", "bad", "--gpu", "cpu", "--set", option)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr[-2000:]
    assert not (tmp_path / "bad_0").exists()


@pytest.fixture(scope="session")  # once per worker, although other files run between its tests
def volume_dataset(tmp_path_factory):
    """One 16x64x64 training and one test volume, each a folder of sorted 2D slices."""
    from lib.data.synthetic import write_dataset

    return write_dataset(str(tmp_path_factory.mktemp("data") / "cheng3d"), shape=(16, 64, 64), seed=3, volume=True)


def test_3d_script_end_to_end(volume_dataset, tmp_path):
    result = run_script(SCRIPT_3D, volume_dataset, str(tmp_path), "--id", "c3", "--gpu", "cpu",
                        "--set", "train.epochs=2", "--set", "data.crop_shape=[16,32,32]", "--set", "train.steps_per_epoch=2",
                        "--set", "model.filters=4", "--set", "train.batch_size=4", "--set", "inference.overlays=1")
    assert result.returncode == 0, result.stderr[-3000:]
    check_run_folder(tmp_path / "c3_0", "cheng3d", ("tiled",), 1)
    prob = tifffile.imread(next((tmp_path / "c3_0" / "predictions" / "tiled" / "prob").iterdir()))
    assert prob.shape == (16, 64, 64) and prob.dtype == np.float32
    history = (tmp_path / "c3_0" / "history.csv").read_text().splitlines()
    assert len(history) == 3 and "val_loss" not in history[0]  # the paper trains on the whole volume
