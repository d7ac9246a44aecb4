"""Instance runs (model.targets bc / bcd): targets from label images, objects grown from seeds in memory and
block-wise, label masks and their refusals, the loss of the channels, and the templates and predict.py end to end."""

import json
import os

import numpy as np
import pytest
import tifffile
from skimage.draw import disk
from skimage.measure import label

from lib.data import targets
from lib.evaluate.matching import Matches
from lib.predict import instances


def touching_discs(shape=(48, 64)):
    """Three discs, the first two touching along a line: a label image."""
    labels = np.zeros(shape, np.uint16)
    for i, (centre, radius) in enumerate((((16, 14), 8), ((16, 29), 8), ((34, 48), 9))):
        rr, cc = disk(centre, radius, shape=shape)
        labels[rr, cc] = np.where(labels[rr, cc] == 0, i + 1, labels[rr, cc])
    return labels


def same_objects(a, b):
    """Whether two label images hold the same objects, up to their numbering."""
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1)
    return len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]


def test_targets_of_touching_objects_have_a_contour_between_them():
    labels = touching_discs()
    t = targets.instance_targets(labels, "bcd")
    assert t.shape == labels.shape + (3,) and t.dtype == np.float32
    assert np.array_equal(t[..., 0], labels > 0)
    between = (labels == 1) & (np.roll(labels, -1, axis=1) == 2)  # where disc 1 meets disc 2
    assert between.any() and t[..., 1][between].all()
    assert t[..., 1][(labels > 0)].mean() < 0.35  # a line, not the whole object
    for i in (1, 2, 3):  # each object's distance peaks at 1 inside it and is 0 on its own border
        assert t[..., 2][labels == i].max() == pytest.approx(1.0)
    assert np.all(t[..., 2][labels == 0] == 0)
    # a binary mask of the same discs: one object for the touching pair, no contour between them
    merged = targets.instance_targets((labels > 0).astype(np.uint8), "bc")
    assert not merged[..., 1][between].all()


def test_objects_grown_from_channels_separate_touching_objects():
    labels = touching_discs()
    perfect = targets.instance_targets(labels, "bcd")
    for channels in (perfect[..., :2], perfect):
        found = instances.from_channels(channels, min_size=5)
        # the three discs, each found whole but for a pixel here and there of the line where two meet
        assert found.dtype == np.uint32 and found.max() == 3
        assert Matches.from_labels(found, labels).metrics()["f1_75"] == 1.0
    assert label(labels > 0).max() == 2  # connected components merge the pair
    # a contour the network did not find between them: the interior's neck still seeds two objects
    missed = perfect[..., :2].copy()
    missed[..., 1][(labels > 0) & (np.abs(np.arange(64) - 21.5) < 2)[None, :]] = 0
    assert Matches.from_labels(instances.from_channels(missed), labels).metrics()["f1_50"] == 1.0


def volume_of_touching_objects():
    from lib.data.synthetic import make_sample

    _, labels = make_sample((24, 64, 72), np.random.default_rng(4), touching=True, labels=True)
    assert len(np.unique(labels)) - 1 > label(labels > 0).max()  # some objects touch
    return labels


@pytest.mark.parametrize("where", ["in process", "2 dask workers"])
def test_objects_of_channels_block_wise_equal_those_in_one_piece(tmp_path, where):
    """Objects cut by the borders of 2 x 2 x 2 blocks get one id each, the same as labelled in one piece."""
    import zarr

    from lib.predict import blockwise

    labels = volume_of_touching_objects()
    channels = targets.instance_targets(labels, "bc")
    stored = np.rint(channels * 255).astype(np.uint8)
    whole = instances.from_channels(stored / np.float32(255), min_size=10)
    assert whole.max() >= 5
    root = zarr.open_group(str(tmp_path / "s.zarr"), mode="w")
    root.create_array("prob", shape=(2,) + labels.shape, chunks=(1, 12, 32, 36), dtype="uint8")[:] = \
        np.moveaxis(stored, -1, 0)
    root.create_array("objects", shape=labels.shape, chunks=(12, 32, 36), dtype="uint32")
    client = cluster = None
    if where != "in process":
        client, cluster = blockwise.connect("local:2", threads=1)
    try:
        run_tasks = blockwise.run_tasks_on(client) if client else blockwise.run_tasks_in_process
        count = instances.objects_of_channels((str(tmp_path / "s.zarr"), "prob"), (str(tmp_path / "s.zarr"),
                                              "objects"), (12, 32, 36), (12, 32, 32), run_tasks, min_size=10)
    finally:
        if client is not None:
            client.close()
            cluster.close()
    found = root["objects"][...]
    assert count == whole.max() == found.max() and same_objects(found, whole)
    assert "_objects_work" not in zarr.open_group(str(tmp_path / "s.zarr"), mode="r")  # scratch arrays removed


def test_label_masks_are_read_as_label_images_and_bad_ones_refused(tmp_path):
    from lib.data import io
    from lib.errors import UserError

    assert io.class_mask(np.array([[0, 7], [300, 0]]), "m.tif", io.LABELS).dtype == np.uint16
    assert io.class_mask(np.array([[0, 70000]]), "m.tif", io.LABELS).dtype == np.uint32
    assert io.class_mask(np.array([[0.0, 3.0]]), "m.tif", io.LABELS).tolist() == [[0, 3]]
    with pytest.raises(UserError, match=r"m.tif: float mask with fractional values \(e.g. 0.5\)"):
        io.class_mask(np.array([[0.0, 0.5]]), "m.tif", io.LABELS)
    with pytest.raises(UserError, match="m.tif: label ids from -1 to 2"):
        io.class_mask(np.array([[-1, 2]]), "m.tif", io.LABELS)
    with pytest.raises(UserError, match="needs model.targets=bc or bcd"):  # a label image given to a semantic run
        io.class_mask(np.array([[0, 1, 2]]), "m.tif", 1)


def test_reference_objects_of_a_binary_mask_are_its_components_whatever_its_value():
    from lib.evaluate.objects import reference_objects

    labels = touching_discs()
    for binary in ((labels > 0) * 255, (labels > 0) * 1):  # 0/255 as stored, 0/1
        assert reference_objects(binary.astype(np.uint16)).max() == 2  # the touching pair is one
    assert same_objects(reference_objects(labels), labels)
    single = np.where(labels == 3, 7, 0).astype(np.uint16)  # a label image of one object is its component
    assert reference_objects(single).max() == 1


def test_augmentation_keeps_the_ids_of_a_label_image():
    from lib import config
    from lib.data.augment import Augmenter

    labels = touching_discs((64, 64)).astype(np.uint32) * 1000
    cfg = config.AugmentConfig(rotation_p=1.0, elastic_p=1.0, zoom_p=1.0)
    _, out = Augmenter(cfg, ndim=2)(np.zeros((64, 64, 1), np.float32), labels, np.random.default_rng(0))
    assert out.dtype == np.uint32 and set(np.unique(out)) <= {0, 1000, 2000, 3000} and len(np.unique(out)) > 2


def test_loss_of_the_channels_equals_its_numpy_reference():
    import keras

    from lib.model.losses import InstanceChannels

    rng = np.random.default_rng(0)
    t = rng.random((2, 8, 8, 4)).round().astype(np.float32)  # 3 channels, then a label channel it ignores
    t[..., 2] = rng.random((2, 8, 8))
    p = rng.uniform(0.05, 0.95, (2, 8, 8, 3)).astype(np.float32)
    loss = InstanceChannels(3, [1.0, 2.0, 0.5])
    got = keras.ops.convert_to_numpy(loss.call(keras.ops.convert_to_tensor(t), keras.ops.convert_to_tensor(p)))

    def bce_dice(a, b):
        a, b = a.reshape(2, -1), b.reshape(2, -1)
        bce = -(a * np.log(b) + (1 - a) * np.log(1 - b)).mean(1)
        return bce + 1 - (2 * (a * b).sum(1) + 1) / (a.sum(1) + b.sum(1) + 1)

    mse = ((t[..., 2] - p[..., 2]) ** 2).reshape(2, -1).mean(1)
    expected = bce_dice(t[..., 0], p[..., 0]) + 2 * bce_dice(t[..., 1], p[..., 1]) + 0.5 * mse
    assert got == pytest.approx(expected, rel=1e-5)
    again = InstanceChannels.from_config(loss.get_config())
    assert again.weights == [1.0, 2.0, 0.5] and again.channels == 3


@pytest.mark.parametrize("options, message", [
    ({"model": {"targets": "bc", "classes": 3}}, "model.targets=bc: objects of one kind from label masks, but "
                                                 "model.classes=3"),
    ({"train": {"monitor": "val_f1"}}, "train.monitor=val_f1: the F1 of objects needs an instance run"),
    ({"model": {"targets": "bcd"}, "train": {"channel_weights": [1, 1]}}, "train.channel_weights: expected 3"),
    ({"model": {"targets": "bc"}, "train": {"loss": "weighted_bce"}}, "train.loss=weighted_bce: model.targets=bc"),
    ({"model": {"targets": "bc"}, "post": {"oztel": True}}, "post.oztel=true: Oztel post-processing refines"),
])
def test_instance_options_that_cannot_work_are_refused(options, message):
    from lib import config
    from lib.errors import UserError

    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        config.from_dict(options).validate()


@pytest.fixture(scope="module")
def touching_2d(tmp_path_factory):
    from lib.data.synthetic import write_dataset

    return write_dataset(tmp_path_factory.mktemp("touching") / "data", n_train=4, n_test=2, shape=(64, 64),
                         touching=True)


TINY = ["--set", "model.depth=2", "--set", "model.filters=4", "--set", "data.crop_shape=[32,32]",
        "--set", "train.epochs=2", "--set", "train.steps_per_epoch=3", "--set", "train.batch_size=2",
        "--set", "data.val_fraction=0.25", "--set", "train.tensorboard=false", "--gpu", "cpu"]


def test_template_trains_an_instance_model_and_writes_objects(tmp_path, touching_2d):
    """The 2D template with model.targets=bcd on label masks: val_f1 picks the checkpoint; the test objects are
    written, measured and scored; predict.py then writes the objects of a volume with the run."""
    import zarr

    from conftest import run_here

    masks = [tifffile.imread(os.path.join(touching_2d, "test", "y", n))
             for n in sorted(os.listdir(os.path.join(touching_2d, "test", "y")))]
    assert masks[0].dtype == np.uint16 and masks[0].max() > 1
    result = run_here("templates/template.py", touching_2d, str(tmp_path / "jobs"), "--id", "obj",
                      "--set", "model.targets=bcd", *TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "jobs" / "obj_0"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["training"]["monitor"] == "val_f1"
    assert {"f1_50", "f1_75", "ap_50", "ap_75", "map"} <= set(metrics["results"]["tiled"])
    history = (run / "history.csv").read_text().splitlines()
    assert "val_f1" in history[0].split(",")
    written = tifffile.imread(run / "predictions" / "tiled" / "instances" / "img_0000.tif")
    assert written.shape == (64, 64) and written.dtype == np.uint32
    assert tifffile.imread(run / "predictions" / "tiled" / "prob" / "img_0000.tif").shape == (3, 64, 64)
    summary = (run / "predictions" / "tiled" / "objects_summary.csv").read_text().splitlines()
    assert summary[0].startswith("image,objects,") and len(summary) == 3  # one row per test image

    volume = (np.random.default_rng(1).random((3, 40, 48)) * 255).astype(np.uint8)
    zarr.save_array(str(tmp_path / "vol.zarr"), volume, zarr_format=2)
    args = ["--model", str(run), "--gpu", "cpu", "--set", "inference.block_shape=[2,24,24]"]
    out = run_here("templates/predict.py", str(tmp_path / "vol.zarr"), str(tmp_path / "seg.zarr"), *args)
    assert out.returncode == 0, out.stderr[-3000:]
    root = zarr.open_group(str(tmp_path / "seg.zarr"), mode="r")
    assert root["0"].shape == (3, 3, 40, 48) and root["labels/instances/0"].dtype == np.uint32
    assert set(np.unique(root["labels/mask/0"][...])) <= {0, 1}
    assert (tmp_path / "seg.zarr" / "objects.csv").exists()
    refused = run_here("templates/predict.py", str(tmp_path / "vol.zarr"), str(tmp_path / "seg.tif"), *args)
    assert refused.returncode == 2 and "model.targets=bcd: OUTPUT" in refused.stderr
    assert not (tmp_path / "seg.tif").exists()


def test_label_masks_of_a_semantic_run_are_refused_before_the_run_folder(tmp_path, touching_2d):
    from conftest import run_here

    result = run_here("templates/template.py", touching_2d, str(tmp_path / "jobs"), "--id", "sem", *TINY)
    assert result.returncode == 2
    assert "mask is not binary" in result.stderr and "model.targets=bc or bcd" in result.stderr
    assert not (tmp_path / "jobs" / "sem_0").exists()


def test_float_label_mask_is_refused_naming_the_file(tmp_path, touching_2d):
    import shutil

    from conftest import run_here

    data = tmp_path / "data"
    shutil.copytree(touching_2d, data)
    bad = data / "train" / "y" / "mask_0001.tif"
    tifffile.imwrite(bad, tifffile.imread(bad).astype(np.float32) / 2)
    result = run_here("templates/template.py", str(data), str(tmp_path / "jobs"), "--id", "f",
                      "--set", "model.targets=bc", *TINY)
    assert result.returncode == 2 and "mask_0001.tif: float mask with fractional values" in result.stderr
    assert not (tmp_path / "jobs").exists() or not os.listdir(tmp_path / "jobs")


@pytest.fixture(scope="module")
def touching_3d(tmp_path_factory):
    from lib.data.synthetic import write_dataset

    return write_dataset(tmp_path_factory.mktemp("touching3d") / "data", shape=(16, 48, 48), volume=True,
                         touching=True)


@pytest.mark.parametrize("script, data", [("templates/3D_template.py", "touching_3d"),
                                          ("templates/big_data_template.py", "touching_2d")])
def test_3d_and_big_data_templates_train_instance_models(tmp_path, script, data, request):
    """A volume of label slices (3D) and label images read crop by crop from disk (big data) train a bc model;
    the objects of the test set are written and scored."""
    from conftest import run_here

    crop = "[8,16,16]" if "3D" in script else "[32,32]"
    options = [o if not o.startswith("data.crop_shape") else f"data.crop_shape={crop}" for o in TINY]
    if "3D" in script:
        options += ["--set", "data.val_fraction=0.5"]
    result = run_here(script, request.getfixturevalue(data), str(tmp_path / "jobs"), "--id", "obj",
                      "--set", "model.targets=bc", *options)
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "jobs" / "obj_0"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["training"]["monitor"] == "val_f1" and "f1_50" in metrics["results"]["tiled"]
    written = sorted(os.listdir(run / "predictions" / "tiled" / "instances"))
    assert written and tifffile.imread(run / "predictions" / "tiled" / "instances" / written[0]).dtype == np.uint32
