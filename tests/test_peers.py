"""The side-by-side runs' own code (tests/benchmarks/peers): the data in each peer's layout, their predictions read
back and scored with this project's metrics, and the driver's refusals. The peers themselves (BiaPy, nnU-Net) are
not needed: they live in .venv-biapy and .venv-nnunet (make peers), outside the tests."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tifffile

from lib.evaluate.metrics import PixelCounts

PEERS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "benchmarks", "peers")
sys.path.insert(0, PEERS)
import convert  # noqa: E402


def make_set(root, classes=1, n_train=3, n_test=2, size=32, seed=0):
    """A template-layout set: masks 0/255 (``classes`` 1) or class ids 0..classes."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        for sub in ("x", "y"):
            os.makedirs(os.path.join(root, split, sub))
        for i in range(n):
            tifffile.imwrite(os.path.join(root, split, "x", f"s{i:02d}.tif"),
                             rng.integers(0, 255, (size, size), dtype=np.uint8))
            ids = rng.integers(0, classes + 1, (size, size)).astype(np.uint8)
            tifffile.imwrite(os.path.join(root, split, "y", f"s{i:02d}.tif"), ids * 255 if classes == 1 else ids)
    return str(root)


def test_nnunet_dataset_has_its_layout_and_labels(tmp_path):
    data = make_set(tmp_path / "data")
    folder = convert.to_nnunet(data, str(tmp_path / "raw"), 7, "mito")
    assert os.path.basename(folder) == "Dataset007_mito"
    assert sorted(os.listdir(os.path.join(folder, "imagesTr"))) == ["tr_0000_0000.tif", "tr_0001_0000.tif",
                                                                    "tr_0002_0000.tif"]
    assert sorted(os.listdir(os.path.join(folder, "imagesTs"))) == ["ts_0000_0000.tif", "ts_0001_0000.tif"]
    dataset = json.load(open(os.path.join(folder, "dataset.json")))
    assert dataset["labels"] == {"background": 0, "foreground": 1}
    assert dataset["numTraining"] == 3 and dataset["file_ending"] == ".tif"
    assert dataset["overwrite_image_reader_writer"] == "NaturalImage2DIO"
    label = tifffile.imread(os.path.join(folder, "labelsTr", "tr_0001.tif"))
    mask = tifffile.imread(os.path.join(data, "train", "y", "s01.tif"))
    np.testing.assert_array_equal(label, (mask > 0).astype(np.uint8))  # 0/255 becomes 0/1
    np.testing.assert_array_equal(tifffile.imread(os.path.join(folder, "imagesTr", "tr_0001_0000.tif")),
                                  tifffile.imread(os.path.join(data, "train", "x", "s01.tif")))


def test_three_classes_keep_their_ids_and_names(tmp_path, capsys):
    data = make_set(tmp_path / "data", classes=2)
    folder = convert.to_nnunet(data, str(tmp_path / "raw"), 8, "axons", ["myelin", "axon"])
    assert json.load(open(os.path.join(folder, "dataset.json")))["labels"] == {"background": 0, "myelin": 1,
                                                                                "axon": 2}
    with pytest.raises(SystemExit) as refused:
        convert.to_nnunet(data, str(tmp_path / "raw2"), 9, "axons", ["axon"])
    assert refused.value.code == 2
    assert capsys.readouterr().err == "error: --labels: 1 label names for 2 foreground classes\n"
    info = convert.to_biapy(data, str(tmp_path / "biapy"))
    assert info["n_classes"] == 3 and not info["binary"]
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "biapy" / "test" / "y" / "s01.tif"),
                                  tifffile.imread(os.path.join(data, "test", "y", "s01.tif")))


def test_predictions_read_back_in_test_order_and_scored_as_the_project_does(tmp_path):
    data = make_set(tmp_path / "data", n_test=3)
    folder = convert.to_nnunet(data, str(tmp_path / "raw"), 7, "mito")
    gts = [(tifffile.imread(os.path.join(data, "test", "y", f"s{i:02d}.tif")) > 0).astype(np.uint8) for i in range(3)]
    pred = tmp_path / "pred"
    pred.mkdir()
    rng = np.random.default_rng(1)
    preds = [np.where(rng.random(g.shape) < 0.2, 1 - g, g).astype(np.uint8) for g in gts]  # 20 % of pixels flipped
    for i, p in enumerate(preds):
        tifffile.imwrite(pred / f"ts_{i:04d}.tif", p)
    back = convert.read_nnunet(str(pred), os.path.join(folder, "cases.json"))
    for b, p in zip(back, preds):
        np.testing.assert_array_equal(b, p)
    counts = PixelCounts()
    for p, g in zip(preds, gts):
        counts += PixelCounts.from_arrays(p > 0, g > 0)
    assert convert.score(back, data)["fg_iou"] == pytest.approx(counts.metrics()["fg_iou"])
    assert convert.score(gts, data)["fg_iou"] == 1.0
    with pytest.raises(SystemExit, match="2 predictions for 3 test masks"):
        convert.score(back[:2], data)


def test_side_by_side_refuses_bad_input_before_writing(tmp_path):
    script = os.path.join(PEERS, "side_by_side.py")
    out = tmp_path / "out"
    p = subprocess.run([sys.executable, script, str(tmp_path / "nothing"), "1", str(out)], capture_output=True,
                       text=True)
    assert p.returncode == 2 and "no train/x folder; expected the template layout" in p.stderr
    data = make_set(tmp_path / "data")
    p = subprocess.run([sys.executable, script, data, "1", str(out), "--tools", "biapy,cellpose"],
                       capture_output=True, text=True)
    assert p.returncode == 2 and "--tools biapy,cellpose: unknown cellpose" in p.stderr
    assert not out.exists()
    (out / "nnunet").mkdir(parents=True)
    p = subprocess.run([sys.executable, script, data, "1", str(out), "--tools", "nnunet"], capture_output=True,
                       text=True)
    assert p.returncode == 2 and "exist already" in p.stderr and os.listdir(out) == ["nnunet"]


def test_nnunet_3d_case_is_the_stack_of_slices_with_its_spacing(tmp_path):
    data = make_set(tmp_path / "data", n_train=4, n_test=3)
    folder = convert.to_nnunet(data, str(tmp_path / "raw"), 7, "mito", spacing=(50, 4, 4))
    assert sorted(os.listdir(os.path.join(folder, "imagesTr"))) == ["tr_0000.json", "tr_0000_0000.tif"]
    volume = tifffile.imread(os.path.join(folder, "imagesTr", "tr_0000_0000.tif"))
    assert volume.shape == (4, 32, 32)
    np.testing.assert_array_equal(volume[2], tifffile.imread(os.path.join(data, "train", "x", "s02.tif")))
    labels = tifffile.imread(os.path.join(folder, "labelsTr", "tr_0000.tif"))
    np.testing.assert_array_equal(labels[3], tifffile.imread(os.path.join(data, "train", "y", "s03.tif")) > 0)
    assert json.load(open(os.path.join(folder, "labelsTr", "tr_0000.json"))) == {"spacing": [50.0, 4.0, 4.0]}
    dataset = json.load(open(os.path.join(folder, "dataset.json")))
    assert dataset["overwrite_image_reader_writer"] == "Tiff3DIO" and dataset["numTraining"] == 1
    # nnU-Net's one 3D prediction comes back as the test slices, in order
    gts = [(tifffile.imread(os.path.join(data, "test", "y", f"s{i:02d}.tif")) > 0).astype(np.uint8) for i in range(3)]
    pred = tmp_path / "pred"
    pred.mkdir()
    tifffile.imwrite(pred / "ts_0000.tif", np.stack(gts))
    back = convert.read_nnunet(str(pred), os.path.join(folder, "cases.json"))
    assert len(back) == 3 and convert.score(back, data)["fg_iou"] == 1.0
    tifffile.imwrite(pred / "ts_0000.tif", np.stack(gts[:2]))
    with pytest.raises(SystemExit, match="expected 3 slices"):
        convert.read_nnunet(str(pred), os.path.join(folder, "cases.json"))


def test_side_by_side_refuses_an_unknown_template(tmp_path):
    data = make_set(tmp_path / "data")
    out = tmp_path / "out"
    p = subprocess.run([sys.executable, os.path.join(PEERS, "side_by_side.py"), data, "1", str(out),
                        "--tools", "template", "--template", "4D_template.py"], capture_output=True, text=True)
    assert p.returncode == 2 and "--template 4D_template.py: no such file" in p.stderr
    assert not out.exists()


def test_side_by_side_table_gives_each_tools_mean_and_spread_over_its_runs(tmp_path):
    lines = [{"tool": "template", "seed": s, "fg_iou": f, "steps": 800, "crops_per_s": 14.0, "wall_s": w,
              "predict_s_per_mvox": 0.5, "peak_rss_mb": 2000, "data": "/d/isbi2012", "budget_min": 20}
             for s, f, w in ((1, 0.678, 806), (2, 0.686, 813), (3, 0.682, 800))]
    lines += [{"tool": "naive", "seed": None, "repeat": k, "fg_iou": f, "steps": 1100, "crops_per_s": 5.5,
               "wall_s": 1209, "predict_s_per_mvox": 2.0, "peak_rss_mb": 1500, "data": "/d/isbi2012",
               "budget_min": 20} for k, f in ((1, 0.670), (2, 0.654))]
    for name, part in (("a", lines[:4]), ("b", lines[4:])):
        (tmp_path / name).mkdir()
        with open(tmp_path / name / "result.jsonl", "w") as f:
            f.write(json.dumps({"peer": "biapy", "fg_iou": 0.1}) + "\n")  # run_peer.py's own line: not a run
            f.writelines(json.dumps(r) + "\n" for r in part)
    p = subprocess.run([sys.executable, os.path.join(PEERS, "side_by_side.py"), "--table", str(tmp_path / "a"),
                        str(tmp_path / "b")], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    rows = p.stdout.splitlines()
    assert "| isbi2012 | template | seed 2 | 0.6860 | 800 |" in p.stdout
    assert "| isbi2012 | naive | 2 | 0.6540 |" in p.stdout
    assert "| isbi2012 | 20 | template | 3 | 0.682 ± 0.004 | 0.678 – 0.686 | 806 | 800 | 2000 |" in rows
    assert "| isbi2012 | 20 | naive | 2 | 0.662 ± 0.011 | 0.654 – 0.670 | 1209 | 1100 | 1500 |" in rows
    assert "0.1" not in p.stdout
    p = subprocess.run([sys.executable, os.path.join(PEERS, "side_by_side.py"), "--table", str(tmp_path / "c")],
                       capture_output=True, text=True)
    assert p.returncode == 2 and "OUT " + str(tmp_path / "c") + ": no result.jsonl" in p.stderr


def test_side_by_side_repeats_refuse_runs_already_done_before_writing(tmp_path):
    data = make_set(tmp_path / "data")
    out = tmp_path / "out"
    (out / "template_3").mkdir(parents=True)
    (out / "run_2" / "naive").mkdir(parents=True)
    script = os.path.join(PEERS, "side_by_side.py")
    for args, taken in ((["--tools", "template", "--runs", "3"], "template_3"),
                        (["--tools", "naive,template", "--seed", "4", "--runs", "2"], "run_2/naive")):
        p = subprocess.run([sys.executable, script, data, "1", str(out), *args], capture_output=True, text=True)
        assert p.returncode == 2 and taken in p.stderr and "exist already" in p.stderr, p.stderr
    p = subprocess.run([sys.executable, script, data, "1", str(out), "--runs", "0"], capture_output=True, text=True)
    assert p.returncode == 2 and "--runs 0" in p.stderr
    assert sorted(os.listdir(out)) == ["run_2", "template_3"] and os.listdir(out / "run_2") == ["naive"]


def test_sweep_holds_out_the_last_training_slices_and_refuses_bad_configs(tmp_path):
    script = os.path.join(os.path.dirname(PEERS), "sweep_defaults.py")
    sys.path.insert(0, os.path.dirname(PEERS))
    import sweep_defaults

    data = make_set(tmp_path / "data", n_train=10)
    split = sweep_defaults.validation_split(data, 0.2)
    assert [os.path.basename(x) for x, _ in split["test"]] == ["s08.tif", "s09.tif"]
    assert len(split["train"]) == 8 and all("/train/" in x for pairs in split.values() for x, _ in pairs)
    sweep_defaults.link(split, str(tmp_path / "val"))
    assert sorted(os.listdir(tmp_path / "val" / "test" / "y")) == ["s08.tif", "s09.tif"]
    assert sweep_defaults.parse_config("bn:model.batch_norm=true; train.batch_size=4") == (
        "bn", ["model.batch_norm=true", "train.batch_size=4"])
    out = tmp_path / "out"
    for args, message in (([data, "--minutes", "1", "--config", "a b:x=1"], "--config 'a b:x=1': expected"),
                          ([data, "--minutes", "1", "--config", "bn:model.batch_norm"], "expected NAME[:KEY=VALUE"),
                          ([str(tmp_path / "none"), "--minutes", "1", "--config", "d"], "no train/x folder"),
                          ([data, "--config", "d"], "give DATA, --minutes")):
        p = subprocess.run([sys.executable, script, str(out), *args], capture_output=True, text=True)
        assert p.returncode == 2 and p.stderr.startswith("error: ") and message in p.stderr, p.stderr
    assert not out.exists()
    out.mkdir()
    with open(out / "sweep.jsonl", "w") as f:
        for config, set_name, values in (("a", "s1", (0.70, 0.72, 0.74)), ("a", "s2", (0.5,)),
                                         ("b", "s1", (0.80, 0.80, 0.80)), ("b", "s2", (0.6,))):
            for seed, v in enumerate(values, 1):
                f.write(json.dumps({"config": config, "set": set_name, "seed": seed, "fg_iou": v}) + "\n")
    p = subprocess.run([sys.executable, script, str(out), "--summary"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == [  # best first; the sample standard deviation over the seeds
        "b                        mean 0.7000  s1 0.8000 +- 0.0000 (n=3)  s2 0.6000 +- 0.0000 (n=1)",
        "a                        mean 0.6100  s1 0.7200 +- 0.0200 (n=3)  s2 0.5000 +- 0.0000 (n=1)"]


def test_side_by_side_runs_one_job_per_core_and_a_failure_loses_no_other_result(tmp_path):
    import threading
    from argparse import Namespace

    import side_by_side
    a = Namespace(cores=[0, 1], data="/d/lucchi_dev", minutes=20, out=str(tmp_path))
    both = threading.Barrier(2, timeout=10)  # broken unless the first two runs are under way together
    cores = []

    def ok(core, fg):
        cores.append(core)
        if len(cores) <= 2:
            both.wait()
        return {"tool": "template", "fg_iou": fg, "steps": 10, "crops_per_s": 1.0, "wall_s": 5.0,
                "predict_s_per_mvox": 0.5, "peak_rss_mb": 100}

    def broken(core):
        cores.append(core)
        both.wait()
        raise side_by_side.ToolFailed("nnunet failed (exit 1): nnU-Net prediction failed")

    jobs = [("template", "", 1, lambda c: ok(c, 0.8)), ("nnunet", "", 1, broken),
            ("template", "", 2, lambda c: ok(c, 0.9))]
    assert side_by_side.run_jobs(jobs, a) == 1
    assert sorted(cores[:2]) == [0, 1] and cores[2] in (0, 1)
    lines = [json.loads(x) for x in open(tmp_path / "result.jsonl")]
    assert sorted((r["tool"], r["seed"] or r["repeat"]) for r in lines) == [("nnunet", 1), ("template", 1),
                                                                         ("template", 2)]
    assert [r["failed"] for r in lines if r["tool"] == "nnunet"] == ["nnunet failed (exit 1): nnU-Net prediction "
                                                                     "failed"]
    out = side_by_side.table(lines)
    assert "| lucchi_dev | nnunet | 1 | failed: nnunet failed (exit 1): nnU-Net prediction failed |" in out
    assert "| lucchi_dev | 20 | nnunet | 0 | no scored run |" in out
    assert "| lucchi_dev | 20 | template | 2 | 0.850 ± 0.071 |" in out


def test_an_unfinished_nnunet_prediction_is_shown_with_how_far_it_got(tmp_path):
    import run_peer
    import side_by_side
    log = "Predicting ts_0000:\n\r  0%|          | 0/42 [00:00<?, ?it/s]\r  2%|▏         | 1/42 [02:10<1:29:00, " \
          "130.2s/it]\r  5%|▍         | 2/42 [04:20<1:26:40, 130.1s/it]\nkilled after 1800.0 s\n"
    assert run_peer.window_progress(log) == (2, 42) and run_peer.window_progress("no bar") == (0, None)
    line = {"tool": "nnunet", "repeat": 1, "fg_iou": None, "steps": 4, "crops_per_s": 0.01, "wall_s": 3400.0,
            "predict_s_per_mvox": None, "peak_rss_mb": 9000, "data": "/d/lucchi_dev", "budget_min": 20,
            "predict_unfinished": {"after_s": 1800, "windows_done": 2, "windows": 42, "estimated_s": 37800}}
    out = side_by_side.table([line])
    assert ("| lucchi_dev | nnunet | 1 | not scored: prediction stopped after 1800 s at 2 of 42 windows, about "
            "37800 s at that pace | 4 |") in out
    assert "| lucchi_dev | 20 | nnunet | 0 | no scored run |" in out


@pytest.mark.parametrize("args, message", [(["--cores", "0,0"], "--cores 0,0: expected distinct cores"),
                                           (["--cores", "x"], "--cores x: expected distinct cores"),
                                           (["--cores", "4096"], "--cores 4096: expected distinct cores"),
                                           (["--predict-minutes", "0"], "--predict-minutes 0: expected"),
                                           (["--spacing", "5,5"], "--spacing 5,5: expected three numbers")])
def test_side_by_side_refuses_bad_cores_and_prediction_limits(tmp_path, args, message):
    data = make_set(tmp_path / "data")
    out = tmp_path / "out"
    p = subprocess.run([sys.executable, os.path.join(PEERS, "side_by_side.py"), data, "1", str(out),
                        "--tools", "biapy", *args], capture_output=True, text=True)
    assert p.returncode == 2 and message in p.stderr, p.stderr
    assert not out.exists()
