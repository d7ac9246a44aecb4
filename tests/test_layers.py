"""The stages of lib/ import only the stages below them, and no module of lib imports another in a circle.

Read from the source with ``ast`` (nothing is imported): every ``import`` of a lib module, at the top
of a file or inside a function, is an arrow from its file to that module.
"""

import ast
import os

import pytest

from conftest import REPO

LIB = os.path.join(REPO, "lib")
# Bottom to top; lib.errors, lib.config (the option schema) and lib.progress are the bottom.
STAGES = ("errors", "config", "progress", "data", "model", "train", "predict", "evaluate", "run", "napari")
BOTTOM = {"errors", "config", "progress"}


def module_name(path, root=REPO):
    """``lib/data/io.py`` -> ``lib.data.io``; ``lib/model/networks/__init__.py`` -> ``lib.model.networks``."""
    parts = os.path.relpath(path, root)[:-len(".py")].split(os.sep)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def lib_files(root=REPO):
    return sorted(os.path.join(d, f) for d, _, files in os.walk(os.path.join(root, "lib")) for f in files
                  if f.endswith(".py"))


def imports(path, root=REPO):
    """``[(line, module)]``: the lib modules (or packages) that the file at ``path`` imports, anywhere in it."""
    name = module_name(path, root)
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    modules = {module_name(p, root) for p in lib_files(root)}
    found = []
    for node in ast.walk(ast.parse(open(path).read(), path)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "lib"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "lib":
                continue
            # ``from lib.model import losses`` imports the module lib.model.losses
            subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in modules]
            found += [(node.lineno, m) for m in subs] or [(node.lineno, target)]
    return found


def stage(module):
    """The stage of ``lib.<stage>...``; None for the package ``lib`` itself."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def upward_imports(root=REPO):
    """``'file:line: stage imports higher stage (module)'`` for each import of a higher stage, or by the bottom."""
    problems = []
    for path in lib_files(root):
        here = stage(module_name(path, root))
        if here is None:
            continue
        for line, target in imports(path, root):
            there = stage(target)
            if there is None or there == here:
                continue
            upward = STAGES.index(there) > STAGES.index(here) or (here in BOTTOM and there not in BOTTOM)
            if upward:
                problems.append(f"{os.path.relpath(path, root)}:{line}: {here} imports {there} ({target})")
    return problems


def import_cycles(root=REPO):
    """Each circle of lib modules importing each other, as ``a -> b -> a``."""
    graph = {}
    for path in lib_files(root):
        graph.setdefault(module_name(path, root), set()).update(
            t for _, t in imports(path, root) if t != module_name(path, root))
    cycles, done = [], set()

    def visit(node, trail):
        if node in trail:
            cycle = trail[trail.index(node):] + [node]
            key = frozenset(cycle)
            if key not in done:
                done.add(key)
                cycles.append(" -> ".join(cycle))
            return
        if node in finished:
            return
        for nxt in sorted(graph.get(node, ())):
            if nxt in graph:
                visit(nxt, trail + [node])
        finished.add(node)

    finished = set()
    for start in sorted(graph):
        visit(start, [])
    return cycles


def test_every_lib_module_is_in_a_stage():
    for path in lib_files():
        name = module_name(path)
        assert name == "lib" or stage(name) in STAGES, f"{path}: not in a stage of lib ({', '.join(STAGES)})"


def test_no_stage_imports_a_higher_one():
    assert upward_imports() == []


def test_no_import_circles():
    assert import_cycles() == []


def _copy_lib(tmp_path):
    import shutil

    shutil.copytree(LIB, tmp_path / "lib", ignore=shutil.ignore_patterns("__pycache__"))
    return str(tmp_path)


def test_an_upward_import_is_found(tmp_path):
    root = _copy_lib(tmp_path)
    with open(os.path.join(root, "lib", "data", "tiling.py"), "a") as fh:
        fh.write("\n\ndef _late():\n    from ..run import runner  # noqa: F401\n")
    problems = upward_imports(root)
    assert len(problems) == 1 and problems[0].startswith("lib/data/tiling.py:"), problems
    assert problems[0].endswith("data imports run (lib.run.runner)")


def test_a_circle_is_found(tmp_path):
    root = _copy_lib(tmp_path)
    for name, other in (("splits", "tiling"), ("tiling", "splits")):
        with open(os.path.join(root, "lib", "data", f"{name}.py"), "a") as fh:
            fh.write(f"\nfrom . import {other}  # noqa: E402,F401\n")
    assert upward_imports(root) == []
    cycles = import_cycles(root)  # one circle, told from whichever of the two the search reaches first
    assert len(cycles) == 1 and sorted(set(cycles[0].split(" -> "))) == ["lib.data.splits", "lib.data.tiling"]


@pytest.mark.parametrize("script", ["templates/template.py", "templates/predict.py"])
def test_entry_scripts_import_the_run_stage_only(script):
    """Templates are copied by users: they use the run stage, which may move the rest."""
    targets = {t for _, t in imports(os.path.join(REPO, script))}
    assert targets and all(stage(t) == "run" for t in targets), targets


def test_a_template_copied_before_the_layout_still_runs(dataset_2d, tmp_path):
    """``from lib import cli, runner``, as templates copied from earlier releases import them, gives the run stage."""
    import subprocess
    import sys

    with open(os.path.join(REPO, "templates", "template.py")) as fh:
        source = fh.read()
    assert "from lib.run import cli, runner" in source
    old = tmp_path / "my_old_template.py"
    old.write_text(source.replace("from lib.run import cli, runner", "from lib import cli, runner"))
    result = subprocess.run([sys.executable, str(old), REPO, dataset_2d, str(tmp_path / "jobs"), "--id", "old",
                             "--gpu", "cpu", "--set", "train.epochs=1", "--set", "train.steps_per_epoch=1",
                             "--set", "data.crop_shape=[32,32]", "--set", "model.depth=2", "--set", "model.filters=4",
                             "--set", "inference.overlays=0"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "jobs" / "old_0" / "metrics.json").is_file()
