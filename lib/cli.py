"""The command line shared by every template and entry script.

``python TEMPLATE CODE_DIR DATA_DIR JOB_DIR --id ID --rid RID --gpu 0 [--set k=v ...]``

This module must not import Keras: ``--gpu`` and the thread limits only take
effect when they are set before Keras (and TensorFlow) are first imported.
"""

import argparse
import contextlib
import datetime
import errno
import functools
import importlib.util
import json
import os
import platform
import random
import signal
import sys
import threading

from . import config as config_lib
from .errors import UserError

DONE_FILE = "metrics.json"
DETERMINISTIC_XLA_FLAG = "--xla_gpu_deterministic_ops=true"


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UserError(f"command line: {message} (see --help)")


class _HelpOptions(argparse.Action):
    """``--help-options``: print every configuration option and exit 0, like ``--help`` (no other argument needed)."""

    def __init__(self, option_strings, dest, help=None):
        super().__init__(option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        from . import options

        options.show()
        parser.exit()


def build_parser(description):
    p = _Parser(description=description)
    p.add_argument("code_dir", help="folder holding this project's lib/ (e.g. '.')")
    p.add_argument("data_dir", help="dataset folder with train/{x,y} and test/{x,y}")
    p.add_argument("job_dir", help="folder for results; the run goes to JOB_DIR/<id>_<rid>/")
    p.add_argument("--id", default="job", help="experiment name (default: job)")
    p.add_argument("--rid", default="0", help="run number, a non-negative integer (default: 0)")
    p.add_argument("--gpu", default="0", help="GPU index or list ('0', '0,1': data-parallel training on both), 'cpu', "
                   "or 'cpu:N' (N virtual CPU devices, to try several devices without GPUs) (default: 0)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for Keras/NumPy (default: all)")
    p.add_argument("--config", help="JSON file with configuration sections, applied after the template's block")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one option, e.g. --set train.epochs=50 (repeatable)")
    p.add_argument("--overwrite", action="store_true", help="replace a finished run with the same id and rid")
    p.add_argument("--help-options", action=_HelpOptions,
                   help="list every option for --set and CONFIG (default, allowed values, help) and exit")
    return p


def parse_args(argv=None, description="EM segmentation experiment"):
    """Parse and check the command line; raise UserError on bad arguments."""
    args = build_parser(description).parse_args(argv)
    if not args.rid.isdigit():
        raise UserError(f"--rid {args.rid}: expected a non-negative integer run number")
    if not args.id or any(c in args.id for c in "/\\") or args.id.startswith("."):
        raise UserError(f"--id {args.id!r}: expected a plain name without slashes")
    return _check_device_args(args)


def _check_device_args(args):
    """Check and normalise ``--gpu`` and ``--threads`` of any of our command lines."""
    gpu = args.gpu.replace(" ", "").lower()
    if not (gpu == "cpu" or _virtual_cpus(gpu) or all(p.isdigit() for p in gpu.split(","))):
        raise UserError(f"--gpu {args.gpu}: expected 'cpu', an index such as 0, a list such as 0,1, or 'cpu:N' "
                        "(N >= 1 virtual CPU devices)")
    if args.threads < 0:
        raise UserError(f"--threads {args.threads}: expected 0 (all cores) or a positive number")
    args.gpu = gpu
    return args


def _virtual_cpus(gpu):
    """N of ``--gpu cpu:N`` (N >= 1), else 0."""
    kind, _, count = gpu.partition(":")
    return int(count) if kind == "cpu" and count.isdigit() and int(count) >= 1 else 0


def parse_predict_args(argv=None, description="Segment new images or volumes with a trained model"):
    """The command line of ``templates/predict.py``: CODE_DIR INPUT OUTPUT --model MODEL ...; UserError if bad."""
    p = _Parser(description=description)
    p.add_argument("code_dir", help="folder holding this project's lib/ (e.g. '.')")
    p.add_argument("input", help="image, TIFF stack, folder of slices, vol.zarr[/array] or vol.h5:dataset")
    p.add_argument("output", help="OUT.zarr (OME-Zarr), OUT.tif (BigTIFF) or a folder of TIFF slices")
    p.add_argument("--model", required=True, help="a run folder (JOB_DIR/ID_RID) or a .keras file")
    p.add_argument("--gpu", default="0", help="GPU index or 'cpu' (default: 0)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for Keras/NumPy (default: all)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override an option of the run, e.g. --set inference.block_shape=[16,2048,2048]")
    p.add_argument("--scheduler", help="local:N (a Dask LocalCluster of N workers) or tcp://HOST:PORT; "
                   "default: in this process, without Dask")
    p.add_argument("--overwrite", action="store_true", help="replace an OUTPUT that holds another job")
    return _check_device_args(p.parse_args(argv))


@functools.cache
def count_gpus():
    """Number of NVIDIA GPUs on this machine (``nvidia-smi -L``), 0 when there is no driver; asked once per process."""
    import shutil
    import subprocess

    if shutil.which("nvidia-smi") is None:
        return 0
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(line.startswith("GPU ") for line in out.splitlines())


def select_device(gpu, threads, n_gpus=None):
    """Set the environment that Keras/TensorFlow read at import time.

    A GPU index that this machine does not have is an error; asking for a GPU on
    a machine without any prints a warning and runs on the CPU, so the default
    ``--gpu 0`` works on laptops too. ``cpu:N`` makes N virtual CPU devices
    (JAX reads its flag at start; TensorFlow's are made by :func:`distribution`).
    """
    cpus = _virtual_cpus(gpu)
    if cpus > 1:
        flag = f"--xla_force_host_platform_device_count={cpus}"
        os.environ["XLA_FLAGS"] = " ".join(f for f in os.environ.get("XLA_FLAGS", "").split()
                                           if not f.startswith("--xla_force_host_platform_device_count")) + " " + flag
    if gpu != "cpu" and not cpus:
        n_gpus = count_gpus() if n_gpus is None else n_gpus
        indices = [int(i) for i in gpu.split(",")]
        if n_gpus == 0:
            print(f"warning: --gpu {gpu}: this machine has no NVIDIA GPU; running on the CPU", file=sys.stderr)
        elif max(indices) >= n_gpus:
            raise UserError(f"--gpu {gpu}: no GPU {max(indices)} on this machine, which has {n_gpus} "
                            f"(indices 0 to {n_gpus - 1}); use one of those or 'cpu'")
    os.environ["CUDA_VISIBLE_DEVICES"] = "-1" if gpu == "cpu" or cpus else gpu
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if threads:
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                    "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"):
            os.environ[var] = str(threads)
        if keras_backend() == "jax":
            _limit_cores(threads)


def check_precision(precision, ndim, gpu, n_gpus=None):
    """Refuse ``train.precision=bfloat16`` for a 3D network on TensorFlow's CPU backend, before anything is written.

    TensorFlow 2.21's oneDNN 3D convolutions in bfloat16 end the process with a
    segmentation fault from subvolumes of 8 x 128 x 128 up (8 x 64 x 64 ran; the 3D template's
    are 8 x 256 x 256; seen on an Intel Xeon with AVX-512 BF16 and AMX, 2026-12-02), and on CPUs without
    bf16 hardware bfloat16 is emulated, several times slower. 2D networks and GPUs are
    not affected. Call it after :func:`select_device`, with the network's spatial axes.
    """
    if precision != "bfloat16" or ndim != 3 or keras_backend() != "tensorflow":
        return
    if _on_cpu(gpu, n_gpus):
        raise UserError("train.precision=bfloat16: TensorFlow's 3D convolutions in bfloat16 crash on the CPU "
                        "(segmentation fault, TensorFlow 2.21); use train.precision=float32 (the default) on a CPU, "
                        "or bfloat16 on a GPU")


def cpu_has_bf16(cpuinfo="/proc/cpuinfo"):
    """True when this CPU computes bfloat16 natively (AVX-512 BF16 or AMX-BF16 in ``cpuinfo``'s flags; Linux)."""
    try:
        with open(cpuinfo) as fh:
            flags = next((line for line in fh if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision, ndim, gpu, n_gpus=None, bf16_cpu=None):
    """The ``train.precision`` to compute in: ``auto`` becomes ``bfloat16`` or ``float32``; others stay as they are.

    ``auto`` is bfloat16 where it was measured faster without a loss of accuracy: a 2D network on
    TensorFlow's CPU backend on a CPU with bfloat16 hardware (AVX-512 BF16 or AMX; a U-Net
    training step 1.44x faster on an AMD EPYC with AVX-512 BF16, README "How the defaults were
    chosen"). Everywhere else it is float32: CPUs without bf16 hardware emulate it (several
    times slower), TensorFlow's 3D bfloat16 convolutions crash on the CPU (:func:`check_precision`),
    and on GPUs and the other backends its accuracy was not measured. Call it after
    :func:`select_device`, with the network's spatial axes.
    """
    if precision != "auto":
        return precision
    if ndim != 2 or keras_backend() != "tensorflow" or not (cpu_has_bf16() if bf16_cpu is None else bf16_cpu):
        return "float32"
    return "bfloat16" if _on_cpu(gpu, n_gpus) else "float32"


def run_precision(precision, ndim, gpu):
    """The precision a run computes in: ``precision`` resolved (:func:`resolve_precision`) and checked
    (:func:`check_precision`) for a network with ``ndim`` spatial axes under ``--gpu gpu``."""
    precision = resolve_precision(precision, ndim, gpu)
    check_precision(precision, ndim, gpu)
    return precision


def _on_cpu(gpu, n_gpus=None):
    """True when ``--gpu`` runs on the CPU: ``cpu``, ``cpu:N``, or a GPU index on a machine without GPUs."""
    return gpu == "cpu" or bool(_virtual_cpus(gpu)) or (count_gpus() if n_gpus is None else n_gpus) == 0


def check_tensorboard(enabled):
    """Refuse ``train.tensorboard=true`` where tensorboardX is not installed, before anything is written.

    Training writes its TensorBoard event files with tensorboardX (``env/requirements-base.txt``); an
    environment made without ``env/`` (a cluster's own Python, a lent GPU machine's image) may lack it,
    and would otherwise stop at the first epoch with the run folder half written.
    """
    if enabled and importlib.util.find_spec("tensorboardX") is None:
        raise UserError("train.tensorboard: the package tensorboardX is not installed; install it (pip install "
                        "tensorboardX, pinned in env/requirements-base.txt) or set train.tensorboard=false")


def keras_backend():
    """The backend Keras will load, read as Keras reads it (``KERAS_BACKEND``, else ``keras.json``), without importing it."""
    if os.environ.get("KERAS_BACKEND"):
        return os.environ["KERAS_BACKEND"]
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    try:
        with open(os.path.join(home, "keras.json")) as fh:
            return json.load(fh).get("backend", "tensorflow")
    except (OSError, ValueError):
        return "tensorflow"


def _limit_cores(threads):
    """Keep this process (and the processes it starts) on ``threads`` of its cores.

    JAX has no thread setting (XLA_FLAGS' thread options are ignored by its CPU
    runtime): it sizes its thread pool from the cores the process may run on.
    The cores taken start at one that depends on the process id, so that
    concurrent runs do not all share the first ones.
    """
    if not hasattr(os, "sched_setaffinity"):
        print(f"warning: --threads {threads}: this system cannot limit the cores of JAX; it uses all of them",
              file=sys.stderr)
        return
    cores = sorted(os.sched_getaffinity(0))
    if threads < len(cores):
        start = os.getpid() % len(cores)
        os.sched_setaffinity(0, (cores + cores)[start:start + threads])


def deterministic_environment():
    """Set what ``train.deterministic`` needs before the backend starts: XLA's deterministic GPU ops.

    Read by JAX (and by TensorFlow's XLA) when it starts; the other settings
    are made at training time (:func:`lib.training.enable_determinism`).
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if DETERMINISTIC_XLA_FLAG not in flags.split():
        os.environ["XLA_FLAGS"] = f"{flags} {DETERMINISTIC_XLA_FLAG}".strip()


def distribution(gpu, batch_size):
    """Data-parallel training on the devices of ``--gpu``: ``(scope, replicas)``; UserError where it cannot be.

    With several devices (``0,1`` on a machine with those GPUs, or ``cpu:N``),
    ``scope`` is the backend's own distribution: ``tf.distribute.MirroredStrategy``
    on TensorFlow, ``keras.distribution.DataParallel`` on JAX; build, compile and
    train the model inside it. Each step splits the global batch ``batch_size``
    evenly over the ``replicas`` devices, so it must be a multiple of them. Keras's
    PyTorch backend has no data-parallel training: several devices are refused.
    With one device, ``scope`` does nothing and ``replicas`` is 1. Call it after
    :func:`select_device`, before the backend has run anything (TensorFlow makes
    its virtual CPU devices once, when it starts). This is the project's only
    TensorFlow-specific code path besides determinism.
    """
    import keras

    backend = keras.backend.backend()
    wanted = _virtual_cpus(gpu) or (1 if gpu == "cpu" else len(gpu.split(",")))
    if wanted > 1 and backend not in ("tensorflow", "jax"):
        raise UserError(f"--gpu {gpu}: Keras's {backend} backend trains on one device; give one device "
                        "(e.g. --gpu 0), or set KERAS_BACKEND=jax or tensorflow to train on several")
    devices = _devices(backend, gpu) if wanted > 1 else []
    if len(devices) < 2:  # one device, or GPUs asked for on a machine without (select_device warned)
        return contextlib.nullcontext(), 1
    if batch_size % len(devices):
        raise UserError(f"train.batch_size={batch_size}: --gpu {gpu} trains on {len(devices)} devices, each taking "
                        f"an equal share of every batch; expected a multiple of {len(devices)}")
    print(f"Data-parallel training on {len(devices)} devices ({', '.join(map(str, devices))}), "
          f"{batch_size // len(devices)} crops each per batch of {batch_size}")
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.distribute.MirroredStrategy(devices).scope(), len(devices)
    return keras.distribution.DataParallel(devices=devices).scope(), len(devices)


def _devices(backend, gpu):
    """The devices that ``--gpu`` names, as the backend names them (several for ``cpu:N``, or GPUs)."""
    cpus = _virtual_cpus(gpu)
    if backend == "jax":
        import jax

        found = jax.devices("cpu") if cpus else [d for d in jax.devices() if d.platform == "gpu"]
        if cpus and len(found) != cpus:
            raise UserError(f"--gpu {gpu}: JAX started with {len(found)} CPU devices before --gpu could set "
                            "XLA_FLAGS; run the script in a new process")
        return found
    import tensorflow as tf

    if not cpus:
        return [d.name for d in tf.config.list_logical_devices("GPU")]
    try:
        tf.config.set_logical_device_configuration(tf.config.list_physical_devices("CPU")[0],
                                                   [tf.config.LogicalDeviceConfiguration()] * cpus)
    except RuntimeError:  # TensorFlow already started in this process: its devices are fixed
        pass
    found = [d.name for d in tf.config.list_logical_devices("CPU")]
    if len(found) != cpus:
        raise UserError(f"--gpu {gpu}: TensorFlow already started with {len(found)} CPU devices in this process; "
                        "run the script in a new process")
    return found


def load_config(template_config, args, sections=None):
    """Defaults <- template block <- --config file <- --set overrides, then ``augment.preset``, validated.

    ``sections``: the entry script's own sections, ``{name: dataclass}`` (:func:`lib.config.config_class`).
    """
    cls = config_lib.config_class(sections)
    cfg = config_lib.from_dict(template_config or {}, source="template CONFIG", cls=cls)
    if args.config:
        cfg = config_lib.from_dict(config_lib.load_json(args.config), base=cfg, source=f"--config {args.config}")
    config_lib.apply_overrides(cfg, args.overrides)
    return config_lib.apply_preset(cfg).validate()


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
    if os.path.exists(os.path.join(run_dir, DONE_FILE)) and not args.overwrite:
        raise UserError(
            f"{run_dir} holds a finished run; use --rid {next_free_rid(args.job_dir, args.id)} "
            "for a new run or --overwrite to replace it"
        )
    work_dir = _work_dir(args)
    if cfg is not None:
        _resume_changes(args, work_dir, cfg)
    return os.path.isdir(work_dir)


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
    from . import io

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
    import shutil

    final = run_dir_for(args)
    if os.path.abspath(run_dir) == os.path.abspath(final):
        return final
    trash = os.path.join(os.path.dirname(final), f".{os.path.basename(final)}.removing.{os.getpid()}")
    if os.path.exists(final):
        os.rename(final, trash)
    os.rename(run_dir, final)
    shutil.rmtree(trash, ignore_errors=True)
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


def seed_everything(seed):
    import keras
    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    keras.utils.set_random_seed(seed)


class _Terminated(BaseException):
    """SIGTERM, raised in the main thread so that cleanup code runs and the user learns how to resume."""


def _terminate(signum, frame):
    raise _Terminated()


# A full or read-only disk: the run stops, but rerunning the same command resumes it once there is room.
_DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


@contextlib.contextmanager
def user_errors():
    """Turn UserError into one ``error: ...`` line on stderr and exit status 2.

    Also: Ctrl-C (status 130) and SIGTERM, which cluster schedulers send before
    killing a job (status 143), end with a line on how to resume; a full or
    read-only disk ends with one ``error:`` line naming the file (status 1).
    """
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
    try:
        yield
    except UserError as exc:
        print("error: " + " ".join(line.strip() for line in str(exc).splitlines()), file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume", file=sys.stderr)
        sys.exit(130)
    except _Terminated:
        print("terminated (SIGTERM): run the same command again to resume", file=sys.stderr)
        sys.exit(143)
    except OSError as exc:
        if exc.errno not in _DISK_ERRORS:
            raise
        print(f"error: {exc.filename or 'writing a file'}: {exc.strerror}; make room and run the same command "
              "again to resume", file=sys.stderr)
        sys.exit(1)
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
