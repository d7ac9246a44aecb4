import csv
import multiprocessing
import os

import pytest

from lib.errors import UserError
from lib.evaluate import reports
from lib.run import cli, devices, folders


def test_parse_args_defaults_and_overrides():
    args = cli.parse_args(["code", "data", "job", "--id", "400", "--rid", "2", "--gpu", "0, 1",
                           "--set", "train.epochs=3", "--set", "data.crop_shape=[64,64]"])
    assert (args.code_dir, args.data_dir, args.job_dir, args.id, args.rid) == ("code", "data", "job", "400", "2")
    assert args.gpu == "0,1" and args.overrides == ["train.epochs=3", "data.crop_shape=[64,64]"]


@pytest.mark.parametrize("argv, message", [
    (["c", "d", "j", "--rid", "x1"], "--rid x1: expected a non-negative integer"),
    (["c", "d", "j", "--gpu", "first"], "--gpu first: expected 'auto', 'cpu', an index"),
    (["c", "d", "j", "--id", "a/b"], "--id 'a/b': expected a plain name"),
    (["c", "d"], "command line: the following arguments are required: job_dir"),
    (["c", "d", "j", "--epochs", "3"], "command line: unrecognized arguments: --epochs 3"),
])
def test_bad_command_lines(argv, message):
    with pytest.raises(UserError) as err:
        cli.parse_args(argv)
    assert message in str(err.value)


def test_gpu_index_that_does_not_exist(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(UserError, match=r"--gpu 3: no GPU 3 on this machine, which has 2 \(indices 0 to 1\)"):
        devices.select_device("3", 0, n_gpus=2)
    devices.select_device("1", 0, n_gpus=2)
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "1"


def test_gpu_auto_runs_on_the_cpu_of_a_machine_without_gpu(monkeypatch, capsys):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setattr(devices, "_limit_cores", lambda threads: None)  # on JAX: keeps this process on 2 cores
    assert devices.select_device("auto", 2, n_gpus=0) == "cpu"
    assert "--gpu auto: the CPU" in capsys.readouterr().out
    assert os.environ["OMP_NUM_THREADS"] == "2" and os.environ["CUDA_VISIBLE_DEVICES"] == "-1"
    assert cli.parse_args(["c", "d", "j"]).gpu == "auto"  # the default


def test_config_layers(tmp_path):
    path = tmp_path / "c.json"
    path.write_text('{"train": {"epochs": 5, "batch_size": 3}}')
    args = cli.parse_args(["c", "d", "j", "--config", str(path), "--set", "train.epochs=6"])
    cfg = cli.load_config({"train": {"epochs": 4, "seed": 1}}, args)
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.train.seed) == (6, 3, 1)


def test_unwritable_job_dir(tmp_path):
    if os.geteuid() == 0:  # root may write into any folder: put JOB_DIR under a file instead
        (tmp_path / "afile").write_text("")
        target = str(tmp_path / "afile" / "job")
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        target = str(locked / "job")
    args = cli.parse_args(["c", "d", target])
    with pytest.raises(UserError, match="JOB_DIR is not writable"):
        folders.check_run_dir(args)


def _append(job_dir, i):
    reports.append_summary(job_dir, {"id": f"run{i}", "rid": 0, "fg_iou": i / 100})


def test_concurrent_summary_rows_are_whole(tmp_path):
    procs = [multiprocessing.Process(target=_append, args=(str(tmp_path), i)) for i in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    with open(tmp_path / "summary.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(r["id"] for r in rows) == sorted(f"run{i}" for i in range(8))
    assert all(r["fg_iou"] for r in rows)


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs a system that sets CPU affinity and at least two cores")
@pytest.mark.parametrize("backend", ["jax", "tensorflow", "torch"])
def test_threads_limit_the_cores_on_jax_and_the_thread_pools_elsewhere(backend):
    import subprocess
    import sys

    code = ("import os; from lib.run import devices; before = len(os.sched_getaffinity(0)); "
            "devices.select_device('cpu', 1); "
            "print(before, len(os.sched_getaffinity(0)), os.environ['OMP_NUM_THREADS'], 'keras' in __import__('sys').modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cli.__file__.rsplit("/lib/", 1)[0],
                         env={**os.environ, "KERAS_BACKEND": backend}, check=True).stdout.split()
    assert out[1:] == ["1" if backend == "jax" else out[0], "1", "False"]


def test_environment_records_the_backend_versions_and_devices():
    import keras

    env = folders.environment(cli.parse_args(["c", "d", "j", "--gpu", "cpu"]))
    backend = keras.backend.backend()
    assert env["backend"] == backend and env[{"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}[backend]]
    assert env["devices"] and any("cpu" in d.lower() for d in env["devices"])
