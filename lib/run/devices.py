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
def gpu_census():
    """``(number of NVIDIA GPUs, why none)`` on this machine, from ``nvidia-smi -L``; asked once per process."""
    import shutil
    import subprocess

    if shutil.which("nvidia-smi") is None:
        return 0, "no NVIDIA driver (nvidia-smi not found)"
    try:
        result = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError) as exc:
        return 0, f"nvidia-smi failed ({type(exc).__name__})"
    count = sum(line.startswith("GPU ") for line in result.stdout.splitlines())
    if count == 0:
        said = (result.stderr or result.stdout).strip().splitlines()
        return 0, "nvidia-smi lists no GPU" + (f" ({said[0][:120]})" if said else "")
    return count, ""


def count_gpus():
    """Number of NVIDIA GPUs on this machine (``nvidia-smi -L``), 0 when there is no driver; asked once per process."""
    return gpu_census()[0]


def select_device(gpu, threads, n_gpus=None):
    """Set the environment that Keras/TensorFlow read at import time; return the ``--gpu`` value it resolved.

    ``auto`` (the default) is GPU 0 on a machine with an NVIDIA GPU, else the CPU. A GPU asked for by
    index is an error where this machine lacks it (no driver, no GPU, or fewer GPUs): on a cluster
    node whose CUDA setup is broken, a run asked for a GPU must not run 50-100x slower on the CPU
    without anyone noticing. ``cpu`` runs on the CPU; ``cpu:N`` makes N virtual CPU devices (JAX reads its
    flag at start; TensorFlow's are made by :func:`distribution`).
    """
    cpus = _virtual_cpus(gpu)
    if cpus > 1:
        flag = f"--xla_force_host_platform_device_count={cpus}"
        os.environ["XLA_FLAGS"] = " ".join(f for f in os.environ.get("XLA_FLAGS", "").split()
                                           if not f.startswith("--xla_force_host_platform_device_count")) + " " + flag
    if gpu == "auto":
        n_gpus, why = gpu_census() if n_gpus is None else (n_gpus, "no NVIDIA GPU")
        gpu = "0" if n_gpus else "cpu"
        print("--gpu auto: " + ("GPU 0" if n_gpus else f"the CPU ({why})"))
    elif gpu != "cpu" and not cpus:
        n_gpus, why = (gpu_census() if n_gpus is None else (n_gpus, "no NVIDIA GPU"))
        indices = [int(i) for i in gpu.split(",")]
        if n_gpus == 0:
            raise UserError(f"--gpu {gpu}: this machine has no GPU to run on: {why}; use --gpu cpu to run on the "
                            "CPU (or --gpu auto: a GPU where there is one, else the CPU)")
        if max(indices) >= n_gpus:
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
    return gpu


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


def backend_gpus(backend):
    """The GPUs that the Keras backend ``backend`` sees now (after ``CUDA_VISIBLE_DEVICES``), as it names them."""
    if backend == "jax":
        import jax

        try:
            return [d for d in jax.devices() if d.platform == "gpu"]
        except RuntimeError:
            return []
    if backend == "torch":
        import torch

        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    import tensorflow as tf

    return tf.config.list_physical_devices("GPU")


def check_backend_gpus(gpu, found=None):
    """Refuse a ``--gpu`` index that the Keras backend cannot run on, although the machine has that GPU.

    A CPU-only build of the backend, or a CUDA that does not match the driver, shows no GPU to it:
    refused before anything is written, instead of running on the CPU. ``found`` (the backend's GPUs)
    is for tests. Call it after :func:`select_device`, once Keras may be imported.
    """
    if gpu in ("cpu", "auto") or _virtual_cpus(gpu):  # auto: resolved by select_device where it is called
        return
    import keras

    backend = keras.backend.backend()
    found = backend_gpus(backend) if found is None else found
    if len(found) < len(gpu.split(",")):
        raise UserError(f"--gpu {gpu}: this machine has {count_gpus()} NVIDIA GPU(s), but Keras's {backend} backend "
                        f"sees {len(found) or 'none'} (a {backend} build without CUDA, or a CUDA that does not match "
                        "the driver); install the backend's GPU build (env/requirements-gpu.txt for TensorFlow), "
                        "or use --gpu cpu")


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
