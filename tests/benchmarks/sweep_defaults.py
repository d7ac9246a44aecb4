"""Template defaults compared on validation images of several data sets, several seeds each, never on test slices.

usage: .venv/bin/python tests/benchmarks/sweep_defaults.py OUT DATA [DATA ...] --minutes M
           [--seeds 1,2,3] [--holdout 0.2] --config NAME[:KEY=VALUE;KEY=VALUE...] [--config ...] [--summary]

For each DATA (the template layout) a validation set is made under ``OUT/valsets/NAME``: the last ``--holdout``
share of its sorted training slices (at least 2; a contiguous block, so that neighbouring sections of a volume
do not fall on both sides) becomes ``test/``, the rest ``train/`` (links, nothing copied); the set's own test
slices are never read. Every configuration then trains on each set with each seed, for M minutes
(``train.time_limit_minutes``), two runs at a time, each pinned to its own core with one thread (run it on an
otherwise idle machine), and its ``tiled`` fg_iou on the held-out slices is appended to ``OUT/sweep.jsonl``.
A configuration is the defaults plus its ``KEY=VALUE`` options (``--set`` of the template; ``defaults`` alone
is the defaults); sets whose masks hold more than two class ids get ``model.classes``. Runs already in
``OUT/sweep.jsonl`` are not run again, so a sweep can be continued or widened later.

``--summary`` prints, per configuration, each set's mean fg_iou over its seeds with their sample standard
deviation (as ``side_by_side.py`` gives the spread of its runs), and the mean over the sets, best first.
"""
import argparse
import collections
import json
import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(HERE, "peers"))
import convert  # noqa: E402
from convert import fail  # noqa: E402
from run_peer import ONE_THREAD  # noqa: E402
from side_by_side import TF_ONE_THREAD  # noqa: E402


def parse_config(text):
    """``NAME[:KEY=VALUE;KEY=VALUE]`` -> ``(NAME, [KEY=VALUE, ...])``."""
    name, _, rest = text.partition(":")
    options = [o.strip() for o in rest.split(";") if o.strip()]
    bad = [o for o in options if "=" not in o]
    if not name.replace("_", "").replace("-", "").isalnum() or bad:
        fail(f"--config {text!r}: expected NAME[:KEY=VALUE;KEY=VALUE...] with a plain NAME")
    return name, options


def validation_split(data, holdout):
    """The training slices of ``data`` as ``{"train": [(x, y), ...], "test": [...]}``: the last ``holdout`` share
    (at least 2) as ``test``, the rest as ``train``."""
    xs, ys = convert.files(data, "train", "x"), convert.files(data, "train", "y")
    if len(xs) != len(ys) or len(xs) < 4:
        fail(f"DATA {data}: {len(xs)} training images and {len(ys)} masks; expected as many of each, at least 4")
    n_val = max(2, int(round(len(xs) * holdout)))
    pairs = list(zip(xs, ys))
    return {"train": pairs[:-n_val], "test": pairs[-n_val:]}


def link(split, out):
    """Links the files of ``split`` into ``out/{train,test}/{x,y}``."""
    for part, pairs in split.items():
        for sub, i in (("x", 0), ("y", 1)):
            folder = os.path.join(out, part, sub)
            os.makedirs(folder, exist_ok=True)
            for pair in pairs:
                target = os.path.join(folder, os.path.basename(pair[i]))
                if not os.path.lexists(target):
                    os.symlink(pair[i], target)


def run_one(a, cores, lock, name, options, set_name, seed):
    valset = os.path.join(a.out, "valsets", set_name)
    k, _ = convert.mask_classes(valset)
    extra = [f"model.classes={k}"] if k > 2 else []
    core = cores.pop()
    try:
        jobs = os.path.join(a.out, "jobs")
        cmd = ["taskset", "-c", str(core), sys.executable, os.path.join(REPO, "templates", "template.py"), REPO,
               valset, jobs, "--id", f"{name}__{set_name}", "--rid", str(seed), "--gpu", "cpu", "--threads", "1",
               "--set", f"train.time_limit_minutes={a.minutes:g}", "--set", f"train.seed={seed}"]
        for o in extra + options:
            cmd += ["--set", o]
        log = os.path.join(jobs, f"{name}__{set_name}_{seed}.log")
        os.makedirs(jobs, exist_ok=True)
        with open(log, "w") as f:
            env = {**os.environ, **ONE_THREAD, **TF_ONE_THREAD}
            rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env).returncode
    finally:
        cores.append(core)
    if rc:
        print(f"{name} {set_name} seed {seed}: failed (exit {rc}), see {log}", flush=True)
        return
    metrics = json.load(open(os.path.join(jobs, f"{name}__{set_name}_{seed}", "metrics.json")))
    tiled = metrics["results"]["tiled"]
    row = {"config": name, "options": options, "set": set_name, "seed": seed, "minutes": a.minutes,
           "fg_iou": tiled["fg_iou"], "epochs": metrics["training"]["epochs"],
           "precision": metrics["training"]["precision"]}
    with lock, open(os.path.join(a.out, "sweep.jsonl"), "a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)


def summary(path):
    by = collections.defaultdict(lambda: collections.defaultdict(list))
    for line in open(path):
        r = json.loads(line)
        by[r["config"]][r["set"]].append(r["fg_iou"])
    rows = sorted(((np.mean([np.mean(v) for v in sets.values()]), name, sets) for name, sets in by.items()),
                  key=lambda row: -row[0])
    for mean, name, sets in rows:
        per = "  ".join(f"{s} {np.mean(v):.4f} +- {np.std(v, ddof=1) if len(v) > 1 else 0.0:.4f} (n={len(v)})"
                        for s, v in sorted(sets.items()))
        print(f"{name:24s} mean {mean:.4f}  {per}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("data", nargs="*")
    ap.add_argument("--minutes", type=float)
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--holdout", type=float, default=0.2, help="share of the training slices held out (0.2)")
    ap.add_argument("--config", action="append", default=[], help="NAME[:KEY=VALUE;KEY=VALUE...]")
    ap.add_argument("--summary", action="store_true", help="print the summary of OUT/sweep.jsonl and stop")
    a = ap.parse_args()
    a.out = os.path.abspath(a.out)
    path = os.path.join(a.out, "sweep.jsonl")
    if a.summary:
        if not os.path.isfile(path):
            fail(f"{path}: not found; run a sweep into OUT first")
        return summary(path)
    if not a.data or not a.config or not a.minutes or a.minutes <= 0:
        fail("give DATA, --minutes (above 0) and at least one --config")
    if not 0 < a.holdout < 1:
        fail(f"--holdout {a.holdout}: expected a share between 0 and 1")
    configs = [parse_config(c) for c in a.config]
    seeds = [int(s) for s in a.seeds.split(",")]
    for d in a.data:
        for sub in ("train/x", "train/y"):
            if not os.path.isdir(os.path.join(d, sub)):
                fail(f"DATA {d}: no {sub} folder; expected the template layout")
    splits = {os.path.basename(os.path.normpath(d)): validation_split(os.path.abspath(d), a.holdout)
              for d in a.data}
    for name, split in splits.items():
        link(split, os.path.join(a.out, "valsets", name))
        print(f"{name}: {len(split['train'])} training slices, the last {len(split['test'])} held out", flush=True)
    done = set()
    if os.path.isfile(path):
        done = {(r["config"], r["set"], r["seed"], r["minutes"]) for r in map(json.loads, open(path))}
    todo = [(name, options, s, seed) for seed in seeds for name, options in configs for s in splits
            if (name, s, seed, a.minutes) not in done]
    cores, lock = [1, 0], threading.Lock()
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda job: run_one(a, cores, lock, *job), todo))
    summary(path)


if __name__ == "__main__":
    main()
