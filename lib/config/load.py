"""A configuration from its sources: defaults, the template's ``CONFIG`` block, ``--config`` JSON, ``--set``.

Values come in that order of increasing priority; every value is type-checked as it is set.
"""

import dataclasses
import json
import typing
from dataclasses import field
from typing import Optional

from ..errors import UserError
from .choices import AUGMENT_PRESETS
from .sections import SECTIONS, AugmentConfig, Config
from .values import _coerce, _suggest, parse_value


def config_class(sections=None):
    """:class:`Config`, or a subclass with more sections: how an entry script adds options of its own.

    Parameters
    ----------
    sections : dict, optional
        ``{name: dataclass}``: each dataclass has defaults for every field and a
        ``validate()`` that raises UserError naming the option (:func:`check_choice`,
        :func:`check_range` give lib's messages). The section is then read from the
        template ``CONFIG`` block, ``--config`` and ``--set name.key=value`` like lib's
        own, checked with them and written to the run's ``config.json``.

    Returns
    -------
    type: a dataclass whose instances have ``cfg.<name>`` beside lib's six sections.
    """
    if not sections:
        return Config
    clash = sorted(set(sections) & set(SECTIONS))
    if clash:
        raise ValueError(f"sections: {', '.join(clash)} are lib's own")
    return dataclasses.make_dataclass(
        "Config", [(name, cls, field(default_factory=cls)) for name, cls in sections.items()], bases=(Config,))


def apply_preset(cfg):
    """Give the options of ``cfg``'s ``augment.preset`` (:data:`AUGMENT_PRESETS`) its values, in place.

    Only where they still have their default value: a value set to anything else (template ``CONFIG``,
    ``--config``, ``--set``) wins over the preset. Returns ``cfg``.
    """
    defaults = AugmentConfig()
    for key, value in AUGMENT_PRESETS.get(cfg.augment.preset, {}).items():
        if getattr(cfg.augment, key) == getattr(defaults, key):
            set_option(cfg, f"augment.{key}", value, f"augment.preset={cfg.augment.preset}")
    return cfg


def section_names(cfg):
    """The sections of ``cfg`` (lib's six, then those of :func:`config_class`)."""
    return tuple(f.name for f in dataclasses.fields(cfg))


def from_dict(values, base=None, source="configuration", cls=Config, ignore_unknown_sections=False):
    """Build a configuration from nested ``{section: {key: value}}``, on top of ``base`` (else ``cls()``).

    Unknown sections or keys and values of the wrong type raise UserError that
    names ``source`` and the option. ``ignore_unknown_sections``: skip sections
    ``cls`` lacks (a run's ``config.json`` read by a tool that needs lib's only).
    """
    cfg = _copy(base) if base is not None else cls()
    sections = section_names(cfg)
    if not isinstance(values, dict):
        raise UserError(f"{source}: expected a mapping of sections {sections}, got {type(values).__name__}")
    for section, entries in values.items():
        if section not in sections:
            if ignore_unknown_sections:
                continue
            raise UserError(f"{source}: unknown section '{section}'{_suggest(section, sections)}; "
                            f"sections are {', '.join(sections)}")
        if not isinstance(entries, dict):
            raise UserError(f"{source}: section '{section}' must be a mapping of options")
        for key, value in entries.items():
            set_option(cfg, f"{section}.{key}", value, source)
    return cfg


def set_option(cfg, dotted, value, source="--set"):
    """Set ``section.key`` on ``cfg`` to ``value`` after checking its type."""
    section, _, key = dotted.partition(".")
    if section not in section_names(cfg) or not key:
        raise UserError(f"{source}: unknown option '{dotted}'{_suggest(dotted, all_keys(cfg))}; "
                        "expected section.key, e.g. train.epochs")
    sub = getattr(cfg, section)
    names = [f.name for f in dataclasses.fields(sub)]
    if key not in names:
        raise UserError(f"{source}: unknown option '{dotted}'"
                        f"{_suggest(dotted, all_keys(cfg))}")
    hint = typing.get_type_hints(type(sub))[key]
    setattr(sub, key, _coerce(dotted, value, hint))


def apply_overrides(cfg, overrides):
    """Apply ``--set section.key=value`` strings: JSON or Python literals; string options keep the text."""
    for item in overrides or []:
        if "=" not in item:
            raise UserError(f"--set {item}: expected section.key=value, e.g. train.epochs=50")
        dotted, _, text = item.partition("=")
        dotted = dotted.strip()
        set_option(cfg, dotted, _parse_for(cfg, dotted, text.strip()), f"--set {item}")
    return cfg


def _parse_for(cfg, dotted, text):
    """Parse a ``--set`` value; a string option keeps the text as typed (``none``, ``400_0``), unless quoted."""
    section, _, key = dotted.partition(".")
    sub = getattr(cfg, section, None) if section in section_names(cfg) else None
    hint = typing.get_type_hints(type(sub)).get(key) if sub is not None else None
    quoted = len(text) >= 2 and text[0] == text[-1] and text[0] in "'\""
    if hint == str and not quoted:
        return text
    if hint == Optional[str] and not quoted:
        return None if text.lower() in ("none", "null") else text
    return parse_value(text)


def load_json(path):
    """Read a configuration JSON file (as written to ``config.json``)."""
    try:
        with open(path) as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise UserError(f"--config {path}: file not found") from None
    except IsADirectoryError:
        raise UserError(f"--config {path}: is a folder; expected a JSON file") from None
    except UnicodeDecodeError:
        raise UserError(f"--config {path}: not a text file; expected a JSON file") from None
    except OSError as exc:
        raise UserError(f"--config {path}: cannot read it ({exc.strerror})") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"--config {path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None


def all_keys(cfg=None):
    """Every ``section.key`` of ``cfg`` (default: lib's options)."""
    cfg = Config() if cfg is None else cfg
    return [f"{s}.{f.name}" for s in section_names(cfg) for f in dataclasses.fields(getattr(cfg, s))]


def _copy(cfg):
    return type(cfg)(**{s: dataclasses.replace(getattr(cfg, s)) for s in section_names(cfg)})
