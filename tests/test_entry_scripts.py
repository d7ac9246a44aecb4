"""The six entry scripts run one pipeline (lib.run.runner): the same steps, options and run folder for each."""

import ast
import json
import os

import numpy as np
import pytest

from conftest import REPO, run_here

# one pytest worker runs this file (make test: --dist loadgroup): its fixtures that run templates run once
pytestmark = pytest.mark.xdist_group("test_entry_scripts")

# script: (dataset fixture, --set options of a tiny run)
SCRIPTS = {
    "templates/template.py": ("dataset_2d", ["data.crop_shape=[32,32]", "model.depth=2", "model.filters=4"]),
    "templates/big_data_template.py": ("dataset_2d", ["data.crop_shape=[32,32]", "model.depth=2", "model.filters=4"]),
    "templates/3D_template.py": ("volume_16", ["data.crop_shape=[8,32,32]", "model.depth=2", "model.filters=4"]),
    "cheng_2017/cheng_2D_template.py": ("dataset_2d", ["data.crop_shape=[64,64]", "model.filters=4",
                                                       "train.batch_size=8"]),
    "cheng_2017/cheng_3D_template.py": ("volume_16", ["data.crop_shape=[16,32,32]", "model.filters=4",
                                                      "train.batch_size=2"]),
    "xiao_2018/xiao_template.py": ("volume_16", ["data.crop_shape=[4,32,32]", "model.filters=4",
                                                 "data.val_fraction=0.5", "xiao.equalize=none"]),
}
COMMON = ["train.epochs=0", "inference.overlays=1", "augment.samples=2"]


@pytest.fixture(scope="session")  # once per worker, although other files run between its tests
def volume_16(tmp_path_factory):
    """One 16x64x64 training and one test volume, each a folder of sorted 2D slices."""
    from lib.data.synthetic import write_dataset

    return write_dataset(str(tmp_path_factory.mktemp("data") / "vol16"), shape=(16, 64, 64), seed=3, volume=True)


def script_config(script, options):
    """The configuration a script runs with: its CONFIG block (read without running it) and ``options``."""
    from lib import config

    with open(os.path.join(REPO, script)) as fh:
        tree = ast.parse(fh.read())
    block = next(node.value for node in tree.body if isinstance(node, ast.Assign)
                 and any(getattr(t, "id", None) == "CONFIG" for t in node.targets))
    values = ast.literal_eval(block)
    values.pop("xiao", None)
    cfg = config.from_dict(values)
    return config.apply_overrides(cfg, [o for o in options if not o.startswith("xiao.")])


def channels_last_input(cfg):
    return (None,) * len(cfg.data.crop_shape) + (1,)


@pytest.fixture(scope="session")  # once per worker, although other files run between its tests
def runs(request, tmp_path_factory):
    """Each script run with train.epochs=0 and train.pretrained=a .keras file of its network (built here)."""
    from lib.model import networks, saving

    out = {}
    root = tmp_path_factory.mktemp("runs")
    for script, (fixture, options) in SCRIPTS.items():
        data = request.getfixturevalue(fixture)
        name = os.path.basename(script).replace(".py", "")
        cfg = script_config(script, options)
        weights = str(root / f"{name}.keras")
        saving.save_model_atomic(networks.build_network(cfg.model, channels_last_input(cfg)), weights)
        sets = [a for kv in options + COMMON + [f"train.pretrained={weights}"] for a in ("--set", kv)]
        result = run_here(script, data, str(root / "jobs"), "--id", name, "--gpu", "cpu", *sets)
        out[script] = (result, root / "jobs" / f"{name}_0", weights)
    return out


@pytest.mark.parametrize("script", list(SCRIPTS))
def test_every_script_predicts_with_train_pretrained(runs, script):
    import keras

    result, run_dir, weights = runs[script]
    assert result.returncode == 0, result.stderr[-3000:]
    used = keras.models.load_model(os.path.join(run_dir, "checkpoints", "best.keras"), compile=False)
    given = keras.models.load_model(weights, compile=False)
    assert len(used.weights) == len(given.weights)
    for a, b in zip(used.weights, given.weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("script", list(SCRIPTS))
def test_every_script_writes_the_check_pictures(runs, script):
    """``augment.samples`` writes the augmented samples and the crop checks, of volumes too (middle slice)."""
    result, run_dir, _ = runs[script]
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(os.listdir(run_dir / "samples" / "augmentation")) == ["sample_000.png", "sample_001.png"]
    assert len(os.listdir(run_dir / "samples" / "crops")) >= 1


def test_every_script_writes_the_same_metrics_keys(runs):
    keys = {}
    for script, (result, run_dir, _) in runs.items():
        assert result.returncode == 0, f"{script}: {result.stderr[-3000:]}"
        metrics = json.loads((run_dir / "metrics.json").read_text())
        keys[script] = (sorted(metrics), sorted(metrics["training"]), sorted(metrics["results"]["tiled"]))
    first = keys["templates/template.py"]
    assert all(k == first for k in keys.values()), keys
    assert {"train_peak_rss_mb", "inference_peak_rss_mb", "inference_start_rss_mb"} <= set(first[1])


def test_entry_scripts_share_no_copied_steps():
    """Each main() is one call of lib.run.runner.run: the order of the steps is written once, there."""
    for script in SCRIPTS:
        with open(os.path.join(REPO, script)) as fh:
            tree = ast.parse(fh.read())
        main = next(node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "main")
        calls = [n for n in main.body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))]
        assert len(calls) == 1, f"{script}: main() should be one call of runner.run"
        call = calls[0].value
        assert isinstance(call, ast.Call) and ast.unparse(call.func) == "runner.run", script
