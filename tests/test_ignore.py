"""Partly annotated masks (data.ignore_value): unannotated pixels count in no loss, metric, statistic or weight;
3D masks of some slices only; random crops that hold annotated pixels; the refusals; the templates end to end."""

import json
import os
import shutil

import numpy as np
import pytest
import tifffile

from lib.data import io, layout, targets, tiling, weightmaps
from lib.errors import UserError

IGNORE = 128  # the value of the unannotated pixels in the masks written here (foreground 255)


# --------------------------------------------------------------------------- masks read with an ignore value

def test_masks_read_with_an_ignore_value_mark_their_unannotated_pixels():
    binary = np.array([[0, 255, IGNORE], [IGNORE, 0, 255]], np.uint8)
    mask = io.class_mask(binary, "m.tif", 1, ignore=IGNORE)
    assert mask.dtype == np.uint8 and mask.tolist() == [[0, 1, 255], [255, 0, 1]]
    assert io.ignored(mask).tolist() == [[False, False, True], [True, False, False]]
    assert io.foreground(mask).sum() == 2 and io.annotated(mask).sum() == 4
    classes = io.class_mask(np.array([[0, 2, 9]]), "m.tif", 3, ignore=9)
    assert classes.tolist() == [[0, 2, 255]]
    labels = io.class_mask(np.array([[0, 7, 300, 1000]]), "m.tif", io.LABELS, ignore=1000)
    assert labels.dtype == np.uint16 and labels.tolist() == [[0, 7, 300, 65535]] and io.ignored(labels)[0, 3]
    # without the ignore value, the same masks are refused as ever; an id of 65535 is a 32-bit label
    with pytest.raises(UserError, match="m.tif: mask is not binary, found 3 values"):
        io.class_mask(binary, "m.tif", 1)
    assert io.class_mask(np.array([[0, 65535]]), "m.tif", io.LABELS).dtype == np.uint32
    # a value that is neither a class nor the ignore value
    with pytest.raises(UserError, match=r"m.tif: mask values 3 are not class ids 0-2"):
        io.class_mask(np.array([[0, 2, 3, 9]]), "m.tif", 3, ignore=9)


def test_ignore_value_that_is_a_class_id_is_refused():
    from lib import config as config_lib

    with pytest.raises(UserError, match=r"data.ignore_value=2 is a class id of model.classes=3"):
        config_lib.from_dict({"model": {"classes": 3}, "data": {"ignore_value": 2}}).validate()
    with pytest.raises(UserError, match=r"data.ignore_value: expected a value in \[1, inf\), got 0"):
        config_lib.from_dict({"data": {"ignore_value": 0}}).validate()


# --------------------------------------------------------------------------- losses and metrics: numpy references

def _partial_batch(seed=0, shape=(3, 12, 10), classes=1):
    """Targets with about a third of the pixels unannotated (-1), predictions, and the annotated mask."""
    rng = np.random.default_rng(seed)
    if classes == 1:
        t = (rng.random(shape + (1,)) < 0.3).astype(np.float32)
        p = rng.uniform(0.02, 0.98, shape + (1,)).astype(np.float32)
    else:
        t = rng.integers(0, classes, shape + (1,)).astype(np.float32)
        p = rng.dirichlet(np.ones(classes), shape).astype(np.float32)
    keep = rng.random(shape) > 0.35
    keep[0] = True  # one sample fully annotated
    t[..., 0][~keep] = -1.0
    return t, p, keep


def _bce(t, p):
    return -(t * np.log(p) + (1 - t) * np.log(1 - p))


def _dice(t, p, smooth=1.0):
    return 1 - (2 * (t * p).sum() + smooth) / (t.sum() + p.sum() + smooth)


def _jaccard(t, p, smooth=1.0):
    inter = (t * p).sum()
    return 1 - (inter + smooth) / (t.sum() + p.sum() - inter + smooth)


@pytest.mark.parametrize("name", ["bce", "dice", "jaccard", "bce_dice", "weighted_bce"])
def test_binary_losses_with_unannotated_pixels_equal_those_of_the_annotated_pixels_alone(name):
    import keras

    from lib.model.losses import get_loss

    t, p, keep = _partial_batch()
    w = np.random.default_rng(1).uniform(0.5, 3.0, t.shape).astype(np.float32)
    y_true = np.concatenate([t, w], -1) if name == "weighted_bce" else t
    loss = get_loss(name)
    got = keras.ops.convert_to_numpy(loss.call(y_true, p) if isinstance(loss, keras.losses.Loss) else
                                     loss(y_true, p))
    for n in range(len(t)):  # each sample, computed on its annotated pixels alone
        tn, pn, wn = t[n, ..., 0][keep[n]], p[n, ..., 0][keep[n]], w[n, ..., 0][keep[n]]
        expected = {"bce": lambda: _bce(tn, pn).mean(), "dice": lambda: _dice(tn, pn),
                    "jaccard": lambda: _jaccard(tn, pn), "bce_dice": lambda: _bce(tn, pn).mean() + _dice(tn, pn),
                    "weighted_bce": lambda: (wn * _bce(tn, pn)).mean()}[name]()
        assert got[n] == pytest.approx(expected, rel=1e-4, abs=1e-6)


def test_multiclass_and_instance_losses_leave_unannotated_pixels_out():
    import keras

    from lib.model.losses import InstanceChannels, MultiClass

    t, p, keep = _partial_batch(classes=3)
    weights = [0.5, 1.0, 2.0]
    got = keras.ops.convert_to_numpy(MultiClass(1.0, 1.0, class_weights=weights).call(t, p))
    for n in range(len(t)):
        ids, pn = t[n, ..., 0][keep[n]].astype(int), p[n][keep[n]]
        onehot = np.eye(3)[ids]
        ce = -(onehot * np.array(weights) * np.log(pn)).sum(-1).mean()
        dices = [_dice(onehot[:, c], pn[:, c]) for c in (1, 2)]
        expected = ce + (dices[0] * weights[1] + dices[1] * weights[2]) / (weights[1] + weights[2])
        assert got[n] == pytest.approx(expected, rel=1e-4)
    # instance channels: foreground, contour (bce) and distance (squared error), -1 on every channel
    rng = np.random.default_rng(3)
    tb, pb, kb = _partial_batch(seed=4)
    tc = np.concatenate([tb, (rng.random(tb.shape) < 0.2), rng.random(tb.shape)], -1).astype(np.float32)
    tc[~kb] = -1.0
    pc = rng.uniform(0.05, 0.95, tc.shape).astype(np.float32)
    got = keras.ops.convert_to_numpy(InstanceChannels(3, [1.0, 2.0, 0.5], binary="bce").call(tc, pc))
    for n in range(len(tc)):
        a, q = tc[n][kb[n]], pc[n][kb[n]]
        expected = (_bce(a[:, 0], q[:, 0]).mean() + 2 * _bce(a[:, 1], q[:, 1]).mean()
                    + 0.5 * ((a[:, 2] - q[:, 2]) ** 2).mean())
        assert got[n] == pytest.approx(expected, rel=1e-4)


def test_iou_metrics_count_annotated_pixels_only():
    import keras

    from lib.model.metrics import ClassIoU, ForegroundIoU

    t, p, keep = _partial_batch()
    metric = ForegroundIoU()
    metric.update_state(t, p)
    truth, pred = t[..., 0][keep] > 0.5, p[..., 0][keep] >= 0.5
    expected = (truth & pred).sum() / (truth | pred).sum()
    assert float(keras.ops.convert_to_numpy(metric.result())) == pytest.approx(expected, rel=1e-6)
    t, p, keep = _partial_batch(classes=3)
    metric = ClassIoU(3)
    metric.update_state(t, p)
    ids, best = t[..., 0][keep], p.argmax(-1)[keep]
    expected = np.mean([((ids == c) & (best == c)).sum() / ((ids == c) | (best == c)).sum() for c in (1, 2)])
    assert float(keras.ops.convert_to_numpy(metric.result())) == pytest.approx(expected, rel=1e-6)


# --------------------------------------------------------------------------- targets, weights, crops

def test_targets_and_weights_of_unannotated_pixels():
    mask = np.zeros((20, 20), np.uint8)
    mask[3:8, 3:8] = 1
    mask[12:17, 12:17] = 1
    mask[:, 10] = 255  # an unannotated column between the two objects
    t = tiling.training_targets(mask)
    assert t.shape == (20, 20, 1) and np.all(t[:, 10, 0] == -1) and set(np.unique(t)) == {-1.0, 0.0, 1.0}
    from lib.evaluate.reports import outline_rgb

    rgb = outline_rgb(np.random.default_rng(0).random((20, 20, 1)), mask).astype(int)  # the check picture
    assert np.all(rgb[:, 10, 2] >= 110) and np.all(rgb[:, 10, 0] <= 85) and np.all(rgb[4, 3] == (0, 255, 0))
    w = weightmaps.weight_map(mask, w0=10, sigma=3)
    assert np.all(w[:, 10] == 0) and np.all(w[mask == 1] == pytest.approx(0.5 / (50 / 380)))
    labels = np.zeros((20, 20), np.uint16)
    labels[3:10, 3:10] = 1
    labels[:, 8:] = 65535  # the object's right part unannotated: no contour is made up where it is cut
    channels = targets.instance_targets(labels, "bc")
    assert np.all(channels[:, 8:] == -1)
    assert channels[5, 7, 1] == 0 and channels[5, 3, 1] == 1  # only its true border is a contour


def test_random_crops_hold_annotated_pixels_and_epochs_count_the_annotated_area():
    from lib.data.generators import CropDataset

    image = np.random.default_rng(0).random((64, 64, 1)).astype(np.float32)
    mask = np.full((64, 64), 255, np.uint8)  # unannotated but for a 6 x 6 patch in a corner
    mask[56:62, 2:8] = 0
    mask[58:60, 4:6] = 1
    dataset = CropDataset([image], [mask], (16, 16), 4, draws=tiling.annotated_draws([mask], (16, 16)),
                          seed=3)
    assert len(dataset) == 1 and dataset.samples == 1  # 36 annotated pixels: one crop covers them
    for epoch in range(30):
        dataset.set_epoch(epoch)
        _, y = dataset[0]
        assert (y[..., 0] >= 0).any()  # never a crop that is all unannotated
    full = np.zeros((64, 64), np.uint8)
    assert tiling.annotated_draws([full, mask], (16, 16)) == [16, 1]
    x = np.zeros((3, 4, 4, 1), np.float32)
    y = np.zeros((3, 4, 4, 1), np.float32)
    y[1] = -1
    kept = tiling.annotated_crops(x, y)
    assert len(kept[0]) == 2 and tiling.annotated_crops(x[1:2], y[1:2]) is None


def test_scores_of_a_partly_annotated_test_mask_are_those_of_its_annotated_pixels():
    from lib.evaluate.evaluation import _scored
    from lib.evaluate.metrics import PixelCounts
    from lib.evaluate.objects import without_unannotated

    rng = np.random.default_rng(0)
    mask = (rng.random((30, 30)) < 0.3).astype(np.uint8)
    pred = (rng.random((30, 30)) < 0.3).astype(np.uint8)
    hidden = np.zeros((30, 30), bool)
    hidden[:, 20:] = True
    scored = PixelCounts.from_arrays(_scored(pred, hidden), np.where(hidden, 0, mask)).metrics()
    alone = PixelCounts.from_arrays(pred[:, :20], mask[:, :20]).metrics()
    for key in ("fg_iou", "dice", "precision", "recall"):
        assert scored[key] == pytest.approx(alone[key])
    labels = np.zeros((10, 10), np.uint32)
    labels[1:4, 1:4], labels[1:4, 6:9] = 1, 2
    cut = np.zeros((10, 10), bool)
    cut[:, 5:] = True
    cut[1:4, 3] = True  # a third of object 1 is unannotated, all of object 2
    kept = without_unannotated(labels, cut)
    assert set(np.unique(kept)) == {0, 1} and kept[1:4, 1:3].all() and not kept[1:4, 3].any()


# --------------------------------------------------------------------------- 3D masks of some slices

def _volume_folder(root, depth=16, shape=(32, 32), annotated=None):
    """A synthetic volume of slices ``slice_NNNN.tif`` (from 0) with the masks of the slices ``annotated`` only."""
    from lib.data.synthetic import write_dataset

    data = write_dataset(str(root), shape=(depth,) + shape, volume=True, seed=2)
    if annotated is not None:
        folder = os.path.join(data, "train", "y")
        for i, name in enumerate(sorted(os.listdir(folder))):
            if i not in annotated:
                os.remove(os.path.join(folder, name))
    return data


def test_sparse_mask_slices_pair_by_number_and_read_as_unannotated_slices(tmp_path):
    data = _volume_folder(tmp_path / "d", annotated={0, 5, 10})
    ys = sorted(os.listdir(os.path.join(data, "train", "y")))
    assert len(ys) == 3
    with pytest.raises(UserError, match="a 3D volume annotated on some slices only needs data.ignore_value"):
        layout.dataset_pairs(data, "train")
    pairs = layout.dataset_pairs(data, "train", sparse=True)
    assert [y is not None for _, y in pairs] == [i in (0, 5, 10) for i in range(len(pairs))]
    images, masks, _ = layout.load_pairs_3d(pairs, "train", 1, ignore=IGNORE)
    assert masks[0].shape == images[0].shape[:3] and masks[0].dtype == np.uint8
    annotated_slices = [z for z in range(len(masks[0])) if io.annotated(masks[0][z]).all()]
    assert annotated_slices == [0, 5, 10] and io.ignored(masks[0][1]).all()
    # a mask whose number names no image slice
    os.rename(os.path.join(data, "train", "y", ys[-1]), os.path.join(data, "train", "y", "mask_0099.tif"))
    with pytest.raises(UserError, match=r"mask_0099.tif: number 99 names no image slice"):
        layout.dataset_pairs(data, "train", sparse=True)


PLAIN = ["--set", "model.depth=2", "--set", "model.filters=4", "--set", "train.epochs=2",
         "--set", "train.steps_per_epoch=3", "--set", "train.batch_size=2", "--set", "train.tensorboard=false",
         "--gpu", "cpu"]
SMALL = PLAIN + ["--set", f"data.ignore_value={IGNORE}"]


def test_3d_template_trains_on_a_volume_annotated_on_some_slices(tmp_path):
    from conftest import run_here

    data = _volume_folder(tmp_path / "d", depth=24, annotated={1, 5, 9, 13, 17, 21})
    result = run_here("templates/3D_template.py", data, str(tmp_path / "jobs"), "--id", "sparse",
                      "--set", "data.crop_shape=[8,16,16]", "--set", "data.val_fraction=0.34", *SMALL)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "jobs" / "sparse_0" / "metrics.json").read_text())
    assert 0 <= metrics["results"]["tiled"]["fg_iou"] <= 1
    history = (tmp_path / "jobs" / "sparse_0" / "history.csv").read_text().splitlines()
    assert len(history) == 3 and "val_iou" in history[0]


def test_paper_script_trains_on_a_volume_annotated_on_some_slices(tmp_path):
    """Xiao et al.'s entry script (3D, deep supervision: the loss on every output) with masks of some slices."""
    from conftest import run_here

    data = _volume_folder(tmp_path / "d", annotated={1, 5, 9, 13})
    result = run_here("xiao_2018/xiao_template.py", data, str(tmp_path / "jobs"), "--id", "x", "--gpu", "cpu",
                      "--set", "train.epochs=2", "--set", "data.crop_shape=[4,32,32]",
                      "--set", "train.steps_per_epoch=2", "--set", "data.val_fraction=0.5",
                      "--set", "model.filters=4", "--set", "train.tensorboard=false",
                      "--set", f"data.ignore_value={IGNORE}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "fg_iou" in json.loads((tmp_path / "jobs" / "x_0" / "metrics.json").read_text())["results"]["tiled"]


@pytest.fixture(scope="module")
def partly_annotated_2d(tmp_path_factory):
    """The 2D synthetic set whose training masks have their right third unannotated and test masks their top rows."""
    from lib.data.synthetic import write_dataset

    data = write_dataset(str(tmp_path_factory.mktemp("partial") / "data"), n_train=4, n_test=2, shape=(64, 64),
                         seed=5)
    for split, region in (("train", (slice(None), slice(43, None))), ("test", (slice(0, 10), slice(None)))):
        folder = os.path.join(data, split, "y")
        for name in os.listdir(folder):
            mask = tifffile.imread(os.path.join(folder, name))
            mask[region] = IGNORE
            tifffile.imwrite(os.path.join(folder, name), mask)
    return data


@pytest.mark.parametrize("script, loss", [("templates/template.py", "weighted_bce"),
                                          ("templates/big_data_template.py", "bce_dice")])
def test_2d_templates_train_and_score_partly_annotated_masks(tmp_path, partly_annotated_2d, script, loss):
    from conftest import run_here

    result = run_here(script, partly_annotated_2d, str(tmp_path / "jobs"), "--id", "part",
                      "--set", "data.crop_shape=[32,32]", "--set", "data.val_fraction=0.25",
                      "--set", f"train.loss={loss}", *SMALL)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "jobs" / "part_0" / "metrics.json").read_text())
    assert 0 <= metrics["results"]["tiled"]["fg_iou"] <= 1
    # without the ignore value the same masks are refused, naming a file
    refused = run_here(script, partly_annotated_2d, str(tmp_path / "jobs"), "--id", "plain",
                       "--set", "data.crop_shape=[32,32]", *PLAIN)
    assert refused.returncode == 2 and "mask is not binary, found 3 values" in refused.stderr
    assert not (tmp_path / "jobs" / "plain_0").exists()


@pytest.mark.parametrize("script", ["templates/template.py", "templates/big_data_template.py"])
def test_a_mask_unannotated_everywhere_is_refused_before_the_run_folder(tmp_path, partly_annotated_2d, script):
    from conftest import run_here

    data = tmp_path / "data"
    shutil.copytree(partly_annotated_2d, data)
    name = sorted(os.listdir(data / "train" / "y"))[1]
    tifffile.imwrite(data / "train" / "y" / name, np.full((64, 64), IGNORE, np.uint8))
    result = run_here(script, str(data), str(tmp_path / "jobs"), "--id", "none",
                      "--set", "data.crop_shape=[32,32]", *SMALL)
    assert result.returncode == 2
    assert f"train/y/{name}: every pixel of the mask is the ignore value" in result.stderr
    assert not (tmp_path / "jobs").exists() or not os.listdir(tmp_path / "jobs")
