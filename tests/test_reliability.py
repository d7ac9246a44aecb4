"""Runs that are killed (SIGKILL) at any moment and run again, diverging runs, reruns and determinism.

The 2D template runs as a user runs it, in a subprocess, on a tiny dataset and
network. A reference run goes uninterrupted; other runs of the same command are
killed while training, while saving a checkpoint and while predicting, then run
again, and must end as the reference did.
"""

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest
import tifffile

from conftest import REPO

# one pytest worker runs this file (make test: --dist loadgroup): its fixtures that run templates run once
pytestmark = pytest.mark.xdist_group("test_reliability")

TEMPLATE = os.path.join(REPO, "templates", "template.py")
EPOCHS = 4
TINY = ["--gpu", "cpu", "--threads", "1", "--set", f"train.epochs={EPOCHS}", "--set", "data.crop_shape=[32,32]",
        "--set", "data.replicate=2", "--set", "model.depth=2", "--set", "model.filters=4",
        "--set", "model.dropout=0.2", "--set", "train.batch_size=4", "--set", "train.learning_rate=3e-3",
        "--set", "train.steps_per_epoch=3",
        "--set", "train.schedule=cosine", "--set", "train.deterministic=true",
        "--set", "inference.per_crop=false", "--set", "inference.merged=false", "--set", "inference.overlays=0",
        "--set", "post.z_filter=false", "--set", "post.oztel=false"]
TIMEOUT = 300


@pytest.fixture(scope="session")  # once per worker, although other files run between its tests
def data(tmp_path_factory):
    from lib.data.synthetic import write_dataset

    return write_dataset(str(tmp_path_factory.mktemp("data") / "em"), n_train=6, n_test=4, shape=(64, 64), seed=3)


def command(data, job, run_id, *extra):
    return [sys.executable, TEMPLATE, REPO, data, str(job), "--id", run_id, *TINY, *extra]


def run(cmd):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT)


def run_and_kill(cmd, ready):
    """Start ``cmd`` and SIGKILL it as soon as ``ready()`` holds (polled every 2 ms); True if it was killed."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + TIMEOUT
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if ready():
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return True
            time.sleep(0.002)
        return False
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def history(run_dir):
    path = os.path.join(run_dir, "history.csv")
    if not os.path.exists(path):
        return []
    with open(path) as fh:
        return list(csv.DictReader(fh))


def files_under(folder, suffix=""):
    return sorted(os.path.join(root, f) for root, _, names in os.walk(folder) for f in names if f.endswith(suffix))


def assert_same_history(rows, reference, rtol=1e-5):
    """Same epochs, learning rates, losses and metrics (not the same seconds)."""
    assert [r["epoch"] for r in rows] == [r["epoch"] for r in reference]
    for row, ref in zip(rows, reference):
        assert row.keys() == ref.keys()
        for key in ref:
            if not key.endswith("seconds"):
                assert float(row[key]) == pytest.approx(float(ref[key]), rel=rtol), (row["epoch"], key)


def assert_whole_run(run_dir, reference_dir, rtol=1e-5):
    """A finished run: every output readable, no temporary file, the reference's history and metrics."""
    assert os.path.isfile(os.path.join(run_dir, "metrics.json"))
    assert not [f for f in files_under(run_dir) if ".tmp" in os.path.basename(f) or ".pending" in f]
    for path in files_under(run_dir, ".keras"):
        with zipfile.ZipFile(path) as archive:
            assert archive.testzip() is None, path
    for path in files_under(os.path.join(run_dir, "predictions"), ".tif"):
        assert tifffile.imread(path).shape == (64, 64), path
    assert_same_history(history(run_dir), history(reference_dir), rtol)
    results = json.loads(open(os.path.join(run_dir, "metrics.json")).read())["results"]
    reference = json.loads(open(os.path.join(reference_dir, "metrics.json")).read())["results"]
    for variant, values in reference.items():
        for metric, value in values.items():
            assert results[variant][metric] == pytest.approx(value, rel=rtol, abs=1e-6), (variant, metric)


@pytest.fixture(scope="session")  # once per worker, although other files run between its tests
def reference(data, tmp_path_factory):
    """An uninterrupted run: ``(job_dir, run_dir)``."""
    job = tmp_path_factory.mktemp("jobs")
    result = run(command(data, job, "ref"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(history(job / "ref_0")) == EPOCHS
    return job, str(job / "ref_0")


def test_kill_during_an_epoch_then_diverge_then_resume(data, reference, tmp_path):
    from lib.train import loop

    run_dir = str(tmp_path / "r_0")
    checkpoints = os.path.join(run_dir, "checkpoints")

    def training_epoch_3():  # epoch 2 committed, its checkpoints in place
        return len(history(run_dir)) >= 2 and not any(n.startswith(".") for n in os.listdir(checkpoints))

    assert run_and_kill(command(data, tmp_path, "r"), training_epoch_3)
    rows = history(run_dir)
    assert 2 <= len(rows) < EPOCHS
    loop.recover_checkpoints(run_dir, len(rows))  # what a rerun does first, in case the kill fell later
    last = os.path.join(checkpoints, "last.keras")
    saved = open(last, "rb").read()

    # Resumed with a learning rate that makes it diverge: exit 2, one line, the last good checkpoint kept.
    result = run(command(data, tmp_path, "r", "--set", "train.learning_rate=1e30"))
    assert result.returncode == 2, result.stderr[-3000:]
    assert "changed options: train.learning_rate: 0.003 -> 1e+30" in result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"training diverged in epoch {len(rows) + 1}" in errors[0], result.stderr[-3000:]
    assert f"keeps epoch {len(rows)}, the last good one" in errors[0]
    assert "Traceback" not in result.stderr
    assert history(run_dir) == rows and open(last, "rb").read() == saved

    result = run(command(data, tmp_path, "r"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"after epoch {len(rows)}" in result.stdout
    assert_whole_run(run_dir, reference[1])


def test_kill_while_saving_a_checkpoint_then_resume(data, reference, tmp_path):
    run_dir = str(tmp_path / "r_0")
    checkpoints = os.path.join(run_dir, "checkpoints")

    def saving():
        return os.path.isdir(checkpoints) and any(".tmp" in name for name in os.listdir(checkpoints))

    assert run_and_kill(command(data, tmp_path, "r"), saving)
    assert len(history(run_dir)) < EPOCHS
    for name in ("best.keras", "last.keras"):  # the kill left whole checkpoints, or none yet
        path = os.path.join(checkpoints, name)
        if os.path.exists(path):
            with zipfile.ZipFile(path) as archive:
                assert archive.testzip() is None
    result = run(command(data, tmp_path, "r"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert_whole_run(run_dir, reference[1])


def test_kill_during_prediction_then_predict_without_training(data, reference, tmp_path):
    run_dir = str(tmp_path / "r_0")
    predictions = os.path.join(run_dir, "predictions")
    assert run_and_kill(command(data, tmp_path, "r"), lambda: bool(files_under(predictions, ".tif")))
    assert not os.path.exists(os.path.join(run_dir, "metrics.json"))
    for path in files_under(predictions, ".tif"):  # whole files only, however the kill fell
        tifffile.imread(path)
    # Determinism: an uninterrupted training of the same command gives the very same history.
    assert_same_history(history(run_dir), history(reference[1]), rtol=0)
    before = open(os.path.join(run_dir, "history.csv")).read()

    result = run(command(data, tmp_path, "r"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Training was over after epoch {EPOCHS}" in result.stdout and "Epoch 1/" not in result.stdout
    assert open(os.path.join(run_dir, "history.csv")).read() == before
    assert_whole_run(run_dir, reference[1], rtol=0)
    with open(tmp_path / "summary.csv") as fh:
        assert [(r["id"], r["rid"]) for r in csv.DictReader(fh)] == [("r", "0")]


def test_finished_run_is_refused_with_the_next_free_rid(data, reference):
    job, run_dir = reference
    os.makedirs(job / "ref_1")  # taken too, e.g. by a running job
    before = open(os.path.join(run_dir, "metrics.json")).read()
    result = run(command(data, job, "ref"))
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "holds a finished run; use --rid 2 for a new run or --overwrite" in errors[0]
    assert open(os.path.join(run_dir, "metrics.json")).read() == before


def test_overwrite_replaces_a_finished_run_only_once_the_new_one_finishes(data, reference, tmp_path):
    import shutil

    shutil.copytree(reference[1], tmp_path / "r_0")
    with open(tmp_path / "summary.csv", "w") as fh:
        fh.write("id,rid,tiled_fg_iou\nr,0,0.5\n")
    before = open(tmp_path / "r_0" / "metrics.json").read()

    # The new run diverges: the finished run and its summary row stay as they were.
    result = run(command(data, tmp_path, "r", "--overwrite", "--set", "train.learning_rate=1e30"))
    assert result.returncode == 2 and "training diverged in epoch 1" in result.stderr, result.stderr[-3000:]
    assert open(tmp_path / "r_0" / "metrics.json").read() == before
    assert open(tmp_path / "summary.csv").read() == "id,rid,tiled_fg_iou\nr,0,0.5\n"

    result = run(command(data, tmp_path, "r", "--overwrite"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Run folder: {tmp_path / 'r_0'}" in result.stdout
    assert sorted(n for n in os.listdir(tmp_path) if not n.startswith(".summary")) == ["r_0", "summary.csv"]
    assert_whole_run(str(tmp_path / "r_0"), reference[1])
    with open(tmp_path / "summary.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 1 and rows[0]["tiled_fg_iou"] != "0.5"


# --------------------------------------------------------------------------- the same, in process

def test_resume_refuses_a_changed_network(tmp_path):
    from lib import config
    from lib.errors import UserError
    from lib.run import cli, folders

    args = cli.parse_args([REPO, "data", str(tmp_path), "--id", "net", "--gpu", "cpu"])
    cfg = config.from_dict({"model": {"filters": 4}})
    folders.create_run_dir(args, cfg)  # then killed
    cfg.model.filters, cfg.train.epochs = 8, 300
    with pytest.raises(UserError, match=r"net_0: cannot resume with changed model.filters: 4 -> 8: its checkpoint "
                                        r"holds the network, loss and optimiser trained so far; undo the change to "
                                        r"resume, or use --rid 1 for a new run"):
        folders.check_run_dir(args, cfg)
    cfg.model.filters = 4
    assert folders.check_run_dir(args, cfg)  # train.epochs may change: the run resumes

def test_pending_checkpoints_follow_the_history(tmp_path):
    from lib.train import loop

    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    for name, text in (("last.keras", "epoch 2"), ("best.keras", "epoch 1"), (".pending_3_last.keras", "epoch 3"),
                       (".pending_3_best.keras", "epoch 3"), (".pending_4_last.keras", "epoch 4"),
                       (".last.keras.123.tmp.keras", "half")):
        (checkpoints / name).write_text(text)
    loop.recover_checkpoints(str(tmp_path), 3)  # killed after writing epoch 3's history row
    assert sorted(os.listdir(checkpoints)) == ["best.keras", "last.keras"]
    assert (checkpoints / "last.keras").read_text() == "epoch 3" == (checkpoints / "best.keras").read_text()


@pytest.mark.parametrize("values, patience, minutes, expected", [
    ([3, 2, 1], 2, 0, "epochs"),
    ([3, 2], 2, 0, None),
    ([1, 2, 3], 2, 0, "early_stopping"),
    ([1, 2], 2, 0, None),
    ([1, 2], 0, 0, "early_stopping"),
    ([3, 2], 2, 0.5, "time_limit"),  # 2 epochs of 20 s: 40 s of a 30 s limit
    ([3, 2], 2, 1.0, None),
])
def test_finished_by_repeats_the_callbacks(values, patience, minutes, expected):
    from lib.config import TrainConfig
    from lib.train import loop

    rows = [{"epoch": i + 1, "seconds": 20.0, "val_loss": v} for i, v in enumerate(values)]
    cfg = TrainConfig(epochs=3, patience=patience, time_limit_minutes=minutes)
    assert loop.finished_by(rows, cfg, "val_loss") == expected


def test_time_limit_keeps_back_the_last_validation_and_a_cut_epoch_ends_training(monkeypatch):
    """The time limit and the cosine schedule read one clock: the earlier session's epochs plus the time since."""
    import types

    from lib.config import TrainConfig
    from lib.train import loop, schedules

    now = [100.0]
    monkeypatch.setattr(loop.time, "perf_counter", lambda: now[0])
    # an earlier session: 50 s of steps, its checkpoints 2 s (in the next row); its validation took 4 s
    rows = [{"epoch": 1, "seconds": 48.0, "val_seconds": 4.0, "save_seconds": 2.0}]
    clock = loop.TrainingClock(rows)
    limit, model = loop.TimeLimit(1.0, rows, clock), types.SimpleNamespace(stop_training=False)
    limit.set_model(model)
    clock.on_train_begin()
    limit.on_epoch_begin(1)
    now[0] += 3.5
    limit.on_train_batch_end(0)  # 50 + 3.5 + the last validation and checkpoints (6) < 60
    assert not model.stop_training and not limit.cut
    now[0] += 1.0
    limit.on_train_batch_end(1)  # 50 + 4.5 + 6 >= 60: stopped, the epoch's validation still to come
    assert model.stop_training and limit.cut
    cfg = TrainConfig(epochs=10, time_limit_minutes=1.0, schedule="cosine", learning_rate=1e-3,
                      min_learning_rate=0.0, warmup_epochs=0)
    rate = types.SimpleNamespace(value=None)
    rate.assign = lambda v: setattr(rate, "value", v)
    schedule = loop.LearningRateSchedule(cfg, "val_loss", rows, clock)
    schedule.set_model(types.SimpleNamespace(optimizer=types.SimpleNamespace(learning_rate=rate)))
    schedule.on_epoch_begin(1)
    schedule.on_train_batch_begin(2)  # 54.5 of the 60 s on the same clock
    assert rate.value == pytest.approx(schedules.learning_rate_at(1, cfg, rows, "val_loss", 54.5 / 60))
    assert rate.value == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 54.5 / 60)))
    rows.append({"epoch": 2, "seconds": 8.5, "save_seconds": 0.4, "cut_by_time_limit": 1.0})
    assert loop.spent_seconds(rows) == pytest.approx(58.9)  # under the minute, yet training is over
    assert loop.finished_by(rows, cfg, "val_loss") == "time_limit"
    assert loop.finished_by(rows[:1], cfg, "val_loss") is None


def test_resumed_run_counts_the_time_already_trained(tmp_path, capsys):
    from lib.config import ModelConfig, TrainConfig
    from lib.data import io
    from lib.data.generators import CropDataset
    from lib.model import saving as model_saving
    from lib.model.networks import build_model
    from lib.train import loop

    def tiny():
        return build_model(ModelConfig(depth=2, filters=4, dropout=0.0), (None, None, 1))

    model = loop.compile_model(tiny(), TrainConfig())
    model.optimizer.build(model.trainable_variables)
    (tmp_path / "checkpoints").mkdir()
    for name in (model_saving.BEST, model_saving.LAST):
        model_saving.save_model_atomic(model, str(tmp_path / "checkpoints" / name))
    rows = [{"epoch": 1, "seconds": 20.0, "loss": 0.5}, {"epoch": 2, "seconds": 20.0, "loss": 0.4}]
    io.write_text(str(tmp_path / "history.csv"), io.rows_to_csv(rows))
    images = [np.zeros((32, 32, 1), np.float32)] * 2
    data = CropDataset(images, [np.zeros((32, 32), np.uint8)] * 2, (32, 32), 2)
    _, info = loop.train(tiny(), data, None, TrainConfig(epochs=10, time_limit_minutes=0.5), str(tmp_path))
    assert (info["epochs"], info["stopped_by"], info["best_epoch"]) == (2, "time_limit", 2)
    assert info["seconds"] >= 40
    assert "Training was over after epoch 2 (time limit)" in capsys.readouterr().out


def test_divergence_in_the_first_epoch_saves_nothing(tmp_path):
    from lib.config import ModelConfig, TrainConfig
    from lib.data.generators import CropDataset
    from lib.errors import UserError
    from lib.model.networks import build_model
    from lib.train import loop

    rng = np.random.default_rng(0)
    images = [rng.random((32, 32, 1), dtype=np.float32) for _ in range(2)]
    images[1][5, 5, 0] = np.nan  # what a corrupt float image would feed
    masks = [(x[..., 0] > 0.5).astype(np.uint8) for x in images]
    model = build_model(ModelConfig(depth=2, filters=4, dropout=0.0), (None, None, 1))
    with pytest.raises(UserError, match=r"training diverged in epoch 1 \(the training loss is nan after batch 1\); "
                                        "no checkpoint was saved"):
        loop.train(model, CropDataset(images, masks, (32, 32), 2), None, TrainConfig(epochs=2), str(tmp_path))
    assert not os.listdir(tmp_path / "checkpoints") and not (tmp_path / "history.csv").exists()


def test_sigterm_ends_with_how_to_resume(capsys):
    from lib.run import cli

    with pytest.raises(SystemExit) as stop:
        with cli.user_errors():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler interrupts this
    assert stop.value.code == 143
    assert capsys.readouterr().err == "terminated (SIGTERM): run the same command again to resume\n"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_full_disk_ends_with_one_line(capsys):
    import errno

    from lib.run import cli

    with pytest.raises(SystemExit) as stop:
        with cli.user_errors():
            raise OSError(errno.ENOSPC, "No space left on device", "JOB/a_0/history.csv")
    assert stop.value.code == 1
    assert capsys.readouterr().err == ("error: JOB/a_0/history.csv: No space left on device; make room and run the "
                                       "same command again to resume\n")


def test_a_run_folder_serves_one_process_at_a_time(tmp_path):
    from lib import config
    from lib.errors import UserError
    from lib.run import cli, folders

    args = cli.parse_args([REPO, "data", str(tmp_path), "--id", "busy", "--gpu", "cpu"])
    cfg = config.Config()
    os.makedirs(tmp_path / "busy_0")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from lib.run import folders; folders._lock_run(sys.argv[1]); print('locked', "
         "flush=True); sys.stdin.read()", str(tmp_path / "busy_0")],
        cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        with pytest.raises(UserError, match="busy_0 is in use by another process running the same --id and --rid"):
            folders.create_run_dir(args, cfg)
    finally:
        holder.communicate("")
    folders.create_run_dir(args, cfg)  # the other process has ended
    folders.create_run_dir(args, cfg)  # this process may reopen its own run


def test_summary_keeps_one_row_per_run(tmp_path):
    from lib.evaluate import reports

    reports.append_summary(str(tmp_path), {"id": "a", "rid": "0", "fg_iou": 0.1})
    reports.append_summary(str(tmp_path), {"id": "a", "rid": "1", "fg_iou": 0.2})
    reports.append_summary(str(tmp_path), {"id": "a", "rid": "0", "fg_iou": 0.3})  # rerun after a kill
    with open(tmp_path / "summary.csv") as fh:
        assert [(r["rid"], r["fg_iou"]) for r in csv.DictReader(fh)] == [("1", "0.2"), ("0", "0.3")]


def test_results_keep_the_users_file_mode(tmp_path):
    from lib.data import io

    path = tmp_path / "a.txt"
    io.write_text(str(path), "x")
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_full_disk_names_the_file_being_written(tmp_path, capsys):
    import errno

    from lib.data import io
    from lib.run import cli

    def full(tmp):
        raise OSError(errno.ENOSPC, "No space left on device")  # as a failing write() raises it: no file name

    path = str(tmp_path / "history.csv")
    with pytest.raises(SystemExit) as stop:
        with cli.user_errors():
            io.write_atomic(path, full)
    assert stop.value.code == 1
    assert capsys.readouterr().err.startswith(f"error: {path}: No space left on device; make room")
    assert os.listdir(tmp_path) == []
