"""Instance metrics (lib.evaluate.matching) against a brute-force reference, and the table of objects
(lib.evaluate.objects) against shapes of known size."""

import itertools

import numpy as np
import pytest
from skimage.draw import disk, ellipsoid
from skimage.filters import gaussian
from skimage.measure import label

from lib.evaluate import matching, objects


def brute_force(pred, gt, scores):
    """Every pair's IoU by loops over ids; greedy matching (IoU, then score); COCO AP at 101 recall points."""
    pred_ids = [i for i in np.unique(pred) if i]
    gt_ids = [j for j in np.unique(gt) if j]
    pairs = []
    for i, j in itertools.product(pred_ids, gt_ids):
        a, b = pred == i, gt == j
        iou = (a & b).sum() / (a | b).sum()
        if iou >= 0.5:
            pairs.append((-iou, -scores[i], i, j, iou))
    matched, used = {}, set()
    for _, _, i, j, iou in sorted(pairs):
        if i not in matched and j not in used:
            matched[i], _ = iou, used.add(j)
    out = {}
    for t in (0.5, 0.75):
        tp = sum(v >= t for v in matched.values())
        tag = round(t * 100)
        out[f"precision_{tag}"] = tp / len(pred_ids) if pred_ids else float(not gt_ids)
        out[f"recall_{tag}"] = tp / len(gt_ids) if gt_ids else float(not pred_ids)
        out[f"f1_{tag}"] = 2 * tp / (len(pred_ids) + len(gt_ids)) if pred_ids or gt_ids else 1.0
    aps = []
    for t in matching.IOU_THRESHOLDS:
        ranked = sorted(pred_ids, key=lambda i: -scores[i])
        hits = [matched.get(i, 0.0) >= t for i in ranked]
        precisions = [sum(hits[:k + 1]) / (k + 1) for k in range(len(hits))]
        recalls = [sum(hits[:k + 1]) / len(gt_ids) for k in range(len(hits))]
        ap = 0.0
        for r in np.linspace(0, 1, 101):
            ap += max([p for p, q in zip(precisions, recalls) if q >= r - 1e-12], default=0.0) / 101
        aps.append(ap)
    out.update(ap_50=aps[0], ap_75=aps[5], map=float(np.mean(aps)))
    return out


@pytest.mark.parametrize("seed", range(6))
def test_instance_metrics_equal_a_brute_force_reference(seed):
    rng = np.random.default_rng(seed)
    gt = label(gaussian(rng.random((64, 64)), 2) > 0.5)
    # the reference, disturbed: shifted, holes, merged, split, missing and extra objects (F1@0.5 from 0 to 0.92)
    pred = np.roll(gt, rng.integers(-2, 3), axis=int(rng.integers(0, 2)))
    pred[rng.random(pred.shape) > 0.95] = 0
    pred[gaussian(rng.random(pred.shape), 2) > 0.54] = 1000
    pred = label(pred > 0) if seed % 2 else pred  # even seeds: ids kept, an object may be in pieces
    prob = rng.random(gt.shape)
    found = matching.Matches.from_labels(pred, gt, prob).metrics()
    sums = np.bincount(pred.ravel(), weights=prob.ravel())
    counts = np.bincount(pred.ravel())
    scores = {i: sums[i] / counts[i] for i in np.unique(pred) if i}
    expected = brute_force(pred, gt, scores)
    assert found.keys() == expected.keys()
    for key, value in expected.items():
        assert found[key] == pytest.approx(value, abs=1e-9), key


def test_instance_metrics_of_known_cases():
    gt = np.zeros((20, 20), np.uint8)
    gt[2:6, 2:6], gt[10:14, 10:14] = 1, 2
    assert matching.Matches.from_labels(gt, gt).metrics() == {
        "precision_50": 1.0, "recall_50": 1.0, "f1_50": 1.0, "precision_75": 1.0, "recall_75": 1.0, "f1_75": 1.0,
        "ap_50": 1.0, "ap_75": 1.0, "map": 1.0}
    merged = np.zeros_like(gt)
    merged[2:14, 2:14] = 1  # one object over both: IoU 16/144 with each, no match
    found = matching.Matches.from_labels(merged, gt).metrics()
    assert found["f1_50"] == 0.0 and found["ap_50"] == 0.0
    halves = np.zeros((4, 8), np.uint8)  # a prediction of two equal halves: IoU exactly 0.5 with each, one match
    halves[:, 4:] = 1
    pooled = matching.Matches.from_labels(np.ones((4, 8), np.uint8), halves + 1)
    assert pooled.metrics()["precision_50"] == 1.0 and pooled.metrics()["recall_50"] == 0.5
    assert (pooled + matching.Matches.from_labels(gt, gt)).metrics()["f1_50"] == pytest.approx(2 * 3 / (3 + 4))
    nothing = matching.Matches.from_labels(np.zeros_like(gt), np.zeros_like(gt)).metrics()
    assert set(nothing.values()) == {1.0}
    missed = matching.Matches.from_labels(np.zeros_like(gt), gt).metrics()  # nothing found of two objects
    assert set(missed.values()) == {0.0}
    with pytest.raises(ValueError, match="predicted labels: expected non-negative integer labels"):
        matching.Matches.from_labels(gt.astype(np.float32), gt)


def test_table_of_a_disc_and_a_rectangle_in_nanometres():
    image = np.zeros((100, 100), np.uint16)
    rr, cc = disk((50, 50), 20)
    image[rr, cc] = 3
    image[5:10, 5:15] = 7
    rows = objects.object_table(image, voxel_size=(2.0, 2.0), unit="nm", prob=np.full(image.shape, 0.8))
    disc, box = rows
    assert [r["id"] for r in rows] == [3, 7] and box["voxels"] == 50 and box["size"] == 200.0
    assert box["unit"] == "nm^2" and box["perimeter"] == pytest.approx(2 * (8 + 18))  # scikit-image's, in nm
    assert disc["size"] == pytest.approx(np.pi * 40 ** 2, rel=0.02)
    assert disc["equivalent_diameter"] == pytest.approx(80, rel=0.01)
    assert disc["perimeter"] == pytest.approx(2 * np.pi * 40, rel=0.05)
    assert (disc["centroid_y"], disc["centroid_x"]) == (50.0, 50.0)  # in pixels, to find it in the image
    assert (box["bbox_y_start"], box["bbox_y_stop"], box["bbox_x_start"], box["bbox_x_stop"]) == (5, 10, 5, 15)
    assert box["mean_probability"] == pytest.approx(0.8) and box["solidity"] == 1.0
    assert box["major_axis"] > box["minor_axis"]
    row = objects.summary(rows, image.shape, (2.0, 2.0), "nm")
    assert row["objects"] == 2 and row["density"] == pytest.approx(2 / 40000)
    assert row["foreground_fraction"] == pytest.approx((disc["size"] + 200) / 40000)


def test_table_of_a_ball_in_an_anisotropic_volume():
    ball = ellipsoid(10, 10, 10).astype(np.uint8)  # a ball of radius 10 voxels
    volume = np.pad(ball, 3)
    rows = objects.object_table(volume, voxel_size=(1.0, 1.0, 1.0), unit="um")
    assert len(rows) == 1 and rows[0]["unit"] == "um^3"
    assert rows[0]["size"] == pytest.approx(4 / 3 * np.pi * 1000, rel=0.02)
    assert rows[0]["surface_area"] == pytest.approx(4 * np.pi * 100, rel=0.12)  # marching cubes on voxels
    flat = objects.object_table(volume[::2], voxel_size=(2.0, 1.0, 1.0))[0]  # every second slice, twice as thick
    assert flat["size"] == pytest.approx(rows[0]["size"], rel=0.03)
    with pytest.raises(ValueError, match="voxel_size: expected 3 positive sizes"):
        objects.object_table(volume, voxel_size=(1.0, 1.0))


def test_evaluation_writes_instances_and_tables_and_scores_them(tmp_path):
    """The passthrough 'network' predicts the image itself: touching discs merge into one component, a speck
    smaller than post.min_size is dropped, and the instance metrics are those of the written label images."""
    import csv

    import tifffile

    from lib import config
    from lib.evaluate.evaluation import evaluate_test_set

    truth = np.zeros((2, 48, 64), np.int32)
    for i, (centre, radius) in enumerate((((12, 14), 6), ((12, 24), 6), ((34, 44), 9))):  # discs 1 and 2 touch
        rr, cc = disk(centre, radius, shape=truth.shape[1:])
        truth[:, rr, cc] = i + 1
    probs = np.where(truth > 0, 0.9, 0.05).astype(np.float32)
    probs[:, 40:42, 5:7] = 0.9  # a 4-pixel speck
    items = [(probs[i][..., None], (truth[i] > 0).astype(np.uint8), f"s{i}") for i in range(2)]
    cfg = config.from_dict({"inference": {"overlays": 1}, "post": {"instances": True, "min_size": 5,
                                                                    "z_filter": False},
                            "data": {"voxel_size": [4.0, 4.0], "voxel_unit": "nm"}}).validate()
    pred_dir = tmp_path / "predictions"
    results, _ = evaluate_test_set(lambda b: b[..., 0], items, (16, 16), cfg, str(pred_dir))
    written = tifffile.imread(pred_dir / "tiled" / "instances" / "s0.tif")
    assert written.dtype == np.uint32 and written.max() == 2  # the merged pair and the big disc; no speck
    # the reference instances of a binary test mask are its connected components (the touching pair is one)
    reference = sum((matching.Matches.from_labels(written, label(truth[i] > 0), probs[i]) for i in range(2)),
                    matching.Matches()).metrics()
    assert {k: results["tiled"][k] for k in reference} == pytest.approx(reference)
    assert results["tiled"]["f1_50"] == 1.0  # 2 predicted, 2 reference objects per image
    with open(pred_dir / "tiled" / "objects.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["image"], r["id"]) for r in rows] == [("s0", "1"), ("s0", "2"), ("s1", "1"), ("s1", "2")]
    big = next(r for r in rows if r["image"] == "s0" and int(r["voxels"]) == int(np.count_nonzero(truth[0] == 3)))
    assert big["unit"] == "nm^2" and float(big["size"]) == pytest.approx(16 * int(big["voxels"]))
    assert float(big["mean_probability"]) == pytest.approx(0.9)
    with open(pred_dir / "tiled" / "objects_summary.csv") as fh:
        summary = list(csv.DictReader(fh))
    assert [int(r["objects"]) for r in summary] == [2, 2] and summary[0]["unit"] == "nm^2"
    for chart in ("objects.png", "object_sizes.png", "overlays.png"):  # pictures a user opens
        assert (tmp_path / "charts" / chart).stat().st_size > 5000


# --------------------------------------------------------------------------- objects of a store of any size

def border_crossing_volume():
    """A 12 x 40 x 48 mask whose blobs cross the borders of 2 x 2 x 2 blocks of 6 x 20 x 24, and specks."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(7)
    mask = gaussian_filter(rng.random((12, 40, 48)), 1.5) > 0.53
    mask[5:7, 18:22, 22:26] = True  # a small cube on the corner shared by all eight blocks
    return mask.astype(np.uint8)


def store_of(mask, path):
    import zarr

    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    root.create_array("mask", shape=mask.shape, chunks=(6, 20, 24), dtype="uint8")[:] = mask
    root.create_array("prob", shape=mask.shape, chunks=(6, 20, 24), dtype="uint8")[:] = mask * 200 + 20
    root.create_array("objects", shape=mask.shape, chunks=(6, 20, 24), dtype="uint32")
    return root


@pytest.mark.parametrize("where", ["in process", "2 dask workers"])
def test_objects_cut_by_block_borders_get_one_id_and_one_row(tmp_path, where):
    from lib.predict import blockwise, instances

    mask = border_crossing_volume()
    root = store_of(mask, tmp_path / "s.zarr")
    whole = instances.connected_components(mask, min_size=4)
    assert whole.max() >= 10
    _, blocks = blockwise.block_grid(mask.shape, (6, 20, 24))
    client = cluster = None
    if where != "in process":
        client, cluster = blockwise.connect("local:2", threads=1)
    try:
        run_tasks = blockwise.run_tasks_on(client) if client else blockwise.run_tasks_in_process
        count = instances.label_store((str(tmp_path / "s.zarr"), "mask"), (str(tmp_path / "s.zarr"), "objects"),
                                      (6, 20, 24), run_tasks, min_size=4)
        rows = objects.store_table((str(tmp_path / "s.zarr"), "objects"), (str(tmp_path / "s.zarr"), "prob"),
                                   blocks, run_tasks, voxel_size=(2.0, 1.0, 1.0), unit="nm")
    finally:
        if client is not None:
            client.close()
            cluster.close()
    # the same objects as in one piece, up to their numbering: one id of each for the other's
    found = root["objects"][...]
    pairs = np.unique(np.stack([found.ravel(), whole.ravel()]), axis=1)
    assert count == whole.max() == found.max() and pairs.shape[1] == count + 1
    expected = objects.object_table(whole, (2.0, 1.0, 1.0), "nm", (mask * 200 + 20) / np.float32(255))
    assert [r["id"] for r in rows] == list(range(1, count + 1))  # every object once
    renumbered = dict(zip(pairs[1].tolist(), pairs[0].tolist()))
    expected = sorted(({**r, "id": renumbered[r["id"]]} for r in expected), key=lambda r: r["id"])
    for got, want in zip(rows, expected):
        assert got.keys() == want.keys()
        for key, value in want.items():
            assert got[key] == (value if isinstance(value, str) else pytest.approx(value, rel=1e-5, nan_ok=True)), \
                (want["id"], key)


def test_predict_writes_the_objects_of_a_volume_and_their_table(tmp_path):
    import csv

    import tifffile
    import zarr
    from ome_zarr_models import open_ome_zarr

    from conftest import run_here, tiny_run_folder
    from lib.predict import instances

    run = tiny_run_folder(tmp_path / "tiny_0")
    volume = (np.random.default_rng(3).random((6, 40, 52)) * 200).astype(np.uint8)
    zarr.save_array(str(tmp_path / "vol.zarr"), volume, zarr_format=2)
    args = ["--model", str(run), "--gpu", "cpu", "--set", "inference.block_shape=[3,20,26]",
            "--set", "post.instances=true", "--set", "post.min_size=3", "--set", "data.voxel_size=[40,5,5]",
            "--set", "data.voxel_unit=nm"]
    result = run_here("templates/predict.py", str(tmp_path / "vol.zarr"), str(tmp_path / "seg.zarr"), *args)
    assert result.returncode == 0, result.stderr[-2000:]
    assert type(open_ome_zarr(str(tmp_path / "seg.zarr" / "labels" / "instances"))).__name__ == "ImageLabel"
    root = zarr.open_group(str(tmp_path / "seg.zarr"), mode="r")
    found = root["labels/instances/0"][...]
    assert found.max() >= 1
    whole = instances.connected_components(root["labels/mask/0"][...], 3)
    assert found.max() == whole.max() and np.unique(np.stack([found.ravel(), whole.ravel()]), axis=1).shape[1] == \
        whole.max() + 1  # the same objects, up to their numbering
    with open(tmp_path / "seg.zarr" / "objects.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["id"]) for r in rows] == list(range(1, found.max() + 1))
    assert all(r["unit"] == "nm^3" and float(r["size"]) == 1000 * int(r["voxels"]) for r in rows)
    again = run_here("templates/predict.py", str(tmp_path / "vol.zarr"), str(tmp_path / "seg.zarr"), *args)
    assert "nothing to do" in again.stdout
    folder = run_here("templates/predict.py", str(tmp_path / "vol.zarr"), str(tmp_path / "seg"), *args)
    assert folder.returncode == 0, folder.stderr[-2000:]
    assert np.array_equal(np.stack([tifffile.imread(tmp_path / "seg" / "instances" / f"slice_{z:05d}.tif")
                                    for z in range(6)]), found)
    assert (tmp_path / "seg" / "objects.csv").read_text() == (tmp_path / "seg.zarr" / "objects.csv").read_text()
    refused = run_here("templates/predict.py", str(tmp_path / "vol.zarr"), str(tmp_path / "seg.tif"), *args)
    assert refused.returncode == 2 and "post.instances=true: OUTPUT" in refused.stderr
    assert not (tmp_path / "seg.tif").exists()


@pytest.mark.parametrize("ndim", [2, 3])
def test_a_table_without_objects_keeps_the_columns_of_one_with_objects(ndim, tmp_path):
    from lib.data import io

    labels = np.zeros((12,) * ndim, np.uint16)
    labels[(slice(2, 7),) * ndim] = 4
    for prob in (None, np.full(labels.shape, 0.8, np.float32)):
        rows = objects.object_table(labels, prob=prob)
        assert list(rows[0]) == objects.columns(ndim, probability=prob is not None)
    header = io.rows_to_csv([], objects.columns(ndim)).splitlines()
    assert header == [",".join(objects.columns(ndim))]


def test_predict_finding_no_object_writes_the_header_of_the_table(tmp_path):
    import csv

    import zarr

    from conftest import run_here, tiny_run_folder

    run = tiny_run_folder(tmp_path / "tiny_0")
    zarr.save_array(str(tmp_path / "vol.zarr"), np.full((4, 32, 32), 100, np.uint8), zarr_format=2)
    result = run_here("templates/predict.py", str(tmp_path / "vol.zarr"), str(tmp_path / "seg.zarr"), "--model",
                      str(run), "--gpu", "cpu", "--set", "post.instances=true", "--set", "post.min_size=100000")
    assert result.returncode == 0, result.stderr[-2000:]
    with open(tmp_path / "seg.zarr" / "objects.csv") as fh:
        reader = csv.DictReader(fh)
        assert list(reader) == [] and reader.fieldnames == objects.columns(3, probability=True)
    with open(tmp_path / "seg.zarr" / "objects_summary.csv") as fh:
        assert next(csv.DictReader(fh))["objects"] == "0"
