"""The pyramids of predict.py's OME-Zarr outputs: what a viewer's overview reads, and what the levels cost in memory.

Two measurements, one JSON line each:

1. ``pyramid_overview``: an output store of ``EMSEG_BENCH_PYRAMID_SHAPE`` (default 64 x 2048 x 2048; the issue's
   2000 x 2048 x 2048, about 8 GB, needs that much free disk and a few minutes per GB), its level 0 filled with
   smooth synthetic probabilities and mask, gets its pyramid (:func:`lib.predict.writers.add_pyramid`, 256 a
   side, in a process of its own); then the smallest level is read whole through a store that counts the bytes it
   returns. Target: at most 1 % of level 0's stored bytes, and the output valid for ome-zarr-models. Also the
   peak memory of the process writing the pyramid.
2. ``pyramid_memory``: predict.py (the tiny untrained U-Net of the other predict benchmarks) on a 32 x 1024 x 1024
   uint8 volume with ``inference.overview_side=0`` (one level) and with the default 256 (a pyramid of 3 levels):
   peak resident memory of each run, ratio pyramid / one level at most 1.2.
"""

import json
import multiprocessing
import os
import resource
import shutil
import tempfile
import time

import numpy as np

from predict_bench_common import REPO, run_predict_rss, tiny_run, write_volume

OVERVIEW_TARGET = 0.01
MEMORY_TARGET = 1.2


def shape():
    return tuple(int(v) for v in os.environ.get("EMSEG_BENCH_PYRAMID_SHAPE", "64,2048,2048").split(","))


def counting_store(path):
    """A zarr LocalStore of ``path`` that adds up the bytes it returns (``store.read``)."""
    from zarr.storage import LocalStore

    class Counting(LocalStore):
        read = 0

        async def get(self, key, prototype=None, byte_range=None):
            buffer = await super().get(key, prototype, byte_range)
            if buffer is not None:
                Counting.read += len(buffer)
            return buffer

    return Counting(path, read_only=True)


def filled_store(path, size):
    """An output store of spatial ``size`` whose level 0 holds smooth probabilities and their mask, block by block."""
    import sys

    sys.path.insert(0, REPO)
    from lib.predict import blockwise, writers

    block = (64, 1024, 1024)
    chunks = blockwise.output_chunks(block, size)
    grid, blocks = blockwise.block_grid(size, block)
    root = writers.create_store(path, size, chunks, grid, "uint8", {"bench": True, "overview_side": 256})
    rng = np.random.default_rng(0)
    for index, core in blocks:
        y, x = np.mgrid[core[1], core[2]]
        wave = 110 + 110 * np.sin(x / 37.0) * np.cos(y / 53.0)
        noise = rng.integers(0, 36, (core[0].stop - core[0].start,) + wave.shape, dtype=np.uint8)
        values = wave.astype(np.uint8) + noise  # textured, as probabilities of EM are: it compresses as they do
        root["0"][core] = values
        root["labels/mask/0"][core] = values >= 128
        root["blocks_done"][index] = 1
    return root


def _pyramid(path):
    import sys

    sys.path.insert(0, REPO)
    from lib.predict import writers

    return writers.add_pyramid(path, 256)


def stored_bytes(folder):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(folder) for f in files)


def test_overview_reads_a_small_share():
    import zarr
    from ome_zarr_models import open_ome_zarr

    root = tempfile.mkdtemp(prefix="emseg_bench_pyramid_", dir=os.environ.get("EMSEG_BENCH_TMP"))
    try:
        path = os.path.join(root, "seg.zarr")
        size = shape()
        start = time.perf_counter()
        filled_store(path, size)
        fill_seconds = time.perf_counter() - start
        start = time.perf_counter()
        with multiprocessing.get_context("spawn").Pool(1) as pool:  # a process of its own: its peak memory alone
            levels = pool.apply(_pyramid, (path,))
        pyramid_seconds = time.perf_counter() - start
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        store = counting_store(path)
        group = zarr.open_group(store=store, mode="r")
        smallest = dict(group.attrs)["ome"]["multiscales"][0]["datasets"][-1]["path"]
        overview = group[smallest][...]
        read = type(store).read
        full = stored_bytes(os.path.join(path, "0"))
        valid = [type(open_ome_zarr(p)).__name__ for p in (path, os.path.join(path, "labels", "mask"))]
        share = read / full
        print(json.dumps({"benchmark": "pyramid_overview", "shape": size, "levels": levels,
                          "overview_shape": overview.shape, "overview_bytes_read": read,
                          "level0_stored_bytes": full, "level0_raw_bytes": int(np.prod(size)),
                          "share": round(share, 5), "target": OVERVIEW_TARGET, "validator": valid,
                          "fill_seconds": round(fill_seconds, 1), "pyramid_seconds": round(pyramid_seconds, 1),
                          "pyramid_peak_rss_mb": round(peak_mb, 1),
                          "pass": share <= OVERVIEW_TARGET and valid == ["Image", "ImageLabel"]}))
        assert max(overview.shape) <= 256 and share <= OVERVIEW_TARGET and valid == ["Image", "ImageLabel"]
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_pyramid_memory_is_that_of_one_level():
    root = tempfile.mkdtemp(prefix="emseg_bench_pyramid_", dir=os.environ.get("EMSEG_BENCH_TMP"))
    try:
        run = tiny_run(os.path.join(root, "run"))
        vol = write_volume(os.path.join(root, "vol.zarr"), 32)
        peaks = {}
        for side in (0, 256):
            out = os.path.join(root, f"seg_{side}.zarr")
            peaks[side], _ = run_predict_rss(vol, out, "--model", run, "--set", "inference.block_shape=[8,512,512]",
                                             "--set", f"inference.overview_side={side}")
            shutil.rmtree(out)
        ratio = peaks[256] / peaks[0]
        print(json.dumps({"benchmark": "pyramid_memory", "volume": [32, 1024, 1024],
                          "peak_rss_mb_one_level": round(peaks[0], 1), "peak_rss_mb_pyramid": round(peaks[256], 1),
                          "ratio": round(ratio, 3), "target": MEMORY_TARGET, "pass": ratio <= MEMORY_TARGET}))
        assert ratio <= MEMORY_TARGET
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    test_overview_reads_a_small_share()
    test_pyramid_memory_is_that_of_one_level()
