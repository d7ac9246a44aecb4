"""What a command may replace, and where it may write: the user's data, models and folders are never touched.

The commands of each case are those a user types (``predict.py INPUT INPUT``, ``OUTPUT`` inside INPUT,
``--overwrite`` on a folder of the user's own files, ...). Each refusal is one ``error:`` line and exit 2, and
the input, the run and the user's folder are byte-identical afterwards. Also: ``--gpu`` without that GPU,
test images smaller than the training crop, and the OME-Zarr layout of predict.py's zarr output.
"""

import json
import os
import pathlib
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import tifffile

from conftest import REPO, blob_pair, run_here, tiny_run_folder, write_pairs
from lib.errors import UserError
from lib.run import devices

# one pytest worker runs this file (make test: --dist loadgroup): its fixtures that run templates run once
pytestmark = pytest.mark.xdist_group("test_safe_outputs")

FAST = ["--gpu", "cpu", "--set", "inference.block_shape=[4,24,32]"]
TINY = ["--gpu", "cpu", "--set", "data.crop_shape=[32,32]", "--set", "model.depth=2", "--set", "model.filters=4",
        "--set", "model.dropout=0.0", "--set", "train.epochs=1", "--set", "train.steps_per_epoch=2",
        "--set", "train.batch_size=2", "--set", "post.z_filter=false"]


def snapshot(path):
    """Every file under ``path`` (or the file itself) with its bytes, and every folder: what must not change."""
    path = pathlib.Path(path)
    if not path.is_dir():
        return {".": path.read_bytes()}
    return {str(p.relative_to(path)): (p.read_bytes() if p.is_file() else "folder") for p in sorted(path.rglob("*"))}


def assert_one_error(result, *message):
    assert result.returncode == 2, (result.stdout + result.stderr)[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and all(m in errors[0] for m in message), result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    return errors[0]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A run folder with an untrained tiny 2D U-Net (crop 16, per_image normalisation), as predict.py reads one."""
    return tiny_run_folder(tmp_path_factory.mktemp("job") / "tiny_0")


@pytest.fixture
def inputs(tmp_path):
    """``vol.zarr`` (zarr v2, 6 x 40 x 52), ``slices/`` (its slices as TIFFs) and ``mine/`` (the user's own files)."""
    import zarr

    volume = np.random.default_rng(3).integers(0, 200, (6, 40, 52)).astype(np.uint8)
    zarr.save_array(str(tmp_path / "vol.zarr"), volume, zarr_format=2)
    (tmp_path / "slices").mkdir()
    for z, s in enumerate(volume):
        tifffile.imwrite(tmp_path / "slices" / f"s{z:02d}.tif", s)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("two weeks of annotation notes")
    (tmp_path / "mine" / "sub").mkdir()
    (tmp_path / "mine" / "sub" / "labels.tif").write_bytes(b"II*\x00 not really a tiff")
    return tmp_path


def predict(*args):
    return run_here("templates/predict.py", *map(str, args), *FAST)


# --------------------------------------------------------------------------- predict.py: refused, nothing touched

def test_output_that_is_the_input_is_refused_with_overwrite(inputs, tiny_run):
    before = snapshot(inputs / "vol.zarr")
    result = predict(inputs / "vol.zarr", inputs / "vol.zarr", "--model", tiny_run, "--overwrite")
    assert_one_error(result, f"OUTPUT {inputs / 'vol.zarr'}: is INPUT {inputs / 'vol.zarr'} itself")
    assert snapshot(inputs / "vol.zarr") == before


def test_output_that_is_the_model_run_is_refused_with_overwrite(inputs, tiny_run):
    before = snapshot(tiny_run)
    result = predict(inputs / "vol.zarr", tiny_run, "--model", tiny_run, "--overwrite")
    assert_one_error(result, f"OUTPUT {tiny_run}: is MODEL {tiny_run} itself")
    assert snapshot(tiny_run) == before
    inside = tiny_run / "predictions.zarr"  # inside the run: refused too
    assert_one_error(predict(inputs / "vol.zarr", inside, "--model", tiny_run), "lies inside MODEL")
    assert snapshot(tiny_run) == before


def test_a_folder_of_the_users_own_files_is_never_replaced(inputs, tiny_run):
    before = snapshot(inputs / "mine")
    for extra in ([], ["--overwrite"]):
        result = predict(inputs / "vol.zarr", inputs / "mine", "--model", tiny_run, *extra)
        error = assert_one_error(result, f"OUTPUT {inputs / 'mine'}: already exists and is not an output of "
                                         "predict.py (a folder holding notes.txt, sub/)", "even with --overwrite")
        assert "use --overwrite" not in error
        assert snapshot(inputs / "mine") == before


@pytest.mark.parametrize("name", ["seg.tif", "seg_prob.tif", "seg.zarr"])
def test_a_users_file_at_a_tiff_or_zarr_output_is_never_replaced(inputs, tiny_run, name):
    if name.endswith(".zarr"):
        import zarr

        zarr.save_array(str(inputs / name), np.ones((2, 3), np.uint8))  # someone's zarr array, not our output
    else:
        tifffile.imwrite(inputs / name, np.ones((4, 4), np.uint8))
    before = snapshot(inputs / name)
    output = inputs / ("seg.zarr" if name.endswith(".zarr") else "seg.tif")
    result = predict(inputs / "vol.zarr", output, "--model", tiny_run, "--overwrite")
    assert_one_error(result, f"OUTPUT {inputs / name}: already exists and is not an output of predict.py")
    assert snapshot(inputs / name) == before
    assert not (inputs / "seg.tif").exists() or name == "seg.tif"


def test_output_inside_the_folder_of_slices_it_reads_is_refused(inputs, tiny_run):
    before = snapshot(inputs / "slices")
    result = predict(inputs / "slices", inputs / "slices" / "out.zarr", "--model", tiny_run)
    assert_one_error(result, f"OUTPUT {inputs / 'slices' / 'out.zarr'}: lies inside INPUT {inputs / 'slices'}")
    assert snapshot(inputs / "slices") == before
    os.symlink(inputs / "slices", inputs / "link")  # the same folder by another name
    result = predict(inputs / "link", inputs / "slices" / "out.zarr", "--model", tiny_run)
    assert_one_error(result, f"lies inside INPUT {inputs / 'link'} ({inputs / 'slices'})")
    result = predict(inputs / "slices" / "s00.tif", inputs / "slices", "--model", tiny_run)  # OUTPUT contains INPUT
    assert_one_error(result, f"OUTPUT {inputs / 'slices'}: contains INPUT")
    assert snapshot(inputs / "slices") == before


# --------------------------------------------------------------------------- predict.py: replacing its own outputs

def test_overwrite_replaces_an_output_of_ours_only_once_the_new_one_is_complete(inputs, tiny_run, monkeypatch):
    import zarr

    from lib.predict import blockwise, writers

    out = inputs / "seg.zarr"
    assert predict(inputs / "vol.zarr", out, "--model", tiny_run).returncode == 0
    before = snapshot(out)
    changed = ["--set", "inference.threshold=0.3"]
    result = predict(inputs / "vol.zarr", out, "--model", tiny_run, *changed)  # another job: refused without it
    assert_one_error(result, "holds another job of predict.py (differs in threshold); use --overwrite")

    def crash(job, run_tasks):
        raise RuntimeError("killed")

    with monkeypatch.context() as patch:  # a crash during the replacement: the old output is whole
        patch.setattr(blockwise, "run_job", crash)
        with pytest.raises(RuntimeError):
            predict(inputs / "vol.zarr", out, "--model", tiny_run, *changed, "--overwrite")
    assert snapshot(out) == before
    assert os.path.isdir(writers.staging_store(str(out)))
    result = predict(inputs / "vol.zarr", out, "--model", tiny_run, *changed, "--overwrite")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Resuming" in result.stdout
    job = dict(zarr.open_group(str(out), mode="r").attrs)[writers.JOB_KEY]["job"]
    assert job["threshold"] == 0.3
    assert sorted(p.name for p in inputs.iterdir()) == ["mine", "seg.zarr", "slices", "vol.zarr"]  # nothing left


def test_overwrite_replaces_a_folder_of_slices_of_ours_without_stale_slices(inputs, tiny_run):
    out = inputs / "seg"
    assert predict(inputs / "slices", out, "--model", tiny_run).returncode == 0
    assert len(list((out / "mask").iterdir())) == 6
    result = predict(inputs / "slices" / "s00.tif", out, "--model", tiny_run, "--overwrite")
    assert result.returncode == 0, result.stderr[-2000:]
    assert [p.name for p in (out / "mask").iterdir()] == ["slice_00000.tif"]
    assert sorted(p.name for p in inputs.iterdir()) == ["mine", "seg", "slices", "vol.zarr"]


def test_zarr_output_is_an_ome_zarr_image_with_the_mask_as_its_label_image(inputs, tiny_run):
    import zarr
    from ome_zarr_models import open_ome_zarr

    out = inputs / "seg.zarr"
    result = predict(inputs / "vol.zarr", out, "--model", tiny_run)
    assert result.returncode == 0, result.stderr[-2000:]
    assert type(open_ome_zarr(str(out))).__name__ == "Image"  # an independent validator, at the path the user gave
    labels = open_ome_zarr(str(out / "labels"))
    assert type(labels).__name__ == "Labels" and labels.ome_attributes.labels == ["mask"]
    assert type(open_ome_zarr(str(out / "labels" / "mask"))).__name__ == "ImageLabel"
    root = zarr.open_group(str(out), mode="r")
    assert root["0"].shape == root["labels/mask/0"].shape == (6, 40, 52)
    assert set(np.unique(root["labels/mask/0"][...])) <= {0, 1}
    # and predict.py reads it back as an image (its probabilities), e.g. to predict again with another model
    from lib.data import volumes

    assert volumes.open_volume(str(out)).shape == (6, 40, 52, 1)


# --------------------------------------------------------------------------- templates and the export

@pytest.fixture
def data(tmp_path):
    pairs = [blob_pair(seed=i) for i in range(6)]
    write_pairs(str(tmp_path / "data"), "train", [x for x, _ in pairs], [y for _, y in pairs])
    write_pairs(str(tmp_path / "data"), "test", [x for x, _ in pairs[:2]], [y for _, y in pairs[:2]])
    return tmp_path / "data"


def template(data, job, *args):
    return run_here("templates/template.py", str(data), str(job), "--id", "r", *TINY, *args)


def test_a_run_folder_of_the_users_own_files_is_never_replaced(data, tmp_path):
    run = tmp_path / "jobs" / "r_0"
    run.mkdir(parents=True)
    (run / "notes.txt").write_text("mine")
    (run / "metrics.json").write_text("{}")  # even a file of the same name as a run's is no run folder
    before = snapshot(run)
    for extra in ([], ["--overwrite"]):
        error = assert_one_error(template(data, tmp_path / "jobs", *extra),
                                 f"{run}: exists and is not a run folder (it holds metrics.json, notes.txt")
        assert "use --overwrite" not in error
        assert snapshot(run) == before and sorted(os.listdir(tmp_path / "jobs")) == ["r_0"]


def test_job_dir_inside_data_dir_and_data_dir_inside_the_run_are_refused(data, tmp_path):
    before = snapshot(data)
    assert_one_error(template(data, data / "jobs"), f"JOB_DIR {data / 'jobs'}: lies inside DATA_DIR {data}")
    assert_one_error(template(data, data), f"JOB_DIR {data}: is DATA_DIR {data} itself")
    assert snapshot(data) == before
    moved = tmp_path / "jobs" / "r_0" / "data"  # DATA_DIR inside the run folder that --overwrite would replace
    os.makedirs(moved.parent)
    (moved.parent / "config.json").write_text("{}")
    os.rename(data, moved)
    before = snapshot(moved.parent)
    assert_one_error(template(moved, tmp_path / "jobs", "--overwrite"),
                     f"the run folder {tmp_path / 'jobs' / 'r_0'}: contains DATA_DIR {moved}")
    assert snapshot(moved.parent) == before


def test_job_dir_holding_data_dir_beside_the_runs_is_fine():
    from lib.run import paths

    paths.check_apart(("JOB_DIR", "/work/exp"), [("DATA_DIR", "/work/exp/data")], allow="contains")
    with pytest.raises(UserError, match="lies inside DATA_DIR"):
        paths.check_apart(("JOB_DIR", "/work/exp/data/jobs"), [("DATA_DIR", "/work/exp/data")], allow="contains")


def test_export_never_writes_inside_its_run_nor_replaces_what_is_not_a_package(tmp_path):
    from lib.run import export

    run = tmp_path / "r_0"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text("{}")
    (run / "checkpoints" / "best.keras").write_bytes(b"weights")
    before = snapshot(run)
    for out, message in ((run / "model.zip", f"OUT.zip {run / 'model.zip'}: lies inside RUN_DIR {run}"),
                         (tmp_path / "thesis.zip", "is not a BioImage Model Zoo package (no rdf.yaml in a zip)")):
        if out.name == "thesis.zip":
            with zipfile.ZipFile(out, "w") as archive:
                archive.writestr("chapter1.tex", "weeks of writing")
        kept = snapshot(tmp_path)
        with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
            export.check_args(export.parse_args([str(run), str(out), "--overwrite"]))
        assert snapshot(tmp_path) == kept
    assert snapshot(run) == before


# --------------------------------------------------------------------------- --gpu

def test_gpu_asked_for_on_a_machine_without_one_is_refused(data, tmp_path, monkeypatch):
    env = dict(os.environ, PATH=os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep)
                                               if not os.path.exists(os.path.join(p, "nvidia-smi"))))
    result = subprocess.run([sys.executable, os.path.join(REPO, "templates", "template.py"), REPO, str(data),
                             str(tmp_path / "jobs"), "--gpu", "0"], capture_output=True, text=True, timeout=300,
                            env=env)
    assert_one_error(result, "--gpu 0: this machine has no GPU to run on: no NVIDIA driver (nvidia-smi not found); "
                             "use --gpu cpu")
    assert not (tmp_path / "jobs").exists()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(UserError, match="--gpu 1: this machine has no GPU to run on"):
        devices.select_device("1", 0, n_gpus=0)
    assert devices.select_device("auto", 0, n_gpus=0) == "cpu"  # the default: the CPU where there is no GPU
    assert devices.select_device("auto", 0, n_gpus=2) == "0" and os.environ["CUDA_VISIBLE_DEVICES"] == "0"


def test_gpu_that_the_backend_cannot_see_is_refused(monkeypatch):
    monkeypatch.setattr(devices, "count_gpus", lambda: 1)
    with pytest.raises(UserError, match=r"--gpu 0: this machine has 1 NVIDIA GPU\(s\), but Keras's \w+ backend sees "
                                        r"none \(a \w+ build without CUDA"):
        devices.check_backend_gpus("0", found=[])
    devices.check_backend_gpus("0", found=["/physical_device:GPU:0"])
    devices.check_backend_gpus("cpu")  # never asks the backend


# --------------------------------------------------------------------------- test images smaller than the crop

@pytest.mark.parametrize("script", ["templates/template.py", "templates/big_data_template.py"])
def test_test_images_smaller_than_the_crop_are_predicted_whole(data, tmp_path, script):
    for kind in ("x", "y"):  # 20 x 27 test images; training crops of 32 x 32
        for path in (data / "test" / kind).iterdir():
            tifffile.imwrite(path, tifffile.imread(path)[:20, :27])
    result = run_here(script, str(data), str(tmp_path / "jobs"), "--id", "s", *TINY, "--set", "inference.tta=true")
    assert result.returncode == 0, result.stderr[-2000:]
    run = tmp_path / "jobs" / "s_0"
    metrics = json.loads((run / "metrics.json").read_text())["results"]
    assert {"tiled", "tta"} <= set(metrics) and all(0 <= m["fg_iou"] <= 1 for m in metrics.values())
    for variant in ("tiled", "tta"):
        probs = sorted((run / "predictions" / variant / "prob").iterdir())
        assert len(probs) == 2 and all(tifffile.imread(p).shape == (20, 27) for p in probs)


def test_training_images_smaller_than_the_crop_are_still_refused(data, tmp_path):
    path = sorted((data / "train" / "x").iterdir())[0]
    tifffile.imwrite(path, tifffile.imread(path)[:20, :27])
    mask = sorted((data / "train" / "y").iterdir())[0]
    tifffile.imwrite(mask, tifffile.imread(mask)[:20, :27])
    assert_one_error(template(data, tmp_path / "jobs"), "data.crop_shape=[32, 32] is larger than the smallest "
                                                        f"image of {data / 'train'} (20x27)")
    assert not (tmp_path / "jobs").exists()


def test_predict_an_image_smaller_than_the_tile(tmp_path, tiny_run):
    tifffile.imwrite(tmp_path / "small.tif", np.random.default_rng(0).integers(0, 255, (10, 13), dtype=np.uint8))
    result = predict(tmp_path / "small.tif", tmp_path / "seg.tif", "--model", tiny_run)
    assert result.returncode == 0, result.stderr[-2000:]
    assert tifffile.imread(tmp_path / "seg.tif").shape == (10, 13)


def test_a_replacement_killed_between_its_two_renames_is_put_in_place_by_a_rerun(inputs, tiny_run):
    from lib.predict import writers

    out = inputs / "seg.zarr"
    assert predict(inputs / "vol.zarr", out, "--model", tiny_run, "--set", "inference.threshold=0.3").returncode == 0
    os.rename(out, inputs / ".seg.zarr.removing.1")  # killed after the old output was renamed away ...
    staged = predict(inputs / "vol.zarr", inputs / "staged.zarr", "--model", tiny_run)
    assert staged.returncode == 0
    os.rename(inputs / "staged.zarr", writers.staging_store(str(out)))  # ... and before the new one was renamed in
    result = predict(inputs / "vol.zarr", out, "--model", tiny_run)
    assert result.returncode == 0, result.stderr[-2000:]
    assert writers.read_job(str(out))["threshold"] == 0.5 and not os.path.exists(writers.staging_store(str(out)))
