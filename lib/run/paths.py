"""What a command writes, checked against what it reads: paths that overlap are refused before anything is written.

``predict.py INPUT INPUT``, an OUTPUT inside the folder of slices it reads, a run folder inside its own
DATA_DIR: each would overwrite, delete or later re-read the user's data. Paths are compared as real
paths (``~`` expanded, symbolic links resolved, also for paths that do not exist yet).
"""

import os

from ..errors import UserError

RELATIONS = {"is": "is {other} itself", "inside": "lies inside {other}", "contains": "contains {other}"}


def real(path):
    return os.path.realpath(os.path.expanduser(os.fspath(path)))


def relation(path, other):
    """``'is'``, ``'inside'`` (``path`` lies inside ``other``), ``'contains'`` or None, by real paths."""
    a, b = real(path), real(other)
    if a == b:
        return "is"
    if a.startswith(b.rstrip(os.sep) + os.sep):
        return "inside"
    if b.startswith(a.rstrip(os.sep) + os.sep):
        return "contains"
    return None


def check_apart(written, read, allow=(), choose=None):
    """Raise UserError when the path ``written`` is, lies inside or contains one of the paths ``read``.

    Parameters
    ----------
    written : (label, path), what the command writes, e.g. ``("OUTPUT", "seg.zarr")``
    read : list of (label, path or None), what it reads or must leave alone; None entries are skipped
    allow : str or tuple of str, relations that are harmless here (``'contains'``: e.g. a JOB_DIR holding
        the DATA_DIR beside its runs)
    choose : str, the advice that ends the message (default: choose another ``label``)
    """
    label, path = written
    allow = (allow,) if isinstance(allow, str) else tuple(allow)
    for other_label, other in read:
        if other is None:
            continue
        found = relation(path, other)
        if found is None or found in allow:
            continue
        shown = f"{other_label} {other}" + ("" if real(other) == os.path.abspath(other) else f" ({real(other)})")
        raise UserError(f"{label} {path}: {RELATIONS[found].format(other=shown)}; writing there would overwrite or "
                        f"mix with it; nothing was written; {choose or f'choose another {label} outside it'}")
