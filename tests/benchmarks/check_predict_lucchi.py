"""Check templates/predict.py on lucchi_dev against a finished 2D run: fg_iou equal to its ``tiled`` variant.

Usage::

    python tests/benchmarks/check_predict_lucchi.py JOB/dev_0 [DATA_DIR] [WORK_DIR]

Writes the test volume (DATA_DIR/test/x, default ../shared/data/lucchi_dev) as one
zarr array and as an HDF5 dataset in WORK_DIR (default: a temporary folder),
predicts them, the folder of slices itself, and the zarr array again with
``--scheduler local:2``, with ``predict.py --model RUN`` (z-filter off, as ``tiled``), and
compares fg_iou against DATA_DIR/test/y with the run's metrics.json ``tiled``
fg_iou: the difference must be at most 0.005. Prints one JSON line; exit 1 if not.
"""

import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)
TOLERANCE = 0.005


def main(run, data_dir=os.path.join(REPO, "..", "shared", "data", "lucchi_dev"), work=None):
    import h5py
    import zarr

    from lib.data import io

    work = work or tempfile.mkdtemp(prefix="lucchi_predict_")
    xs = [io.read_image(p) for p in io.list_images(os.path.join(data_dir, "test", "x"))]
    ys = [io.read_image(p) for p in io.list_images(os.path.join(data_dir, "test", "y"))]
    volume, truth = np.stack(xs), np.stack(ys) > 0
    zarr.save_array(os.path.join(work, "test_x.zarr"), volume)
    with h5py.File(os.path.join(work, "test_x.h5"), "w") as f:
        f.create_dataset("raw", data=volume, chunks=(1,) + volume.shape[1:])
    expected = json.load(open(os.path.join(run, "metrics.json")))["results"]["tiled"]["fg_iou"]
    report = {"check": "predict_lucchi", "run": run, "tiled_fg_iou": expected}
    zarr_input = os.path.join(work, "test_x.zarr")
    inputs = (("zarr", zarr_input, []), ("hdf5", os.path.join(work, "test_x.h5:raw"), []),
              ("folder", os.path.join(data_dir, "test", "x"), []), ("zarr_local2", zarr_input, ["--scheduler", "local:2"]))
    for name, source, extra in inputs:
        out = os.path.join(work, f"pred_{name}.zarr")
        start = time.perf_counter()
        subprocess.run([sys.executable, os.path.join(REPO, "templates", "predict.py"), REPO, source, out,
                        "--model", run, "--gpu", "cpu", "--overwrite", "--set", "post.z_filter=false", *extra],
                       check=True)
        mask = zarr.open_group(out, mode="r")["labels/mask/0"][...] > 0
        tp = np.count_nonzero(mask & truth)
        iou = tp / max(np.count_nonzero(mask | truth), 1)
        report[f"{name}_fg_iou"] = round(float(iou), 4)
        report[f"{name}_seconds"] = round(time.perf_counter() - start, 1)
    report["pass"] = all(abs(report[f"{n}_fg_iou"] - expected) <= TOLERANCE for n, _, _ in inputs)
    print(json.dumps(report))
    return 0 if report["pass"] else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
