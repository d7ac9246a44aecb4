"""The option reference: every configuration option with its default, allowed values and help.

``python -m lib.run.options`` prints it as a table, ``--markdown`` as the
Markdown table; the templates print it with ``--help-options``. The help and
allowed values live once, with the fields in :mod:`lib.config`; this module only
formats them. It must not import Keras, so that it answers at once.
"""

import argparse
import dataclasses
import json
import os
import sys

from .. import config

COLUMNS = ("option", "default", "allowed", "help")


def allowed(f):
    """The allowed values of dataclass field ``f`` as text: its choices, its range, or true/false."""
    if f.metadata.get("choices"):
        return ", ".join(f.metadata["choices"])
    if f.metadata.get("range"):
        return f.metadata["range"]
    return "true, false" if f.type is bool else ""


def rows():
    """``(section.key, default, allowed, help)`` for every option, in the order of the sections and fields."""
    cfg = config.Config()
    return [(f"{section}.{f.name}", json.dumps(getattr(getattr(cfg, section), f.name)), allowed(f),
             f.metadata.get("help", ""))
            for section in config.SECTIONS for f in dataclasses.fields(getattr(cfg, section))]


def format_text():
    """The options as an aligned plain-text table, one option per line (help last, unaligned)."""
    table = [COLUMNS] + rows()
    widths = [max(len(row[i]) for row in table) for i in range(3)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[3] for row in table)


def format_markdown():
    """The options as a Markdown table, as in docs/options.md."""
    def cell(text):
        return text.replace("|", "\\|")

    lines = ["| " + " | ".join(COLUMNS) + " |", "|---|---|---|---|"]
    lines += [f"| `{key}` | `{cell(default)}` | {cell(values)} | {cell(text)} |"
              for key, default, values, text in rows()]
    return "\n".join(lines)


def show(markdown=False):
    """Print the options (:func:`format_markdown` or :func:`format_text`) to stdout."""
    try:
        print(format_markdown() if markdown else format_text(), flush=True)
    except BrokenPipeError:  # piped into head: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m lib.run.options", description=__doc__.splitlines()[0])
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table (docs/options.md)")
    show(parser.parse_args(argv).markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
