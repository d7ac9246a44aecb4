"""Template-layout data for the peers (BiaPy, nnU-Net v2), their test predictions read back, and this project's score.

Runs with the project's interpreter (``.venv/bin/python``: numpy and tifffile; scoring imports
:mod:`lib.evaluate.metrics`). The template layout is ``DATA/{train,test}/{x,y}/*.tif``, one 2D slice per
file, masks binary 0/255 or class ids ``0 .. K-1``; files are taken in sorted order, and a mask pairs with
the image of the same rank.

usage:
  python convert.py biapy  DATA OUT                     # OUT/{train,test}/{x,y}/, masks 0/1 (or ids 0..K-1)
  python convert.py nnunet DATA RAW ID NAME [--labels a,b]
      # RAW/DatasetIDNAME/{imagesTr,labelsTr,imagesTs}, dataset.json
  python convert.py score  {biapy,nnunet} PRED_DIR DATA [--cases CASES.json]
"""
import argparse
import glob
import json
import os
import sys

import numpy as np
import tifffile

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def fail(message):
    """Bad input to a benchmark command: one ``error:`` line on stderr and exit status 2, as the templates do."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def files(data, split, sub):
    """Sorted ``DATA/split/sub/*.tif`` (and ``*.tiff``)."""
    folder = os.path.join(data, split, sub)
    found = sorted(glob.glob(os.path.join(folder, "*.tif")) + glob.glob(os.path.join(folder, "*.tiff")))
    if not found:
        fail(f"no TIFF in {os.path.join(data, split, sub)}")
    return found


def read2d(path):
    a = np.squeeze(tifffile.imread(path))
    if a.ndim != 2:
        fail(f"{path}: expected one 2D slice, got shape {a.shape}")
    return a


def mask_classes(data):
    """``(K, binary)``: classes K counting the background, and whether the masks are 0/255 (binary, K = 2)."""
    values = set()
    for split in ("train", "test"):
        for f in files(data, split, "y"):
            values |= set(np.unique(read2d(f)).tolist())
    if values <= {0, 255}:
        return 2, True
    if values <= {0, 1}:
        return 2, False
    return int(max(values)) + 1, False


def to_labels(mask, binary):
    """Class ids of a template mask: 0/255 -> 0/1, ids kept."""
    return (mask > 0).astype(np.uint8) if binary else mask.astype(np.uint8)


def _pairs(data, split):
    xs, ys = files(data, split, "x"), files(data, split, "y")
    if len(xs) != len(ys):
        fail(f"{data}/{split}: {len(xs)} images but {len(ys)} masks")
    return list(zip(xs, ys))


def to_biapy(data, out):
    """BiaPy's semantic-segmentation folders: ``OUT/{train,test}/{x,y}/`` with the original file names.

    Images are written as they are (uncompressed); masks as class ids (0/1 for a binary set), since BiaPy
    expects ``DATA.N_CLASSES`` ids in its masks. Returns ``{"n_classes": K, "binary": bool}``.
    """
    k, binary = mask_classes(data)
    for split in ("train", "test"):
        for sub in ("x", "y"):
            os.makedirs(os.path.join(out, split, sub), exist_ok=True)
        for x, y in _pairs(data, split):
            name = os.path.splitext(os.path.basename(x))[0] + ".tif"
            tifffile.imwrite(os.path.join(out, split, "x", name), read2d(x))
            tifffile.imwrite(os.path.join(out, split, "y", name), to_labels(read2d(y), binary))
    info = {"n_classes": k, "binary": binary, "test_names": [os.path.splitext(os.path.basename(x))[0]
                                                             for x in files(data, "test", "x")]}
    with open(os.path.join(out, "peer_info.json"), "w") as f:
        json.dump(info, f, indent=1)
    return info


def to_nnunet(data, raw, dataset_id, name, labels=None, spacing=None):
    """An nnU-Net v2 raw data set ``RAW/DatasetXXX_NAME`` (``imagesTr``, ``labelsTr``, ``imagesTs``, ``dataset.json``).

    2D slices stay TIFF, read by nnU-Net's ``NaturalImage2DIO`` (named in dataset.json: its ``.tif`` reader
    for 2D images; ``Tiff3DIO`` is for 3D stacks). Cases are ``tr_0000 ..`` and ``ts_0000 ..`` in sorted order
    (one channel, ``_0000``; channel name "EM": z-score normalisation); ``cases.json`` keeps the original
    names. Labels are class ids: 0/1 for a binary set (``labels`` names the foreground, default
    "foreground"), ``0 .. K-1`` otherwise (``labels``: the K-1 foreground names, default class1 ..).
    With ``spacing`` (z, y, x) the sorted slices of each split form one volume instead, for nnU-Net's 3D
    configurations: cases ``tr_0000`` and ``ts_0000``, 3D TIFFs read by ``Tiff3DIO``, each with the
    ``CASE.json`` holding its spacing that Tiff3DIO reads. Returns the data set folder.
    """
    k, binary = mask_classes(data)
    folder = os.path.join(raw, f"Dataset{int(dataset_id):03d}_{name}")
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        os.makedirs(os.path.join(folder, sub), exist_ok=True)
    cases = {"train": [], "test": []}
    for split, prefix, images, masks in (("train", "tr", "imagesTr", "labelsTr"),
                                         ("test", "ts", "imagesTs", "labelsTs")):
        pairs = _pairs(data, split)
        if spacing is not None:
            case = f"{prefix}_0000"
            tifffile.imwrite(os.path.join(folder, images, f"{case}_0000.tif"), np.stack([read2d(x) for x, _ in pairs]))
            tifffile.imwrite(os.path.join(folder, masks, f"{case}.tif"),
                             np.stack([to_labels(read2d(y), binary) for _, y in pairs]))
            for sub in (images, masks):
                with open(os.path.join(folder, sub, f"{case}.json"), "w") as f:
                    json.dump({"spacing": [float(v) for v in spacing]}, f)
            cases[split].append({"case": case, "names": [os.path.splitext(os.path.basename(x))[0] for x, _ in pairs]})
            continue
        for i, (x, y) in enumerate(pairs):
            case = f"{prefix}_{i:04d}"
            tifffile.imwrite(os.path.join(folder, images, f"{case}_0000.tif"), read2d(x))
            tifffile.imwrite(os.path.join(folder, masks, f"{case}.tif"), to_labels(read2d(y), binary))
            cases[split].append({"case": case, "name": os.path.splitext(os.path.basename(x))[0]})
    names = labels or (["foreground"] if k == 2 else [f"class{c}" for c in range(1, k)])
    if len(names) != k - 1:
        fail(f"--labels: {len(names)} label names for {k - 1} foreground classes")
    dataset = {
        "channel_names": {"0": "EM"},
        "labels": {"background": 0, **{n: c for c, n in enumerate(names, 1)}},
        "numTraining": len(cases["train"]),
        "file_ending": ".tif",
        "overwrite_image_reader_writer": "NaturalImage2DIO" if spacing is None else "Tiff3DIO",
        "name": name,
        "description": f"converted from {os.path.abspath(data)} (template layout)",
    }
    with open(os.path.join(folder, "dataset.json"), "w") as f:
        json.dump(dataset, f, indent=1)
    with open(os.path.join(folder, "cases.json"), "w") as f:
        json.dump({**cases, "n_classes": k, "binary": binary}, f, indent=1)
    return folder


def read_biapy(pred_dir, data):
    """BiaPy's test predictions (``per_image_binarized/`` or ``full_image_binarized/`` of its result folder,
    named as the test images), as class-id arrays in the order of ``DATA/test/x``."""
    out = []
    for x in files(data, "test", "x"):
        name = os.path.splitext(os.path.basename(x))[0] + ".tif"
        p = os.path.join(pred_dir, name)
        if not os.path.exists(p):
            raise SystemExit(f"BiaPy wrote no prediction {p}")
        out.append(np.squeeze(tifffile.imread(p)))
    return out


def read_nnunet(pred_dir, cases_json):
    """nnU-Net's test segmentations (``PRED_DIR/ts_XXXX.tif``, class ids), in the order of ``DATA/test/x``
    (a 3D case: its slices)."""
    with open(cases_json) as f:
        cases = json.load(f)["test"]
    out = []
    for c in cases:
        p = os.path.join(pred_dir, c["case"] + ".tif")
        if not os.path.exists(p):
            raise SystemExit(f"nnU-Net wrote no prediction {p}")
        seg = tifffile.imread(p)
        if "names" in c:
            if seg.ndim != 3 or len(seg) != len(c["names"]):
                raise SystemExit(f"{p}: shape {seg.shape}; expected {len(c['names'])} slices")
            out.extend(seg)
        else:
            out.append(np.squeeze(seg))
    return out


def score(preds, data):
    """This project's pixel metrics of class-id predictions against ``DATA/test/y``, pooled over the test set.

    Binary set: ``fg_iou``, ``mean_iou``, ``dice``, ``precision``, ``recall`` of
    :func:`lib.evaluate.metrics.pixel_metrics` (prediction != 0 against mask != 0). K classes: as
    :func:`lib.evaluate.evaluation.class_scores` does, each class scored against the others; ``fg_iou``,
    ``dice``, ``precision``, ``recall`` the mean over the foreground classes, ``mean_iou`` over all K,
    ``c<c>_fg_iou`` each class's IoU.
    """
    if REPO not in sys.path:
        sys.path.insert(0, REPO)
    from lib.evaluate.metrics import PixelCounts

    k, binary = mask_classes(data)
    gts = [to_labels(read2d(y), binary) for y in files(data, "test", "y")]
    if len(preds) != len(gts):
        raise SystemExit(f"{len(preds)} predictions for {len(gts)} test masks")
    counts = [PixelCounts() for _ in range(k)]
    for i, (p, g) in enumerate(zip(preds, gts)):
        p = np.asarray(p)
        if p.shape != g.shape:
            raise SystemExit(f"test item {i}: prediction shape {p.shape} differs from mask shape {g.shape}")
        for c in range(k):
            counts[c] += PixelCounts.from_arrays(p == c, g == c)
    if k == 2:
        return {m: float(v) for m, v in counts[1].metrics().items()}
    per = [counts[c].metrics() for c in range(k)]
    out = {m: float(np.mean([per[c][m] for c in range(1, k)])) for m in ("fg_iou", "dice", "precision", "recall")}
    out["mean_iou"] = float(np.mean([per[c]["fg_iou"] for c in range(k)]))
    out.update({f"c{c}_fg_iou": float(per[c]["fg_iou"]) for c in range(k)})
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("biapy")
    b.add_argument("data")
    b.add_argument("out")
    n = sub.add_parser("nnunet")
    n.add_argument("data")
    n.add_argument("raw")
    n.add_argument("id", type=int)
    n.add_argument("name")
    n.add_argument("--labels", help="comma-separated names of the foreground classes")
    s = sub.add_parser("score")
    s.add_argument("peer", choices=("biapy", "nnunet"))
    s.add_argument("pred_dir")
    s.add_argument("data")
    s.add_argument("--cases", help="nnU-Net: the cases.json of the raw data set")
    a = ap.parse_args()
    if a.cmd == "biapy":
        print(json.dumps(to_biapy(a.data, a.out)))
    elif a.cmd == "nnunet":
        print(to_nnunet(a.data, a.raw, a.id, a.name, a.labels.split(",") if a.labels else None))
    else:
        preds = read_biapy(a.pred_dir, a.data) if a.peer == "biapy" else read_nnunet(a.pred_dir, a.cases)
        print(json.dumps(score(preds, a.data)))


if __name__ == "__main__":
    main()
