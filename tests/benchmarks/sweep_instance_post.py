"""How objects are found from instance channels: a sweep of the post-processing options on validation images.

usage: python tests/benchmarks/sweep_instance_post.py OUT.jsonl SET=MASKS_DIR=RUN ... [--summary]

Each ``RUN`` is a run folder of a bc model whose ``predictions/tiled/prob/`` holds the channels of validation
images (predict them with ``--set train.epochs=0 --set train.pretrained=TRAINED_RUN --set post.z_filter=false``
and a DATA_DIR whose ``test/`` holds them), ``MASKS_DIR`` their label masks (same order). For every setting of
``inference.threshold`` (0.3-0.6), ``post.contour_threshold`` (0.3-0.7), ``post.seed_height`` (1-4) and
``post.min_size`` (0-200) the objects are found as the template finds them
(:func:`lib.predict.instances.from_channels`) and matched to the masks' objects: one JSON line per run and
setting with F1@0.5 and the relative error of the count and of the total size. ``--summary`` then prints, per
setting, the mean F1 of each SET over its runs (seeds) with the standard deviation, best first.
"""

import collections
import glob
import itertools
import json
import os
import sys

import numpy as np
import tifffile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from lib.evaluate.matching import Matches  # noqa: E402
from lib.evaluate.objects import reference_objects  # noqa: E402
from lib.predict.instances import drop_small, from_channels  # noqa: E402

THRESHOLDS, CONTOURS, HEIGHTS = (0.3, 0.4, 0.5, 0.6), (0.3, 0.5, 0.7), (1, 2, 3, 4)
MIN_SIZES = (0, 10, 25, 50, 100, 200)


def sweep(out, set_name, masks, run):
    names = sorted(os.listdir(f"{run}/predictions/tiled/prob"))
    gts = [reference_objects(tifffile.imread(f)) for f in sorted(glob.glob(f"{masks}/*.tif"))]
    if len(gts) != len(names):
        raise SystemExit(f"error: {masks}: {len(gts)} masks for the {len(names)} predictions of {run}")
    probs = [np.moveaxis(tifffile.imread(f"{run}/predictions/tiled/prob/{n}"), 0, -1) for n in names]
    count, size = sum(int(g.max()) for g in gts), sum(int((g > 0).sum()) for g in gts)
    for t, c, h in itertools.product(THRESHOLDS, CONTOURS, HEIGHTS):
        found = [from_channels(p, t, c, 0.5, h, 0) for p in probs]
        for min_size in MIN_SIZES:
            m, n, v = Matches(), 0, 0
            for labels, g in zip(found, gts):
                labels = drop_small(labels, min_size)
                m += Matches.from_labels(labels, g)
                n, v = n + int(labels.max()), v + int((labels > 0).sum())
            out.write(json.dumps({"run": run, "set": set_name, "t": t, "c": c, "h": h, "min_size": min_size,
                                  "f1_50": m.metrics()["f1_50"], "count_err": n / count - 1,
                                  "size_err": v / size - 1}) + "\n")


def summary(path):
    by = collections.defaultdict(lambda: collections.defaultdict(list))
    for line in open(path):
        r = json.loads(line)
        by[(r["t"], r["c"], r["h"], r["min_size"])][r["set"]].append(r["f1_50"])
    rows = sorted(((np.mean([np.mean(v) for v in sets.values()]), k, sets) for k, sets in by.items()),
                  key=lambda row: -row[0])
    for mean, (t, c, h, min_size), sets in rows:
        per = " ".join(f"{s} {np.mean(v):.3f}±{np.std(v, ddof=1) if len(v) > 1 else 0:.3f}"
                       for s, v in sorted(sets.items()))
        print(f"threshold {t} contour {c} h {h} min_size {min_size}: mean F1@0.5 {mean:.3f} | {per}")


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--summary"]
    if not args:
        raise SystemExit(__doc__)
    if args[1:]:
        with open(args[0], "a") as f:
            for item in args[1:]:
                sweep(f, *item.split("=", 2))
    if "--summary" in sys.argv:
        summary(args[0])
