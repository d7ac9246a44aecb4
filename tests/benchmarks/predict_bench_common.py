"""Shared by the bench_predict_*.py benchmarks: a tiny 2D model, synthetic uint8 zarr volumes, predict.py runs."""

import json
import os
import re
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PREDICT = os.path.join(REPO, "templates", "predict.py")
SIDE = 1024
TILE = 256
OPTIONS = ["--set", "post.z_filter=false", "--set", "post.oztel=false", "--set", "inference.batch_size=8"]


def tiny_run(folder):
    """A run folder with an untrained U-Net (depth 2, 4 filters), tile 256, per_image normalisation.

    ``inference.tile_shape`` is pinned to the crop, so that the 1024-wide slices are predicted in overlapping
    256-pixel tiles (the default largest tile, 4 crops wide, would hold a whole slice in one tile).
    """
    sys.path.insert(0, REPO)
    import keras

    from lib import config as config_lib
    from lib.model import networks

    keras.utils.set_random_seed(0)
    cfg = config_lib.from_dict({"data": {"crop_shape": [TILE, TILE]}, "inference": {"tile_shape": [TILE, TILE]},
                                "model": {"depth": 2, "filters": 4, "dropout": 0.0}}).validate()
    os.makedirs(os.path.join(folder, "checkpoints"), exist_ok=True)
    networks.build_model(cfg.model, (None, None, 1)).save(os.path.join(folder, "checkpoints", "best.keras"))
    with open(os.path.join(folder, "config.json"), "w") as fh:
        json.dump(cfg.to_dict(), fh)
    return folder


def write_volume(path, depth, side=SIDE):
    """A ``depth x side x side`` uint8 zarr v3 array of smooth random content, written 16 slices at a time."""
    import zarr

    rng = np.random.default_rng(0)
    array = zarr.open_array(path, mode="w", shape=(depth, side, side), chunks=(16, 256, 256), dtype="uint8")
    pattern = rng.integers(0, 256, (16, side, side), dtype=np.uint8)
    for z in range(0, depth, 16):
        array[z:z + 16] = np.roll(pattern, z, axis=2)[:min(16, depth - z)]
    return path


def run_predict(*args, env=None):
    """Run predict.py; return ``(seconds of its block loop, wall seconds, stdout)``."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, PREDICT, REPO, "--gpu", "cpu", *OPTIONS, *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})
    out, err = proc.communicate()
    wall = time.perf_counter() - start
    if proc.returncode:
        raise RuntimeError(err[-3000:])
    seconds = float(re.search(r"blocks \(\d+ already done\) in ([\d.]+) s", out).group(1))
    return seconds, wall, out


def run_predict_rss(*args):
    """Peak resident memory (MB, ``ru_maxrss`` from ``os.wait4``) and block-loop seconds of a predict.py run."""
    proc = subprocess.Popen([sys.executable, PREDICT, REPO, "--gpu", "cpu", *OPTIONS, *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if status:
        raise RuntimeError(f"predict.py failed with status {status}")
    seconds = float(re.search(r"blocks \(\d+ already done\) in ([\d.]+) s", out).group(1))
    return usage.ru_maxrss / 1024, seconds
