"""Tests of lib.model.networks on tiny 2D and 3D models (filters 4, depth 2)."""

import re
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from lib.config import ModelConfig
from lib.errors import UserError
from lib.model.networks import MODEL_NAMES, build_model, count_params, divisor, encoder_layers, summary_text

REPO = Path(__file__).resolve().parents[1]
SHAPES = {2: (32, 32, 1), 3: (8, 32, 32, 1)}
# A layer that only the given architecture's blocks add to a U-Net.
SIGNATURE = {
    "resunet": keras.layers.Add,
    "attention_unet": keras.layers.Multiply,
    "seunet": keras.layers.Dense,
    "multiresunet": keras.layers.Add,
}


@pytest.fixture(autouse=True)
def seed():
    keras.utils.set_random_seed(0)


def tiny(name="unet", **overrides):
    values = {"name": name, "depth": 2, "filters": 4, "dropout": 0.0}
    values.update(overrides)
    return ModelConfig(**values)


def synthetic_batch(input_shape, n=2):
    """Images with bright boxes on noise, and the boxes as masks."""
    rng = np.random.default_rng(0)
    spatial = input_shape[:-1]
    y = np.zeros((n, *spatial, 1), dtype="float32")
    for i in range(n):
        box = tuple(slice(s // 4 + i, s // 2 + i + 1) for s in spatial)
        y[(i, *box, 0)] = 1.0
    x = y + 0.3 * rng.standard_normal(y.shape).astype("float32")
    return np.repeat(x, input_shape[-1], axis=-1), y


def test_package_import_does_not_load_keras():
    code = "import sys, lib.model.networks; print('keras' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_builds_with_output_like_input(name, ndim):
    shape = SHAPES[ndim]
    model = build_model(tiny(name), shape, n_outputs=2)
    x, _ = synthetic_batch(shape)
    y = keras.ops.convert_to_numpy(model(x, training=False))
    assert y.shape == (2, *shape[:-1], 2)
    assert y.dtype == np.float32
    assert np.all((y >= 0) & (y <= 1))
    if name in SIGNATURE:
        assert any(isinstance(layer, SIGNATURE[name]) for layer in model.layers)


# Eager training is ten times quicker to start on these tiny models; one case
# runs as a compiled graph to check that the networks trace. The other 3D
# cases use a smaller volume to stay quick.
@pytest.mark.parametrize(
    "name, ndim, eager",
    [(name, ndim, True) for name in MODEL_NAMES for ndim in (2, 3) if (name, ndim) != ("unet", 3)]
    + [("unet", 3, False)],
)
def test_trains_then_saves_and_loads(name, ndim, eager, tmp_path):
    shape = (4, 16, 16, 1) if (ndim, eager) == (3, True) else SHAPES[ndim]
    model = build_model(tiny(name), shape)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="binary_crossentropy", run_eagerly=eager)
    x, y = synthetic_batch(shape)
    losses = [float(model.train_on_batch(x, y)) for _ in range(5)]
    assert losses[-1] < losses[0]

    path = tmp_path / f"{name}.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(loaded(x, training=False)),
        keras.ops.convert_to_numpy(model(x, training=False)),
        rtol=0, atol=1e-6,
    )


@pytest.mark.parametrize("ndim", [2, 3])
def test_options_variants(ndim):
    cfg = tiny(
        upsampling="resize", spatial_dropout=True, batch_norm=True,
        activation="leaky_relu", dropout=[0.1, 0.2, 0.3],
    )
    shape = SHAPES[ndim]
    model = build_model(cfg, shape)
    x, _ = synthetic_batch(shape)
    assert model(x, training=True).shape == (2, *shape[:-1], 1)


def test_anisotropic_pooling_keeps_z():
    cfg = tiny(pool_size=[1, 2, 2])
    assert divisor(cfg, 3) == (1, 4, 4)
    model = build_model(cfg, (4, 32, 32, 1))
    x, _ = synthetic_batch((4, 32, 32, 1))
    assert model(x).shape == (2, 4, 32, 32, 1)


def test_unknown_spatial_size_accepts_any_multiple():
    model = build_model(tiny("attention_unet"), (None, None, 1))
    for size in [(32, 32), (16, 48)]:
        x = np.zeros((1, *size, 1), dtype="float32")
        assert model(x).shape == (1, *size, 1)


@pytest.mark.parametrize("ndim", [2, 3])
def test_deep_supervision_outputs_at_full_resolution(ndim):
    shape = SHAPES[ndim]
    model = build_model(tiny(depth=3), shape, n_outputs=2, deep_supervision=True)
    assert model.output_names == ["output", "aux_1", "aux_2"]
    x, _ = synthetic_batch(shape)
    outputs = model(x)
    assert [tuple(o.shape) for o in outputs] == [(2, *shape[:-1], 2)] * 3


def test_deep_supervision_from_the_config():
    assert build_model(tiny(deep_supervision=True), (32, 32, 1)).output_names == ["output", "aux_1"]
    assert len(build_model(tiny(deep_supervision=True), (32, 32, 1), deep_supervision=False).outputs) == 1


# Convolutions of the contracting path at depth 2 (two levels and the bottom):
# 2 per U-Net block; 1 shortcut + 3 chained per MultiRes block, and none of
# the res paths that transform its skip connections.
@pytest.mark.parametrize("name, convolutions", [("unet", 6), ("multiresunet", 12)])
def test_encoder_layers_feed_the_bottleneck(name, convolutions):
    model = build_model(tiny(name), (32, 32, 1))
    encoder = encoder_layers(model)
    assert encoder[-1].name == "bottleneck"
    assert sum(type(layer) is keras.layers.Conv2D for layer in encoder) == convolutions
    assert 0 < sum(count_params(layer) for layer in encoder) < count_params(model)
    with pytest.raises(UserError, match="has no 'bottleneck' layer"):
        encoder_layers(keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(1, 3)]))


def test_divisor():
    assert divisor(tiny(depth=4), 2) == (16, 16)
    assert divisor(tiny(depth=3), 3) == (8, 8, 8)


@pytest.mark.parametrize(
    "cfg, shape, message",
    [
        (tiny(depth=4), (100, 96, 1), "input size 100 on axis y is not divisible by 16 "
                                      "(2^depth for model.depth=4); choose input sizes divisible by 16"),
        (tiny(), (8, 32, 30, 1), "input size 30 on axis x is not divisible by 4"),
        (tiny(pool_size=[1, 2, 2]), (3, 32, 30, 1), "axis x"),
        (tiny(pool_size=[1, 2, 2]), (32, 32, 1), "model.pool_size: expected 2 sizes"),
        (tiny(name="vnet"), (32, 32, 1), "model.name"),
        (tiny(dropout=[0.1, 0.2]), (32, 32, 1), "model.dropout"),
        (tiny(), (32, 1), "expected an input shape"),
        (tiny(), (32, 32, None), "positive channel count"),
    ],
)
def test_bad_input_raises_user_error(cfg, shape, message):
    with pytest.raises(UserError, match=re.escape(message)):
        build_model(cfg, shape)


def test_deep_supervision_needs_two_levels():
    with pytest.raises(UserError, match="model.depth >= 2"):
        build_model(tiny(depth=1), (32, 32, 1), deep_supervision=True)


def test_count_params_and_summary():
    model = build_model(tiny(), (32, 32, 1))
    n = count_params(model)
    assert isinstance(n, int)
    assert n == sum(int(np.prod(w.shape)) for w in model.weights)
    text = summary_text(model)
    assert '"unet"' in text
    assert f"Total params: {n:,}" in text


# --------------------------------------------------------------------------- stem (model.stem_stride)

@pytest.mark.parametrize("ndim, stride", [(2, 2), (3, 2), (3, [1, 2, 2])])
def test_stem_keeps_the_output_at_input_size_and_raises_the_divisor(ndim, stride):
    cfg = tiny(stem_stride=stride)
    per_axis = (stride,) * ndim if isinstance(stride, int) else tuple(stride)
    assert divisor(cfg, ndim) == tuple(s * 4 for s in per_axis)  # stem x pool ** depth
    shape = tuple(2 * d for d in divisor(cfg, ndim)) + (1,)
    model = build_model(cfg, (None,) * ndim + (1,))
    out = np.asarray(model.predict_on_batch(np.random.default_rng(0).random((1, *shape), dtype=np.float32)))
    assert out.shape == (1, *shape[:-1], 1) and 0 <= out.min() and out.max() <= 1
    # The levels see the stem's output: the first level's convolutions run on 1/prod(stride) of the voxels.
    first_conv = next(layer for layer in model.layers if "conv" in layer.name and layer.name != "output")
    assert tuple(first_conv.strides) == per_axis and tuple(first_conv.kernel_size) == per_axis


def test_stem_with_deep_supervision_upsamples_every_output_to_the_input():
    cfg = tiny(stem_stride=2, depth=3, deep_supervision=True)
    model = build_model(cfg, (64, 64, 1))
    assert [tuple(o.shape[1:]) for o in model.outputs] == [(64, 64, 1)] * 3


def test_stem_of_the_wrong_length_and_input_not_divisible_are_refused():
    with pytest.raises(UserError, match=r"model.stem_stride: expected 2 sizes \(y, x\) for 2D input, got \[1, 2, 2\]"):
        build_model(tiny(stem_stride=[1, 2, 2]), (None, None, 1))
    with pytest.raises(UserError, match="model.stem_stride: expected a value in"):
        tiny(stem_stride=0).validate()
    with pytest.raises(UserError, match="not divisible by 8"):
        build_model(tiny(stem_stride=2), (36, 36, 1))


@pytest.mark.parametrize("ndim, stride, classes", [(3, [4, 1, 1], 1), (2, 2, 1), (2, 2, 3)])
def test_linear_stem_head_runs_nothing_but_the_upsampling_at_full_resolution(ndim, stride, classes, tmp_path):
    cfg = tiny(stem_stride=stride, stem_head="linear", classes=classes)
    conv = build_model(tiny(stem_stride=stride, classes=classes), (None,) * ndim + (1,))
    model = build_model(cfg, (None,) * ndim + (1,))
    shape = tuple(2 * d for d in divisor(cfg, ndim)) + (1,)
    x = np.random.default_rng(0).random((2, *shape), dtype=np.float32)
    # Only the learned upsampling to the logits and the output activation see every voxel ...
    full = _full_resolution_layers(model, x)
    assert len(full) == 2 and "output" in full
    # ... where the conv head runs five layers there (upsampling, norm, activation, 1 x 1 convolution, output).
    assert len(_full_resolution_layers(conv, x)) == 5
    out = np.asarray(model.predict_on_batch(x))
    assert out.shape == (2, *shape[:-1], classes) and 0 <= out.min() and out.max() <= 1
    if classes > 1:
        np.testing.assert_allclose(out.sum(-1), 1, atol=1e-5)
    y = synthetic_batch(shape, n=2)[1] if classes == 1 else keras.utils.to_categorical(
        synthetic_batch(shape, n=2)[1][..., 0].astype(int), classes)
    model.compile(optimizer=keras.optimizers.Adam(1e-2),
                  loss="binary_crossentropy" if classes == 1 else "categorical_crossentropy")
    losses = [float(model.train_on_batch(x, y)) for _ in range(5)]
    assert losses[-1] < losses[0]
    model.save(tmp_path / "linear.keras")
    loaded = keras.models.load_model(tmp_path / "linear.keras")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(x)), keras.ops.convert_to_numpy(model(x)), atol=1e-6)


def _full_resolution_layers(model, x):
    """Names of ``model``'s layers (input aside) whose output has the spatial shape of ``x``."""
    probe = keras.Model(model.inputs, [layer.output for layer in model.layers[1:]])
    outputs = probe.predict_on_batch(x)
    return {layer.name for layer, out in zip(model.layers[1:], outputs) if tuple(out.shape[1:-1]) == x.shape[1:-1]}


def test_stem_head_is_one_of_its_choices():
    with pytest.raises(UserError, match="model.stem_head: .*conv, linear"):
        tiny(stem_stride=2, stem_head="pixelshuffle").validate()


# --------------------------------------------------------------------------- in-plane levels (model.planar_levels)

def test_section_conv_is_a_1x3x3_conv3d():
    from lib.model.networks.blocks import SectionConv

    x = np.random.default_rng(0).standard_normal((2, 3, 8, 12, 5)).astype("float32")
    section = SectionConv(4)
    out = keras.ops.convert_to_numpy(section(x))
    reference = keras.layers.Conv3D(4, (1, 3, 3), padding="same")
    reference.build(x.shape)
    kernel, bias = section.get_weights()
    reference.set_weights([kernel[None], bias])
    assert out.shape == (2, 3, 8, 12, 4)
    np.testing.assert_allclose(out, keras.ops.convert_to_numpy(reference(x)), atol=1e-5)


def _kernels(model):
    """The 3 x 3(x 3) convolutions of ``model``, in order: 'section' (in-plane) or '3d'."""
    from lib.model.networks.blocks import SectionConv

    kinds = []
    for layer in model.layers:
        if isinstance(layer, SectionConv):
            kinds.append("section")
        elif isinstance(layer, keras.layers.Conv3D) and tuple(layer.kernel_size) == (3, 3, 3):
            kinds.append("3d")
    return kinds


@pytest.mark.parametrize("name", ["unet", "resunet", "attention_unet"])
def test_planar_levels_convolve_within_sections_at_the_finest_levels(name, tmp_path):
    # depth 2: level 0 (2 convolutions), level 1, bottom, level 1, level 0 of the decoder.
    all_3d = _kernels(build_model(tiny(name), (None, None, None, 1)))
    model = build_model(tiny(name, planar_levels=1), (None, None, None, 1))
    kinds = _kernels(model)
    assert len(kinds) == len(all_3d) and set(all_3d) == {"3d"}
    per_block = len(kinds) // 5
    assert kinds == ["section"] * per_block + ["3d"] * 3 * per_block + ["section"] * per_block
    assert _kernels(build_model(tiny(name, planar_levels=2), (None, None, None, 1))).count("3d") == per_block
    # Any volume the divisor allows; the saved network predicts the same.
    x, y = synthetic_batch((4, 16, 24, 1))
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="binary_crossentropy")
    losses = [float(model.train_on_batch(x, y)) for _ in range(5)]
    assert losses[-1] < losses[0]
    model.save(tmp_path / "planar.keras")
    loaded = keras.models.load_model(tmp_path / "planar.keras")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(x)), keras.ops.convert_to_numpy(model(x)), atol=1e-6)


def test_planar_levels_beyond_the_depth_leave_only_the_bottom_block_3d():
    kinds = _kernels(build_model(tiny(planar_levels=5), (None, None, None, 1)))
    assert kinds == ["section"] * 4 + ["3d"] * 2 + ["section"] * 4


def test_planar_levels_are_3d_only():
    with pytest.raises(UserError, match="model.planar_levels: in-plane levels are for 3D input .* expected 0, got 1"):
        build_model(tiny(planar_levels=1), (None, None, 1))
    with pytest.raises(UserError, match=r"model.planar_levels: expected a value in \[0, inf\), got -1"):
        tiny(planar_levels=-1).validate()


def test_initial_weights_follow_he_normal_and_the_seed():
    from lib.model.networks.blocks import VarianceScaling, he_normal

    values = he_normal()((3, 3, 64, 128))  # fan_in 576
    assert values.dtype == np.float32 and values.shape == (3, 3, 64, 128)
    assert abs(values.std() - np.sqrt(2 / 576)) < 0.02 * np.sqrt(2 / 576)
    assert np.abs(values).max() <= 2 * np.sqrt(2 / 576) / 0.87962566103423978  # truncated at two deviations
    keras.utils.set_random_seed(1)
    first = build_model(tiny(), SHAPES[2]).get_weights()
    keras.utils.set_random_seed(1)
    again = build_model(tiny(), SHAPES[2]).get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    kernels = [w for w in first if w.ndim > 1]
    assert len({float(k.ravel()[0]) for k in kernels}) == len(kernels)  # each layer draws its own values
    glorot = VarianceScaling(1.0, "fan_avg", "uniform")((100, 300))
    assert np.abs(glorot).max() <= np.sqrt(3 / 200) and glorot.min() < -0.9 * np.sqrt(3 / 200)


@pytest.mark.parametrize("spatial", [False, True])
def test_dropout_draws_from_the_seed_generators_on_every_backend(spatial):
    # What EpochSeeds relies on to make a resumed run draw an uninterrupted one's masks (torch's unseeded
    # dropout would draw from its global generator instead).
    model = build_model(tiny(dropout=0.5, spatial_dropout=spatial), SHAPES[2])
    states = [v for v in model.variables if v.path.endswith("seed_generator_state")]
    assert states
    x = np.random.default_rng(0).random((2, *SHAPES[2]), dtype=np.float32)

    def masked():
        for state in states:
            state.assign(np.array([7, 0], dtype=keras.backend.standardize_dtype(state.dtype)))
        return keras.ops.convert_to_numpy(model(x, training=True))

    first = masked()
    keras.utils.set_random_seed(123)  # the backend's global generators change; the seed generators decide
    assert np.array_equal(first, masked())
    assert not np.array_equal(first, keras.ops.convert_to_numpy(model(x, training=True)))


@pytest.mark.parametrize("loader", ["lib.predict.blockwise.load_predictor(path)",
                                    "lib.run.export.inference_model(path, lib.config.Config())",
                                    "lib.model.saving.load_model(path)"])
def test_a_saved_planar_network_loads_in_a_fresh_process(loader, tmp_path):
    """predict.py, the Model Zoo export and a resumed run read the checkpoint without having built a network first."""
    path = tmp_path / "planar.keras"
    build_model(tiny(planar_levels=1), (None, None, None, 1)).save(path)
    module = ".".join(loader.split(".")[:3])  # only the loader's own module, which must register the layers
    code = f"import lib.config, {module}; path = {str(path)!r}; {loader}; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_without_batch_norm_every_network_starts_unsaturated(name):
    # The 2D templates train without batch norm. The residual and MultiRes U-Nets summed He-initialised
    # branches unscaled: at the templates' size 94 % and 74 % of their first output was saturated and the
    # run never learnt (loss stuck near 4.8, IoU 0).
    rng = np.random.default_rng(0)
    from scipy import ndimage as ndi

    image = ndi.gaussian_filter(rng.random((2, 64, 64)), 2)
    image = ((image - image.min()) / (image.max() - image.min()))[..., None].astype("float32")
    model = build_model(ModelConfig(name=name, depth=4, filters=16, dropout=0.0, batch_norm=False), (None, None, 1))
    p = keras.ops.convert_to_numpy(model(image, training=True)).astype("float64")
    saturated = float(np.mean((p < 1e-4) | (p > 1 - 1e-4)))
    assert saturated < 0.01, f"{name}: {saturated:.0%} of the first output saturated"
    assert 0.01 < float(p.std()) and 0.02 < float(p.mean()) < 0.98


@pytest.mark.parametrize("name", ["unet", "resunet"])
@pytest.mark.parametrize("upsampling, batch_norm", [("transpose", False), ("resize", True)])
def test_the_upsamplings_allowed_learn_at_the_templates_size_and_rate(name, upsampling, batch_norm):
    # Resize upsampling without batch norm (refused by lib.config) sent these networks to one class for every
    # pixel within these 15 steps: all background, loss 2.4-2.5, more than 95 % of the output saturated.
    from lib.data.synthetic import make_sample
    from lib.model.losses import get_loss

    rng = np.random.default_rng(1)
    pairs = [make_sample((128, 128), rng) for _ in range(6)]
    x = (np.stack([p[0] for p in pairs])[..., None] / 255).astype("float32")
    y = (np.stack([p[1] for p in pairs]) > 0)[..., None].astype("float32")
    model = build_model(ModelConfig(name=name, depth=4, filters=16, dropout=0.0, batch_norm=batch_norm,
                                    upsampling=upsampling), (None, None, 1))
    model.compile(keras.optimizers.Adam(1e-3), loss=get_loss("bce_dice"))
    losses = [float(model.train_on_batch(x, y)) for _ in range(15)]
    p = keras.ops.convert_to_numpy(model(x, training=True)).astype("float64")
    assert np.mean(losses[-3:]) < losses[0], losses
    assert float(np.mean((p < 1e-4) | (p > 1 - 1e-4))) < 0.05
    assert 0.02 < float(p.mean()) < 0.98


@pytest.mark.parametrize("name", ["resunet", "multiresunet"])
def test_without_batch_norm_residual_sums_are_scaled_and_with_it_unchanged(name, tmp_path):
    plain = build_model(tiny(name, batch_norm=True), SHAPES[2])
    scaled = build_model(tiny(name, batch_norm=False), SHAPES[2])
    assert not any(isinstance(layer, keras.layers.Rescaling) for layer in plain.layers)
    assert any(isinstance(layer, keras.layers.Rescaling) for layer in scaled.layers)
    x, _ = synthetic_batch(SHAPES[2])
    scaled.save(tmp_path / "scaled.keras")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(keras.models.load_model(tmp_path / "scaled.keras")(x)),
                               keras.ops.convert_to_numpy(scaled(x)), rtol=0, atol=1e-6)
