"""evaluate_test_set on synthetic stacks whose right answers are known.

The predictor passes the image through (``predict = image``): a test image is
then a probability map, and every variant's output can be worked out by hand.
"""

import os
import weakref

import numpy as np
import pytest
import tifffile

from lib import config
from lib.errors import UserError
from lib.evaluate.evaluation import VARIANTS, enabled_variants, evaluate_test_set
from lib.evaluate.metrics import (
    mean_per_item_metrics,
    object_metrics,
    object_metrics_set,
    pixel_metrics,
    threshold_sweep,
)
from lib.predict.inference import crop_windows
from lib.predict.postprocess import oztel, z_filter


def passthrough(batch):
    return batch[..., 0].astype(np.float32)


def disk(shape, centre, radius):
    yy, xx = np.indices(shape)
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius ** 2


def flicker_stack(n=7, shape=(48, 64)):
    """Two objects through every slice; the 'prediction' adds a blob on slice n // 2 and a hole on slice n - 2.

    Returns probabilities (n, Y, X) float32 and the truth (n, Y, X) uint8.
    """
    truth = np.zeros((n,) + shape, np.uint8)
    truth[:, disk(shape, (14, 16), 7)] = 1
    truth[:, disk(shape, (32, 44), 9)] = 1
    # Values off the sweep's thresholds, so that blending's rounding cannot move a pixel across one.
    probs = np.where(truth, 0.93, 0.03).astype(np.float32)
    probs[n // 2][disk(shape, (38, 12), 5)] = 0.82
    probs[n - 2][disk(shape, (32, 44), 5)] = 0.12
    return probs, truth


class LazySet:
    """A test set that makes each item when asked and records what is still alive."""

    def __init__(self, probs, truth):
        self.probs, self.truth = probs, truth
        self.reads, self.images, self.masks, self.alive = [], [], [], []

    def __len__(self):
        return len(self.probs)

    def __getitem__(self, i):
        # Arrays hold no reference cycles: reference counting frees them at once, no gc needed.
        self.alive.append((sum(r() is not None for r in self.images), sum(r() is not None for r in self.masks)))
        self.reads.append(i)
        image, mask = self.probs[i][..., None].copy(), self.truth[i].copy()
        self.images.append(weakref.ref(image))
        self.masks.append(weakref.ref(mask))
        return image, mask, f"s{i:02d}"


def make_cfg(**sections):
    """A Config with every variant on and ``sections`` set; no overlay charts unless asked for (they take
    most of the time)."""
    cfg = config.from_dict({"inference": {"overlays": 0, "per_crop": True, "merged": True}, "post": {"oztel": True}})
    return config.from_dict(sections, base=cfg).validate()


def test_default_variants_are_one_tiled_pass_and_its_z_filter():
    assert enabled_variants(config.Config()) == ["tiled", "z_filter"]


def test_an_image_smaller_than_the_tile_is_predicted_in_one_pass(tmp_path):
    calls = []

    def predict(batch):
        calls.append(batch.shape)
        return batch[..., 0]

    image = np.random.default_rng(0).random((40, 72), dtype=np.float32)
    cfg = make_cfg(inference={"per_crop": False, "merged": False}, post={"z_filter": False, "oztel": False})
    results, _ = evaluate_test_set(predict, [(image[..., None], (image > 0.5).astype(np.uint8), "a")], (16, 16),
                                   cfg, str(tmp_path / "predictions"))
    # 4 crops wide by default (64 x 64): y fits in one tile of 48 (40 rounded up to the downsampling of 16);
    # x (72) needs tiles of 64 with overlap.
    assert all(shape[1:3] == (48, 64) for shape in calls)
    np.testing.assert_allclose(read(tmp_path, "tiled", "prob", "a"), image, atol=1e-6)
    assert results["tiled"]["fg_iou"] == 1.0


def read(run, variant, kind, name):
    return tifffile.imread(os.path.join(run, "predictions", variant, kind, f"{name}.tif"))


def test_streamed_results_equal_whole_set_metrics(tmp_path):
    probs, truth = flicker_stack()
    test_set = LazySet(probs, truth)
    cfg = make_cfg(post={"z_filter_size": 3}, inference={"overlays": 2})
    results, sweeps = evaluate_test_set(passthrough, test_set, (32, 32), cfg, str(tmp_path / "predictions"))

    # Streaming: each item read once, in order; no earlier image kept, masks only in the z window.
    assert test_set.reads == list(range(len(probs)))
    assert max(images for images, _ in test_set.alive) <= 1  # the previous loop item, being replaced
    assert max(masks for _, masks in test_set.alive) <= 3 + 1

    assert list(results) == ["per_crop", "merged", "tiled", "z_filter", "oztel"]
    assert set(sweeps) == {"merged", "tiled", "z_filter"}
    binary = probs >= 0.5
    for variant in ("merged", "tiled"):
        expected = {**pixel_metrics(binary, truth), **{k: object_metrics_set(binary, truth)[k] for k in ("det", "seg")}}
        assert {k: results[variant][k] for k in expected} == pytest.approx(expected)
        reference = threshold_sweep(probs, truth)
        for key in ("fg_iou", "dice", "best_threshold"):
            assert sweeps[variant][key] == pytest.approx(reference[key])
        assert results[variant]["best_threshold"] == sweeps[variant]["best_threshold"]
    # The blob and the hole are single-slice flicker: a 3-slice median along z removes both.
    assert results["tiled"]["fg_iou"] < 0.95 and results["tiled"]["det"] < 1
    assert {k: results["z_filter"][k] for k in ("fg_iou", "dice", "det", "seg")} == pytest.approx(
        {"fg_iou": 1.0, "dice": 1.0, "det": 1.0, "seg": 1.0})
    tiled, filtered = (np.stack([read(tmp_path, v, "prob", f"s{i:02d}") for i in range(7)])
                       for v in ("tiled", "z_filter"))
    np.testing.assert_array_equal(filtered, z_filter(tiled, 3))
    crops = [(b[w], t[w]) for b, t in zip(binary, truth) for w in crop_windows(t.shape, (32, 32))]
    per_crop = mean_per_item_metrics(*zip(*crops))
    assert {k: results["per_crop"][k] for k in per_crop} == pytest.approx(per_crop)

    for i in range(7):
        assert read(tmp_path, "tiled", "binary", f"s{i:02d}").max() == 255
        assert read(tmp_path, "tiled", "prob", f"s{i:02d}").dtype == np.float32
    assert not os.path.exists(tmp_path / "predictions" / "oztel" / "prob")
    assert os.path.getsize(tmp_path / "charts" / "overlays.png") > 0


def test_oztel_drops_the_low_confidence_object(tmp_path):
    shape = (64, 96)
    truth = disk(shape, (32, 30), 12).astype(np.uint8)
    probs = np.where(truth, 0.9, 0.05).astype(np.float32)
    probs[disk(shape, (32, 76), 6)] = 0.55  # a spurious, unsure object
    cfg = make_cfg(inference={"per_crop": False, "merged": False}, post={"z_filter": False})
    results, sweeps = evaluate_test_set(passthrough, [(probs[..., None], truth, "a")], (32, 32), cfg,
                                        str(tmp_path / "predictions"))
    assert list(results) == ["tiled", "oztel"] and list(sweeps) == ["tiled"]
    assert "best_threshold" not in results["oztel"]  # binary output: no sweep
    assert results["tiled"]["det"] == pytest.approx(1 - 1 / 10)  # one false positive
    assert results["oztel"]["det"] == 1.0 and results["oztel"]["precision"] > results["tiled"]["precision"]
    np.testing.assert_array_equal(read(tmp_path, "oztel", "binary", "a") // 255,
                                  oztel(read(tmp_path, "tiled", "prob", "a"), probs))


@pytest.mark.parametrize("overrides, expected", [
    ({"inference": {"tta": True}}, VARIANTS),
    ({"inference": {"tta": True}, "post": {"tta_z_filter": False, "oztel": False}},
     ("per_crop", "merged", "tiled", "tta", "z_filter")),
    ({"inference": {"per_crop": False, "merged": False, "tiled": False, "tta": True}, "post": {"z_filter": False}},
     ("tta", "tta_z_filter", "oztel")),
    ({"inference": {"per_crop": False}, "post": {"tta_z_filter": True, "z_filter": False, "oztel": False}},
     ("merged", "tiled")),
])
def test_each_variant_can_be_switched_off(tmp_path, overrides, expected):
    probs, truth = flicker_stack(n=3, shape=(32, 32))
    items = [(p[..., None], t, f"s{i}") for i, (p, t) in enumerate(zip(probs, truth))]
    results, sweeps = evaluate_test_set(passthrough, items, (32, 32), make_cfg(**overrides),
                                        str(tmp_path / "predictions"))
    assert tuple(results) == expected
    assert set(sweeps) == set(expected) - {"per_crop", "oztel"}
    written = set(os.listdir(tmp_path / "predictions"))
    assert written == set(expected) - {"per_crop"}
    for variant in expected:
        assert set(results[variant]) >= {"fg_iou", "mean_iou", "dice", "precision", "recall", "det", "seg"}
    if "tta" in expected:  # the pass-through predictor is equivariant: TTA changes nothing
        assert results["tta"] == pytest.approx(results["tiled" if "tiled" in expected else "tta"])


def test_2d_images_of_different_sizes_skip_z_filtering(tmp_path, capsys):
    probs, truth = flicker_stack(n=4)
    items = [(p[..., None], t, f"s{i}") for i, (p, t) in enumerate(zip(probs, truth))]
    items[2] = (probs[2][:, :40, None], truth[2][:, :40], "small")
    results, _ = evaluate_test_set(passthrough, items, (32, 32), make_cfg(), str(tmp_path / "predictions"))
    assert "z_filter" not in results and {"tiled", "oztel"} <= set(results)
    assert "differs in size from the first" in capsys.readouterr().out
    assert not os.path.exists(tmp_path / "predictions" / "z_filter")


def test_3d_volume_z_filter_and_3d_objects(tmp_path):
    probs, truth = flicker_stack(n=8)
    cfg = make_cfg(inference={"tta": True, "overlays": 3}, post={"z_filter_size": 3})
    results, sweeps = evaluate_test_set(passthrough, [(probs[..., None], truth, "vol")], (8, 16, 16), cfg,
                                        str(tmp_path / "predictions"))
    assert tuple(results) == VARIANTS
    tiled = read(tmp_path, "tiled", "prob", "vol")
    assert tiled.shape == probs.shape
    np.testing.assert_allclose(tiled, probs, atol=1e-6)
    np.testing.assert_array_equal(read(tmp_path, "z_filter", "prob", "vol"), z_filter(tiled, 3))
    # Objects are 3D components: two tubes, plus a one-slice blob as a false positive.
    expected = object_metrics(probs >= 0.5, truth)
    assert (expected["n_ref"], expected["fp"]) == (2, 1)
    assert results["tiled"]["det"] == pytest.approx(expected["det"])
    assert results["z_filter"]["det"] == 1.0 and results["z_filter"]["fg_iou"] == 1.0
    assert results["tta_z_filter"]["fg_iou"] == 1.0
    assert os.path.getsize(tmp_path / "charts" / "overlays.png") > 0


def test_bad_test_sets_are_refused(tmp_path):
    cfg = make_cfg()
    with pytest.raises(UserError, match="empty"):
        evaluate_test_set(passthrough, [], (32, 32), cfg, str(tmp_path))
    image = np.zeros((32, 32, 1), np.float32)
    with pytest.raises(UserError, match="test item a: mask shape"):
        evaluate_test_set(passthrough, [(image, np.zeros((32, 30), np.uint8), "a")], (32, 32), cfg, str(tmp_path))
    with pytest.raises(UserError, match="2 spatial axes"):
        evaluate_test_set(passthrough, [(image[..., 0], np.zeros((32, 32), np.uint8), "a")], (32, 32), cfg,
                          str(tmp_path))


def test_predictions_of_variants_switched_off_are_removed(tmp_path):
    probs, truth = flicker_stack(n=3)
    stale = tmp_path / "predictions" / "merged" / "binary"
    stale.mkdir(parents=True)
    (stale / "0.tif").write_bytes(b"from a killed attempt")
    cfg = config.from_dict({"inference": {"per_crop": False, "merged": False, "overlays": 0},
                            "post": {"z_filter": False, "oztel": False}})
    test_set = [(p[..., None], t, str(i)) for i, (p, t) in enumerate(zip(probs, truth))]
    results, _ = evaluate_test_set(passthrough, test_set, (16, 16), cfg, str(tmp_path / "predictions"))
    assert list(results) == ["tiled"]
    assert sorted(os.listdir(tmp_path / "predictions")) == ["tiled"]


def test_run_notes_say_which_checkpoint_and_warn_when_it_means_little():
    from lib.run.record import run_notes

    info = {"epochs": 9, "seconds": 300.0, "stopped_by": "time_limit", "best_epoch": 1, "monitor": "val_iou",
            "best_value": 0.41, "val_crops": 4, "predict_seconds": 12.5, "predict_megavoxels": 31.46,
            "predict_seconds_per_megavoxel": 0.397}
    lines = run_notes(info)
    assert lines[0] == "Training: 9 epochs, 300 s, stopped by time limit; predicting with epoch 1 (val_iou 0.4100)"
    assert any("best checkpoint is the first epoch's" in line for line in lines)
    assert any("chosen on 4 validation crops only" in line for line in lines)
    assert lines[-1] == "Prediction: 31.5 megavoxels in 12.5 s (0.40 s per megavoxel)"
    quiet = run_notes({**info, "best_epoch": 7, "val_crops": 64})
    assert len(quiet) == 2


def test_an_image_of_many_tiles_shows_the_progress_of_its_tiles(tmp_path, monkeypatch, capsys):
    import lib.evaluate.evaluation as evaluation
    from conftest import record_tile_bars

    bars = record_tile_bars(monkeypatch, evaluation)
    image = np.random.default_rng(0).random((300, 400, 1), dtype=np.float32)
    cfg = make_cfg(inference={"tta": True}, post={"z_filter": False, "oztel": False})
    evaluate_test_set(passthrough, [(image, (image[..., 0] > 0.5).astype(np.uint8), "big")], (16, 16), cfg,
                      str(tmp_path / "predictions"))
    # Tiles of 64 x 64 (4 crops wide), one per batch: 130 tiles, 8 transforms each with TTA.
    assert [(b.desc, b.total) for b in bars] == [("crops", 19 * 25), ("tiled", 130), ("tta", 8 * 130)]
    assert all(b.n == b.total for b in bars)  # each advanced batch by batch to its end
    err = capsys.readouterr().err
    assert "predicting:   0%|          | 0/1" in err
    assert "tiled:   0%|          | 0/130" in err and "tta:   0%|          | 0/1040" in err
