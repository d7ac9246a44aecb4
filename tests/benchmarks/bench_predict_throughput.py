"""Throughput of templates/predict.py in-process against the bare model on the same tiles; LocalCluster vs in-process.

A ``N x 1024 x 1024`` uint8 zarr volume is predicted by an untrained tiny 2D
U-Net (tile 256, overlap 0.5, batch 8). N is ``EMSEG_BENCH_PREDICT_SLICES``:
the default 16 runs in a few minutes on a 2-core CPU under ``make bench``;
the issue's size is ``EMSEG_BENCH_PREDICT_SLICES=64``.

- ``bare``: ``model.predict_on_batch`` on every tile of the whole-slice tiled
  grid of every slice (what :func:`lib.predict.inference.predict_tiled` predicts), from
  a volume already in memory: voxels / second;
- ``predict.py``: the same volume, in-process, blocks of whole slices, N/2 deep
  (at most 32: at least 2 blocks for the dask run, and no tile is
  predicted twice); voxels / second of its block loop.
  ``ratio`` = predict.py / bare must be at least 0.9;
- ``dask``: ``--scheduler local:2`` with 1 thread per worker against in-process
  with ``--threads 2``: the ratio of their throughputs (stated, no target).

Prints one JSON line.
"""

import json
import os
import shutil
import tempfile
import time

import numpy as np

from predict_bench_common import SIDE, TILE, run_predict, tiny_run, write_volume

TARGET = 0.9


def bare_seconds(model_path, volume):
    from lib.data import intensity, tiling
    from lib.predict.blockwise import load_predictor

    _, predict = load_predictor(model_path)
    padded = tiling.pad_to_tile(np.pad(np.zeros((SIDE, SIDE, 1), np.float32), ((64, 64), (64, 64), (0, 0)),
                                       mode="reflect"), (TILE, TILE))[0]
    positions = tiling.tile_grid(padded.shape[:2], (TILE, TILE), 0.5)
    start = time.perf_counter()
    for z in range(len(volume)):
        image = np.pad(intensity.normalize(volume[z][..., None], "per_image"), ((64, 64), (64, 64), (0, 0)), mode="reflect")
        tiles = [image[y:y + TILE, x:x + TILE] for y, x in positions]
        for i in range(0, len(tiles), 8):
            predict(np.stack(tiles[i:i + 8]))
    return time.perf_counter() - start


def test_predict_throughput():
    import zarr

    depth = int(os.environ.get("EMSEG_BENCH_PREDICT_SLICES", "16"))
    root = tempfile.mkdtemp(prefix="emseg_bench_throughput_", dir=os.environ.get("EMSEG_BENCH_TMP"))
    try:
        run = tiny_run(os.path.join(root, "run"))
        vol = write_volume(os.path.join(root, "vol.zarr"), depth)
        voxels = depth * SIDE * SIDE
        bare = voxels / bare_seconds(os.path.join(run, "checkpoints", "best.keras"), zarr.open_array(vol, mode="r")[:])
        block = ["--set", f"inference.block_shape=[{max(1, min(32, depth // 2))},{SIDE},{SIDE}]"]
        seconds, _, _ = run_predict(vol, os.path.join(root, "a.zarr"), "--model", run, "--threads", "2", *block)
        ours = voxels / seconds
        dask_seconds, _, _ = run_predict(vol, os.path.join(root, "b.zarr"), "--model", run, "--threads", "1",
                                         "--scheduler", "local:2", *block)
        ratio = ours / bare
        print(json.dumps({"benchmark": "predict_throughput", "voxels": voxels,
                          "bare_voxels_per_s": round(bare), "predict_voxels_per_s": round(ours),
                          "ratio": round(ratio, 3), "target": TARGET, "pass": ratio >= TARGET,
                          "dask_local2_voxels_per_s": round(voxels / dask_seconds),
                          "dask_over_in_process": round(seconds / dask_seconds, 3)}))
        assert ratio >= TARGET
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    test_predict_throughput()
