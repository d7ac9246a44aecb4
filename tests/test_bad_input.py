"""Bad data folders, images, masks, configuration values and command lines, as a user meets them.

Every case runs a template in a subprocess, as from bash, and must end with
exit status 2, exactly one ``error:`` line that names the culprit, no
traceback, and nothing written to JOB_DIR.
"""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tifffile

from conftest import REPO, blob_pair, run_here, write_pairs
from lib.errors import UserError
from lib.run import devices

TEMPLATES = os.path.join(REPO, "templates")
CROP = ["--set", "data.crop_shape=[32,32]"]


def good_dataset(root, n_train=10, n_test=2):
    """``n_train`` + ``n_test`` pairs of 64 x 64 uint8 images and {0, 255} masks, named 000.tif..."""
    pairs = [blob_pair(seed=i) for i in range(n_train)]
    write_pairs(root, "train", [x for x, _ in pairs], [y for _, y in pairs])
    write_pairs(root, "test", [x for x, _ in pairs[:n_test]], [y for _, y in pairs[:n_test]])
    return root


def run_template(data, job, *args, template="template.py", env=None):
    """The template run with ``env`` from bash; without it, in this process (the same checks, no new Keras start)."""
    if env is None:
        return run_here(os.path.join("templates", template), str(data), str(job), "--id", "bad", *args)
    return subprocess.run([sys.executable, os.path.join(TEMPLATES, template), REPO, str(data), str(job),
                           "--id", "bad", *args], capture_output=True, text=True, timeout=300, env=env)


def assert_refused(result, job, message):
    """Exit 2, one ``error:`` line holding ``message``, no traceback, no JOB_DIR."""
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not os.path.exists(job)


# --------------------------------------------------------------------------- ways to spoil a good dataset

def _path(root, rel):
    return os.path.join(root, *rel.split("/"))


def _write(root, rel, array):
    tifffile.imwrite(_path(root, rel), array)


def _remove(root, rel):
    shutil.rmtree(_path(root, rel))


def _empty_folder(root, rel):
    for name in os.listdir(_path(root, rel)):
        os.remove(os.path.join(_path(root, rel), name))


def _raw(root, rel, content):
    with open(_path(root, rel), "wb") as fh:
        fh.write(content)


def _truncate(root, rel):
    tifffile.imwrite(_path(root, rel), blob_pair(seed=5)[0], compression="zlib")
    with open(_path(root, rel), "rb") as fh:
        content = fh.read()
    _raw(root, rel, content[: len(content) // 2])


def _text_files(root, rel):
    _empty_folder(root, rel)
    _raw(root, rel + "/000.txt", b"not an image")


def _all_float(root, nan=False):
    for i in range(10):
        image = blob_pair(seed=i)[0].astype(np.float32)
        if nan and i == 2:
            image[3, 3] = np.nan
        _write(root, f"train/x/{i:03d}.tif", image)


def _mask(*values):
    """A mask holding ``values``, the first as background."""
    mask = np.full((64, 64), values[0], np.uint8)
    for k, value in enumerate(values[1:]):
        mask[8 * k: 8 * k + 8, :8] = value
    return mask


def _rgb_mask(root):
    mask = np.stack([blob_pair()[1]] * 3, axis=-1)
    mask[10:20, 10:20, 1] = 0
    _write(root, "train/y/001.tif", mask)


def _rename(root, rel, pattern, first=0):
    folder = _path(root, rel)
    for i, name in enumerate(sorted(os.listdir(folder))):
        os.rename(os.path.join(folder, name), os.path.join(folder, pattern.format(first + i)))


def _fill_masks(root, split, value):
    for i in range(len(os.listdir(_path(root, f"{split}/y")))):
        _write(root, f"{split}/y/{i:03d}.tif", np.full((64, 64), value, np.uint8))


def _rgb(image):
    return np.stack([image] * 3, axis=-1)


DATA_CASES = [
    pytest.param(lambda r: _remove(r, ""), [], "DATA_DIR not found", id="no_data_dir"),
    pytest.param(lambda r: _remove(r, "train/y"), [], "train/y: folder not found", id="no_train_masks"),
    pytest.param(lambda r: _remove(r, "test"), [], "test/x: folder not found", id="no_test_folder"),
    pytest.param(lambda r: _empty_folder(r, "train/x"), [], "train/x: no image files", id="empty_folder"),
    pytest.param(lambda r: _text_files(r, "test/y"), [], "test/y: no image files", id="no_image_files"),
    pytest.param(lambda r: os.remove(_path(r, "train/y/009.tif")), [], "has 10 images but", id="fewer_masks"),
    pytest.param(lambda r: _raw(r, "train/x/004.tif", b"II*\x00garbage"), [], "004.tif: cannot read image",
                 id="unreadable_tiff"),
    pytest.param(lambda r: _truncate(r, "train/x/005.tif"), [], "005.tif: cannot read image", id="truncated_tiff"),
    pytest.param(lambda r: _raw(r, "train/y/006.tif", b""), [], "006.tif: cannot read image", id="empty_file"),
    pytest.param(lambda r: _all_float(r, nan=True), [], "002.tif: 1 pixels are NaN or infinite", id="nan_pixels"),
    pytest.param(_all_float, ["--set", "data.normalization=dtype_max"],
                 "data.normalization=dtype_max needs integer images, got float32", id="float_with_dtype_max"),
    pytest.param(lambda r: _write(r, "train/x/001.tif", blob_pair()[0].astype(np.uint16) * 200), [],
                 "images have different pixel types ['uint16', 'uint8']", id="mixed_16_and_8_bit"),
    pytest.param(lambda r: _write(r, "train/x/001.tif", _rgb(blob_pair()[0])), [],
                 "images have different channel counts [1, 3]", id="rgb_among_gray"),
    pytest.param(lambda r: [_write(r, f"test/x/{i:03d}.tif", _rgb(blob_pair(seed=i)[0])) for i in range(2)], [],
                 "test: images with 3 channels, but those of", id="test_channels_differ"),
    pytest.param(lambda r: _write(r, "train/y/003.tif", _mask(0, 255, 7)), [],
                 "003.tif: mask is not binary, found 3 values (0, 7, 255)", id="mask_three_values"),
    pytest.param(lambda r: _write(r, "train/y/003.tif", _mask(1, 2)), [],
                 "003.tif: mask is not binary, found 2 values (1, 2)", id="mask_without_zero"),
    pytest.param(_rgb_mask, [], "001.tif: colour mask with differing channels", id="rgb_mask"),
    pytest.param(lambda r: _write(r, "train/y/002.tif", blob_pair()[1][:, :50]), [],
                 "002.tif: image size 64x64 differs from its mask", id="mask_size"),
    pytest.param(lambda r: _write(r, "train/x/007.tif", np.stack([blob_pair()[0]] * 2)), [],
                 "007.tif has 2 slices but its mask", id="stack_without_mask_slices"),
    pytest.param(lambda r: (_rename(r, "train/x", "img{}.tif", 1), _rename(r, "train/y", "mask_{:04d}.tif")), [],
                 "img1.tif is paired with the mask", id="pairs_by_number"),
    pytest.param(lambda r: _fill_masks(r, "train", 0), [], "train/y: the training masks hold no foreground",
                 id="no_foreground"),
    pytest.param(lambda r: _fill_masks(r, "train", 255), [], "train/y: the training masks hold no background",
                 id="no_background"),
    pytest.param(None, ["--set", "data.crop_shape=[128,128]"], "data.crop_shape=[128, 128] is larger than",
                 id="crop_larger_than_images"),
    pytest.param(None, ["--set", "data.crop_shape=[40,40]"], "size 40 on axis y is not divisible by 16",
                 id="crop_not_divisible"),
    pytest.param(None, ["--set", "data.crop_shape=[8,32,32]"], "the 2D template needs 2 sizes", id="crop_3d_in_2d"),
]


@pytest.mark.parametrize("spoil, args, message", DATA_CASES)
def test_bad_data(tmp_path, spoil, args, message):
    data = good_dataset(str(tmp_path / "data"))
    if spoil is not None:
        spoil(data)
    job = tmp_path / "jobs"
    assert_refused(run_template(data, job, "--gpu", "cpu", *CROP, *args), job, message)


OPTION_CASES = [
    (["--set", "train.epochs=-1"], "train.epochs: expected a value in [0, inf), got -1"),
    (["--set", "train.epochs=ten"], "train.epochs: expected an integer, got 'ten'"),
    (["--set", "data.crop_shape=32"], "data.crop_shape: expected a list of int, got 32"),
    (["--set", "train.epochz=3"], "unknown option 'train.epochz' (did you mean 'train.epochs'?)"),
    (["--set", "training.epochs=3"], "unknown option 'training.epochs'"),
    (["--set", "train.epochs"], "--set train.epochs: expected section.key=value"),
    (["--set", "inference.overlap=1.0"], "inference.overlap: expected a value in [0.0, 1.0), got 1.0"),
    (["--set", "inference.overlap=-0.25"], "inference.overlap: expected a value in [0.0, 1.0), got -0.25"),
    (["--set", "model.name=unet3"], "model.name: unknown value 'unet3' (did you mean 'unet'?)"),
    (["--set", "train.loss=dicee"], "train.loss: unknown value 'dicee' (did you mean 'dice'?)"),
    (["--set", "post.z_filter_size=4"], "post.z_filter_size: expected an odd number, got 4"),
    # The 2D template trains without batch norm: Dice or Jaccard alone would collapse to all foreground.
    (["--set", "train.loss=jaccard"], "train.loss=jaccard with model.batch_norm=false: a network without batch norm "
                                      "trained on the Jaccard loss alone predicts every pixel as foreground"),
    # ... and resize upsampling without batch norm would drive it to one class within its first steps.
    (["--set", "model.upsampling=resize"], "model.upsampling=resize with model.batch_norm=false: without batch norm "
                                           "the resize upsampling drives the network to one class"),
    (["--set", "train.freeze_encoder=true"], "train.freeze_encoder=true needs train.pretrained"),
    (["--config", "missing.json"], "--config missing.json: file not found"),
    (["--rid", "abc"], "--rid abc: expected a non-negative integer"),
    (["--rid", "-1"], "--rid -1: expected a non-negative integer"),
    (["--id", "a/b"], "--id 'a/b': expected a plain name without slashes"),
    (["--gpu", "first"], "--gpu first: expected 'auto', 'cpu', an index such as 0, a list such as 0,1, or 'cpu:N'"),
    (["--threads", "-2"], "--threads -2: expected 0 (all cores) or a positive number"),
    (["--epochs", "3"], "command line: unrecognized arguments: --epochs 3"),
    (["--set", "inference.overlap=0.99"], "inference.overlap=0.99: the tiled prediction of a 64x64 test image "
                                          "takes 2,401 tiles of 32x32 (each pixel predicted about 600 times; at most 64"),
    (["--set", "inference.threshold=NaN"], "inference.threshold: expected a finite number, got nan"),
    (["--set", "inference.overlap=NaN"], "inference.overlap: expected a finite number, got nan"),
    (["--set", "data.val_fraction=NaN"], "data.val_fraction: expected a finite number, got nan"),
    (["--set", "model.dropout=NaN"], "model.dropout: expected a finite number, got nan"),
    (["--set", "train.learning_rate=Infinity"], "train.learning_rate: expected a finite number, got inf"),
    (["--set", "model.depth=2", "--set", "model.stem_stride=3"],
     "size 32 on axis y is not divisible by 12, the network's downsampling (model.depth=2, model.stem_stride=3)"),
    (["--set", "model.planar_levels=1"],
     "model.planar_levels: in-plane levels are for 3D input (every level of a 2D network is in-plane); expected 0"),
    (["--set", "model.planar_levels=-1"], "model.planar_levels: expected a value in [0, inf), got -1"),
]


@pytest.mark.parametrize("args, message", OPTION_CASES, ids=[" ".join(a) for a, _ in OPTION_CASES])
def test_bad_options(tmp_path, args, message):
    job = tmp_path / "jobs"
    assert_refused(run_template(good_dataset(str(tmp_path / "data")), job, "--gpu", "cpu", *CROP, *args), job, message)


def test_config_file_that_is_not_json(tmp_path):
    path = tmp_path / "c.json"
    path.write_text('{"train": {"epochs": 3,}}')
    job = tmp_path / "jobs"
    result = run_template(good_dataset(str(tmp_path / "data")), job, "--gpu", "cpu", "--config", str(path))
    assert_refused(result, job, f"--config {path}: not valid JSON")


@pytest.mark.parametrize("kind, message", [("folder", "is a folder; expected a JSON file"),
                                           ("binary", "not a text file; expected a JSON file")])
def test_config_that_is_a_folder_or_binary(tmp_path, kind, message):
    path = tmp_path / "c.json"
    if kind == "folder":
        path.mkdir()
    else:
        path.write_bytes(bytes(range(128, 256)) * 4)
    job = tmp_path / "jobs"
    result = run_template(good_dataset(str(tmp_path / "data")), job, "--gpu", "cpu", "--config", str(path))
    assert_refused(result, job, f"--config {path}: {message}")


def test_id_too_long_for_the_file_system(tmp_path):
    job = tmp_path / "jobs"
    result = run_template(good_dataset(str(tmp_path / "data")), job, "--gpu", "cpu", *CROP, "--id", "a" * 300)
    assert_refused(result, job, "--id aaaaaaaaaaaaaaaaaaaa...: too long for the file system (run folder name of "
                                "302 bytes; at most")


def test_gpu_index_that_does_not_exist(tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "nvidia-smi").write_text("#!/bin/sh\necho 'GPU 0: NVIDIA Fake (UUID: GPU-0)'\n")
    (fake / "nvidia-smi").chmod(0o755)
    env = dict(os.environ, PATH=f"{fake}{os.pathsep}{os.environ['PATH']}")
    job = tmp_path / "jobs"
    result = run_template(good_dataset(str(tmp_path / "data")), job, "--gpu", "3", env=env)
    assert_refused(result, job, "--gpu 3: no GPU 3 on this machine, which has 1 (indices 0 to 0)")


def test_unwritable_job_dir(tmp_path):
    if os.geteuid() == 0:  # root may write into any folder: put JOB_DIR under a file instead
        (tmp_path / "afile").write_text("")
        job = tmp_path / "afile" / "jobs"
    else:
        (tmp_path / "locked").mkdir(mode=0o500)
        job = tmp_path / "locked" / "jobs"
    result = run_template(good_dataset(str(tmp_path / "data")), job, "--gpu", "cpu")
    assert_refused(result, job, "JOB_DIR is not writable")


def test_3d_subvolume_larger_than_the_volume(tmp_path):
    job = tmp_path / "jobs"
    result = run_template(good_dataset(str(tmp_path / "data")), job, "--gpu", "cpu",
                          "--set", "data.crop_shape=[16,32,32]", "--set", "model.depth=2", "--set", "model.dropout=0.0",
                          template="3D_template.py")
    assert_refused(result, job, "data.crop_shape=[16, 32, 32] is larger than")


def test_3d_tta_with_different_downsampling_in_y_and_x(tmp_path):
    job = tmp_path / "jobs"
    result = run_template(good_dataset(str(tmp_path / "data"), n_test=4), job, "--gpu", "cpu",
                          "--set", "data.crop_shape=[4,32,32]", "--set", "model.depth=2", "--set", "model.stem_stride=1",
                          "--set", "model.pool_size=[1,2,1]", "--set", "inference.tta=true", template="3D_template.py")
    assert_refused(result, job, "inference.tta=true turns tiles by 90 degrees, which needs the same downsampling "
                                "in y and x; the network's is 4 in y and 1 in x")


@pytest.mark.skipif(devices.keras_backend() != "tensorflow", reason="TensorFlow's CPU backend only")
def test_3d_bfloat16_on_tensorflow_cpu_is_refused_rather_than_crashing(tmp_path):
    # TensorFlow 2.21's oneDNN Conv3D in bfloat16 ends the process with a segmentation fault from 8 x 128 x 128 up
    job = tmp_path / "jobs"
    result = run_template(good_dataset(str(tmp_path / "data")), job, "--gpu", "cpu",
                          "--set", "train.precision=bfloat16", template="3D_template.py")
    assert_refused(result, job, "train.precision=bfloat16: TensorFlow's 3D convolutions in bfloat16 crash on the CPU")


def test_bfloat16_check_spares_2d_networks_gpus_and_other_backends(monkeypatch):
    devices.check_precision("bfloat16", 2, "cpu")
    devices.check_precision("bfloat16", 3, "0", n_gpus=1)
    devices.check_precision("float32", 3, "cpu")
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    devices.check_precision("bfloat16", 3, "cpu")
    monkeypatch.setenv("KERAS_BACKEND", "tensorflow")
    with pytest.raises(UserError, match="bfloat16 on a GPU"):
        devices.check_precision("bfloat16", 3, "0", n_gpus=0)  # --gpu 0 on a machine without one runs on the CPU


def test_run_precision_resolves_then_checks(monkeypatch):
    # The one call the templates and predict.py make: auto is resolved, a fixed bfloat16 in 3D is still refused
    monkeypatch.setenv("KERAS_BACKEND", "tensorflow")
    assert devices.run_precision("auto", 3, "cpu") == "float32"
    assert devices.run_precision("float32", 2, "cpu") == "float32"
    assert devices.run_precision("auto", 2, "cpu") == devices.resolve_precision("auto", 2, "cpu")
    with pytest.raises(UserError, match="train.precision=bfloat16: TensorFlow's 3D convolutions"):
        devices.run_precision("bfloat16", 3, "cpu")


def test_nvidia_smi_is_asked_once_per_process(tmp_path, monkeypatch):
    fake = tmp_path / "bin"
    fake.mkdir()
    calls = tmp_path / "calls"
    (fake / "nvidia-smi").write_text(f"#!/bin/sh\necho x >> {calls}\necho 'GPU 0: NVIDIA Fake (UUID: GPU-0)'\n")
    (fake / "nvidia-smi").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    devices.gpu_census.cache_clear()
    try:
        assert devices.resolve_precision("auto", 2, "0") == "float32"  # a GPU: auto stays float32
        devices.check_precision("bfloat16", 3, "0")  # on that GPU, bfloat16 in 3D is allowed
        assert devices.count_gpus() == 1
        assert calls.read_text().splitlines() == ["x"]
    finally:
        devices.gpu_census.cache_clear()


def test_missing_tensorboardx_is_refused_before_the_run_folder(tmp_path, monkeypatch):
    # An environment made without env/ (a lent GPU machine's image, 2026-12-04) lacked tensorboardX: training
    # stopped at its first epoch, after the run folder was written.
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # import tensorboardX now fails, as where it is missing
    job = tmp_path / "jobs"
    result = run_template(good_dataset(str(tmp_path / "data")), job, "--gpu", "cpu", *CROP)
    assert_refused(result, job, "train.tensorboard: the package tensorboardX is not installed; install it")
    devices.check_tensorboard(False)  # without TensorBoard files the run needs no tensorboardX


def test_streamed_template_names_a_truncated_file(tmp_path):
    data = good_dataset(str(tmp_path / "data"))
    _truncate(data, "test/x/001.tif")
    job = tmp_path / "jobs"
    result = run_template(data, job, "--gpu", "cpu", *CROP, template="big_data_template.py")
    assert_refused(result, job, "001.tif: cannot read image")


def test_streamed_template_refuses_masks_without_foreground(tmp_path):
    data = good_dataset(str(tmp_path / "data"))
    _fill_masks(data, "train", 0)
    job = tmp_path / "jobs"
    result = run_template(data, job, "--gpu", "cpu", *CROP, template="big_data_template.py")
    assert_refused(result, job, "train/y: the training masks hold no foreground")


def test_empty_test_masks_are_a_warning(tmp_path, capsys):
    from lib import config
    from lib.run import datasets

    data = good_dataset(str(tmp_path / "data"))
    _fill_masks(data, "test", 0)
    datasets.load_2d(data, config.from_dict({"data": {"crop_shape": [32, 32]}}).validate())
    assert "test/y: the test masks hold no foreground (every pixel is 0)" in capsys.readouterr().err


def test_16_bit_and_float_images_are_accepted(tmp_path):
    from lib import config
    from lib.run import datasets

    data = good_dataset(str(tmp_path / "data"))
    for i in range(10):
        _write(data, f"train/x/{i:03d}.tif", blob_pair(seed=i)[0].astype(np.uint16) * 257)
    for i in range(2):
        _write(data, f"test/x/{i:03d}.tif", blob_pair(seed=i)[0].astype(np.float32) / 255)
    cfg = config.from_dict({"data": {"crop_shape": [32, 32]}}).validate()
    train, test = datasets.load_2d(data, cfg)
    for image in train.images + test.images:
        assert image.dtype == np.float32 and image.min() == 0 and image.max() == 1
    np.testing.assert_allclose(train.images[0], test.images[0], atol=1e-6)


@pytest.mark.parametrize("script", ["templates/template.py", "templates/big_data_template.py",
                                    "templates/3D_template.py", "cheng_2017/cheng_2D_template.py",
                                    "cheng_2017/cheng_3D_template.py", "xiao_2018/xiao_template.py"])
def test_bad_data_is_refused_before_keras_starts(tmp_path, script):
    """The error line is all a user sees: no TensorFlow start-up lines before it (Keras is not imported yet)."""
    job = tmp_path / "jobs"
    data = good_dataset(str(tmp_path / "data"))  # 64 x 64 images: smaller than every script's default crop
    result = subprocess.run([sys.executable, os.path.join(REPO, script), REPO, data, str(job), "--id", "bad",
                             "--gpu", "cpu"], capture_output=True, text=True, timeout=120)
    assert_refused(result, job, "is larger than the smallest image")
    assert result.stderr.strip().splitlines() == [line for line in result.stderr.splitlines() if line.startswith("error:")]


# --------------------------------------------------------------------------- refusals known once crops are cut or the network is built

def _other_architecture(path):
    """A .keras file of a 2-level U-Net with 4 filters: not the template's default network."""
    from lib.config import ModelConfig
    from lib.model import networks, saving

    saving.save_model_atomic(networks.build_model(ModelConfig(depth=2, filters=4), (None, None, 1)), str(path))
    return str(path)


@pytest.mark.parametrize("script", ["templates/template.py", "templates/3D_template.py"])
def test_refusals_of_the_training_data_and_the_network_come_before_the_run_folder(tmp_path, script):
    """Cutting the fixed crops and loading pretrained weights both happen before the run folder exists."""
    data = good_dataset(str(tmp_path / "data"), n_test=4)  # 4 test slices: a volume as deep as the 3D crop
    crop = CROP if "3D" not in script else ["--set", "data.crop_shape=[4,32,32]", "--set", "model.depth=2",
                                            "--set", "model.stem_stride=1", "--set", "data.val_fraction=0"]
    cases = [(["--set", "data.random_crops=false", "--set", "data.min_fg_fraction=0.99"],
              "data.min_fg_fraction=0.99 discards every training crop")]
    if "3D" not in script:
        cases.append((["--set", f"train.pretrained={_other_architecture(tmp_path / 'other.keras')}"],
                      "holds another architecture than this run's model"))
    for args, message in cases:
        job = tmp_path / "jobs"
        result = subprocess.run([sys.executable, os.path.join(REPO, script), REPO, data, str(job), "--id", "bad",
                                 "--gpu", "cpu", *crop, *args], capture_output=True, text=True, timeout=300)
        assert_refused(result, job, message)
