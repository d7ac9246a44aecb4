"""Where a finished 2D run's errors lie, and what averaging several runs would give.

Usage::

    python tests/benchmarks/check_error_distance.py DATA_DIR RUN [RUN ...]

Reads each run's ``predictions/tiled/prob`` (the test images' probabilities, written by
the templates) and DATA_DIR/test/y, and prints one JSON line:

- ``runs``: per run, the fg_iou at threshold 0.5 (``p >= 0.5``) over the whole test set (the ``tiled``
  variant of its metrics.json, recomputed from the stored probabilities);
- ``errors``: per run, the false positives and false negatives counted by their distance
  (pixels, Euclidean) to the nearest pixel of the other class in the annotation: ``1``
  (touching the annotated edge), ``1-3``, ``3-6``, ``6+``. Errors within a pixel or two of
  the edge are disagreements on an object's outline (how thick a membrane is drawn); the
  farther ones are objects missed or invented;
- ``shifted``: per run, the fg_iou with every binary prediction moved by one pixel (``up``,
  ``down``, ``left``, ``right``; ``none`` unmoved), the images' outermost rows and columns left
  out of all five. A prediction centred on the annotation scores highest unmoved and about the
  same moved either way along an axis; a higher score moved one way says that the annotation
  sits off the centre of what the network predicts, e.g. half a pixel to one side of the
  membranes, which a network trained with flips cannot learn;
- with several runs, ``ensemble``: the fg_iou of the mean of their probabilities.

The ISBI 2012 figures of docs/benchmarks.md ("Where isbi2012 stops") come from this script.
"""

import json
import os
import sys

import numpy as np
from scipy import ndimage as ndi

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)
from lib.data import io  # noqa: E402
from lib.evaluate.metrics import pixel_metrics  # noqa: E402
from lib.predict.postprocess import binarize  # noqa: E402

SHIFTS = {"none": (0, 0), "up": (-1, 0), "down": (1, 0), "left": (0, -1), "right": (0, 1)}
BINS = ((0.0, 1.0, "1"), (1.0, 3.0, "1-3"), (3.0, 6.0, "3-6"), (6.0, np.inf, "6+"))


def fg_iou(masks, truths):
    """Foreground IoU over all images, pooled as the templates' evaluation does."""
    return round(pixel_metrics(masks, truths)["fg_iou"], 4)


def error_distances(masks, truths):
    """False positives and negatives by their distance to the annotated edge, summed over the images."""
    counts = {f"{kind} {name}": 0 for kind in ("fp", "fn") for _, _, name in BINS}
    for b, t in zip(masks, truths):
        for kind, wrong, distance in (("fp", b & ~t, ndi.distance_transform_edt(~t)),
                                      ("fn", ~b & t, ndi.distance_transform_edt(t))):
            for lo, hi, name in BINS:
                counts[f"{kind} {name}"] += int(np.count_nonzero(wrong & (distance > lo) & (distance <= hi)))
    return counts


def shifted_ious(masks, truths):
    """fg_iou of the masks moved by one pixel each way (:data:`SHIFTS`), the outermost pixels left out."""
    inner = [t[1:-1, 1:-1] for t in truths]
    return {name: fg_iou([np.roll(b, shift, axis=(0, 1))[1:-1, 1:-1] for b in masks], inner)
            for name, shift in SHIFTS.items()}


def main(data_dir, runs, threshold=0.5):
    truths = [io.read_image(p, mask=True).squeeze() > 0
              for p in io.list_images(os.path.join(data_dir, "test", "y"))]
    probs = []
    for run in runs:
        paths = io.list_images(os.path.join(run, "predictions", "tiled", "prob"))
        if len(paths) != len(truths):
            sys.exit(f"{run}: {len(paths)} probability maps in predictions/tiled/prob, expected {len(truths)} "
                     f"(the test images of {data_dir})")
        probs.append([io.read_image(p).squeeze().astype(np.float32) for p in paths])
    masks = [[binarize(p, threshold) for p in ps] for ps in probs]
    result = {"runs": {run: fg_iou(m, truths) for run, m in zip(runs, masks)},
              "errors": {run: error_distances(m, truths) for run, m in zip(runs, masks)},
              "shifted": {run: shifted_ious(m, truths) for run, m in zip(runs, masks)}}
    if len(runs) > 1:
        result["ensemble"] = fg_iou([binarize(np.mean(ps, axis=0), threshold) for ps in zip(*probs)], truths)
    print(json.dumps(result))


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2:])
