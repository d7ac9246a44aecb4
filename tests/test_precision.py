"""train.precision: mixed bfloat16 / float16 training, float32 outputs and loss, checkpoints that resume and predict."""

import os

import keras
import numpy as np
import pytest

from lib import config as config_lib
from lib.data.generators import CropDataset
from lib.model import mixed_precision
from lib.model.networks import build_network
from lib.train import loop

BACKEND = keras.backend.backend()


def small_cfg(precision, epochs=1):
    cfg = config_lib.Config()
    cfg.model.depth, cfg.model.filters = 2, 4
    cfg.train.epochs, cfg.train.precision, cfg.train.learning_rate = epochs, precision, 3e-3
    return cfg.validate()


def build(cfg):
    with mixed_precision.precision(cfg.train.precision):
        return build_network(cfg.model, (None, None, 1))


def crops(n=8, side=32, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((n, side, side, 1), dtype=np.float32)
    return x, (x > 0.6).astype(np.float32)


def compute_dtypes(model):
    return {layer.name: layer.compute_dtype for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)}


@pytest.mark.parametrize("precision, compute", [("bfloat16", "bfloat16"), ("float16", "float16")])
def test_mixed_precision_computes_in_16_bits_with_float32_outputs(precision, compute):
    cfg = small_cfg(precision)
    model = build(cfg)
    assert keras.config.dtype_policy().name == "float32"  # the process's policy is restored
    dtypes = compute_dtypes(model)
    assert dtypes.pop("output") == "float32"
    assert set(dtypes.values()) == {compute}
    assert all(w.dtype == "float32" for w in model.weights)
    x, _ = crops(2)
    assert keras.backend.standardize_dtype(model(x).dtype) == "float32"


@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
def test_a_mixed_run_trains_resumes_and_predicts(precision, tmp_path):
    cfg = small_cfg(precision)
    x, y = crops()
    data = CropDataset(list(x), list(y[..., 0].astype(np.uint8)), (32, 32), 4, random_crops=False)
    model, info = loop.train(build(cfg), data, (x[:4], y[:4]), cfg.train, str(tmp_path))
    # float16 is trained with loss scaling: Keras wraps the optimiser when it compiles a mixed_float16 model
    scaled = isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert scaled == (precision == "float16")
    rows = loop.read_history(os.path.join(tmp_path, "history.csv"))
    assert np.isfinite([rows[0]["loss"], rows[0]["val_loss"]]).all()
    cfg.train.epochs = 2
    resumed, _ = loop.train(build(small_cfg("float32")), data, (x[:4], y[:4]), cfg.train, str(tmp_path))
    assert len(loop.read_history(os.path.join(tmp_path, "history.csv"))) == 2
    assert set(compute_dtypes(resumed).values()) == {precision, "float32"}  # the checkpoint's precision
    assert isinstance(resumed.optimizer, keras.optimizers.LossScaleOptimizer) == scaled
    from lib.predict.blockwise import load_predictor

    _, predict = load_predictor(os.path.join(tmp_path, "checkpoints", "last.keras"))
    prob = predict(x[:3])
    assert prob.dtype == np.float32 and prob.shape == (3, 32, 32) and np.isfinite(prob).all()


def test_set_precision_predicts_a_float32_model_in_bfloat16():
    model = build(small_cfg("float32"))
    x, _ = crops(2)
    full = keras.ops.convert_to_numpy(model(x))
    mixed_precision.set_precision(model, "bfloat16")
    dtypes = compute_dtypes(model)
    assert dtypes.pop("output") == "float32" and set(dtypes.values()) == {"bfloat16"}
    half = model.predict_on_batch(x)
    assert half.dtype == np.float32
    np.testing.assert_allclose(half, full, atol=0.05)
    assert not np.array_equal(half, full)  # it did compute in bfloat16


def test_cpu_has_bf16_reads_the_cpu_flags(tmp_path):
    from lib.run import devices

    flags = tmp_path / "cpuinfo"
    flags.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16\n")
    assert devices.cpu_has_bf16(str(flags))
    flags.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 amx_bf16 amx_tile\n")
    assert devices.cpu_has_bf16(str(flags))
    flags.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw\n")
    assert not devices.cpu_has_bf16(str(flags))
    assert not devices.cpu_has_bf16(str(tmp_path / "absent"))  # not Linux: no bfloat16 by guess


@pytest.mark.parametrize("ndim, gpu, n_gpus, bf16_cpu, expected", [
    (2, "cpu", 0, True, "bfloat16" if BACKEND == "tensorflow" else "float32"),  # measured on TensorFlow only
    (2, "cpu", 0, False, "float32"),  # emulated bfloat16: several times slower
    (3, "cpu", 0, True, "float32"),  # TensorFlow's 3D bfloat16 convolutions crash on the CPU
    (2, "0", 1, True, "float32"),  # a GPU: not measured
    (2, "0", 0, True, "bfloat16" if BACKEND == "tensorflow" else "float32"),  # --gpu 0 without one: the CPU
])
def test_auto_precision_is_bfloat16_only_where_it_was_measured_faster(ndim, gpu, n_gpus, bf16_cpu, expected):
    from lib.run import devices

    assert devices.resolve_precision("auto", ndim, gpu, n_gpus=n_gpus, bf16_cpu=bf16_cpu) == expected
    for fixed in ("float32", "bfloat16", "float16"):
        assert devices.resolve_precision(fixed, ndim, gpu, n_gpus=n_gpus, bf16_cpu=bf16_cpu) == fixed


def test_the_run_table_says_which_precision_it_computed_in():
    from lib.run import record

    info = {"epochs": 3, "seconds": 12.0, "stopped_by": "time_limit", "best_epoch": 2, "precision": "bfloat16"}
    assert record.run_notes(info)[0] == ("Training: 3 epochs, 12 s, computed in bfloat16, stopped by time limit; "
                                         "predicting with epoch 2")
