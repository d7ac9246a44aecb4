"""One source for every option: the help and allowed values of lib/config/, and what must follow them.

docs/options.md and the templates' CONFIG blocks are checked against the
config fields, so an option added to lib/config/ fails here until both list it.
"""

import ast
import dataclasses
import os
import re
import subprocess
import sys
import tokenize
import typing

import pytest

from lib import config
from lib.errors import UserError
from lib.run import cli, options

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEMPLATES = ["templates/template.py", "templates/big_data_template.py", "templates/3D_template.py"]
# The paper scripts list the paper's settings only; the xiao script's own section is not lib's.
PAPER_SCRIPTS = ["cheng_2017/cheng_2D_template.py", "cheng_2017/cheng_3D_template.py", "xiao_2018/xiao_template.py"]
OWN_SECTIONS = {"xiao"}
START, END = "<!-- options:start -->", "<!-- options:end -->"


def fields():
    cfg = config.Config()
    return [(f"{s}.{f.name}", f) for s in config.SECTIONS for f in dataclasses.fields(getattr(cfg, s))]


def config_block(path):
    """The CONFIG dict of an entry script, read without running it, and the comment of each of its lines."""
    with open(os.path.join(REPO, path)) as fh:
        source = fh.read()
    block = [node.value for node in ast.parse(source).body
             if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["CONFIG"]]
    assert len(block) == 1, f"{path}: expected one module-level CONFIG = {{...}}"
    with open(os.path.join(REPO, path)) as fh:
        comments = {tok.start[0]: tok.string for tok in tokenize.generate_tokens(fh.readline)
                    if tok.type == tokenize.COMMENT}
    lines = {(section.value, key.value): key.lineno
             for section, entries in zip(block[0].keys, block[0].values) for key in entries.keys}
    return ast.literal_eval(block[0]), {k: comments.get(line, "") for k, line in lines.items()}


def test_every_field_has_one_line_help_and_allowed_values():
    for dotted, f in fields():
        text = f.metadata.get("help", "")
        assert text.strip() and "\n" not in text, f"{dotted}: expected a one-line help in its option(...)"
        if f.type is not bool:
            assert options.allowed(f), f"{dotted}: expected choices or a range in its option(...)"


def test_choices_are_the_ones_validation_checks():
    for dotted, f in fields():
        choices = f.metadata.get("choices")
        if not choices:
            continue
        section, key = dotted.split(".")
        for value in choices:
            sub = dataclasses.replace(getattr(config.Config(), section), **{key: value})
            _validate_quietly(sub, dotted, "unknown value")
        sub = dataclasses.replace(getattr(config.Config(), section), **{key: "no_such_value"})
        with pytest.raises(UserError, match=rf"^{re.escape(dotted)}: unknown value 'no_such_value'"):
            sub.validate()


INTERVAL = re.compile(r"^([\[(])(-?[\d.]+), (-?[\d.]+|inf)([\])])")


@pytest.mark.parametrize("dotted", [d for d, f in fields() if f.type in (int, float)
                                    and INTERVAL.match(f.metadata.get("range") or "")])
def test_ranges_are_the_ones_validation_checks(dotted):
    """Each bound of a numeric range is accepted or refused as written: ``[`` includes it, ``(`` excludes it."""
    section, key = dotted.split(".")
    f = dict(fields())[dotted]
    opening, low, high, closing = INTERVAL.match(f.metadata["range"]).groups()
    step = 1 if f.type is int else 1e-6
    bounds = [(f.type(low), -step, opening == "[")]
    if high != "inf":
        bounds.append((f.type(high), step, closing == "]"))
    for bound, outward, closed in bounds:
        inside = bound if closed else bound - outward
        outside = bound + outward if closed else bound
        sub = dataclasses.replace(getattr(config.Config(), section), **{key: inside})
        _validate_quietly(sub, dotted, "expected a value in")
        sub = dataclasses.replace(getattr(config.Config(), section), **{key: outside})
        with pytest.raises(UserError, match=rf"^{re.escape(dotted)}: expected a value in"):
            sub.validate()


def _validate_quietly(sub, dotted, refusal):
    """``sub.validate()`` must not refuse ``dotted`` with ``refusal``; other checks (of other options) may fail."""
    try:
        sub.validate()
    except UserError as exc:
        assert not str(exc).startswith(f"{dotted}: {refusal}"), str(exc)


def test_docs_option_reference_is_the_generated_table():
    with open(os.path.join(REPO, "docs", "options.md")) as fh:
        page = fh.read()
    assert page.count(START) == 1 and page.count(END) == 1, f"docs/options.md: expected one {START} ... {END} section"
    section = page.split(START)[1].split(END)[0].strip()
    assert section == options.format_markdown(), (
        "docs/options.md is out of date: replace its table with the output of python -m lib.run.options --markdown")


@pytest.mark.parametrize("path", TEMPLATES)
def test_templates_list_every_option_with_a_comment(path):
    block, comments = config_block(path)
    expected = {dotted.partition(".")[0]: [] for dotted, _ in fields()}
    for dotted, _ in fields():
        section, _, key = dotted.partition(".")
        expected[section].append(key)
    assert list(block) == list(expected), f"{path}: CONFIG sections"
    for section, keys in expected.items():
        missing = [k for k in keys if k not in block[section]]
        unknown = [k for k in block[section] if k not in keys]
        assert not missing, f"{path}: CONFIG['{section}'] lacks {missing}"
        assert not unknown, f"{path}: CONFIG['{section}'] has unknown {unknown}"
    silent = [f"{s}.{k}" for (s, k), comment in comments.items() if len(comment.lstrip("# ")) < 3]
    assert not silent, f"{path}: CONFIG lines without a comment: {silent}"
    config.from_dict(block).validate()


@pytest.mark.parametrize("path", PAPER_SCRIPTS)
def test_paper_scripts_name_valid_options(path):
    block, _ = config_block(path)
    keys = {dotted for dotted, _ in fields()}
    unknown = [f"{s}.{k}" for s, entries in block.items() if s not in OWN_SECTIONS for k in entries
               if f"{s}.{k}" not in keys]
    assert not unknown, f"{path}: CONFIG has unknown options {unknown}"


def test_text_and_markdown_tables_list_every_option_once():
    text = options.format_text().splitlines()
    markdown = options.format_markdown().splitlines()
    assert text[0].split() == ["option", "default", "allowed", "help"]
    assert [line.split()[0] for line in text[1:]] == [d for d, _ in fields()]
    assert [line.split("|")[1].strip(" `") for line in markdown[2:]] == [d for d, _ in fields()]
    row = next(line for line in markdown if line.startswith("| `data.normalization` |"))
    assert row == ("| `data.normalization` | `\"per_image\"` | per_image, dtype_max, zscore, fixed | "
                   f"{dict(fields())['data.normalization'].metadata['help']} |")
    assert all(line.count(" | ") == 3 for line in markdown[2:]), "a | inside a cell must be escaped"


def test_help_options_prints_the_options_and_exits_0(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.parse_args(["--help-options"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == options.format_text() + "\n"


def test_help_options_and_module_from_the_command_line_without_keras():
    template = subprocess.run([sys.executable, "-X", "importtime", "templates/template.py", "--help-options"],
                              cwd=REPO, capture_output=True, text=True, timeout=120)
    module = subprocess.run([sys.executable, "-m", "lib.run.options"], cwd=REPO, capture_output=True, text=True,
                            timeout=120)
    assert template.returncode == 0 and module.returncode == 0, template.stderr + module.stderr
    assert "train.batch_overlap" in template.stdout and "data.max_val_crops" in template.stdout
    assert template.stdout == module.stdout
    imported = {line.split("|")[-1].strip() for line in template.stderr.splitlines() if line.startswith("import time:")}
    assert not {"keras", "tensorflow"} & imported, "--help-options must not import Keras"
    markdown = subprocess.run([sys.executable, "-m", "lib.run.options", "--markdown"], cwd=REPO, capture_output=True,
                              text=True, timeout=120)
    assert markdown.returncode == 0 and markdown.stdout == options.format_markdown() + "\n"


def test_option_helper_gives_each_config_its_own_list():
    a, b = config.Config(), config.Config()
    a.data.crop_shape.append(8)
    assert b.data.crop_shape == [256, 256]
    assert typing.get_type_hints(config.DataConfig)["crop_shape"] == typing.List[int]
