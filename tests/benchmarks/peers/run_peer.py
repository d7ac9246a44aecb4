"""One peer (BiaPy or nnU-Net v2) on a template-layout data set, for a training budget, on one core with one thread.

usage: .venv/bin/python tests/benchmarks/peers/run_peer.py {biapy,nnunet} DATA MINUTES OUT [--core N]
           [--fold all] [--trainer nnUNetTrainer] [--labels NAME,NAME] [--configuration 2d|3d_fullres]
           [--spacing Z,Y,X] [--predict-minutes M]

Everything runs pinned to core N (this process and its children: ``sched_setaffinity``, inherited), with
OMP/MKL/OpenBLAS at one thread and torch at one thread (set by the drivers). Steps, each timed, with the
peak resident memory of its process (``os.wait4``):

- ``convert``: DATA into the peer's layout (convert.py), under OUT;
- ``plan`` (nnU-Net): ``nnUNetv2_plan_and_preprocess -d ID -c 2d -np 1 -npfp 1 --verify_dataset_integrity``
  (``-c 3d_fullres`` with ``--configuration 3d_fullres``: the slices of each split as one volume);
- ``train``: the peer's stock training for MINUTES, counted from its first training step, stopped after the
  first step that ends past it, the weights of that moment saved (biapy_budget.py, nnunet_budget.py);
- ``predict``: the peer's stock command on DATA/test/x: ``biapy --config test.yaml`` (TRAIN.ENABLE False,
  MODEL.LOAD_CHECKPOINT True, PATHS.CHECKPOINT_FILE) with the checkpoint BiaPy itself tests with at the end
  of a training, its best on validation (the weights at the budget where it wrote none; those are scored
  too, after the clock: ``fg_iou_budget_weights``), or ``nnUNetv2_predict -f FOLD
  -chk checkpoint_latest.pth -device cpu -npp 0 -nps 0`` (its defaults otherwise: mirroring TTA, step 0.5),
  stopped after ``--predict-minutes`` (120): its line then has ``fg_iou`` null and ``predict_unfinished``, the
  sliding windows done of those of the case it was on (from its progress bar) and, for a 3D configuration's one
  test case, the seconds that pace gives the whole prediction.

Then the predictions are read back in the order of DATA/test/x and scored with this project's metrics
(:mod:`lib.evaluate.metrics`). Prints one JSON line (also appended to OUT/result.jsonl): ``wall_s`` from
start to the end of prediction, ``steps``, ``crops_per_s``, ``predict_s_per_mvox`` (the whole predict
command, start-up included, per million test voxels), ``peak_rss_mb`` and the scores (``fg_iou`` ...).
"""
import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
sys.path.insert(0, HERE)
import convert  # noqa: E402
from convert import fail  # noqa: E402

ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
              "NUMEXPR_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONUNBUFFERED": "1"}


def run(cmd, log, env, timeout=None):
    """Run ``cmd`` (its output to ``log``); returns ``(seconds, peak_rss_mb, returncode)``."""
    t = time.time()
    with open(log, "a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=os.path.dirname(log),
                             start_new_session=True)
        deadline = None if timeout is None else t + timeout
        while True:
            pid, status, usage = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            if deadline and time.time() > deadline:
                os.killpg(p.pid, signal.SIGKILL)
                pid, status, usage = os.wait4(p.pid, 0)
                f.write(f"killed after {timeout} s\n")
                break
            time.sleep(0.2)
    p.returncode = os.waitstatus_to_exitcode(status)
    return time.time() - t, usage.ru_maxrss / 1024.0, p.returncode


def check(step, rc, log):
    if rc != 0:
        with open(log) as f:
            tail = f.read()[-3000:]
        raise SystemExit(f"{step} failed (exit {rc}); see {log}:\n{tail}")


def test_voxels(data):
    return sum(int(np.prod(convert.read2d(x).shape)) for x in convert.files(data, "test", "x"))


def version(py, module):
    out = subprocess.run([py, "-c", f"import importlib.metadata as m; print(m.version('{module}'))"],
                         capture_output=True, text=True)
    return out.stdout.strip()


def biapy(a, out, env, budget_s, rec):
    venv = os.environ.get("BIAPY_VENV", os.path.join(REPO, ".venv-biapy"))
    py, log = os.path.join(venv, "bin", "python"), os.path.join(out, "biapy.log")
    t = time.time()
    info = convert.to_biapy(a.data, os.path.join(out, "data"))
    rec["convert_s"] = round(time.time() - t, 1)
    d = os.path.join(out, "data")
    common = ["SYSTEM.NUM_CPUS=1", "SYSTEM.NUM_WORKERS=0",
              f"DATA.TRAIN.PATH={d}/train/x", f"DATA.TRAIN.GT_PATH={d}/train/y",
              f"DATA.TEST.PATH={d}/test/x", f"DATA.TEST.GT_PATH={d}/test/y"]
    if info["n_classes"] > 2:
        common.append(f"DATA.N_CLASSES={info['n_classes']}")
    template = os.path.join(HERE, "biapy_2d_semantic_segmentation.yaml")
    driver = os.path.join(HERE, "biapy_budget.py")
    jobs = os.path.join(out, "jobs")
    train_yaml, test_yaml, stats = (os.path.join(out, n) for n in ("train.yaml", "test.yaml", "train_stats.json"))
    subprocess.run([py, driver, "config", template, train_yaml, *common, "TEST.ENABLE=false"], check=True, env=env)
    s, rss, rc = run([py, driver, "train", train_yaml, jobs, "peer", str(budget_s), stats], log, env,
                     timeout=budget_s * 1.5 + 1800)
    check("BiaPy training", rc, log)
    rec["train_wall_s"], rec["train_peak_rss_mb"] = round(s, 1), round(rss)
    rec.update(json.load(open(stats)))
    # at the end of a training BiaPy tests with its best checkpoint on validation (lowest validation loss,
    # ``<job>-checkpoint-best.pth``, written after each validation that improves): that one, where it exists
    best = os.path.join(os.path.dirname(rec["checkpoint"]), f"{rec['job_identifier']}-checkpoint-best.pth")
    rec["checkpoint_budget"] = rec["checkpoint"]
    rec["checkpoint"] = best if os.path.isfile(best) else rec["checkpoint"]

    def predict(checkpoint, run_id):
        yaml_path = os.path.join(out, f"test_{run_id}.yaml")
        subprocess.run([py, driver, "config", template, yaml_path, *common, "TRAIN.ENABLE=false",
                        "MODEL.LOAD_CHECKPOINT=true", f"PATHS.CHECKPOINT_FILE={checkpoint}"], check=True, env=env)
        s, rss, rc = run([os.path.join(venv, "bin", "biapy"), "--config", yaml_path, "--result_dir", jobs,
                          "--name", "peer", "--run_id", str(run_id)], log, env, timeout=7200)
        check("BiaPy prediction", rc, log)
        results = os.path.join(jobs, "peer", "results", f"peer_{run_id}")
        binarized = [p for p in (os.path.join(results, "full_image_binarized"),
                                 os.path.join(results, "per_image_binarized"))
                     if os.path.isdir(p)]
        return s, rss, results, binarized[0]

    s, rss, results, binarized = predict(rec["checkpoint"], 2)
    rec["predict_s"], rec["predict_peak_rss_mb"] = round(s, 1), round(rss)
    rec["wall_s"] = round(time.time() - rec.pop("_t_start"), 1)
    rec["predictions"] = binarized
    rec.update(convert.score(convert.read_biapy(binarized, a.data), a.data))
    if info["n_classes"] == 2 and os.path.isdir(os.path.join(results, "per_image")):
        # BiaPy binarises its foreground probabilities with Otsu's threshold of each image; also score them at 0.5
        prob = convert.read_biapy(os.path.join(results, "per_image"), a.data)
        rec["fg_iou_prob_at_0.5"] = convert.score([(p >= 0.5).astype(np.uint8) for p in prob], a.data)["fg_iou"]
    if rec["checkpoint"] != rec["checkpoint_budget"]:
        # the weights at the budget too, after the clock (not in wall_s)
        binarized = predict(rec["checkpoint_budget"], 3)[3]
        rec["fg_iou_budget_weights"] = convert.score(convert.read_biapy(binarized, a.data), a.data)["fg_iou"]
    rec["peer_version"] = version(py, "biapy")
    rec["torch_version"] = version(py, "torch")


def nnunet(a, out, env, budget_s, rec):
    venv = os.environ.get("NNUNET_VENV", os.path.join(REPO, ".venv-nnunet"))
    py, log, bin_ = os.path.join(venv, "bin", "python"), os.path.join(out, "nnunet.log"), os.path.join(venv, "bin")
    env = {**env, "nnUNet_raw": os.path.join(out, "nnUNet_raw"),
           "nnUNet_preprocessed": os.path.join(out, "nnUNet_preprocessed"),
           "nnUNet_results": os.path.join(out, "nnUNet_results"), "nnUNet_def_n_proc": "1", "nnUNet_compile": "false"}
    t = time.time()
    spacing = [float(v) for v in a.spacing.split(",")] if a.configuration.startswith("3d") else None
    folder = convert.to_nnunet(a.data, env["nnUNet_raw"], a.dataset_id, "peer",
                               a.labels.split(",") if a.labels else None, spacing)
    rec["convert_s"] = round(time.time() - t, 1)
    # the planner sets torch's threads to nnUNet_n_proc_DA (0 fails there); training loads data in-process (0)
    s, rss, rc = run([os.path.join(bin_, "nnUNetv2_plan_and_preprocess"), "-d", str(a.dataset_id),
                      "-c", a.configuration, "-np", "1", "-npfp", "1", "--verify_dataset_integrity"],
                     log, {**env, "nnUNet_n_proc_DA": "1"})
    check("nnU-Net planning", rc, log)
    rec["plan_s"], rec["plan_peak_rss_mb"] = round(s, 1), round(rss)
    stats = os.path.join(out, "train_stats.json")
    s, rss, rc = run([py, os.path.join(HERE, "nnunet_budget.py"), str(a.dataset_id), a.configuration, a.fold, a.trainer,
                      str(budget_s), stats], log, {**env, "nnUNet_n_proc_DA": "0"}, timeout=budget_s * 1.5 + 1800)
    check("nnU-Net training", rc, log)
    rec["train_wall_s"], rec["train_peak_rss_mb"] = round(s, 1), round(rss)
    rec.update(json.load(open(stats)))
    rec["trainer"], rec["fold"], rec["configuration"] = a.trainer, a.fold, a.configuration
    pred, limit = os.path.join(out, "pred"), a.predict_minutes * 60.0
    log_start = os.path.getsize(log)
    s, rss, rc = run([os.path.join(bin_, "nnUNetv2_predict"), "-i", os.path.join(folder, "imagesTs"), "-o", pred,
                      "-d", str(a.dataset_id), "-c", a.configuration, "-tr", a.trainer, "-f", a.fold,
                      "-chk", rec["checkpoint"], "-device", "cpu", "-npp", "0", "-nps", "0"],
                     log, {**env, "nnUNet_n_proc_DA": "0"}, timeout=limit)
    rec["predict_s"], rec["predict_peak_rss_mb"] = round(s, 1), round(rss)
    rec["wall_s"] = round(time.time() - rec.pop("_t_start"), 1)
    rec["peer_version"] = version(py, "nnunetv2")
    rec["torch_version"] = version(py, "torch")
    if rc and s >= limit:  # stopped at --predict-minutes: how far its sliding window got, not a score
        with open(log, errors="replace") as f:
            f.seek(log_start)
            done, total = window_progress(f.read())
        rec["fg_iou"] = None
        rec["predict_unfinished"] = {"after_s": round(s), "windows_done": done, "windows": total}
        if done and a.configuration.startswith("3d"):  # one test case: its windows are the whole prediction
            rec["predict_unfinished"]["estimated_s"] = round(s * total / done)
        return
    check("nnU-Net prediction", rc, log)
    rec["predictions"] = pred
    rec.update(convert.score(convert.read_nnunet(pred, os.path.join(folder, "cases.json")), a.data))


def check_options(a):
    """Refuse a bad ``--spacing`` or ``--predict-minutes`` (this command's and side_by_side.py's) before anything
    is written."""
    try:
        if len([float(v) for v in a.spacing.split(",")]) != 3:
            raise ValueError
    except ValueError:
        fail(f"--spacing {a.spacing}: expected three numbers z,y,x")
    if not a.predict_minutes > 0:
        fail(f"--predict-minutes {a.predict_minutes:g}: expected a number of minutes above 0")


def window_progress(text):
    """``(done, total)`` of the last sliding-window progress bar (tqdm's ``k/n [``) in nnU-Net's log text."""
    found = re.findall(r"(\d+)/(\d+) \[", text)
    return tuple(int(v) for v in found[-1]) if found else (0, None)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("peer", choices=("biapy", "nnunet"))
    ap.add_argument("data")
    ap.add_argument("minutes", type=float)
    ap.add_argument("out")
    ap.add_argument("--core", type=int, default=0, help="the one CPU core everything runs on (default 0)")
    ap.add_argument("--fold", default="all", help="nnU-Net fold: all (every training case) or 0-4")
    ap.add_argument("--trainer", default="nnUNetTrainer", help="nnU-Net trainer class, e.g. nnUNetTrainer_100epochs")
    ap.add_argument("--dataset-id", type=int, default=501, help="nnU-Net data set id (its folders are under OUT)")
    ap.add_argument("--labels", help="names of the foreground classes, comma-separated (nnU-Net's dataset.json)")
    ap.add_argument("--configuration", default="2d", choices=("2d", "3d_fullres", "3d_lowres"),
                    help="nnU-Net configuration (default 2d); a 3D one trains on the training slices as one volume")
    ap.add_argument("--spacing", default="1,1,1", help="3D configurations: voxel size z,y,x (default 1,1,1)")
    ap.add_argument("--predict-minutes", type=float, default=120,
                    help="nnU-Net: stop its prediction after this long and record how far it got (default 120)")
    a = ap.parse_args()
    a.data = os.path.abspath(a.data)
    check_options(a)
    t_start = time.time()
    os.sched_setaffinity(0, {a.core})
    out = os.path.abspath(os.path.join(a.out, a.peer))
    if os.path.exists(out) and os.listdir(out):
        fail(f"OUT {out} exists and is not empty: give another OUT")
    os.makedirs(out, exist_ok=True)
    env = {**os.environ, **ONE_THREAD}
    budget_s = a.minutes * 60.0
    mvox = test_voxels(a.data) / 1e6
    rec = {"peer": a.peer, "data": a.data, "budget_min": a.minutes, "core": a.core, "threads": 1,
           "loadavg_at_start": [round(x, 2) for x in os.getloadavg()], "_t_start": t_start}
    (biapy if a.peer == "biapy" else nnunet)(a, out, env, budget_s, rec)
    rec["test_megavoxels"] = round(mvox, 3)
    rec["predict_s_per_mvox"] = None if rec.get("predict_unfinished") else round(rec["predict_s"] / mvox, 3)
    rec["peak_rss_mb"] = max(v for k, v in rec.items() if k.endswith("peak_rss_mb"))
    rec["n_train"] = len(convert.files(a.data, "train", "x"))
    rec["n_test"] = len(convert.files(a.data, "test", "x"))
    line = json.dumps(rec)
    with open(os.path.join(a.out, "result.jsonl"), "a") as f:
        f.write(line + "\n")
    print(line)


if __name__ == "__main__":
    main()
