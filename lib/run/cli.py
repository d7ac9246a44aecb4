"""The command line shared by every template and entry script, and the one way errors reach the user.

``python TEMPLATE CODE_DIR DATA_DIR JOB_DIR --id ID --rid RID [--gpu auto|cpu|0] [--set k=v ...]``

This module must not import Keras: ``--gpu`` and the thread limits only take
effect when they are set before Keras (and TensorFlow) are first imported.
"""

import argparse
import contextlib
import errno
import signal
import sys
import threading

from .. import config as config_lib
from ..errors import UserError


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
    p.add_argument("--gpu", default="auto", help="GPU index or list ('0', '0,1': data-parallel training on both; "
                   "refused where this machine lacks them), 'cpu', 'cpu:N' (N virtual CPU devices, to try several "
                   "devices without GPUs), or 'auto' (default: GPU 0 where there is one, else the CPU)")
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
    if not (gpu in ("cpu", "auto") or _virtual_cpus(gpu) or all(p.isdigit() for p in gpu.split(","))):
        raise UserError(f"--gpu {args.gpu}: expected 'auto', 'cpu', an index such as 0, a list such as 0,1, or "
                        "'cpu:N' (N >= 1 virtual CPU devices)")
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
    p.add_argument("--gpu", default="auto", help="GPU index (refused where this machine lacks it), 'cpu', or 'auto' "
                   "(default: GPU 0 where there is one, else the CPU)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for Keras/NumPy (default: all)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override an option of the run, e.g. --set inference.block_shape=[16,2048,2048]")
    p.add_argument("--scheduler", help="local:N (a Dask LocalCluster of N workers) or tcp://HOST:PORT; "
                   "default: in this process, without Dask")
    p.add_argument("--overwrite", action="store_true", help="replace an OUTPUT that holds another job")
    return _check_device_args(p.parse_args(argv))


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
