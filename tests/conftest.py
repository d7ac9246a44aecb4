"""Shared fixtures: small synthetic datasets written by the project's own generator."""

import contextlib
import importlib.util
import io
import os
import subprocess
import sys

import numpy as np
import pytest
import tifffile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")
# The suite runs two workers (pytest -n 2) on two cores: each worker's runs (and the subprocesses they
# start) take one core's worth of threads, instead of two processes each spreading over both cores.
for _var in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_script(script):
    """Entry script ``script`` (a path under the repository) imported as a module, without running it.

    As when run, the script puts its CODE_DIR argument (here the repository) first on ``sys.path``;
    ``sys.path`` and ``sys.argv`` are restored afterwards.
    """
    path = os.path.join(REPO, script)
    name = os.path.splitext(os.path.basename(script))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    saved = list(sys.path), sys.argv
    sys.argv = [path, REPO]
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path[:], sys.argv = saved
    return module


def run_here(script, *args):
    """Run entry script ``script`` (a path under the repository) in this process, as bash would run it.

    ``args`` follow CODE_DIR. Returns a ``subprocess.CompletedProcess`` with the exit status (0, or
    what :func:`lib.run.cli.user_errors` exits with) and the text the script printed. It saves a new
    Python and Keras start (about 10 s of CPU with TensorFlow) per run; only for runs that change no
    process-wide state (``train.deterministic``, ``train.precision``, ``--threads``, several devices).
    """
    from lib.run import cli

    module = load_script(script)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            with cli.user_errors():
                module.main([REPO, *args])
            code = 0
        except SystemExit as exc:
            code = exc.code
    return subprocess.CompletedProcess([sys.executable, os.path.join(REPO, script), REPO, *args], code,
                                       out.getvalue(), err.getvalue())


@pytest.fixture(scope="session")
def dataset_2d(tmp_path_factory):
    """A tiny 2D dataset in the template layout: 8 train and 2 test images of 128x128."""
    from lib.data.synthetic import write_dataset

    return write_dataset(str(tmp_path_factory.mktemp("data") / "em2d"), n_train=8, n_test=2,
                         shape=(128, 128), seed=1)


def tiny_run_folder(run, options=None):
    """``run``, made a run folder holding an untrained tiny 2D U-Net (crop 16 x 16, per_image normalisation) and its
    ``config.json`` with more ``options`` (sections of values), as predict.py and the export read one."""
    import json

    import keras

    from lib import config as config_lib
    from lib.model import networks

    keras.utils.set_random_seed(0)
    values = {"data": {"crop_shape": [16, 16]}, "model": {"depth": 2, "filters": 4, "dropout": 0.0}}
    for section, entries in (options or {}).items():
        values.setdefault(section, {}).update(entries)
    cfg = config_lib.from_dict(values).validate()
    (run / "checkpoints").mkdir(parents=True)
    networks.build_model(cfg.model, (None, None, 1)).save(run / "checkpoints" / "best.keras")
    (run / "config.json").write_text(json.dumps(cfg.to_dict()))
    return run


def write_pairs(root, split, images, masks):
    """Write images/masks as TIFFs under ``root/split/{x,y}``; returns root."""
    for kind, arrays in (("x", images), ("y", masks)):
        folder = os.path.join(root, split, kind)
        os.makedirs(folder, exist_ok=True)
        for i, a in enumerate(arrays):
            tifffile.imwrite(os.path.join(folder, f"{i:03d}.tif"), a)
    return root


def blob_pair(shape=(64, 64), seed=0):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 255, shape, dtype=np.uint8)
    mask = np.zeros(shape, np.uint8)
    mask[shape[0] // 4: shape[0] // 2, shape[1] // 4: shape[1] // 2] = 255
    return image, mask


def record_tile_bars(monkeypatch, module):
    """The tile progress bars ``module`` (lib.evaluate.evaluation, lib.predict.blockwise) opens, listed as they open.

    Bars are shown at once (no 2 s delay), so that a short test prints them.
    """
    from lib.predict import inference

    bars, real = [], module.tile_progress

    def recording(total, desc):
        bars.append(real(total, desc))
        return bars[-1]

    monkeypatch.setattr(module, "tile_progress", recording)
    monkeypatch.setattr(inference, "PROGRESS_DELAY", 0)
    return bars
