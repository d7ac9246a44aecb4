"""Peak memory of the objects of a store: block-wise labelling and the table, on volumes of two sizes, the larger 4
times the smaller; the connected components of a mask (post.instances), and the objects grown from the instance
channels of a model (model.targets=bc: :func:`lib.predict.instances.objects_of_channels`, halo 8 x 64 x 64).

Each volume is ``N x 1024 x 1024`` uint8 (zarr v3, chunks 8 x 256 x 256) of blobs about 20 voxels across, many
cut by block borders, labelled (:func:`lib.predict.instances.label_store`) and measured
(:func:`lib.evaluate.objects.store_table`) in process in blocks of 8 x 512 x 512, each size in a process of its
own. Memory follows the block (and the box of the largest object cut by a border), not the volume: ``ratio`` =
peak(larger) / peak(smaller) must be at most 1.2. Prints one JSON line.

Slices from ``EMSEG_BENCH_OBJECTS_SLICES`` (comma-separated, multiples of 8; default ``24,96``; on the 2-core
machine, 2026-12-06: the components case 2.6 minutes alone, the channels case 17 minutes beside two trainings,
so less alone). The smaller volume is 3 blocks deep, so that its middle block is
read with its whole halo (8 + 8 + 8 slices), as every inner block of the larger one is: with 16 slices, every
window was cut by the volume's ends (16 x 640 x 640 against 24 x 640 x 640 voxels), and the ratio of 1.40
measured that, not the volume.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TARGET = 1.2
BLOCK = (8, 512, 512)

SCRIPT = r"""
import json, resource, sys, time
import numpy as np, zarr
from scipy.ndimage import gaussian_filter
sys.path.insert(0, sys.argv[1])
from lib.evaluate import objects
from lib.predict import blockwise, instances

path, depth, block, kind = sys.argv[2], int(sys.argv[3]), tuple(json.loads(sys.argv[4])), sys.argv[5]
root = zarr.open_group(path, mode="w", zarr_format=3)
mask = root.create_array("mask", shape=(depth, 1024, 1024), chunks=(8, 256, 256), dtype="uint8")
rng = np.random.default_rng(0)
pattern = (gaussian_filter(rng.random((8, 1024, 1024), dtype=np.float32), (2, 6, 6)) > 0.509).astype(np.uint8)
for z in range(0, depth, 8):  # the same blobs, shifted, 8 slices at a time
    mask[z:z + 8] = np.roll(pattern, 37 * z, axis=2)
out = root.create_array("objects", shape=mask.shape, chunks=(8, 256, 256), dtype="uint32")
if kind == "channels":  # foreground and contour channels of the blobs, as a bc model predicts them
    from skimage.measure import label
    from skimage.segmentation import find_boundaries
    prob = root.create_array("prob", shape=(2,) + mask.shape, chunks=(1, 8, 256, 256), dtype="uint8")
    for z in range(0, depth, 8):
        m = mask[z:z + 8]
        prob[0, z:z + 8] = m * 230 + 10
        prob[1, z:z + 8] = find_boundaries(label(m), mode="inner") * 230
start = time.perf_counter()
if kind == "channels":
    count = instances.objects_of_channels((path, "prob"), (path, "objects"), block, (8, 64, 64),
                                          blockwise.run_tasks_in_process, min_size=4)
else:
    count = instances.label_store((path, "mask"), (path, "objects"), block, blockwise.run_tasks_in_process,
                                  min_size=4)
_, blocks = blockwise.block_grid(mask.shape, block)
rows = objects.store_table((path, "objects"), None, blocks, blockwise.run_tasks_in_process)
print(json.dumps({"objects": count, "rows": len(rows), "seconds": time.perf_counter() - start,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def slices():
    return [int(v) for v in os.environ.get("EMSEG_BENCH_OBJECTS_SLICES", "24,96").split(",")]


@pytest.mark.parametrize("kind", ["components", "channels"])
def test_objects_memory_is_flat(kind):
    root = tempfile.mkdtemp(prefix="emseg_bench_objects_", dir=os.environ.get("EMSEG_BENCH_TMP"))
    try:
        results = {}
        for depth in slices():
            out = subprocess.run([sys.executable, "-c", SCRIPT, REPO, os.path.join(root, f"m{depth}.zarr"),
                                  str(depth), json.dumps(BLOCK), kind], capture_output=True, text=True, check=True)
            results[depth] = json.loads(out.stdout.strip().splitlines()[-1])
            assert results[depth]["objects"] == results[depth]["rows"] > 0  # every object once in the table
            shutil.rmtree(os.path.join(root, f"m{depth}.zarr"))
        small, large = min(results), max(results)
        ratio = results[large]["peak_rss_mb"] / results[small]["peak_rss_mb"]
        print(json.dumps({"benchmark": "objects_memory", "objects_from": kind, "slices": sorted(results),
                          "objects": [results[d]["objects"] for d in sorted(results)],
                          "peak_rss_mb": [round(results[d]["peak_rss_mb"], 1) for d in sorted(results)],
                          "seconds": [round(results[d]["seconds"], 1) for d in sorted(results)],
                          "ratio": round(ratio, 3), "target": TARGET, "pass": ratio <= TARGET}))
        assert ratio <= TARGET
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    for name in sys.argv[1:] or ["components", "channels"]:
        test_objects_memory_is_flat(name)
