"""Type and range checks of option values, with the messages that name the option.

:func:`check_choice` and :func:`check_range` are for the ``validate()`` of an entry script's own
option sections (:func:`lib.config.config_class`); the private helpers are the sections' own.
"""

import ast
import difflib
import json
import math
import typing
from dataclasses import field
from typing import List, Union

from ..errors import UserError


def option(default, help, choices=None, range=None):
    """A config field with its one-line ``help`` and allowed values: ``choices`` or a ``range`` text.

    ``range`` is an interval as validation messages write it (``[0, 1)``, ``[1, inf)``),
    or a short description for lists; ``python -m lib.run.options`` prints them all.
    """
    metadata = {"help": help, "choices": choices, "range": range}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def parse_value(text):
    """Parse a command-line value: JSON, then Python literal, then plain string."""
    for parse in (json.loads, ast.literal_eval):
        try:
            return parse(text)
        except (ValueError, SyntaxError):
            continue
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    return text


def check_choice(name, value, choices):
    """Raise UserError ``name: expected one of ...`` unless ``value`` is in ``choices`` (for sections' validate)."""
    _choice(name, value, choices)


def check_range(name, value, low=None, high=None, low_open=False, high_open=False):
    """Raise UserError naming option ``name`` unless ``low <= value <= high`` (``<`` where open; None: unbounded)."""
    _range(name, value, low, high, low_open=low_open, high_open=high_open)


def _suggest(word, options):
    close = difflib.get_close_matches(word, list(options), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _type_name(hint):
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _coerce(name, value, hint):
    """Return ``value`` converted to the annotated type, or raise UserError."""
    _check_finite(name, value)
    origin = typing.get_origin(hint)
    if origin is Union:
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(name, value, arg)
            except UserError:
                continue
        raise UserError(f"{name}: expected {' or '.join(_type_name(a) for a in args if a is not type(None))}"
                        f"{' or null' if type(None) in args else ''}, got {value!r}")
    if origin in (list, List):
        (item,) = typing.get_args(hint)
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise UserError(f"{name}: expected a list of {_type_name(item)}, got {value!r}")
        return [_coerce(name, v, item) for v in value]
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise UserError(f"{name}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise UserError(f"{name}: expected an integer, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise UserError(f"{name}: expected a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise UserError(f"{name}: expected a string, got {value!r}")
    raise TypeError(f"unsupported option type {hint} for {name}")


def _check_finite(name, value):
    """NaN passes every range check (all its comparisons are false): refuse it, and infinities, here."""
    if isinstance(value, (list, tuple)):
        for v in value:
            _check_finite(name, v)
    elif isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"{name}: expected a finite number, got {value}")


def _choice(name, value, choices):
    if value not in choices:
        raise UserError(f"{name}: unknown value '{value}'{_suggest(str(value), choices)}; "
                        f"expected one of {', '.join(choices)}")


def _range(name, value, low, high, low_open=False, high_open=False):
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        lo = "-inf" if low is None else low
        hi = "inf" if high is None else high
        interval = f"{'(' if low_open or low is None else '['}{lo}, {hi}{')' if high_open or high is None else ']'}"
        raise UserError(f"{name}: expected a value in {interval}, got {value}")


def _interval(name, value, low, high, low_open=False):
    if len(value) != 2 or value[0] > value[1]:
        raise UserError(f"{name}: expected [min, max] with min <= max, got {value}")
    for v in value:
        _range(name, v, low, high, low_open=low_open)


def _shape(name, value, low=2):
    if len(value) not in (2, 3):
        raise UserError(f"{name}: expected 2 (y, x) or 3 (z, y, x) sizes, got {value}")
    for v in value:
        _range(name, v, low, None)
