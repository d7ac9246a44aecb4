"""Run folders ``JOB_DIR/<id>_<rid>/``: checked before anything runs, created, resumed, put in place.

A finished run (one with ``metrics.json``) is never overwritten without ``--overwrite``; a run is
written in a work folder and renamed into place when it finishes.
"""

import datetime
import json
import os
import platform
import sys

from .. import config as config_lib
from ..errors import UserError
from ..model.saving import BEST, LAST

DONE_FILE = "metrics.json"


def run_dir_for(args):
    return os.path.join(args.job_dir, f"{args.id}_{args.rid}")


def next_free_rid(job_dir, run_id):
    rid = 0
    while os.path.exists(os.path.join(job_dir, f"{run_id}_{rid}")):
        rid += 1
    return rid


def check_run_dir(args, cfg=None):
    """Refuse to overwrite a finished run unless ``--overwrite``; check JOB_DIR is writable.

    Given ``cfg``, also refuse to resume an unfinished run with options that the
    checkpoint fixes (:data:`lib.config.FIXED_ON_RESUME`). Returns True when an
    unfinished run folder exists (the run resumes).
    """
    run_dir = run_dir_for(args)
    parent = os.path.abspath(args.job_dir)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise UserError(f"{args.job_dir}: JOB_DIR is not writable ({parent} is a file, not a folder)")
    if not os.access(parent, os.W_OK):
        raise UserError(f"{args.job_dir}: JOB_DIR is not writable (no write permission on {parent})")
    _check_name_length(args, parent)
    check_apart(args)
    for folder in (run_dir, _work_dir(args)):
        check_ours(folder)
    if os.path.exists(os.path.join(run_dir, DONE_FILE)) and not args.overwrite:
        raise UserError(
            f"{run_dir} holds a finished run; use --rid {next_free_rid(args.job_dir, args.id)} "
            "for a new run or --overwrite to replace it"
        )
    work_dir = _work_dir(args)
    if cfg is not None:
        _resume_changes(args, work_dir, cfg)
    return os.path.isdir(work_dir)


# What a run folder holds from its start (:func:`create_run_dir`): an existing folder without them is not a run's.
RUN_MARKERS = ("config.json", ".lock")


def check_ours(folder):
    """Refuse a ``folder`` that exists but is not a run folder (nor an empty one): it is never written in or replaced.

    A run folder holds ``config.json`` from its first second (``.lock`` just before); anything else at
    that path, a file or a folder of other files, is the user's, with or without ``--overwrite``.
    """
    if not os.path.lexists(folder):
        return
    if not os.path.isdir(folder):
        raise UserError(f"{folder}: exists and is a file, not a run folder; nothing was changed; choose another "
                        "--id, --rid or JOB_DIR")
    names = sorted(os.listdir(folder))
    if names and not any(os.path.exists(os.path.join(folder, marker)) for marker in RUN_MARKERS):
        shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
        raise UserError(f"{folder}: exists and is not a run folder (it holds {shown}, but no config.json); "
                        "it is never written in or replaced, even with --overwrite; choose another --id, --rid or "
                        "JOB_DIR")


def check_apart(args):
    """Refuse a JOB_DIR that is or lies inside DATA_DIR, and a DATA_DIR inside the run folder (real paths)."""
    from .paths import check_apart as apart

    apart(("JOB_DIR", args.job_dir), [("DATA_DIR", args.data_dir)], allow="contains",
          choose="choose a JOB_DIR outside DATA_DIR")
    apart(("the run folder", run_dir_for(args)), [("DATA_DIR", args.data_dir)], allow="inside",
          choose="choose another JOB_DIR, --id or --rid")


def _check_name_length(args, parent):
    """The run folder's name, and the hidden names made from it (staging, removal), must fit the file system."""
    try:
        name_max = os.pathconf(parent, "PC_NAME_MAX")
    except (OSError, ValueError):
        name_max = 255
    room = name_max - len(".removing.") - len(".") - 10  # 10: a process id
    length = len(os.fsencode(f"{args.id}_{args.rid}"))
    if length > room:
        raise UserError(f"--id {args.id[:20]}...: too long for the file system (run folder name of {length} "
                        f"bytes; at most {room} with this --rid)")


def _work_dir(args):
    """The folder this run works in: its own, or beside it while it replaces a finished run (``--overwrite``)."""
    run_dir = run_dir_for(args)
    if args.overwrite and os.path.exists(os.path.join(run_dir, DONE_FILE)):
        return os.path.join(os.path.dirname(run_dir), f".{os.path.basename(run_dir)}.overwrite")
    return run_dir


def create_run_dir(args, cfg):
    """Create the run folder with ``config.json`` and ``environment.json``, or reopen it to resume.

    The folder is ``JOB_DIR/<id>_<rid>/``, except for a run that replaces a
    finished one (``--overwrite``): that one works in the hidden folder
    ``JOB_DIR/.<id>_<rid>.overwrite/`` beside it, and :func:`commit_run` swaps
    the two once it has finished, so a refusal, a crash or a kill in between
    loses nothing of the finished run. The folder is locked for the life of
    this process, so a second process started on the same run (e.g. a job
    submitted twice) is refused. An unfinished run is reopened: the temporary
    files of writes its kill interrupted are removed, and options that differ
    from its ``config.json`` are listed (those that the checkpoint fixes are refused).
    Returns the folder.
    """
    from ..data import io

    run_dir = _work_dir(args)
    changed = _resume_changes(args, run_dir, cfg)
    if run_dir != run_dir_for(args):
        print(f"{run_dir_for(args)} holds a finished run: it is replaced when this run finishes, which runs in "
              f"{run_dir} until then")
    os.makedirs(run_dir, exist_ok=True)
    _lock_run(run_dir)
    config_path = os.path.join(run_dir, "config.json")
    if changed is not None:
        io.remove_partial_files(run_dir)
        print(f"Resuming the unfinished run in {run_dir}" + (
            f"; changed options: {', '.join(changed)}" if changed else ""))
    io.write_text(config_path, json.dumps(_values(cfg), indent=2) + "\n")
    io.write_text(os.path.join(run_dir, "environment.json"), json.dumps(environment(args), indent=2) + "\n")
    return run_dir


def commit_run(args, run_dir):
    """Put a finished run in its place and return that folder, ``JOB_DIR/<id>_<rid>``.

    A run that replaced a finished one (``--overwrite``, see :func:`create_run_dir`)
    is swapped with it now: the old run is renamed away, the new one renamed to
    the run's name, then the old one deleted. Other runs are already in place.
    """
    from ..data import io

    final = run_dir_for(args)
    if os.path.abspath(run_dir) == os.path.abspath(final):
        return final
    io.swap_into(run_dir, final)
    return final


def _values(cfg):
    """``cfg`` as the plain values written to ``config.json``."""
    return json.loads(json.dumps(cfg.to_dict()))


def _resume_changes(args, run_dir, cfg):
    """Options changed since the unfinished run in ``run_dir`` began, or None when there is none to resume.

    Raises UserError naming the changed options that the checkpoint fixes
    (:func:`lib.config.fixed_on_resume`): resuming would train the old network
    while ``config.json`` describes the new one.
    """
    config_path = os.path.join(run_dir, "config.json")
    if not os.path.exists(config_path):
        return None
    old = config_lib.load_json(config_path)
    changed = _changed_options(old, _values(cfg))
    fixed = [c for c in changed if config_lib.fixed_on_resume(c.partition(":")[0])]
    if fixed:
        raise UserError(
            f"{run_dir}: cannot resume with changed {', '.join(fixed)}: its checkpoint holds the network, loss "
            f"and optimiser trained so far; undo the change to resume, or use --rid "
            f"{next_free_rid(args.job_dir, args.id)} for a new run"
        )
    return changed


def _lock_run(run_dir):
    """Lock ``run_dir/.lock`` for the rest of this process; UserError if another process holds it.

    A POSIX record lock belongs to the process, not to a file handle: this
    process may lock its run again (a template's ``main()`` called twice in one
    session), and the lock ends with the process, however it ends, so nothing
    keeps or releases it. Its descriptor stays open on purpose: closing any
    descriptor of the file would release the lock.
    """
    import fcntl

    fd = os.open(os.path.join(run_dir, ".lock"), os.O_WRONLY | os.O_CREAT, 0o666)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except (BlockingIOError, PermissionError):  # EAGAIN or EACCES: held by another process
        os.close(fd)
        raise UserError(f"{run_dir} is in use by another process running the same --id and --rid; "
                        "wait for it to end, or choose another --rid") from None
    except OSError:  # a file system without locks: run unprotected rather than not at all
        os.close(fd)


def _changed_options(old, new):
    """``['train.epochs: 8 -> 10', ...]`` for the options whose values differ between two config dicts."""
    return [f"{section}.{key}: {old[section][key]} -> {value}"
            for section, entries in new.items() for key, value in entries.items()
            if key in old.get(section, {}) and old[section][key] != value]


def environment(args):
    """Versions, backend and devices, recorded with every run."""
    import keras
    import numpy
    import skimage

    env = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "data_dir": os.path.abspath(args.data_dir) if getattr(args, "data_dir", None) else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "keras": keras.__version__,
        "backend": keras.backend.backend(),
        "numpy": numpy.__version__,
        "scikit-image": skimage.__version__,
        "gpu": args.gpu,
        "threads": args.threads or os.cpu_count(),
    }
    env.update(backend_environment(env["backend"]))
    return env


def backend_environment(backend):
    """``{framework: version, ..., "devices": [...]}`` of the Keras backend ``backend``, as it runs now."""
    if backend == "tensorflow":
        import tensorflow as tf

        return {"tensorflow": tf.__version__, "devices": [d.name for d in tf.config.list_logical_devices()]}
    if backend == "jax":
        import jax
        import jaxlib

        return {"jax": jax.__version__, "jaxlib": jaxlib.__version__, "xla_flags": os.environ.get("XLA_FLAGS", ""),
                "devices": [f"{d.platform}:{d.id} {d.device_kind}" for d in jax.devices()]}
    if backend == "torch":
        import torch

        gpus = [f"cuda:{i} {torch.cuda.get_device_name(i)}" for i in range(torch.cuda.device_count())]
        return {"torch": torch.__version__, "torch_threads": torch.get_num_threads(), "devices": ["cpu"] + gpus}
    return {}


def run_checkpoint(run_dir):
    """The checkpoint a run folder predicts with: ``checkpoints/best.keras``, else ``last.keras``, else None."""
    return next((path for path in (os.path.join(run_dir, "checkpoints", name) for name in (BEST, LAST))
                 if os.path.isfile(path)), None)


def resolve_pretrained(value, job_dir):
    """The ``.keras`` file (or zoo package) that ``train.pretrained`` names, or None when it is None.

    A value with a path separator or ending in ``.keras`` or ``.zip`` is a path (a
    ``.keras`` file, a BioImage Model Zoo package with ``keras_v3`` weights, or a run folder); any other value is a
    run name ``ID_RID`` inside ``job_dir``. A run folder gives its :func:`run_checkpoint`.

    Raises
    ------
    UserError
        Naming ``train.pretrained``, when nothing usable is there.
    """
    if value is None:
        return None
    is_path = os.sep in value or "/" in value or value.endswith((".keras", ".zip"))
    path = os.path.expanduser(value) if is_path else os.path.join(job_dir, value)
    if os.path.isdir(path):
        checkpoint = run_checkpoint(path)
        if checkpoint is not None:
            return checkpoint
        raise UserError(f"train.pretrained={value}: the run folder {path} has no checkpoints/{BEST} "
                        f"or checkpoints/{LAST}")
    if not os.path.isfile(path):
        raise UserError(f"train.pretrained={value}: {path} not found; expected a .keras file, a run folder, "
                        "or a run name ID_RID inside JOB_DIR")
    if not path.endswith((".keras", ".zip")):
        raise UserError(f"train.pretrained={value}: {path} is not a .keras model file or a BioImage Model Zoo .zip")
    return path
