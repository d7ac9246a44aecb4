"""Tests of lib.train.tensorboard: the event files a run writes, read back as TensorBoard reads them; resume."""

import os

import keras
import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lib.config import ModelConfig, TrainConfig
from lib.data.generators import CropDataset
from lib.model.networks import build_model
from lib.train import loop
from lib.train import tensorboard as tensorboard_log


def events(run_dir):
    """``{run: EventAccumulator}`` of a run folder, everything loaded (as ``tensorboard --logdir`` does)."""
    out = {}
    for name, folder in tensorboard_log.log_dirs(str(run_dir)).items():
        accumulator = EventAccumulator(folder, size_guidance={"scalars": 0, "images": 0})
        accumulator.Reload()
        out[name] = accumulator
    return out


def scalar_steps(accumulator, tag):
    return [e.step for e in accumulator.Scalars(tag)]


def blobs(n, shape=(32, 32), seed=0):
    rng = np.random.default_rng(seed)
    masks = (rng.random((n,) + shape) > 0.7).astype(np.uint8)
    images = (masks + 0.3 * rng.standard_normal(masks.shape)).astype(np.float32)[..., None]
    return list(images), list(masks)


def fit(run_dir, epochs, **train):
    keras.utils.set_random_seed(0)
    images, masks = blobs(4)
    data = CropDataset(images[:2], masks[:2], (32, 32), 2)
    val = (np.stack(images[2:]), np.stack(masks[2:])[..., None].astype(np.float32))
    cfg = TrainConfig(epochs=epochs, batch_size=2, patience=50, **train)
    model = build_model(ModelConfig(depth=2, filters=4, dropout=0.0), (None, None, 1))
    loop.train(model, data, val, cfg, str(run_dir))
    return loop.read_history(os.path.join(run_dir, "history.csv"))


def test_event_files_hold_every_epoch_of_the_history_images_and_graph(tmp_path):
    rows = fit(tmp_path, 3, tensorboard_images_every=2)
    runs = events(tmp_path)
    train, val = runs["train"], runs["validation"]
    assert set(train.Tags()["scalars"]) == {"loss", "iou", "learning_rate"}
    assert set(val.Tags()["scalars"]) == {"loss", "iou"}
    for tag in ("loss", "iou", "learning_rate"):
        assert scalar_steps(train, tag) == [1, 2, 3]
        np.testing.assert_allclose([e.value for e in train.Scalars(tag)], [r[tag] for r in rows], rtol=1e-6)
    np.testing.assert_allclose([e.value for e in val.Scalars("loss")], [r["val_loss"] for r in rows], rtol=1e-6)
    pictures = val.Images("image_truth_prediction")
    assert [p.step for p in pictures] == [1, 2]  # the first epoch, then every 2
    assert (pictures[0].height, pictures[0].width) == (2 * 32, 3 * 32)  # 2 crops of image | truth | prediction
    assert train.Tags()["graph"]
    graph = train.Graph()
    ops = {node.name: node.op for node in graph.node}
    assert "Conv2D" in ops.values() and len(graph.node) >= 10
    assert any(node.input for node in graph.node)


def test_resume_continues_the_steps_and_hides_an_interrupted_epoch(tmp_path):
    fit(tmp_path, 2, tensorboard_images_every=0)
    # An epoch 3 that a kill interrupted after its events but before its history row.
    from tensorboardX import SummaryWriter

    with SummaryWriter(tensorboard_log.log_dirs(str(tmp_path))["train"]) as writer:
        writer.add_scalar("loss", 99.0, 3)
    rows = fit(tmp_path, 4, tensorboard_images_every=0)
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    train = events(tmp_path)["train"]
    assert scalar_steps(train, "loss") == [1, 2, 3, 4]
    np.testing.assert_allclose([e.value for e in train.Scalars("loss")], [r["loss"] for r in rows], rtol=1e-6)
    assert len(os.listdir(tensorboard_log.log_dirs(str(tmp_path))["train"])) >= 2  # one event file per session


def test_tensorboard_false_writes_no_event_files(tmp_path):
    fit(tmp_path, 1, tensorboard=False)
    assert not os.path.exists(os.path.join(tmp_path, tensorboard_log.FOLDER))


def test_scalars_split_train_and_validation():
    out = tensorboard_log.scalars({"loss": 1.0, "val_loss": 2.0, "val_iou": 0.5, "learning_rate": 9.0}, 0.1)
    assert out == {"train": {"learning_rate": 0.1, "loss": 1.0}, "validation": {"loss": 2.0, "iou": 0.5}}


@pytest.mark.parametrize("spatial", [(8, 6), (4, 8, 6)])
def test_prediction_grid_rows_of_image_truth_prediction(spatial):
    x = np.random.default_rng(0).random((2,) + spatial + (1,)).astype(np.float32) * 50
    y = np.ones((2,) + spatial + (1,), np.float32)
    p = np.full((2,) + spatial + (1,), 0.25, np.float32)
    grid = tensorboard_log.prediction_grid(x, y, p)
    h, w = spatial[-2:]
    assert grid.shape == (2 * h, 3 * w) and grid.dtype == np.float32
    assert grid[:h, :w].min() == 0.0 and grid[:h, :w].max() == 1.0  # the image stretched to [0, 1]
    assert np.all(grid[:, w:2 * w] == 1.0) and np.all(grid[:, 2 * w:] == 0.25)
