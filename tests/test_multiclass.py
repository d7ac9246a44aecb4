"""Multi-class segmentation (model.classes=K > 1): mask checks, losses, metrics, template runs, predict.py."""

import csv
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tifffile
from skimage.measure import label

from conftest import REPO, run_here
from lib import config
from lib.data import io, synthetic
from lib.errors import UserError, options
from lib.evaluate import evaluation, reports
from lib.model import losses, metrics
from lib.predict import postprocess

# one pytest worker runs this file (make test: --dist loadgroup): its fixtures that run templates run once
pytestmark = pytest.mark.xdist_group("test_multiclass")

TEMPLATES = os.path.join(REPO, "templates")
FAST_2D = ["--set", "model.classes=3", "--set", "train.epochs=2", "--set", "train.steps_per_epoch=3",
           "--set", "data.crop_shape=[32,32]", "--set", "model.depth=2", "--set", "model.filters=4",
           "--set", "train.batch_size=4", "--set", "inference.overlays=1"]


def run_template(template, data, job, *args):
    return run_here(os.path.join("templates", template), str(data), str(job), "--id", "mc", "--gpu", "cpu", *args)


@pytest.fixture(scope="session")  # once per worker, although other files run between its tests
def data_3class(tmp_path_factory):
    return synthetic.write_dataset(str(tmp_path_factory.mktemp("data") / "mc2d"), n_train=4, n_test=2,
                                   shape=(64, 64), seed=2, classes=3)


# --------------------------------------------------------------------------- masks

def test_class_masks_accepted_and_values_outside_refused_naming_the_file():
    mask = np.array([[0, 1], [2, 2]], np.uint16)  # 16-bit class ids
    np.testing.assert_array_equal(io.class_mask(mask, "m.tif", 3), mask)
    assert io.class_mask(mask, "m.tif", 3).dtype == np.uint8
    # K = 2 takes binary masks as they come (0/255: class 1 on class 0), as K = 1 does
    np.testing.assert_array_equal(io.class_mask(np.array([0, 255]), "b.tif", 2), [0, 1])
    with pytest.raises(UserError, match=r"m\.tif: mask values 3, 7 are not class ids 0-2 \(classes=3\); "
                                        r"found 5 values \(0, 1, 2, 3, 7\)"):
        io.class_mask(np.array([0, 1, 2, 3, 7]), "m.tif", 3)
    # the run stage names the option (lib.errors.options), the data stage its parameter
    with pytest.raises(UserError, match=r"^m\.tif: mask values 3, 7 are not class ids 0-2 \(model\.classes=3\); "):
        with options(classes="model.classes"):
            io.class_mask(np.array([0, 1, 2, 3, 7]), "m.tif", 3)
    with pytest.raises(UserError, match=r"m\.tif: mask is not binary, found 3 values \(0, 1, 2\); expected class "
                                        r"ids 0 and 1"):
        io.class_mask(np.array([0, 1, 2]), "m.tif", 2)


def test_template_refuses_a_mask_with_a_value_outside_the_classes(data_3class, tmp_path):
    data = tmp_path / "data"
    os.system(f"cp -r {data_3class} {data}")
    bad = data / "train" / "y" / "mask_0002.tif"
    mask = tifffile.imread(bad)
    mask[:3, :3] = 5
    tifffile.imwrite(bad, mask)
    job = tmp_path / "job"
    result = run_template("template.py", data, job, *FAST_2D)
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {bad}: mask values 5 are not class ids 0-2 (model.classes=3); found 4 values "
                      "(0, 1, 2, 5); expected one class id per pixel, 0 the background"], result.stderr[-2000:]
    assert "Traceback" not in result.stderr and not os.path.exists(job)


@pytest.mark.parametrize("sets, message", [
    (["train.loss=jaccard"], "train.loss=jaccard: a binary loss, but model.classes=3"),
    (["train.class_weights=[1,2]"], "train.class_weights: expected 3 weights for model.classes=3"),
    (["post.oztel=true"], "post.oztel=true: Oztel post-processing refines binary objects"),
])
def test_impossible_options_of_a_multiclass_run_are_refused(sets, message):
    cfg = config.from_dict({"model": {"classes": 3}})
    config.apply_overrides(cfg, sets)
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        cfg.validate()
    with pytest.raises(UserError, match="train.class_weights: weights of classes need model.classes > 1"):
        config.apply_overrides(config.Config(), ["train.class_weights=auto"]).validate()


def test_synthetic_three_classes_are_background_mitochondria_membranes():
    image, mask = synthetic.make_sample((96, 96), 0, classes=3)
    binary_image, binary = synthetic.make_sample((96, 96), 0)
    np.testing.assert_array_equal(image, binary_image)  # the same picture, more classes marked
    np.testing.assert_array_equal(mask == 1, binary == 1)
    shares = np.bincount(mask.ravel(), minlength=3) / mask.size
    assert set(np.unique(mask)) == {0, 1, 2} and 0.01 < shares[2] < 0.2


# --------------------------------------------------------------------------- losses and metrics

# Two pixels of one sample: class 0 then class 2, of 3 classes.
T = np.array([[[[0.0], [2.0]]]], np.float32)
P = np.array([[[[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]]]], np.float32)


def value(loss, t=T, p=P):
    return keras.ops.convert_to_numpy(loss(keras.ops.convert_to_tensor(t), keras.ops.convert_to_tensor(p)))


def test_categorical_cross_entropy_by_hand():
    np.testing.assert_allclose(value(losses.ce), [-(np.log(0.7) + np.log(0.6)) / 2], rtol=1e-6)
    weighted = losses.get_loss("ce", classes=3, class_weights=[0.5, 1.0, 2.0])
    np.testing.assert_allclose(value(weighted), [-(0.5 * np.log(0.7) + 2.0 * np.log(0.6)) / 2], rtol=1e-6)


def test_two_class_cross_entropy_equals_binary_cross_entropy():
    p1 = np.array([[[[0.2], [0.9]], [[0.6], [0.4]]]], np.float32)
    t1 = np.array([[[[0.0], [1.0]], [[1.0], [0.0]]]], np.float32)
    np.testing.assert_allclose(value(losses.ce, t1, np.concatenate([1 - p1, p1], -1)), value(losses.bce, t1, p1),
                               rtol=1e-5)


def test_dice_is_the_mean_over_foreground_classes_by_hand():
    # class 1: no true pixel, sum(p) 0.5 -> 1 - 1 / 1.5; class 2: inter 0.6, sum(t) 1, sum(p) 0.7 -> 1 - 2.2 / 2.7
    c1, c2 = 1 - 1 / 1.5, 1 - 2.2 / 2.7
    np.testing.assert_allclose(value(losses.get_loss("dice", classes=3)), [(c1 + c2) / 2], rtol=1e-6)
    np.testing.assert_allclose(value(losses.get_loss("dice", classes=3, class_weights=[9.0, 1.0, 3.0])),
                               [(c1 + 3 * c2) / 4], rtol=1e-6)
    both = losses.get_loss("bce_dice", 2.0, 0.5, classes=3)  # bce_dice names ce_dice for K > 1
    np.testing.assert_allclose(value(both), 2.0 * value(losses.ce) + 0.5 * (c1 + c2) / 2, rtol=1e-6)
    restored = keras.losses.deserialize(keras.losses.serialize(losses.get_loss("ce_dice", classes=3,
                                                                               class_weights=[1, 2, 3])))
    assert restored.class_weights == [1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="jaccard is a binary loss"):
        losses.get_loss("jaccard", classes=3)


def test_class_iou_metric_is_the_macro_mean_over_foreground_classes():
    y = np.array([[[0], [1], [1], [2]]], np.float32)
    p = np.eye(3, dtype=np.float32)[[[0, 1, 2, 2]]]  # class 1: 1 of 2 found; class 2: 1 true, 2 predicted
    metric = metrics.ClassIoU(3)
    metric.update_state(keras.ops.convert_to_tensor(y), keras.ops.convert_to_tensor(p))
    np.testing.assert_allclose(float(metric.result()), (1 / 2 + 1 / 2) / 2, rtol=1e-6)


def test_per_class_scores_by_hand():
    gt = np.array([[0, 1, 1, 0], [2, 2, 0, 0]], np.uint8)
    labels = np.array([[0, 1, 0, 0], [2, 2, 2, 1]], np.uint8)
    score = evaluation._Score(sweep=True, classes=3)
    score.add(labels, gt, [label(gt == c) for c in range(3)])
    out = score.results()
    # class 1: tp 1, fp 1, fn 1; class 2: tp 2, fp 1, fn 0; class 0: tp 2, fp 1, fn 2
    assert out["c1_fg_iou"] == pytest.approx(1 / 3) and out["c2_fg_iou"] == pytest.approx(2 / 3)
    assert out["c1_precision"] == pytest.approx(1 / 2) and out["c2_recall"] == pytest.approx(1.0)
    assert out["fg_iou"] == pytest.approx(1 / 2) and out["dice"] == pytest.approx((1 / 2 + 4 / 5) / 2)
    assert out["mean_iou"] == pytest.approx((2 / 5 + 1 / 3 + 2 / 3) / 3)
    assert out["c2_det"] == 1.0 and score.sweep is None  # no threshold, no sweep
    assert out["c0_fg_iou"] == pytest.approx(2 / 5)  # the background's too, outside the macro means
    table = reports.metrics_table({"tiled": out})
    assert "tiled class 1     0.3333" in table and "tiled class 2     0.6667" in table


def test_z_filter_and_most_probable_class_of_probabilities():
    probs = np.zeros((5, 2, 2, 3), np.float32)
    probs[..., 0] = 1.0
    probs[2, 0, 0] = [0.1, 0.1, 0.8]  # a flicker of class 2 on one slice: filtered away
    filtered = postprocess.z_filter(probs, 3)
    assert filtered.shape == probs.shape
    np.testing.assert_array_equal(postprocess.most_probable(probs)[2], [[2, 0], [0, 0]])
    assert not postprocess.most_probable(filtered).any()


@pytest.mark.parametrize("values, shape", [
    *[({"name": name, "depth": 2, "filters": 4}, (32, 32, 1)) for name in ("unet", "resunet", "attention_unet",
                                                                           "seunet", "multiresunet")],
    ({"name": "unet", "depth": 2, "filters": 4, "deep_supervision": True, "stem_stride": 2}, (32, 32, 1)),
    ({"name": "cheng2d", "depth": 3, "filters": 4}, (32, 32, 1)),
    ({"name": "xiao2018", "depth": 3, "filters": 4, "pool_size": [1, 2, 2], "deep_supervision": True},
     (4, 32, 32, 1)),
])
def test_every_network_has_a_softmax_head_of_the_classes(values, shape):
    from lib.config import ModelConfig
    from lib.model.networks import build_network

    model = build_network(ModelConfig(classes=3, **values), shape)
    outputs = model.predict_on_batch(np.random.default_rng(0).random((1, *shape), np.float32))
    for out in outputs if isinstance(outputs, list) else [outputs]:
        assert out.shape == (1, *shape[:-1], 3)
        np.testing.assert_allclose(np.asarray(out).sum(axis=-1), 1.0, atol=1e-5)


# --------------------------------------------------------------------------- template runs

def test_2d_template_reports_metrics_of_each_class(data_3class, tmp_path):
    job = tmp_path / "job"
    result = run_template("template.py", data_3class, job, *FAST_2D, "--set", "train.class_weights=auto",
                          "--set", "inference.tta=true")
    assert result.returncode == 0, result.stderr[-3000:]
    run = job / "mc_0"
    scores = json.loads((run / "metrics.json").read_text())
    tiled = scores["results"]["tiled"]
    for key in ("fg_iou", "mean_iou", "dice", "det", "seg", "c1_fg_iou", "c2_fg_iou", "c1_recall", "c2_seg"):
        assert 0.0 <= tiled[key] <= 1.0, key
    assert tiled["fg_iou"] == pytest.approx((tiled["c1_fg_iou"] + tiled["c2_fg_iou"]) / 2)
    assert len(scores["training"]["class_weights"]) == 3 and scores["threshold_sweeps"] == {}
    with open(job / "summary.csv") as fh:
        row = next(csv.DictReader(fh))
    assert {"tiled_c1_fg_iou", "tiled_c2_dice", "tta_c2_fg_iou", "z_filter_c1_det"} <= set(row)
    labels = tifffile.imread(run / "predictions" / "tiled" / "labels" / "img_0000.tif")
    probs = tifffile.imread(run / "predictions" / "tiled" / "prob" / "img_0000.tif")
    assert labels.shape == (64, 64) and labels.dtype == np.uint8 and labels.max() <= 2
    assert probs.shape == (3, 64, 64)
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-4)
    np.testing.assert_array_equal(labels, np.argmax(probs, axis=0))
    assert "tiled class 2" in result.stdout and (run / "charts" / "overlays.png").is_file()


def test_streamed_template_checks_class_ids_and_weighs_classes_from_the_scan(data_3class, tmp_path):
    job = tmp_path / "job"
    result = run_template("big_data_template.py", data_3class, job, *FAST_2D, "--set", "train.class_weights=auto",
                          "--set", "data.fg_sampling=0.5")
    assert result.returncode == 0, result.stderr[-3000:]
    scores = json.loads((job / "mc_0" / "metrics.json").read_text())
    masks = [tifffile.imread(os.path.join(data_3class, "train", "y", f)) for f in sorted(os.listdir(
        os.path.join(data_3class, "train", "y")))]
    freq = sum(np.bincount(m.ravel(), minlength=3) for m in masks) / sum(m.size for m in masks)
    np.testing.assert_allclose(scores["training"]["class_weights"], np.median(freq) / freq, rtol=1e-4)
    assert {"c1_fg_iou", "c2_dice"} <= set(scores["results"]["tiled"])


def test_3d_template_multiclass_run_finishes(tmp_path):
    data = synthetic.write_dataset(str(tmp_path / "vol"), shape=(16, 48, 48), seed=4, volume=True, classes=3)
    job = tmp_path / "job"
    result = run_template("3D_template.py", data, job, "--set", "model.classes=3", "--set", "train.epochs=1",
                          "--set", "train.steps_per_epoch=2", "--set", "data.crop_shape=[8,32,32]",
                          "--set", "model.depth=2", "--set", "model.filters=4", "--set", "train.batch_size=2",
                          "--set", "train.loss=ce", "--set", "data.val_fraction=0.5")
    assert result.returncode == 0, result.stderr[-3000:]
    scores = json.loads((job / "mc_0" / "metrics.json").read_text())["results"]
    assert {"c1_fg_iou", "c2_fg_iou", "mean_iou"} <= set(scores["tiled"]) and "z_filter" in scores
    labels = tifffile.imread(job / "mc_0" / "predictions" / "tiled" / "labels" / "test.tif")
    assert labels.shape == (16, 48, 48) and labels.max() <= 2
    assert tifffile.imread(job / "mc_0" / "predictions" / "tiled" / "prob" / "test.tif").shape == (16, 3, 48, 48)


# --------------------------------------------------------------------------- predict.py

def test_predict_writes_the_label_image_and_each_class_probability(tmp_path):
    import zarr
    from ome_zarr_models import open_ome_zarr

    from lib.data import intensity
    from lib.model import networks
    from lib.predict import blockwise, inference
    from lib.run import predicting

    keras.utils.set_random_seed(0)
    cfg = config.from_dict({"data": {"crop_shape": [16, 16]}, "model": {"depth": 2, "filters": 4, "classes": 3},
                            "train": {"loss": "ce"}, "inference": {"prob_dtype": "float16"}}).validate()
    run = tmp_path / "job" / "k3_0"
    (run / "checkpoints").mkdir(parents=True)
    networks.build_model(cfg.model, (None, None, 1)).save(run / "checkpoints" / "best.keras")
    (run / "config.json").write_text(json.dumps(cfg.to_dict()))
    vol = np.random.default_rng(1).integers(0, 255, (6, 24, 40)).astype(np.uint8)
    tifffile.imwrite(tmp_path / "vol.tif", vol)
    out = tmp_path / "seg.zarr"
    result = subprocess.run([sys.executable, os.path.join(TEMPLATES, "predict.py"), REPO, str(tmp_path / "vol.tif"),
                             str(out), "--model", str(run), "--gpu", "cpu", "--set", "post.z_filter=false",
                             "--set", "inference.block_shape=[2,16,24]"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    root = zarr.open_group(str(out), mode="r")
    prob, mask = np.asarray(root["0"][...]), np.asarray(root["labels/mask/0"][...])
    assert prob.shape == (3, 6, 24, 40) and mask.shape == (6, 24, 40)
    assert [a["type"] for a in root.attrs["ome"]["multiscales"][0]["axes"]] == ["channel"] + ["space"] * 3
    assert type(open_ome_zarr(str(out))).__name__ == "Image"  # an independent validator: the image and its labels
    assert type(open_ome_zarr(str(out / "labels" / "mask"))).__name__ == "ImageLabel"
    _, predict = blockwise.load_predictor(str(run / "checkpoints" / "best.keras"))
    tile, overlap, batch = predicting.fitted_tiles(cfg, vol.shape[1:])
    whole = np.stack([inference.predict_tiled(predict, intensity.normalize(s[..., None], "per_image"), tile, overlap,
                                              batch_size=batch) for s in vol])
    np.testing.assert_allclose(np.moveaxis(prob.astype(np.float32), 0, -1), whole, atol=2e-3)
    np.testing.assert_array_equal(mask, postprocess.most_probable(whole))
    tiff = tmp_path / "seg.tif"
    result = subprocess.run([sys.executable, os.path.join(TEMPLATES, "predict.py"), REPO, str(tmp_path / "vol.tif"),
                             str(tiff), "--model", str(run), "--gpu", "cpu", "--set", "post.z_filter=false"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    np.testing.assert_array_equal(tifffile.imread(tiff), mask)  # class ids, not 0/255
    assert tifffile.imread(str(tiff).replace(".tif", "_prob.tif")).shape == (6, 3, 24, 40)  # (Z, K, Y, X)


def test_xiao_3d_connection_of_binary_objects_is_refused_for_several_classes():
    from xiao_2018 import pipeline

    cfg = config.config_class({"xiao": pipeline.XiaoConfig})()
    config.apply_overrides(cfg, ["model.name=xiao2018", "model.depth=3", "model.classes=3",
                                 "model.pool_size=[1,2,2]", "data.crop_shape=[8,32,32]"])
    with pytest.raises(UserError, match=r"xiao\.connect_3d=true connects binary objects in 3D; with "
                                        r"model\.classes=3 set xiao\.connect_3d=false"):
        pipeline.check_options(cfg.validate())
    cfg.xiao.connect_3d = False
    pipeline.check_options(cfg)


def test_overlays_of_several_classes_name_each_row(tmp_path, monkeypatch):
    figures, save = [], reports._save_figure
    monkeypatch.setattr(reports, "_save_figure", lambda fig, path: (figures.append(fig), save(fig, path)))
    mask = np.zeros((16, 16), np.uint8)
    mask[2:6, 2:6], mask[9:13, 9:13] = 1, 2
    samples = [{"name": name, "image": np.random.default_rng(0).random((16, 16)), "mask": mask,
                "preds": {"tiled": mask}} for name in ("slice_a", "slice_b")]
    path = reports.plot_overlays(samples, ["tiled", "tta"], str(tmp_path), classes=3)
    assert os.path.isfile(path)
    assert [ax.get_ylabel() for ax in figures[0].axes] == ["slice_a", "", "slice_b", ""]
