"""Peak memory of the big-data template training one epoch on about 2 GB and 8 GB of images.

Two synthetic datasets are written to disk: 2048 x 2048 uint8 TIFF images of
cheap random content (uncompressed, 4 MiB each: 512 and 2048 training images;
the smaller set is hard links to the first images of the larger, so about 8 GB
is written in all), blocky 0/255 masks (zlib) and two small test images. The
big-data template then runs on each as a subprocess, for one epoch in which
every training image gives one 256 x 256 crop, with a small U-Net. The peak
resident memory of each run (``ru_maxrss`` of the child, from ``os.wait4``)
is compared: streaming keeps memory flat, so ``ratio`` = peak(8 GB) /
peak(2 GB) must be at most 1.2. Prints one JSON line.

Needs about 8.5 GB free in the temporary folder (``EMSEG_BENCH_TMP``, default
the system's, e.g. /tmp); the data is removed afterwards. Run with
``python tests/benchmarks/bench_big_data_memory.py`` or under pytest (``make bench``).
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TEMPLATE = os.path.join(REPO, "templates", "big_data_template.py")
SIDE = 2048
TEST_SIDE = 256  # small test images and one prediction variant: the peak is that of training
SIZES_GIB = (2, 8)
TARGET = 1.2
OPTIONS = ["--set", "train.epochs=1", "--set", "data.crop_shape=[256,256]", "--set", "data.val_fraction=0.05",
           "--set", "data.max_val_crops=32", "--set", "model.depth=2", "--set", "model.filters=8",
           "--set", "model.dropout=0.0", "--set", "train.batch_size=8", "--set", "train.workers=2",
           "--set", "inference.per_crop=false", "--set", "inference.tiled=false", "--set", "post.z_filter=false",
           "--set", "post.oztel=false"]


def n_images(gib):
    return gib * 2**30 // SIDE**2


def needed_bytes():
    """Disk space for the larger dataset (the smaller one is hard links), with a margin."""
    return int(n_images(max(SIZES_GIB)) * SIDE**2 * 1.05) + 2**28


def write_datasets(root):
    """Write the datasets under ``root``; return ``{gib: data_dir}``."""
    import tifffile

    rng = np.random.default_rng(0)
    tiles = [rng.integers(0, 256, (SIDE, SIDE), dtype=np.uint8) for _ in range(8)]
    masks = [np.kron(rng.random((SIDE // 64, SIDE // 64)) < 0.1, np.ones((64, 64), np.uint8)) * np.uint8(255)
             for _ in range(8)]
    largest = max(SIZES_GIB)
    dirs = {gib: os.path.join(root, f"{gib}gib") for gib in SIZES_GIB}
    for gib, data_dir in dirs.items():
        for kind in ("x", "y"):
            os.makedirs(os.path.join(data_dir, "train", kind))
            os.makedirs(os.path.join(data_dir, "test", kind))
        for i in range(2):
            tifffile.imwrite(os.path.join(data_dir, "test", "x", f"t{i}.tif"), tiles[i][:TEST_SIDE, :TEST_SIDE])
            tifffile.imwrite(os.path.join(data_dir, "test", "y", f"t{i}.tif"), masks[i][:TEST_SIDE, :TEST_SIDE],
                             compression="zlib")
    for i in range(n_images(largest)):
        name = f"img_{i:05d}.tif"
        x = os.path.join(dirs[largest], "train", "x", name)
        y = os.path.join(dirs[largest], "train", "y", name)
        tifffile.imwrite(x, tiles[i % len(tiles)])
        tifffile.imwrite(y, masks[(i * 3) % len(masks)], compression="zlib")
        for gib in SIZES_GIB:
            if gib != largest and i < n_images(gib):
                os.link(x, os.path.join(dirs[gib], "train", "x", name))
                os.link(y, os.path.join(dirs[gib], "train", "y", name))
    return dirs


def peak_rss_of_run(data_dir, job_dir, log_path):
    """Run the template once; return (peak RSS in MiB, seconds). Raises on a failed run."""
    command = [sys.executable, TEMPLATE, REPO, data_dir, job_dir, "--id", "mem", "--gpu", "cpu", *OPTIONS]
    start = time.perf_counter()
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "CI": "1"})
        _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        with open(log_path) as fh:
            raise RuntimeError(f"big-data template failed on {data_dir}:\n{fh.read()[-3000:]}")
    return usage.ru_maxrss / 1024, seconds  # ru_maxrss is in KiB on Linux


def run(tmp_dir=None):
    """Write the datasets, run the template on each, clean up; return the JSON record."""
    root = tempfile.mkdtemp(prefix="emseg_bench_memory_", dir=tmp_dir)
    try:
        start = time.perf_counter()
        dirs = write_datasets(root)
        write_seconds = time.perf_counter() - start
        runs = {}
        for gib, data_dir in dirs.items():
            runs[gib] = peak_rss_of_run(data_dir, os.path.join(root, f"jobs_{gib}"),
                                        os.path.join(root, f"log_{gib}.txt"))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    small, large = (runs[g] for g in SIZES_GIB)
    return {
        "benchmark": "big_data_memory",
        "ratio": round(large[0] / small[0], 4),
        "peak_rss_mib": {f"{g}gib": round(runs[g][0], 1) for g in SIZES_GIB},
        "train_images": {f"{g}gib": n_images(g) for g in SIZES_GIB},
        "image_gib": {f"{g}gib": round(n_images(g) * SIDE**2 / 2**30, 2) for g in SIZES_GIB},
        "run_seconds": {f"{g}gib": round(runs[g][1], 1) for g in SIZES_GIB},
        "write_seconds": round(write_seconds, 1),
        "target": TARGET,
    }


def free_bytes(tmp_dir):
    return shutil.disk_usage(tmp_dir or tempfile.gettempdir()).free


def test_big_data_memory_is_flat():
    import pytest

    tmp_dir = os.environ.get("EMSEG_BENCH_TMP")
    if free_bytes(tmp_dir) < needed_bytes():
        pytest.skip(f"needs {needed_bytes() / 2**30:.1f} GiB free in {tmp_dir or tempfile.gettempdir()}")
    record = run(tmp_dir)
    print(json.dumps(record))
    assert record["ratio"] <= TARGET, record


if __name__ == "__main__":
    tmp = os.environ.get("EMSEG_BENCH_TMP")
    if free_bytes(tmp) < needed_bytes():
        print(f"skipped: needs {needed_bytes() / 2**30:.1f} GiB free in {tmp or tempfile.gettempdir()}")
        sys.exit(0)
    print(json.dumps(run(tmp)))
