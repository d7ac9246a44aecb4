"""Where the time of a time-limited training run goes: optimiser steps, validation, checkpoints, data, start-up.

Runs ``templates/template.py`` from bash as a user does, with its defaults and
``train.time_limit_minutes``, then splits the training part of the wall time
(process start to the end of training, i.e. the wall time less the test-set
prediction that ``metrics.json`` times) with the per-epoch columns of
``history.csv``:

- ``steps``: inside the optimiser steps (``step_seconds``);
- ``data_wait``: between steps, waiting for the next batch and running the callbacks (``wait_seconds``);
- ``validation``: ``val_seconds``;
- ``checkpoints``: saving the checkpoints and the history (``save_seconds``, of the epoch before, plus the
  last epoch's saving, which ends after its row);
- ``startup``: the rest: Python and Keras start-up, reading and checking the data, building the model.

Target: ``steps`` at least 0.85 over a 20-minute run. Prints one JSON line.

Environment: ``EMSEG_BENCH_DATA`` (a dataset folder; default a synthetic one of
16 images of 768 x 1024), ``EMSEG_BENCH_MINUTES`` (default 3), ``EMSEG_BENCH_THREADS``
(``--threads``, default 1, pinned to the first core as ``../shared/bench/side_by_side.sh`` does).
``python tests/benchmarks/bench_time_budget.py RUN_DIR`` only analyses a finished run folder
(e.g. the one that ``side_by_side.sh`` made), taking its wall time from ``EMSEG_BENCH_WALL`` seconds
if given, else leaving ``startup`` out.
"""

import csv
import json
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MINUTES = float(os.environ.get("EMSEG_BENCH_MINUTES", 3))
THREADS = os.environ.get("EMSEG_BENCH_THREADS", "1")


def shares(run_dir, wall=None):
    """The split of a finished run's training time, from its ``history.csv`` and ``metrics.json``."""
    with open(os.path.join(run_dir, "history.csv")) as fh:
        rows = list(csv.DictReader(fh))
    with open(os.path.join(run_dir, "metrics.json")) as fh:
        info = json.load(fh)["training"]
    total = {key: sum(float(r[key]) for r in rows) for key in ("seconds", "step_seconds", "wait_seconds",
                                                               "val_seconds", "save_seconds")}
    # The last epoch's saving is not in any row: estimate it as the mean saving of the others.
    saves = [float(r["save_seconds"]) for r in rows[1:]]
    total["save_seconds"] += sum(saves) / len(saves) if saves else 0.0
    parts = {"steps": total["step_seconds"], "data_wait": total["wait_seconds"],
             "validation": total["val_seconds"], "checkpoints": total["save_seconds"]}
    if wall is not None:
        training_wall = wall - info["predict_seconds"]
        parts["startup"] = max(0.0, training_wall - sum(parts.values()))
    else:
        training_wall = sum(parts.values())
    result = {"benchmark": "time_budget", "epochs": len(rows), "training_wall_s": round(training_wall, 1),
              "predict_s": info.get("predict_seconds"),
              "predict_s_per_megavoxel": info.get("predict_seconds_per_megavoxel")}
    result.update({f"share_{k}": round(v / training_wall, 4) for k, v in parts.items()})
    return result


def measure():
    sys.path.insert(0, REPO)
    from lib.data.synthetic import write_dataset

    with tempfile.TemporaryDirectory() as tmp:
        data = os.environ.get("EMSEG_BENCH_DATA") or write_dataset(
            os.path.join(tmp, "data"), n_train=16, n_test=2, shape=(768, 1024), seed=0)
        job = os.path.join(tmp, "jobs")
        env = dict(os.environ, TF_NUM_INTRAOP_THREADS=THREADS, TF_NUM_INTEROP_THREADS=THREADS,
                   OMP_NUM_THREADS=THREADS)
        command = [sys.executable, os.path.join(REPO, "templates", "template.py"), REPO, data, job,
                   "--id", "budget", "--rid", "0", "--gpu", "cpu", "--threads", THREADS,
                   "--set", f"train.time_limit_minutes={MINUTES}", "--set", "inference.overlays=0"]
        if THREADS == "1" and hasattr(os, "sched_setaffinity"):
            command = ["taskset", "-c", "0", *command]
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True, text=True, env=env)
        wall = time.perf_counter() - start
        result = shares(os.path.join(job, "budget_0"), wall)
    result.update(minutes=MINUTES, threads=THREADS)
    return result


def test_time_budget():
    result = measure()
    print(json.dumps(result))
    assert result["share_steps"] > 0.5, result


if __name__ == "__main__":
    if len(sys.argv) > 1:
        wall = os.environ.get("EMSEG_BENCH_WALL")
        print(json.dumps(shares(sys.argv[1], float(wall) if wall else None)))
    else:
        print(json.dumps(measure()))
