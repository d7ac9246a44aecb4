"""Importing and using the library changes nothing global: matplotlib's backend and pyplot, the umask.

Each check runs in a fresh interpreter, where the import really happens.
"""

import os
import subprocess
import sys

from conftest import REPO


def python(code, *args, **env):
    """Run ``code`` in a new interpreter at the repository root; its stdout."""
    result = subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, env={**os.environ, **env},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_reports_leave_the_matplotlib_backend_and_pyplot_alone(tmp_path):
    out = python(
        "import sys, numpy as np, matplotlib\n"
        "from lib.evaluate import reports\n"
        "print(matplotlib.get_backend())\n"
        "reports.plot_history([{'epoch': 1, 'loss': 0.5, 'val_loss': 0.6}], sys.argv[1])\n"
        "reports.save_augmentation_samples([np.random.rand(16, 16, 1)], [np.eye(16)], sys.argv[1])\n"
        "print(matplotlib.get_backend(), 'matplotlib.pyplot' in sys.modules)\n",
        str(tmp_path), MPLBACKEND="svg")
    assert out.split() == ["svg", "svg", "False"]
    assert sorted(os.listdir(tmp_path)) == ["iou.png", "loss.png", "sample_000.png"]


def test_io_reads_the_umask_without_setting_it(tmp_path):
    path = tmp_path / "a.txt"
    out = python(
        "import os, sys\n"
        "os.umask(0o027)\n"
        "calls, umask = [], os.umask\n"
        "os.umask = lambda mask: calls.append(mask) or umask(mask)\n"
        "from lib.data import io\n"
        "print(len(calls))\n"
        "io.write_text(sys.argv[1], 'x')\n"
        "print(len(calls), oct(os.stat(sys.argv[1]).st_mode & 0o777))\n",
        str(path))
    imported, written = out.splitlines()
    assert imported == "0"
    # Linux reads the umask from /proc; elsewhere it is set and restored while writing.
    assert written == ("0 0o640" if sys.platform.startswith("linux") else "2 0o640")
