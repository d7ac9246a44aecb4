"""Outputs for viewers: predict.py's OME-Zarr pyramids, any level read back, the layers of the napari plugin
(without napari), the widgets' jobs, and the neuroglancer server (``python -m lib.run.serve``) over HTTP."""

import json
import os
import threading
import urllib.parse
import urllib.request

import numpy as np
import pytest
import tifffile

from conftest import run_here, tiny_run_folder

pytestmark = pytest.mark.xdist_group("test_viewers")  # the output fixture is made once

VOLUME = (12, 40, 52)
FAST = ["--gpu", "cpu", "--set", "inference.block_shape=[4,24,32]", "--set", "inference.batch_size=16",
        "--set", "post.z_filter=false"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return tiny_run_folder(tmp_path_factory.mktemp("job") / "tiny_0")


@pytest.fixture(scope="module")
def output(tmp_path_factory, tiny_run):
    """predict.py's output of a 12 x 40 x 52 OME-Zarr 0.4 volume (voxels 0.01 x 0.006 x 0.006 micrometer) with the
    objects, its pyramid down to 10 pixels a side."""
    import zarr

    root = tmp_path_factory.mktemp("outputs")
    volume = np.random.default_rng(5).integers(0, 200, VOLUME).astype(np.uint8)
    volume[:, 10:30, 12:40] += 50  # a bright object
    group = zarr.open_group(str(root / "vol.zarr"), mode="w", zarr_format=2)
    group.create_array("0", data=volume, chunks=(4, 20, 20))
    group.attrs["multiscales"] = [{"version": "0.4", "axes": [
        {"name": a, "type": "space", "unit": "micrometer"} for a in "zyx"],
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [0.01, 0.006, 0.006]}]}]}]
    result = run_here("templates/predict.py", str(root / "vol.zarr"), str(root / "seg.zarr"), "--model",
                      str(tiny_run), *FAST, "--set", "inference.overview_side=10", "--set", "post.instances=true")
    assert result.returncode == 0, result.stderr[-3000:]
    return root / "seg.zarr", volume, result


def test_pyramid_steps_halve_until_the_overview_and_make_anisotropic_voxels_cubic_first():
    from lib.predict.writers import pyramid_steps

    assert pyramid_steps((2000, 2048, 2048), (1, 1, 1), 512) == [(2, 2, 2), (2, 2, 2)]
    assert pyramid_steps((2000, 2048, 2048), (1, 1, 1), 256) == [(2, 2, 2)] * 3
    # SBEM-like: 30 nm sections, 6 nm pixels: y and x are halved until the pixels are about as deep as the sections
    assert pyramid_steps((200, 4096, 4096), (30, 6, 6), 256) == [(1, 2, 2), (1, 2, 2), (2, 2, 2), (2, 2, 2)]
    assert pyramid_steps((3, 1000), (1, 1), 256) == [(2, 2), (1, 2)]  # a side of 1 is not halved
    assert pyramid_steps((300, 200), (1, 1), 512) == []


def test_output_is_a_validated_pyramid_whose_levels_are_means_and_nearest_labels(output):
    import zarr
    from ome_zarr_models import open_ome_zarr

    path, volume, result = output
    assert "Pyramid: 3 levels" in result.stdout
    image = open_ome_zarr(str(path))  # an independent validator
    assert type(image).__name__ == "Image"
    for name in ("mask", "instances"):
        assert type(open_ome_zarr(str(path / "labels" / name))).__name__ == "ImageLabel"
    root = zarr.open_group(str(path), mode="r")
    multiscale = dict(root.attrs)["ome"]["multiscales"][0]
    assert [d["path"] for d in multiscale["datasets"]] == ["0", "1", "2", "3"]
    assert [root[str(k)].shape for k in range(4)] == [(12, 40, 52), (6, 20, 26), (3, 10, 13), (1, 5, 6)]
    scales = [d["coordinateTransformations"][0]["scale"] for d in multiscale["datasets"]]
    assert np.allclose(scales[1], [0.02, 0.012, 0.012]) and np.allclose(scales[3], [0.08, 0.048, 0.048])
    assert {a["unit"] for a in multiscale["axes"]} == {"micrometer"}
    prob = root["0"][...].astype(np.float64)
    means = prob.reshape(6, 2, 20, 2, 26, 2).mean(axis=(1, 3, 5))
    assert np.abs(root["1"][...] - means).max() <= 1  # the mean, in the probabilities' uint8
    for name in ("mask", "instances"):
        labels = root["labels"][name]
        full = labels["0"][...]
        assert np.array_equal(labels["1"][...], full[::2, ::2, ::2][:6, :20, :26])  # ids stay ids
        assert labels["3"].dtype == full.dtype and labels["3"].shape == (1, 5, 6)
        label_scales = dict(labels.attrs)["ome"]["multiscales"][0]["datasets"]
        assert label_scales[2]["coordinateTransformations"][0]["scale"] == scales[2]
    assert root["labels/instances/0"][...].max() >= 1


def test_the_overview_is_a_small_share_of_the_bytes(output):
    path, _, _ = output

    def stored(level):
        folder = path / level
        return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(folder) for f in files)

    # at this size the chunks' compression headers weigh; the benchmark measures a large volume
    assert stored("3") < 0.1 * stored("0")


def test_a_level_is_read_with_its_own_voxel_size_and_level_0_by_default(output):
    from lib.data import volumes

    path, _, _ = output
    full, overview = volumes.open_volume(str(path)), volumes.open_volume(str(path / "2"))
    assert full.shape == (12, 40, 52, 1) and overview.shape == (3, 10, 13, 1)
    assert np.allclose(full.voxel_size, (0.01, 0.006, 0.006))
    assert np.allclose(overview.voxel_size, (0.04, 0.024, 0.024))
    assert overview.unit == "micrometer"


def test_a_rerun_of_a_complete_output_does_nothing_and_one_killed_before_its_pyramid_writes_it(output, tiny_run,
                                                                                              tmp_path):
    import shutil

    import zarr

    from lib.predict import writers

    path, _, _ = output
    copy = tmp_path / "seg.zarr"
    shutil.copytree(path, copy)
    root = zarr.open_group(str(copy), mode="r+")
    record = dict(root.attrs)[writers.JOB_KEY]
    root.attrs[writers.JOB_KEY] = {k: v for k, v in record.items() if k != writers.PYRAMID_DONE}
    shutil.rmtree(copy / "2")  # as if killed while writing the pyramid
    result = run_here("templates/predict.py", str(path.parent / "vol.zarr"), str(copy), "--model", str(tiny_run),
                      *FAST, "--set", "inference.overview_side=10", "--set", "post.instances=true")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Resuming" in result.stdout and "Pyramid: 3 levels" in result.stdout
    assert np.array_equal(zarr.open_array(str(copy / "2"))[...], zarr.open_array(str(path / "2"))[...])
    again = run_here("templates/predict.py", str(path.parent / "vol.zarr"), str(copy), "--model", str(tiny_run),
                     *FAST, "--set", "inference.overview_side=10", "--set", "post.instances=true")
    assert again.returncode == 0 and "nothing to do" in again.stdout


def test_overview_side_0_writes_the_full_resolution_only(tiny_run, tmp_path):
    import zarr

    tifffile.imwrite(tmp_path / "image.tif", np.random.default_rng(0).integers(0, 255, (300, 40), dtype=np.uint8))
    result = run_here("templates/predict.py", str(tmp_path / "image.tif"), str(tmp_path / "a.zarr"), "--model",
                      str(tiny_run), *FAST, "--set", "inference.overview_side=0")
    assert result.returncode == 0, result.stderr[-3000:]
    assert [d["path"] for d in dict(zarr.open_group(str(tmp_path / "a.zarr")).attrs)["ome"]["multiscales"][0]
            ["datasets"]] == ["0"]
    result = run_here("templates/predict.py", str(tmp_path / "image.tif"), str(tmp_path / "b.zarr"), "--model",
                      str(tiny_run), *FAST)  # the default, 256: one level of 150 x 20
    assert zarr.open_group(str(tmp_path / "b.zarr"))["1"].shape == (150, 20)


def test_output_layers_are_multiscale_with_the_voxel_size(output):
    from lib.napari import layers

    path, volume, _ = output
    assert layers.napari_reader(str(path)) is layers.read
    found = layers.read(str(path))
    assert [(a["name"], kind) for _, a, kind in found] == [("seg.zarr probability", "image"),
                                                           ("seg.zarr mask", "labels"),
                                                           ("seg.zarr instances", "labels")]
    for data, attributes, _ in found:
        assert attributes["multiscale"] and len(data) == 4 and data[0].shape == VOLUME
        assert np.allclose(attributes["scale"], (0.01, 0.006, 0.006))
    assert layers.napari_reader(str(path.parent / "vol.zarr")) is None  # not ours: left to other readers


def test_run_folder_layers(tmp_path, dataset_2d):
    """A trained run folder: the test images, the probabilities and the mask of its best variant."""
    from lib.napari import layers

    result = run_here("templates/template.py", dataset_2d, str(tmp_path), "--id", "r", "--rid", "0", "--gpu", "cpu",
                      "--set", "train.epochs=1", "--set", "data.crop_shape=[32,32]", "--set", "model.depth=2",
                      "--set", "model.filters=4", "--set", "post.z_filter=false")
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "r_0"
    assert layers.napari_reader(str(run)) is layers.read
    found = {a["name"]: (data, kind) for data, a, kind in layers.read(str(run))}
    variant = layers.best_variant(str(run))
    assert set(found) == {"r_0 image", "r_0 probability", "r_0 mask"}, (variant, list(found))
    image, _ = found["r_0 image"]
    assert image.shape == (2, 128, 128)  # the two test images, stacked
    mask, kind = found["r_0 mask"]
    assert kind == "labels" and mask.shape == image.shape and set(np.unique(mask)) <= {0, 1}
    predicted = tifffile.imread(run / "predictions" / variant / "binary" / sorted(
        os.listdir(run / "predictions" / variant / "binary"))[1])
    assert np.array_equal(mask[1], (predicted > 0).astype(np.uint8))


def test_layer_input_is_the_source_when_it_holds_the_layer_else_written_chunk_by_chunk(output, tmp_path):
    import dask.array as da
    import zarr

    from lib.napari import jobs

    path, volume, _ = output
    vol, work = str(path.parent / "vol.zarr"), tmp_path / "work"
    assert jobs.layer_input(volume, vol, work) == vol
    lazy = da.from_array(volume, chunks=(3, 20, 20))
    spec = jobs.layer_input([lazy, lazy[::2, ::2, ::2]], None, work)  # a multiscale layer: its level 0
    assert spec == str(work / "input.zarr")
    assert np.array_equal(zarr.open_array(spec)[...], volume)
    assert jobs.layer_input(volume[:6], vol, work) == spec  # another shape than the source: written anew
    assert zarr.open_array(spec).shape == (6, 40, 52)


def test_the_widgets_never_write_in_a_folder_of_the_user(tmp_path):
    from lib.napari import jobs

    mine = tmp_path / "mine"
    (mine / "train" / "x").mkdir(parents=True)
    (mine / "train" / "x" / "image.tif").write_bytes(b"my own image")
    image = np.zeros((32, 32), np.uint8)
    for write in (lambda: jobs.training_data(image, image, mine), lambda: jobs.layer_input(image, None, mine)):
        with pytest.raises(ValueError, match="exists and was not written by the napari plugin"):
            write()
    assert sorted(p.name for p in mine.rglob("*")) == ["image.tif", "train", "x"]
    assert (mine / "train" / "x" / "image.tif").read_bytes() == b"my own image"
    ours = tmp_path / "ours"
    jobs.training_data(np.zeros((3, 32, 32), np.uint8), np.zeros((3, 32, 32), np.uint8), ours)
    jobs.training_data(image, image, ours)  # its own folder: rewritten, the volume's slices gone
    assert sorted(os.listdir(ours / "train" / "x")) == ["image.tif"]


def test_training_data_and_commands(tmp_path):
    from lib.napari import jobs

    image = np.random.default_rng(0).integers(0, 255, (3, 32, 32), dtype=np.uint8)
    labels = np.zeros(image.shape, np.uint32)
    labels[:, 4:10, 4:10], labels[:, 20:30, 20:30] = 1, 7
    assert jobs.training_data(image, labels, tmp_path / "data") == 3
    written = sorted(os.listdir(tmp_path / "data" / "train" / "y"))
    assert written == ["slice_0000.tif", "slice_0001.tif", "slice_0002.tif"]
    assert set(np.unique(tifffile.imread(tmp_path / "data" / "train" / "y" / written[0]))) == {0, 255}
    with pytest.raises(ValueError, match="labels: shape"):
        jobs.training_data(image, labels[:2], tmp_path / "other")
    argv = jobs.train_command(tmp_path / "data", tmp_path / "jobs", "napari", 3, 2.5)
    assert argv[1].endswith(os.path.join("templates", "3D_template.py")) and "train.time_limit_minutes=2.5" in argv
    assert jobs.history(tmp_path) == {}


def test_neuroglancer_server_serves_a_valid_ome_zarr_over_http(output):
    import zarr
    from ome_zarr_models import open_ome_zarr

    from lib.run import serve

    path, _, _ = output
    httpd = serve.server(str(path.parent), port=0)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{httpd.server_address[1]}"
        with urllib.request.urlopen(f"{base}/seg.zarr/zarr.json") as response:
            assert response.headers["Access-Control-Allow-Origin"] == "*"
        remote = zarr.open_group(f"{base}/seg.zarr", mode="r")
        assert type(open_ome_zarr(remote)).__name__ == "Image"  # the validator, through HTTP
        assert np.array_equal(remote["3"][...], zarr.open_array(str(path / "3"))[...])
        link = serve.viewer_link(base, [str(path)])
        state = json.loads(urllib.parse.unquote(link.split("#!", 1)[1]))
        assert [layer["source"] for layer in state["layers"]] == [
            f"zarr3://{base}/seg.zarr/", f"zarr3://{base}/seg.zarr/labels/mask/",
            f"zarr3://{base}/seg.zarr/labels/instances/"]
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_serve_refuses_what_is_not_an_output(tmp_path, capsys):
    from lib.run import serve

    (tmp_path / "other.zarr").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        serve.main([str(tmp_path / "other.zarr")])
    assert exit_info.value.code == 2
    assert "not an OME-Zarr output of predict.py" in capsys.readouterr().err
