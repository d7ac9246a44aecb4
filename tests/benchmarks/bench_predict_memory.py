"""Peak memory of templates/predict.py on synthetic uint8 zarr volumes of two sizes, the larger 4 times the smaller.

Each volume is ``N x 1024 x 1024`` uint8 (zarr v3, chunks 16 x 256 x 256),
predicted in-process by an untrained tiny 2D U-Net (tiles of 256, overlap 0.5)
in blocks of 8 x 512 x 512. Block-wise prediction keeps memory flat: ``ratio``
= peak(larger) / peak(smaller) must be at most 1.2. Prints one JSON line.

Sizes in GB, from ``EMSEG_BENCH_PREDICT_GB`` (comma-separated; N = GB x 1024
slices, at least 8, in multiples of 8). The default ``0.008,0.032`` (8 and
32 slices) runs in a few minutes on a 2-core CPU under ``make bench``; the
issue's sizes are ``EMSEG_BENCH_PREDICT_GB=1,4`` (5 G voxels, for a GPU or a
long CPU run). Needs the volumes' size free in ``EMSEG_BENCH_TMP`` (default:
the system's temporary folder).
"""

import json
import os
import shutil
import tempfile

from predict_bench_common import SIDE, run_predict_rss, tiny_run, write_volume

TARGET = 1.2
BLOCK_DEPTH = 8  # slices per block, the same at every size (so that the peaks compare)


def sizes_gb():
    return [float(v) for v in os.environ.get("EMSEG_BENCH_PREDICT_GB", "0.008,0.032").split(",")]


def test_predict_memory_is_flat():
    root = tempfile.mkdtemp(prefix="emseg_bench_predict_", dir=os.environ.get("EMSEG_BENCH_TMP"))
    try:
        run = tiny_run(os.path.join(root, "run"))
        peaks, seconds = {}, {}
        for gb in sizes_gb():
            depth = max(BLOCK_DEPTH, int(gb * 2**30 / SIDE**2) // BLOCK_DEPTH * BLOCK_DEPTH)
            vol = write_volume(os.path.join(root, f"vol_{gb}.zarr"), depth)
            peaks[gb], seconds[gb] = run_predict_rss(vol, os.path.join(root, f"seg_{gb}.zarr"), "--model", run,
                                                     "--set", f"inference.block_shape=[{BLOCK_DEPTH},512,512]")
            shutil.rmtree(vol)
            shutil.rmtree(os.path.join(root, f"seg_{gb}.zarr"))
        small, large = min(peaks), max(peaks)
        ratio = peaks[large] / peaks[small]
        print(json.dumps({"benchmark": "predict_memory", "sizes_gb": sorted(peaks),
                          "peak_rss_mb": [round(peaks[g], 1) for g in sorted(peaks)],
                          "block_seconds": [round(seconds[g], 1) for g in sorted(peaks)],
                          "ratio": round(ratio, 3), "target": TARGET, "pass": ratio <= TARGET}))
        assert ratio <= TARGET
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    test_predict_memory_is_flat()
