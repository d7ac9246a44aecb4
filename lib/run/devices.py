"""Devices, threads, precision and seeds: what ``--gpu``, ``--threads`` and ``train.precision`` choose.

Keras-free at import: the device and thread limits are set before Keras starts.
"""

import contextlib
import functools
import importlib.util
import json
import os
import random
import sys

from ..errors import UserError
from ..train.determinism import DETERMINISTIC_XLA_FLAG
from .cli import _virtual_cpus


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
    training step 1.44x faster on an AMD EPYC with AVX-512 BF16, docs/defaults.md). Everywhere
    else it is float32: CPUs without bf16 hardware emulate it (several times slower), TensorFlow's 3D bfloat16 convolutions crash on the CPU (:func:`check_precision`),
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
    are made at training time (:func:`lib.train.determinism.enable_determinism`).
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


def seed_everything(seed):
    import keras
    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    keras.utils.set_random_seed(seed)
