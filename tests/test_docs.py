"""The README and docs/ as a user reads them: every link leads somewhere, every command names what exists.

Each command of a ``bash`` block or an inline ``python ...`` span is read: the script or module it
runs must exist, each ``--set section.key=value`` must name an option, and each entry point answers
``--help`` (the fast part of running it; the runs themselves are the rest of the suite).
"""

import glob
import importlib.util
import os
import re
import shlex
import subprocess
import sys

import pytest

from conftest import REPO
from lib import config

PAGES = sorted([os.path.join(REPO, "README.md")] + glob.glob(os.path.join(REPO, "docs", "*.md")))
# Paths that stand for the user's own files in examples, not files of the repository.
PLACEHOLDERS = ("my_experiments/", "CODE_DIR", "DATA", "JOB", "OUT", "RUN", "INPUT", "TEMPLATE", "/path/")
SECTIONS = set(config.SECTIONS) | {"xiao"}  # xiao_2018/xiao_template.py adds its own section


def rel(path):
    return os.path.relpath(path, REPO)


def commands():
    """``[(page, command)]``: each shell command of the pages (``bash`` blocks, and inline ``python`` spans)."""
    found = []
    for page in PAGES:
        text = open(page).read()
        for block in re.findall(r"```bash\n(.*?)```", text, re.S):
            joined = re.sub(r"\\\n\s*", " ", block)
            for line in joined.splitlines():
                line = line.split(" #")[0].strip()
                if line and not line.startswith("#"):
                    found.append((rel(page), line))
        for span in re.findall(r"`((?:\.venv/bin/)?python3? [^`]+)`", text):
            found.append((rel(page), span))
    return found


def invocations():
    """``[(page, command, kind, target, tokens)]`` of the commands that run a script or a module of the repo."""
    out = []
    for page, command in commands():
        for part in re.split(r"&&|;|\|", command):
            tokens = [t for t in shlex.split(part.replace("[", " ").replace("]", " ")) if t]
            while tokens and ("=" in tokens[0] and not tokens[0].startswith("-")):  # VAR=value prefixes
                tokens = tokens[1:]
            if tokens and tokens[0] in ("taskset",):
                tokens = tokens[3:]
            if not tokens or not re.search(r"python3?(\.\d+)?$", tokens[0]):
                continue
            if len(tokens) > 2 and tokens[1] == "-m":
                out.append((page, command, "module", tokens[2], tokens[3:]))
            elif len(tokens) > 1 and tokens[1].endswith(".py"):
                out.append((page, command, "script", tokens[1], tokens[2:]))
    return out


def test_the_pages_hold_commands():
    kinds = {(kind, target) for _, _, kind, target, _ in invocations()}
    for expected in [("script", "templates/template.py"), ("script", "templates/predict.py"),
                     ("module", "lib.run.options"), ("module", "lib.run.export"), ("module", "lib.data.synthetic")]:
        assert expected in kinds, expected


def test_every_script_and_module_a_page_runs_exists():
    missing = []
    for page, command, kind, target, _ in invocations():
        if kind == "module":
            if target.split(".")[0] in ("pip", "venv") or importlib.util.find_spec(target.split(".")[0]) is None:
                continue
            if importlib.util.find_spec(target) is None:
                missing.append(f"{page}: {command}: no module {target}")
        elif not any(p in target for p in PLACEHOLDERS) and not os.path.isfile(os.path.join(REPO, target)):
            missing.append(f"{page}: {command}: no file {target}")
    assert not missing, "\n".join(missing)


def test_every_set_option_on_a_page_is_an_option():
    keys = set(config.all_keys())
    unknown = []
    for page, command, _, _, tokens in invocations():
        for flag, value in zip(tokens, tokens[1:]):
            if flag != "--set" or "=" not in value:
                continue
            key = value.split("=", 1)[0]
            if key.split(".")[0] in SECTIONS - set(config.SECTIONS) or "KEY" in key:
                continue
            if key not in keys:
                unknown.append(f"{page}: {command}: --set {key}")
    assert not unknown, "\n".join(unknown)


ENTRY_POINTS = sorted({(kind, target) for _, _, kind, target, _ in invocations()
                       if (kind == "script" and target.startswith(("templates/", "xiao_2018/", "cheng_2017/")))
                       or (kind == "module" and target.startswith("lib."))})


@pytest.mark.parametrize("kind,target", ENTRY_POINTS)
def test_every_entry_point_on_a_page_answers_help(kind, target):
    argv = ["-m", target] if kind == "module" else [target]
    result = subprocess.run([sys.executable, *argv, "--help"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "usage:" in result.stdout, result.stderr[-2000:]


def slug(heading):
    """The anchor GitHub gives a Markdown heading."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def test_every_link_between_pages_leads_to_a_file_and_heading():
    broken = []
    for page in PAGES:
        text = open(page).read()
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"^[a-z]+:", target):
                continue  # https:, mailto:
            path, _, anchor = target.partition("#")
            full = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
            if not os.path.exists(full):
                broken.append(f"{rel(page)}: {target}: no such file")
                continue
            if anchor and full.endswith(".md"):
                headings = {slug(h) for h in re.findall(r"^#+ (.+)$", open(full).read(), re.M)}
                if anchor not in headings:
                    broken.append(f"{rel(page)}: {target}: no heading #{anchor} in {rel(full)}")
    assert not broken, "\n".join(broken)


def test_readme_is_short():
    with open(os.path.join(REPO, "README.md")) as fh:
        assert len(fh.read().splitlines()) <= 250
