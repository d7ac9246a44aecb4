"""Cost in speed of ``train.deterministic`` (TensorFlow op determinism), and whether reruns repeat exactly.

The 2D template trains a small U-Net (depth 3, 8 filters, 64 x 64 crops, batch
8) on a synthetic dataset, from bash as a user runs it, twice with
``train.deterministic=false`` and twice with ``true``, alternating so that the
load of a shared machine weighs on both alike. Epoch times come from
``history.csv`` (the first epoch, which builds the graph, left out).
``slowdown`` = median deterministic epoch time / median default one;
``*_repeat`` says whether the two runs of a mode have the same history
(losses and metrics of every epoch). Prints one JSON line. Run with
``python tests/benchmarks/bench_determinism.py`` or under pytest (``make bench``);
``EMSEG_BENCH_EPOCHS`` sets the epochs of each run (default 8), ``EMSEG_BENCH_THREADS``
the ``--threads`` (default 0: all cores).
"""

import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EPOCHS = int(os.environ.get("EMSEG_BENCH_EPOCHS", 8))
THREADS = os.environ.get("EMSEG_BENCH_THREADS", "0")
CONFIG = ["--set", f"train.epochs={EPOCHS}", "--set", "data.crop_shape=[64,64]", "--set", "data.replicate=4",
          "--set", "model.depth=3", "--set", "model.filters=8", "--set", "model.dropout=0.1",
          "--set", "train.batch_size=8", "--set", "inference.per_crop=false", "--set", "inference.merged=false",
          "--set", "inference.overlays=0", "--set", "post.z_filter=false", "--set", "post.oztel=false"]


def run(data, job, rid, deterministic):
    subprocess.run([sys.executable, os.path.join(REPO, "templates", "template.py"), REPO, data, job,
                    "--id", "det", "--rid", str(rid), "--gpu", "cpu", "--threads", THREADS, *CONFIG,
                    "--set", f"train.deterministic={str(deterministic).lower()}"],
                   check=True, capture_output=True, text=True)
    with open(os.path.join(job, f"det_{rid}", "history.csv")) as fh:
        rows = list(csv.DictReader(fh))
    return [float(r["seconds"]) for r in rows[1:]], [{k: v for k, v in r.items() if not k.endswith("seconds")} for r in rows]


def measure():
    sys.path.insert(0, REPO)
    from lib.data.synthetic import write_dataset

    with tempfile.TemporaryDirectory() as tmp:
        data = write_dataset(os.path.join(tmp, "data"), n_train=8, n_test=2, shape=(256, 256), seed=0)
        runs = {False: [], True: []}
        for rid, deterministic in enumerate((False, True, False, True)):
            runs[deterministic].append(run(data, os.path.join(tmp, "jobs"), rid, deterministic))
    default = statistics.median(s for seconds, _ in runs[False] for s in seconds)
    strict = statistics.median(s for seconds, _ in runs[True] for s in seconds)
    return {
        "benchmark": "determinism",
        "epochs": EPOCHS,
        "threads": THREADS,
        "default_s_per_epoch": round(default, 3),
        "deterministic_s_per_epoch": round(strict, 3),
        "slowdown": round(strict / default, 3),
        "default_repeat": runs[False][0][1] == runs[False][1][1],
        "deterministic_repeat": runs[True][0][1] == runs[True][1][1],
    }


def test_determinism_cost():
    result = measure()
    print(json.dumps(result))
    assert result["deterministic_repeat"]


if __name__ == "__main__":
    print(json.dumps(measure()))
