"""Tests of lib.train: optimisers, schedules, deep supervision, weight maps in the data, resume, fine-tuning."""

import math
import re

import keras
import numpy as np
import pytest

from lib.config import AugmentConfig, Config, ModelConfig, TrainConfig, apply_overrides
from lib.data import sets
from lib.data.augment import Augmenter
from lib.data.generators import CropDataset
from lib.data.weightmaps import weight_map
from lib.errors import UserError
from lib.model import saving
from lib.model.networks import build_model, encoder_layers
from lib.run import folders, training_data
from lib.train import finetune, loop, schedules


@pytest.fixture(autouse=True)
def seed():
    keras.utils.set_random_seed(0)


def tiny(**overrides):
    values = {"depth": 2, "filters": 4, "dropout": 0.0}
    values.update(overrides)
    return ModelConfig(**values)


def blobs(n=3, shape=(32, 32), seed=0):
    """Images with bright discs on noise, and the discs as masks."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    images, masks = [], []
    for _ in range(n):
        mask = np.zeros(shape, np.uint8)
        for _ in range(3):
            cy, cx = rng.integers(4, shape[0] - 4), rng.integers(4, shape[1] - 4)
            mask[(yy - cy) ** 2 + (xx - cx) ** 2 <= 9] = 1
        images.append((mask + 0.3 * rng.standard_normal(shape)).astype(np.float32)[..., None])
        masks.append(mask)
    return images, masks


# --------------------------------------------------------------------------- optimisers and schedules

def test_optimizers():
    sgd = schedules.make_optimizer(TrainConfig(optimizer="sgd", momentum=0.8, nesterov=True, learning_rate=0.1))
    assert isinstance(sgd, keras.optimizers.SGD) and sgd.nesterov and sgd.momentum == 0.8
    assert isinstance(schedules.make_optimizer(TrainConfig(optimizer="adam")), keras.optimizers.Adam)
    adamw = schedules.make_optimizer(TrainConfig(optimizer="adamw", weight_decay=0.01))
    assert isinstance(adamw, keras.optimizers.AdamW) and adamw.weight_decay == 0.01


def rates(cfg, history=(), monitor="val_loss"):
    return [schedules.learning_rate_at(e, cfg, history[:e], monitor) for e in range(cfg.epochs)]


def test_constant_and_warmup():
    assert rates(TrainConfig(epochs=3, learning_rate=0.1)) == [0.1] * 3
    assert rates(TrainConfig(epochs=5, learning_rate=0.1, warmup_epochs=3)) == pytest.approx(
        [0.025, 0.05, 0.075, 0.1, 0.1])


def test_step_decay_after_the_given_epochs():
    cfg = TrainConfig(epochs=6, learning_rate=1.0, schedule="step", step_epochs=[2, 4], step_factor=0.1)
    assert rates(cfg) == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])


def test_cosine_from_peak_to_minimum():
    cfg = TrainConfig(epochs=6, learning_rate=1.0, min_learning_rate=0.0, schedule="cosine", warmup_epochs=1)
    # after one warm-up epoch, half a cosine over the 5 remaining epochs (4 intervals)
    expected = [0.5] + [0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(5)]
    assert rates(cfg) == pytest.approx(expected)
    assert rates(cfg)[-1] == pytest.approx(0.0, abs=1e-12)


def test_cosine_under_a_time_limit_ends_at_the_limit():
    cfg = TrainConfig(epochs=200, learning_rate=1e-3, min_learning_rate=1e-6, schedule="cosine", time_limit_minutes=10)
    assert schedules.learning_rate_at(0, cfg, elapsed=0.0) == pytest.approx(1e-3)
    assert schedules.learning_rate_at(0, cfg, elapsed=0.5) == pytest.approx((1e-3 + 1e-6) / 2)
    assert schedules.learning_rate_at(1, cfg, elapsed=1.0) == pytest.approx(1e-6)
    # the epochs still end it when they run out first
    assert schedules.learning_rate_at(199, cfg, elapsed=0.1) == pytest.approx(1e-6)


def test_epoch_covers_the_training_area_within_bounds():
    cfg = Config()
    cfg.train.batch_size = 4
    assert training_data.epoch_samples([16] * 10, cfg) == 40 * 4      # 160 crops: 40 steps
    assert training_data.epoch_samples([1] * 5, cfg) == training_data.MIN_AUTO_STEPS * 4
    assert training_data.epoch_samples([16] * 100, cfg) == training_data.MAX_AUTO_STEPS * 4
    cfg.data.replicate = 2
    assert training_data.epoch_samples([16] * 10, cfg) == 80 * 4
    cfg.train.steps_per_epoch = 7
    assert training_data.epoch_samples([16] * 100, cfg) == 28
    # validation: at most 20 % of an epoch's crops and data.max_val_crops, at least a batch
    assert training_data.val_limit(400, cfg) == 80
    assert training_data.val_limit(4000, cfg) == cfg.data.max_val_crops
    assert training_data.val_limit(4, cfg) == 4


def test_onecycle_rises_then_decays():
    cfg = TrainConfig(epochs=10, learning_rate=1.0, min_learning_rate=0.01, schedule="onecycle")
    r = rates(cfg)
    assert r[0] == pytest.approx(1 / 25) and r[3] == pytest.approx(1.0)  # 30 % of 10 epochs to rise
    assert r[-1] == pytest.approx(0.01)
    assert all(a < b for a, b in zip(r[:4], r[1:4])) and all(a > b for a, b in zip(r[3:], r[4:]))
    assert rates(TrainConfig(epochs=10, learning_rate=1.0, schedule="onecycle", warmup_epochs=1))[1] == 1.0


def test_plateau_from_history():
    cfg = TrainConfig(epochs=8, learning_rate=1.0, min_learning_rate=0.2, schedule="plateau",
                      plateau_patience=2, plateau_factor=0.5)
    losses = [1.0, 0.9, 0.95, 0.92, 0.8, 0.85, 0.86, 0.9]
    history = [{"val_loss": v} for v in losses]
    # new minima at epochs 1, 2, 5; 2 epochs without one after epochs 4 and 7
    assert rates(cfg, history) == pytest.approx([1, 1, 1, 1, 0.5, 0.5, 0.5, 0.25])
    cfg.plateau_factor = 0.1
    assert min(rates(cfg, history)) == pytest.approx(0.2)  # floored at min_learning_rate
    assert rates(cfg, [{"loss": v} for v in losses], monitor="loss")[-1] == pytest.approx(0.2)


@pytest.mark.parametrize("override, message", [
    (["train.schedule=step"], "train.step_epochs: train.schedule=step needs"),
    (["train.step_epochs=[5, 3]"], "train.step_epochs: expected increasing epochs"),
    (["train.schedule=cosine", "train.min_learning_rate=0.1"], "train.min_learning_rate: expected a value in [0.0, 0.001]"),
    (["train.warmup_epochs=200"], "train.warmup_epochs"),
    (["train.schedule=linear"], "train.schedule: unknown value 'linear'"),
    (["train.loss=bce_dice", "train.bce_weight=0", "train.dice_weight=0"], "both are 0"),
    (["train.freeze_encoder=true"], "train.freeze_encoder=true needs train.pretrained"),
    (["train.deep_supervision_weights=[1, 0.5]"], "model.deep_supervision is false"),
    (["model.deep_supervision=true", "train.deep_supervision_weights=[1, 0.5]"],
     "train.deep_supervision_weights: expected 4 weights for model.depth=4"),
    (["model.deep_supervision=true", "model.depth=1", "model.dropout=0"], "model.deep_supervision: needs"),
    (["train.weight_sigma=0"], "train.weight_sigma"),
])
def test_bad_options_name_the_option(override, message):
    with pytest.raises(UserError, match=re.escape(message)):
        apply_overrides(Config(), override).validate()


# --------------------------------------------------------------------------- weight maps in the training data

def test_weight_maps_follow_the_augmentation():
    images, masks = blobs(2, (48, 48))
    probe = [m.astype(np.float32) for m in masks]  # a weight map equal to the mask must stay equal to it
    d4 = Augmenter(AugmentConfig(flip_p=0.5, rot90_p=0.5, brightness_p=1.0, noise_p=1.0), ndim=2)
    data = CropDataset(images, masks, (32, 32), 2, augmenter=d4, weights=probe, replicate=4)
    for index in range(len(data)):
        _, y = data[index]
        assert y.shape == (2, 32, 32, 2) and y.dtype == np.float32
        np.testing.assert_array_equal(y[..., 1], y[..., 0])
    warp = Augmenter(AugmentConfig(rotation_p=1.0, elastic_p=1.0, zoom_p=1.0, shear_p=1.0), ndim=2)
    _, y = CropDataset(images, masks, (32, 32), 2, augmenter=warp, weights=probe)[0]
    # linear interpolation of the weights against nearest-neighbour of the mask
    assert np.mean(np.abs(y[..., 1] - y[..., 0]) < 0.5) > 0.98


def test_weight_maps_follow_3d_misalignment():
    rng = np.random.default_rng(0)
    mask = (rng.random((8, 16, 16)) > 0.5).astype(np.uint8)
    volume = mask[..., None].astype(np.float32)
    augmenter = Augmenter(AugmentConfig(misalignment_p=1.0, misalignment_max_shift=3), ndim=3)
    data = CropDataset([volume], [mask], (8, 16, 16), 2, augmenter=augmenter, weights=[mask.astype(np.float32)])
    _, y = data[0]
    assert not np.array_equal(y[0, ..., 0], mask)
    np.testing.assert_array_equal(y[..., 1], y[..., 0])


@pytest.mark.parametrize("random_crops", [True, False])
def test_training_data_carries_weight_maps(random_crops, tmp_path):
    images, masks = blobs(4, (32, 32))
    cfg = apply_overrides(Config(), ["train.loss=weighted_bce", "data.crop_shape=[16,16]", "data.val_fraction=0.25",
                                     f"data.random_crops={random_crops}", "model.depth=2", "model.dropout=0"])
    train_set = sets.ImageSet(images, masks, [f"{i}" for i in range(4)])
    dataset, (x_val, y_val) = training_data.training_data_2d(train_set, cfg.validate())
    x, y = dataset[0]
    fg_weights = set()
    for xs, ys in ((x, y), (x_val, y_val)):
        assert ys.shape == xs.shape[:-1] + (2,)
        assert set(np.unique(ys[..., 0])) <= {0.0, 1.0} and ys[..., 1].min() > 0
        fg_weights |= set(np.unique(ys[..., 1][ys[..., 0] == 1]))
    assert len(fg_weights) == 1  # one class balance, from the training masks, for every image
    cfg.train.loss = "bce"
    _, (_, y_val) = training_data.training_data_2d(train_set, cfg)
    assert y_val.shape[-1] == 1


# --------------------------------------------------------------------------- training, deep supervision, resume

def test_deep_supervision_weighted_bce_resumes_the_schedule(tmp_path, capsys):
    images, masks = blobs(3, (32, 32))
    weights = [weight_map(m) for m in masks]
    cfg = TrainConfig(epochs=4, batch_size=2, loss="weighted_bce", learning_rate=3e-3, schedule="plateau",
                      plateau_patience=1, warmup_epochs=1, deep_supervision_weights=[1.0, 0.3],
                      time_limit_minutes=1e-6)
    data = CropDataset(images[:2], masks[:2], (32, 32), 2, weights=weights[:2])
    val = (np.stack(images[2:]), np.stack([masks[2], weights[2]], -1)[None].astype(np.float32))
    model = build_model(tiny(deep_supervision=True), (None, None, 1))
    _, info = loop.train(model, data, val, cfg, str(tmp_path))
    assert info["stopped_by"] == "time_limit" and info["epochs"] == 1  # as if killed after epoch 1

    cfg.time_limit_minutes = 0.0
    model, info = loop.train(build_model(tiny(deep_supervision=True), (None, None, 1)), data, val, cfg,
                             str(tmp_path))
    assert "Resuming from" in capsys.readouterr().out
    assert info["epochs"] == 4 and len(model.outputs) == 2
    rows = loop.read_history(str(tmp_path / "history.csv"))
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    assert {"loss", "val_loss", "iou", "val_iou", "output_loss", "val_output_loss", "aux_1_loss"} <= set(rows[0])
    expected = [schedules.learning_rate_at(e, cfg, rows[:e], "val_output_loss") for e in range(4)]
    np.testing.assert_allclose([r["learning_rate"] for r in rows], expected, rtol=1e-6)
    for r in rows:  # the total is the weighted sum of the output losses
        assert r["val_loss"] == pytest.approx(r["val_output_loss"] + 0.3 * r["val_aux_1_loss"], rel=1e-4)


class _RecordingCrops(CropDataset):
    """A CropDataset that records (epoch, index) of every batch asked for once the first epoch has begun."""

    requests = None

    def __getitem__(self, index):
        if self.requests is not None:
            self.requests.append((self.epoch, index))
        return super().__getitem__(index)

    def on_epoch_end(self):
        pass  # the epoch changes only where training begins one (lib.train.loop.EpochSeeds)

    def set_epoch(self, epoch):
        super().set_epoch(epoch)
        if self.requests is None:
            self.requests = []


def test_each_epoch_draws_its_own_batches_after_set_epoch(tmp_path):
    # whatever feeds fit() (on TensorFlow, lib.train.loop.fit_input's pipeline), an epoch's batches are asked
    # for in order, once the epoch has begun: a resumed run then sees the batches of an uninterrupted one
    images, masks = blobs(4, (32, 32))
    data = _RecordingCrops(images, masks, (16, 16), 2, samples_per_epoch=6, workers=1)
    model = build_model(tiny(), (None, None, 1))
    loop.train(model, data, None, TrainConfig(epochs=3, batch_size=2, tensorboard=False), str(tmp_path))
    assert data.requests == [(epoch, index) for epoch in range(3) for index in range(3)]


def test_tensorflow_trains_from_a_pipeline_without_autotuning():
    # tf.data's autotuning thread made the first step of an epoch wait for the last epoch's iterator to be
    # destroyed: 16-29 s before a third of the demo's epochs
    images, masks = blobs(4, (32, 32))
    data = CropDataset(images, masks, (16, 16), 2, samples_per_epoch=5, workers=2)
    fed = loop.fit_input(data)
    if keras.backend.backend() != "tensorflow":
        assert fed is data
        return
    assert fed.options().autotune.enabled is False
    assert int(fed.cardinality()) == len(data) == 3
    batches = list(fed.as_numpy_iterator())
    assert [b[0].shape for b in batches] == [(2, 16, 16, 1)] * 2 + [(1, 16, 16, 1)]
    for (x, y), index in zip(batches, range(3)):
        expected_x, expected_y = data[index]
        np.testing.assert_array_equal(x, expected_x)
        np.testing.assert_array_equal(y, expected_y)


class _Stoppable:
    stop_training = False


@pytest.mark.parametrize("monitor, values", [("val_loss", [1.0, 0.5, 0.6, 0.7, 0.8]),
                                             ("val_iou", [0.1, 0.5, 0.4, 0.3, 0.2])])
def test_early_stopping_counts_from_the_history(monitor, values):
    # The rows of earlier sessions count: epoch 2 was the best, so the third epoch after it stops.
    rows = [{monitor: v} for v in values[:4]]
    early = loop._EarlyStopping(monitor, 3, rows)
    early.set_model(_Stoppable())
    early.on_epoch_end(3)
    assert not early.model.stop_training
    rows.append({monitor: values[4]})
    early.on_epoch_end(4)
    assert early.model.stop_training


def test_monitor_picks_the_best_epoch_by_iou_or_loss():
    rows = [{"val_iou": 0.2, "val_loss": 0.9}, {"val_iou": 0.6, "val_loss": 1.0}, {"val_iou": 0.4, "val_loss": 0.8}]
    assert loop._since_best(rows, "val_iou") == (-0.6, 1)
    assert loop._since_best(rows, "val_loss") == (0.8, 0)
    assert loop._best_value(rows, "val_iou") == 0.6


def test_per_output_repeats_targets():
    images, masks = blobs(2)
    x, y = loop.per_output(CropDataset(images, masks, (32, 32), 2), 3)[0]
    assert len(y) == 3 and all(t is y[0] for t in y)
    assert loop.per_output((x, y[0]), 2)[1] == (y[0], y[0])
    assert loop.deep_supervision_weights(TrainConfig(), 3) == [1.0, 0.5, 0.25]


def test_compiled_bce_dice_survives_save_and_load(tmp_path):
    model = build_model(tiny(), (32, 32, 1))
    loop.compile_model(model, TrainConfig(loss="bce_dice", bce_weight=2.0, dice_weight=0.5))
    model.optimizer.build(model.trainable_variables)
    path = str(tmp_path / "m.keras")
    saving.save_model_atomic(model, path)
    images, masks = blobs(2)
    x, y = np.stack(images), np.stack(masks)[..., None].astype(np.float32)
    loaded = keras.models.load_model(path)
    assert (loaded.loss.bce_weight, loaded.loss.dice_weight) == (2.0, 0.5)
    assert loaded.evaluate(x, y, verbose=0, return_dict=True)["loss"] == pytest.approx(
        model.evaluate(x, y, verbose=0, return_dict=True)["loss"], rel=1e-5)


# --------------------------------------------------------------------------- fine-tuning

@pytest.fixture
def pretrained_run(tmp_path):
    """A run folder ``JOB_DIR/src_0`` with a saved tiny U-Net, and the model."""
    model = build_model(tiny(), (None, None, 1))
    run = tmp_path / "jobs" / "src_0"
    (run / "checkpoints").mkdir(parents=True)
    saving.save_model_atomic(model, str(run / "checkpoints" / saving.BEST))
    return run, model


def test_resolve_pretrained(pretrained_run, tmp_path):
    run, _ = pretrained_run
    best = str(run / "checkpoints" / saving.BEST)
    job = str(tmp_path / "jobs")
    assert folders.resolve_pretrained(None, job) is None
    assert folders.resolve_pretrained("src_0", job) == best  # a run name inside JOB_DIR
    assert folders.resolve_pretrained(str(run), "/elsewhere") == best  # a run folder
    assert folders.resolve_pretrained(best, "/elsewhere") == best  # a file
    with pytest.raises(UserError, match=r"train.pretrained=src_1: .*src_1 not found; expected a .keras file"):
        folders.resolve_pretrained("src_1", job)
    (run / "checkpoints" / saving.BEST).rename(run / "checkpoints" / saving.LAST)
    assert folders.resolve_pretrained("src_0", job).endswith(saving.LAST)
    (run / "checkpoints" / saving.LAST).unlink()
    with pytest.raises(UserError, match="has no checkpoints/best.keras or checkpoints/last.keras"):
        folders.resolve_pretrained("src_0", job)


def test_load_pretrained_copies_weights_and_freezes_the_encoder(pretrained_run):
    run, source = pretrained_run
    path = str(run / "checkpoints" / saving.BEST)
    images, masks = blobs(2)
    x, y = np.stack(images), np.stack(masks)[..., None].astype(np.float32)
    keras.utils.set_random_seed(1)
    model = finetune.load_pretrained(build_model(tiny(), (None, None, 1)), path, freeze_encoder=True)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model(x)), keras.ops.convert_to_numpy(source(x)), atol=1e-6)

    encoder = encoder_layers(model)
    assert encoder and not any(isinstance(layer, keras.layers.Conv2DTranspose) for layer in encoder)
    frozen = [w.path for layer in encoder for w in layer.weights]
    before = {w.path: keras.ops.convert_to_numpy(w) for w in model.weights}
    loop.compile_model(model, TrainConfig(learning_rate=1e-2, freeze_encoder=True, pretrained=path))
    model.run_eagerly = True  # quicker than tracing for three steps
    for _ in range(3):
        model.train_on_batch(x, y)
    changed = {w.path for w in model.weights if not np.array_equal(keras.ops.convert_to_numpy(w), before[w.path])}
    assert changed and not changed & set(frozen)  # the decoder learns, the encoder (BN statistics too) does not


@pytest.mark.parametrize("model_cfg, channels, message", [
    (tiny(filters=8), 1, "holds another architecture than this run's model (weight "),
    (tiny(), 2, "holds another architecture"),
    (tiny(name="resunet"), 1, "(a unet, not a resunet)"),
    (tiny(deep_supervision=True), 1, "(outputs: 1 there, 2 here; see model.deep_supervision)"),
    (tiny(depth=3, dropout=0.0), 1, "weight arrays, not"),
])
def test_load_pretrained_refuses_another_architecture(pretrained_run, model_cfg, channels, message):
    run, _ = pretrained_run
    with pytest.raises(UserError, match=re.escape(message)):
        finetune.load_pretrained(build_model(model_cfg, (None, None, channels)),
                                 str(run / "checkpoints" / saving.BEST))


def test_load_pretrained_refuses_a_broken_file(tmp_path):
    path = tmp_path / "broken.keras"
    path.write_bytes(b"not a zip")
    with pytest.raises(UserError, match="could not be read as a Keras model"):
        finetune.load_pretrained(build_model(tiny(), (None, None, 1)), str(path))
