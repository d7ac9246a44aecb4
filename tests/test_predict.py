"""templates/predict.py: block-wise prediction of new data (zarr, OME-Zarr, HDF5, TIFF, slices), resume, Dask, bad input."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tifffile

from conftest import REPO, load_script, run_here, tiny_run_folder

# one pytest worker runs this file (make test: --dist loadgroup): its fixtures that run templates run once
pytestmark = pytest.mark.xdist_group("test_predict")

PREDICT = os.path.join(REPO, "templates", "predict.py")
TILE = 16
# The run's largest tile: the test slices (40 x 52) fit in it along y (one tile, no overlap) but not along x.
MAX_TILE = [48, 32]
# Small blocks, so that the test volumes have many blocks with halos across their borders.
FAST = ["--set", "inference.block_shape=[4,24,32]", "--set", "inference.batch_size=16"]


def fake_predict(batch):
    """Not translation-invariant at tile edges (np.roll wraps), so a misplaced tile changes the result."""
    x = batch[..., 0]
    return 1 / (1 + np.exp(-(x - np.roll(x, 1, axis=-1) + 0.5 * np.roll(x, 2, axis=1))))


@pytest.fixture(scope="session")  # once per worker, although other files run between its tests
def run_2d(tmp_path_factory):
    """A run folder with an untrained tiny 2D U-Net (crop 16, tiles of at most MAX_TILE, per_image normalisation)."""
    return tiny_run_folder(tmp_path_factory.mktemp("job") / "tiny_0", {"inference": {"tile_shape": MAX_TILE}})


@pytest.fixture(scope="session")  # once per worker, although other files run between its tests
def volume():
    rng = np.random.default_rng(3)
    base = rng.integers(0, 200, (9, 40, 52)).astype(np.uint8)
    return base + np.arange(9, dtype=np.uint8)[:, None, None] * 5  # slices of different ranges


def predict_cli(*args):
    """predict.py in this process; with a dask ``--scheduler`` (worker processes of its own), from bash."""
    args = ["--gpu", "cpu", *FAST, *map(str, args)]
    if "--scheduler" not in args:
        return run_here("templates/predict.py", *args)
    return subprocess.run([sys.executable, PREDICT, REPO, *args], capture_output=True, text=True, timeout=300)


def reference_probabilities(run, vol, z_filter=5):
    """The run's ``tiled`` variant on each whole slice (normalised per slice; its tiles fitted to the slice by the
    evaluation itself), z-filtered: what every block must equal."""
    from lib import config as config_lib
    from lib.data import intensity
    from lib.evaluate import evaluation
    from lib.predict import blockwise, postprocess

    cfg = config_lib.load_json(str(run / "config.json"))
    cfg = config_lib.from_dict(cfg).validate()
    model, predict = blockwise.load_predictor(str(run / "checkpoints" / "best.keras"))
    tiled = evaluation._Evaluation(cfg, tuple(cfg.data.crop_shape), None, len(vol))
    probs = np.stack([tiled._blended(predict, intensity.normalize(s[..., None], "per_image")) for s in vol])
    return postprocess.z_filter(probs, z_filter) if z_filter else probs


def test_fitted_tiles_are_those_of_the_tiled_variant(run_2d, volume):
    from lib import config as config_lib
    from lib.run import predicting

    cfg = config_lib.from_dict(config_lib.load_json(str(run_2d / "config.json"))).validate()
    # y (40) fits in the largest tile: one tile of the slice's height, no overlap; x (52) is tiled as configured.
    assert predicting.fitted_tiles(cfg, volume.shape[1:]) == ((40, 32), [0.0, 0.5], 8 * 16 * 16 // (40 * 32))
    cfg.inference.tile_shape = None  # the default, 4 crops wide: the whole slice, rounded up to the downsampling
    assert predicting.fitted_tiles(cfg, (41, 52))[:2] == ((44, 52), [0.0, 0.0])


def read_zarr_output(path):
    import zarr

    root = zarr.open_group(str(path), mode="r")
    return root, np.asarray(root["0"][...]), np.asarray(root["labels/mask/0"][...])


# --------------------------------------------------------------------------- block-wise == whole volume

@pytest.mark.parametrize("tta, fitted", [(False, False), (True, False), (False, True), (True, True)])
def test_blocks_equal_whole_volume_tiled_prediction_2d_model(tta, fitted):
    from lib.predict import blockwise, inference, postprocess

    rng = np.random.default_rng(0)
    image = rng.random((7, 45, 38, 1), dtype=np.float32)
    tile, overlap = (TILE, TILE), 0.5
    if fitted:  # tiles fitted to the whole slice: one 48-high tile along y (no overlap), tiled along x
        tile, overlap = inference.fit_tile(image.shape[1:3], (48, 16), (4, 4), 0.5)
        assert tile == (48, 16) and overlap == [0.0, 0.5]
    whole = postprocess.z_filter(np.stack([inference.predict_tiled(fake_predict, s, tile, overlap, tta=tta)
                                           for s in image]), 3)
    _, blocks = blockwise.block_grid(image.shape[:-1], (3, 16, 20))
    out = np.full(whole.shape, np.nan, np.float32)
    for _, core in blocks:
        out[core] = blockwise.predict_block(fake_predict, image, core, tile, overlap, tta=tta, z_filter_size=3)
    assert np.abs(out - whole).max() <= 1e-5


@pytest.mark.parametrize("overlap", [0.5, [0.25, 0.5, 0.0]])
def test_blocks_equal_whole_volume_tiled_prediction_3d_model(overlap):
    from lib.predict import blockwise, inference

    rng = np.random.default_rng(1)
    image = rng.random((13, 30, 27, 2), dtype=np.float32)
    tile = (8, 12, 12)
    whole = inference.predict_tiled(fake_predict, image, tile, overlap, window="spline")
    _, blocks = blockwise.block_grid(image.shape[:-1], (5, 11, 16))
    out = np.full(whole.shape, np.nan, np.float32)
    for _, core in blocks:
        out[core] = blockwise.predict_block(fake_predict, image, core, tile, overlap, "spline")
    assert np.abs(out - whole).max() <= 1e-5


def test_per_slice_normalisation_matches_training(volume):
    from lib.data import intensity
    from lib.predict import blockwise

    class Raw:
        shape, ndim = volume.shape + (1,), 3

        def __getitem__(self, box):
            return volume[box][..., None]

    lows, highs = blockwise.intensity_ranges(Raw(), blockwise.block_grid(volume.shape, (4, 16, 16))[1],
                                             blockwise.run_tasks_in_process)
    view = blockwise.NormalizedView(Raw(), blockwise.Normalization.from_ranges(lows, highs, per_slice=True))
    for z in (0, 5, 8):
        assert np.array_equal(view[(slice(z, z + 1), slice(None), slice(None))][0],
                              intensity.normalize(volume[z][..., None], "per_image"))


def test_chunks_divide_blocks():
    from lib.predict.blockwise import output_chunks

    assert output_chunks((32, 1024, 1024)) == (32, 256, 256)
    assert output_chunks((128, 1000, 512)) == (64, 1000, 256)
    assert output_chunks((24, 32)) == (24, 32)


def test_2d_model_blocks_are_whole_slices_and_predict_each_tile_once():
    from lib import config as config_lib
    from lib.data import tiling
    from lib.predict import blockwise
    from lib.run import predicting

    cfg = config_lib.Config()
    cfg.data.crop_shape = [TILE, TILE]
    cfg.validate()
    assert predicting.block_shape(cfg, (9, 40, 100), 2) == (32, 40, 100)  # whole slices, up to 32 of them
    assert predicting.block_shape(cfg, (100, 2048, 4096), 2) == (4, 2048, 4096)  # 2^25 voxels at most
    assert predicting.block_shape(cfg, (40, 100), 2) == (40, 100)
    for shape, ndim, overridden in (((3, 8192, 8192), 2, False), ((9, 40, 100), 2, True), ((9, 40, 100), 3, False)):
        assert predicting.block_shape(cfg, shape, ndim, overridden) == (32, 1024, 1024)
    cfg.inference.block_shape = [4, 24, 32]  # changed in the run's configuration
    assert predicting.block_shape(cfg, (9, 40, 100), 2) == (4, 24, 32)
    assert blockwise.output_chunks((32, 40, 1000), (9, 40, 1000)) == (32, 40, 256)

    tiles = []

    def counting(batch):
        tiles.append(len(batch))
        return fake_predict(batch)

    image = np.random.default_rng(2).random((5, 40, 100, 1), dtype=np.float32)
    per_slice = tiling.tile_count((40, 100), (TILE, TILE), 0.5)
    for block, repeated in (((32, 40, 100), False), ((5, 24, 32), True)):
        tiles.clear()
        for _, core in blockwise.block_grid(image.shape[:-1], block)[1]:
            blockwise.predict_block(counting, image, core, (TILE, TILE))
        assert (sum(tiles) > 5 * per_slice) if repeated else (sum(tiles) == 5 * per_slice), (block, sum(tiles))


def test_a_block_shows_one_bar_over_the_tiles_of_all_its_slices():
    from lib.predict import blockwise, inference

    bars, tiles = [], []

    def recording(total):
        bars.append(inference.tile_progress(total, "block"))
        return bars[-1]

    def counting(batch):
        tiles.append(len(batch))
        return fake_predict(batch)

    image = np.random.default_rng(2).random((6, 40, 100, 1), dtype=np.float32)
    core = (slice(2, 4), slice(0, 24), slice(30, 100))
    for tile, tta in (((TILE, TILE), True), ((4, TILE, TILE), False)):
        bars.clear(), tiles.clear()
        plain = blockwise.predict_block(fake_predict, image, core, tile, tta=tta, z_filter_size=3)
        shown = blockwise.predict_block(counting, image, core, tile, tta=tta, z_filter_size=3, progress=recording)
        np.testing.assert_array_equal(shown, plain)
        # One bar for the block, its z-filter halo slices included, advanced batch by batch to its end.
        assert len(bars) == 1 and bars[0].n == bars[0].total == sum(tiles) and len(tiles) > 1


# --------------------------------------------------------------------------- end to end, as a user runs it

@pytest.fixture(scope="session")  # once per worker, although other files run between its tests
def zarr_run(run_2d, volume, tmp_path_factory):
    """A zarr v2 input and its in-process prediction ``a.zarr``: ``(folder, completed process)``."""
    import zarr

    root = tmp_path_factory.mktemp("zarr_run")
    source = zarr.open_array(str(root / "vol.zarr"), mode="w", shape=volume.shape, chunks=(3, 20, 20),
                             dtype="uint8", zarr_format=2)
    source[:] = volume
    return root, predict_cli(root / "vol.zarr", root / "a.zarr", "--model", run_2d)


def test_zarr_v2_in_ome_zarr_out(zarr_run, run_2d, volume):
    root, result = zarr_run
    assert result.returncode == 0, result.stderr[-3000:]
    store, prob, mask = read_zarr_output(root / "a.zarr")
    assert prob.shape == mask.shape == volume.shape and prob.dtype == np.uint8 and mask.dtype == np.uint8
    expected = reference_probabilities(run_2d, volume)
    assert np.abs(prob / 255.0 - expected).max() <= 0.5 / 255 + 1e-5
    assert np.array_equal(mask, (expected >= 0.5).astype(np.uint8))
    ome = dict(store.attrs)["ome"]
    assert ome["version"] == "0.5" and [a["name"] for a in ome["multiscales"][0]["axes"]] == ["z", "y", "x"]
    assert store["0"].chunks == store["labels/mask/0"].chunks == (4, 24, 32)
    assert "blocks" in result.stderr  # the progress bar


def test_hdf5_in_float16_out_keeps_voxel_size(run_2d, volume, tmp_path):
    import h5py

    with h5py.File(tmp_path / "vol.h5", "w") as f:
        f.create_dataset("raw", data=volume, chunks=(1, 40, 52)).attrs["element_size_um"] = [0.05, 0.005, 0.005]
    out = tmp_path / "seg.zarr"
    result = predict_cli(f"{tmp_path / 'vol.h5'}:raw", out, "--model", run_2d, "--set", "inference.prob_dtype=float16",
                         "--set", "post.z_filter=false")
    assert result.returncode == 0, result.stderr[-3000:]
    root, prob, _ = read_zarr_output(out)
    assert prob.dtype == np.float16
    assert np.abs(prob.astype(np.float32) - reference_probabilities(run_2d, volume, z_filter=0)).max() <= 1e-3
    multiscale = dict(root["labels/mask"].attrs)["ome"]["multiscales"][0]
    assert multiscale["datasets"][0]["coordinateTransformations"][0]["scale"] == [0.05, 0.005, 0.005]
    assert multiscale["axes"][0]["unit"] == "micrometer"


def test_folder_of_slices_and_tiff_stack(run_2d, volume, tmp_path):
    folder = tmp_path / "slices"
    folder.mkdir()
    for z, s in enumerate(volume):
        tifffile.imwrite(folder / f"s{z:03d}.tif", s)
    tifffile.imwrite(tmp_path / "stack.tif", volume)
    expected = reference_probabilities(run_2d, volume)
    result = predict_cli(tmp_path / "stack.tif", tmp_path / "out_slices", "--model", run_2d)
    assert result.returncode == 0, result.stderr[-3000:]
    masks = sorted((tmp_path / "out_slices" / "mask").iterdir())
    assert len(masks) == len(volume)
    assert np.array_equal(tifffile.imread(masks[4]), (expected[4] >= 0.5).astype(np.uint8) * 255)
    result = predict_cli(folder, tmp_path / "seg.tif", "--model", run_2d)
    assert result.returncode == 0, result.stderr[-3000:]
    with tifffile.TiffFile(tmp_path / "seg.tif") as tif:
        assert tif.is_bigtiff and len(tif.pages) == len(volume)
        assert np.array_equal(tif.asarray(), (expected >= 0.5).astype(np.uint8) * 255)
    prob = tifffile.imread(tmp_path / "seg_prob.tif")
    assert prob.dtype == np.uint8 and np.abs(prob / 255.0 - expected).max() <= 0.5 / 255 + 1e-5
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # the staging store is gone


def test_one_2d_image_normalised_by_itself(run_2d, volume, tmp_path):
    """A single 2D image (not a stack of one): per_image statistics of that image, the run's tiled variant."""
    tifffile.imwrite(tmp_path / "image.tif", volume[4])
    expected = reference_probabilities(run_2d, volume[4:5], z_filter=0)[0]
    result = predict_cli(tmp_path / "image.tif", tmp_path / "seg.tif", "--model", run_2d)
    assert result.returncode == 0, result.stderr[-3000:]
    mask = tifffile.imread(tmp_path / "seg.tif")
    assert np.array_equal(mask.reshape(expected.shape), (expected >= 0.5).astype(np.uint8) * 255)


def test_local_cluster_gives_the_in_process_result(zarr_run, run_2d, tmp_path):
    root, _ = zarr_run
    result = predict_cli(root / "vol.zarr", tmp_path / "b.zarr", "--model", run_2d, "--scheduler", "local:2")
    assert result.returncode == 0, result.stderr[-3000:]
    for a, b in zip(read_zarr_output(root / "a.zarr")[1:], read_zarr_output(tmp_path / "b.zarr")[1:]):
        assert np.array_equal(a, b)


def test_killed_then_rerun_skips_done_blocks_and_gives_the_same_output(zarr_run, run_2d, tmp_path):
    root, _ = zarr_run
    out = tmp_path / "seg.zarr"
    proc = subprocess.Popen([sys.executable, PREDICT, REPO, "--gpu", "cpu", *FAST, str(root / "vol.zarr"), str(out),
                             "--model", str(run_2d)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    flags = out / "blocks_done" / "c"
    deadline = time.time() + 240
    while proc.poll() is None and time.time() < deadline:
        # zarr writes each chunk to a temporary NAME.UUID.partial, then renames it: count the flags written
        if flags.is_dir() and sum(not f.endswith(".partial") for _, _, files in os.walk(flags) for f in files) >= 3:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.002)
    assert proc.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    rerun = predict_cli(root / "vol.zarr", out, "--model", run_2d)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "Resuming" in rerun.stdout
    skipped = int(rerun.stdout.split("blocks (")[1].split()[0])
    assert 3 <= skipped < 12
    for a, b in zip(read_zarr_output(root / "a.zarr")[1:], read_zarr_output(out)[1:]):
        assert np.array_equal(a, b)
    again = predict_cli(root / "vol.zarr", out, "--model", run_2d)
    assert again.returncode == 0 and "nothing to do" in again.stdout


def test_zscore_run_records_its_statistics_and_predict_matches_its_tiled_variant(dataset_2d, tmp_path):
    """A zscore template run writes normalization.json; predict.py then gives the run's tiled probabilities."""
    from lib.data import intensity, io

    template = os.path.join(REPO, "templates", "template.py")
    run = subprocess.run([sys.executable, template, REPO, dataset_2d, str(tmp_path), "--id", "z", "--gpu", "cpu",
                          *[a for kv in ("train.epochs=1", "train.steps_per_epoch=2", "data.crop_shape=[32,32]",
                                         "model.depth=2", "model.filters=4", "model.dropout=0.0",
                                         "data.normalization=zscore", "inference.tile_shape=[128,64]",
                                         "inference.overlays=0",
                                         # float32: on a CPU with bf16, the template's auto computes in bfloat16,
                                         # whose rounding differs between the run's tiles and predict.py's blocks
                                         "train.precision=float32")
                            for a in ("--set", kv)]], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    run_dir = tmp_path / "z_0"
    stats = json.loads((run_dir / "normalization.json").read_text())
    train = [io.read_image(p) for p in io.list_images(os.path.join(dataset_2d, "train", "x"))]
    expected = intensity.fit_normalization(train, "zscore")
    assert stats["method"] == "zscore"
    assert abs(stats["mean"] - expected["mean"]) < 1e-9 and abs(stats["std"] - expected["std"]) < 1e-9
    assert_predict_matches_tiled(dataset_2d, run_dir, tmp_path)


def assert_predict_matches_tiled(data_dir, run_dir, tmp_path):
    """predict.py on the stack of the test images of ``data_dir`` gives the run's own tiled probabilities."""
    from lib.data import io

    names = io.list_images(os.path.join(data_dir, "test", "x"))
    tifffile.imwrite(tmp_path / "test.tif", np.stack([io.read_image(p) for p in names]))
    result = predict_cli(tmp_path / "test.tif", tmp_path / "seg.zarr", "--model", run_dir,
                         "--set", "post.z_filter=false", "--set", "inference.prob_dtype=float16")
    assert result.returncode == 0, result.stderr[-3000:]
    _, prob, _ = read_zarr_output(tmp_path / "seg.zarr")
    tiled = np.stack([tifffile.imread(p) for p in sorted((run_dir / "predictions" / "tiled" / "prob").iterdir())])
    assert prob.shape == tiled.shape and np.abs(prob.astype(np.float32) - tiled).max() <= 1e-3


def test_in_process_each_block_shows_the_progress_of_its_tiles(zarr_run, run_2d, tmp_path, monkeypatch, capsys):
    from conftest import record_tile_bars
    from lib.predict import blockwise

    bars = record_tile_bars(monkeypatch, blockwise)
    root, _ = zarr_run
    _main()([REPO, str(root / "vol.zarr"), str(tmp_path / "c.zarr"), "--model", str(run_2d), "--gpu", "cpu", *FAST])
    assert [b.desc for b in bars[:2]] == ["block 0,0,0", "block 0,0,1"] and len(bars) == 12
    assert all(b.n == b.total > 0 for b in bars)
    err = capsys.readouterr().err
    assert f"block 0,0,0:   0%|          | 0/{bars[0].total}" in err and "predicting 12 of 12 blocks" in err
    for a, b in zip(read_zarr_output(root / "a.zarr")[1:], read_zarr_output(tmp_path / "c.zarr")[1:]):
        assert np.array_equal(a, b)


# --------------------------------------------------------------------------- bad input: one line, exit 2, nothing written

def _main():
    return load_script("templates/predict.py").main


@pytest.fixture(scope="session")  # once per worker, although other files run between its tests
def bad_inputs(run_2d, tmp_path_factory):
    import h5py
    import zarr

    root = tmp_path_factory.mktemp("bad")
    with h5py.File(root / "vol.h5", "w") as f:
        f.create_dataset("raw", data=np.zeros((2, 32, 32), np.uint8))
        f.create_dataset("labels/cells", data=np.zeros((2, 32, 32), np.uint8))
    zarr.save_array(str(root / "five.zarr"), np.zeros((1, 1, 2, 32, 32), np.uint8))
    zarr.save_array(str(root / "rgb.zarr"), np.zeros((2, 32, 32, 3), np.uint8))
    zarr.save_array(str(root / "ok.zarr"), np.zeros((2, 32, 32), np.uint8))
    (root / "junk.tif").write_bytes(b"not a tiff at all")
    (root / "exists.zarr").mkdir()
    (root / "exists.zarr" / "notes.txt").write_text("mine")
    (root / "model.h5").write_bytes(b"")
    return root


BAD = [
    (["missing.zarr", "o.zarr"], "INPUT"),
    (["junk.tif", "o.zarr"], "junk.tif"),
    (["vol.h5", "o.zarr"], "vol.h5:labels/cells"),
    (["vol.h5:nope", "o.zarr"], "vol.h5:raw"),
    (["five.zarr", "o.zarr"], "five.zarr"),
    (["rgb.zarr", "o.zarr"], "3 channels"),
    (["ok.zarr", "exists.zarr"], "not an output of predict.py (a folder holding notes.txt)"),
    (["ok.zarr", "o.zarr", "--model", "{root}/model.h5"], "--model"),
    (["ok.zarr", "o.zarr", "--model", "{root}"], "not a run folder"),
    (["ok.zarr", "o.zarr", "--set", "post.oztel=true"], "post.oztel"),
    (["ok.zarr", "o.zarr", "--set", "inference.block_shape=[0,4,4]"], "inference.block_shape"),
    (["ok.zarr", "o.zarr", "--set", "data.crop_shape=[16,16,16]"], "data.crop_shape"),
    (["ok.zarr", "o.zarr", "--set", "inference.overlap=[0.5,0.5,0.5]"], "inference.overlap=[0.5, 0.5, 0.5]: expected"),
    (["ok.zarr", "o.zarr", "--scheduler", "tcp://127.0.0.1:9"], "--scheduler"),
    (["ok.zarr", "o.zarr", "--scheduler", "local:zero"], "--scheduler"),
]


@pytest.mark.parametrize("args, named", BAD, ids=[b[1] + str(i) for i, b in enumerate(BAD)])
def test_bad_input_is_one_error_line_exit_2_nothing_written(args, named, bad_inputs, run_2d, capsys):
    import dask
    import distributed  # noqa: F401  (its defaults first: else leaving the dask.config.set below drops them all)

    from lib.run import cli

    before = sorted(os.listdir(bad_inputs))
    argv = [REPO] + [a.format(root=bad_inputs) if "{" in a else str(bad_inputs / a) if i < 2 else a
                     for i, a in enumerate(args)]
    if "--model" not in argv:
        argv += ["--model", str(run_2d)]
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}), pytest.raises(SystemExit) as stop, \
            cli.user_errors(), contextlib.redirect_stdout(sys.stderr):
        _main()(argv + ["--gpu", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2
    assert err[-1].startswith("error: ") and named in err[-1], err
    assert sorted(os.listdir(bad_inputs)) == before


def test_auto_precision_of_a_run_is_decided_on_the_predicting_machine(run_2d, volume, tmp_path):
    from lib.run import cli, devices, predicting

    tifffile.imwrite(tmp_path / "in.tif", volume)
    args = cli.parse_predict_args([REPO, str(tmp_path / "in.tif"), str(tmp_path / "out.zarr"), "--model", str(run_2d),
                                   "--gpu", "cpu", "--set", "train.precision=auto"])
    plan = predicting.plan(args)
    assert plan.job.precision == devices.resolve_precision("auto", 2, "cpu")  # bfloat16 only on a CPU with bf16 (TF)
    assert plan.job.precision in ("float32", "bfloat16")
    assert not os.path.exists(tmp_path / "out.zarr")  # planning writes nothing
