"""The napari plugin in a real, headless napari viewer (``make test-napari``; Qt offscreen).

The reader opens predict.py's outputs and run folders; Segment gives predict.py's own labels (2D image, 3D
volume, and a lazily read zarr layer that napari never loads whole); Train starts a run, draws its curves and is
cancelled, leaving a run folder that the command line resumes.
"""

import os
import resource
import signal
import subprocess
import sys

import numpy as np
import pytest
import tifffile

napari = pytest.importorskip("napari")

from conftest import REPO  # noqa: E402

from lib.napari import jobs, widgets  # noqa: E402

WAIT_MS = 300_000
FAST = ["inference.block_shape=[4,64,64]", "inference.batch_size=16", "post.z_filter=false"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The untrained tiny run of the other tests, made in a subprocess: TensorFlow loaded beside Qt aborts this
    process at its exit (the widgets never load it: they start the command line's scripts)."""
    run = tmp_path_factory.mktemp("job") / "tiny_0"
    code = (f"import pathlib, sys; sys.path[:0] = [{os.path.dirname(os.path.dirname(__file__))!r}, {REPO!r}]; "
            f"from conftest import tiny_run_folder; tiny_run_folder(pathlib.Path({str(run)!r}))")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    return run


def blobs(shape, seed=0):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 120, shape).astype(np.uint8)
    labels = np.zeros(shape, np.uint32)
    labels[..., 8:24, 8:28] = 1
    labels[..., 36:50, 30:56] = 2
    image[labels > 0] += 100
    return image, labels


def predict_py(tiny_run, input_spec, output):
    argv = jobs.predict_command(tiny_run, input_spec, output, overrides=FAST)
    result = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    import zarr

    return zarr.open_array(os.path.join(output, "labels", "mask", "0"), mode="r")[...]


def segment(viewer, qtbot, layer, model, output, options=FAST):
    widget = widgets.SegmentWidget(viewer)
    widget.image.setCurrentText(layer.name)
    widget.model.setText(str(model))
    widget.output.setText(str(output))
    widget.options.setText(" ".join(options))
    widget.start.click()
    qtbot.waitUntil(lambda: not widget.timer.isActive(), timeout=WAIT_MS)
    return widget


def test_the_manifest_is_found_by_napari():
    from npe2 import PluginManager

    manager = PluginManager.instance()
    manager.discover()
    manifest = manager.get_manifest("em-segmentation")
    assert {w.display_name for w in manifest.contributions.widgets} == {"Segment", "Train"}


@pytest.mark.parametrize("shape", [(64, 72), (6, 64, 72)], ids=["2d", "3d"])
def test_segment_gives_the_labels_of_predict_py(make_napari_viewer, qtbot, tiny_run, tmp_path, shape):
    viewer = make_napari_viewer()
    image, _ = blobs(shape)
    layer = viewer.add_image(image, name="em", scale=(2.0,) * len(shape))
    widget = segment(viewer, qtbot, layer, tiny_run, tmp_path / "seg.zarr")
    assert widget.status.text().startswith("done"), widget.status.text()
    tifffile.imwrite(tmp_path / "em.tif", image)
    expected = predict_py(tiny_run, tmp_path / "em.tif", tmp_path / "cli.zarr")
    mask = viewer.layers["em mask"]
    data = mask.data[0] if mask.multiscale else mask.data
    assert np.array_equal(np.asarray(data), expected)
    assert tuple(mask.scale) == (2.0,) * len(shape)
    assert widget.progress.value() == widget.progress.maximum() > 0


def test_the_reader_opens_an_output_and_a_run_folder(make_napari_viewer, tiny_run, tmp_path):
    image, _ = blobs((8, 300, 64))
    tifffile.imwrite(tmp_path / "em.tif", image)
    predict_py(tiny_run, tmp_path / "em.tif", tmp_path / "seg.zarr")
    viewer = make_napari_viewer()
    viewer.open(str(tmp_path / "seg.zarr"), plugin="em-segmentation")
    assert [layer.name for layer in viewer.layers] == ["seg.zarr probability", "seg.zarr mask"]
    assert viewer.layers["seg.zarr mask"].multiscale  # a pyramid: 300 > 256


def test_segment_a_lazy_zarr_layer_without_loading_it(make_napari_viewer, qtbot, tiny_run, tmp_path):
    """A 64 MB zarr volume opened lazily (dask): Segment gives it to predict.py by its path; napari's memory grows
    by far less than the volume."""
    import dask.array as da
    import zarr

    depth, side = 64, 1024
    array = zarr.open_array(str(tmp_path / "big.zarr"), mode="w", shape=(depth, side, side), chunks=(8, 256, 256),
                            dtype="uint8")
    pattern = np.random.default_rng(0).integers(0, 255, (8, side, side), dtype=np.uint8)
    for z in range(0, depth, 8):
        array[z:z + 8] = pattern
    viewer = make_napari_viewer()
    layer = viewer.add_image(da.from_zarr(str(tmp_path / "big.zarr")), name="big")
    layer._source = layer.source.__class__(path=str(tmp_path / "big.zarr"))  # as a reader opening the file sets it
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    widget = segment(viewer, qtbot, layer, tiny_run, tmp_path / "seg.zarr",
                     ["inference.block_shape=[8,512,512]", "post.z_filter=false"])
    assert widget.status.text().startswith("done"), widget.status.text()
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 0.5 * depth, grown_mb
    assert not (tmp_path / ".seg.zarr.input").exists() or not os.listdir(tmp_path / ".seg.zarr.input")
    assert viewer.layers["big mask"].multiscale


def test_train_shows_its_curves_and_is_cancelled_then_resumed_from_bash(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer()
    image, labels = blobs((64, 72))
    viewer.add_image(image, name="em")
    viewer.add_labels(labels, name="painted")
    widget = widgets.TrainWidget(viewer)
    widget.image.setCurrentText("em")
    widget.labels.setCurrentText("painted")
    widget.job_dir.setText(str(tmp_path / "jobs"))
    small = ["data.crop_shape=[32,32]", "model.depth=2", "model.filters=4", "train.steps_per_epoch=2",
             "post.z_filter=false"]
    widget.options.setText(" ".join(small + ["train.epochs=500"]))
    widget.start.click()
    run = tmp_path / "jobs" / "napari_0"
    qtbot.waitUntil(lambda: len(jobs.history(str(run)).get("epoch", [])) >= 2, timeout=WAIT_MS)
    qtbot.waitUntil(lambda: "epoch" in widget.status.text(), timeout=10_000)
    assert widget.figure.axes and widget.figure.axes[0].lines  # the curves drawn
    widget.stop.click()
    qtbot.waitUntil(lambda: not widget.timer.isActive(), timeout=60_000)
    assert widget.status.text().startswith("cancelled"), widget.status.text()
    assert widget.job.returncode in (-signal.SIGTERM, 128 + signal.SIGTERM)
    with open(widget.job.log) as fh:
        assert "run the same command again to resume" in fh.read()
    done = len(jobs.history(str(run))["epoch"])
    # the same command, from bash, resumes the run (here for 2 more epochs)
    argv = jobs.train_command(tmp_path / "jobs" / "napari_data", tmp_path / "jobs", "napari", 2, 10,
                              overrides=small + [f"train.epochs={done + 2}"])
    result = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(jobs.history(str(run))["epoch"]) == done + 2


def test_widgets_name_what_is_missing(make_napari_viewer):
    viewer = make_napari_viewer()
    widget = widgets.SegmentWidget(viewer)
    widget.start.click()
    assert widget.status.text() == "error: choose an image layer"
    viewer.add_image(np.zeros((32, 32), np.uint8), name="em")
    widget.start.click()
    assert widget.status.text() == "error: model: choose a run folder"
