"""Progress that reads well on a terminal and in a log file (a SLURM job, ``> log``).

On a terminal, bars are redrawn at most every second; written to a file, at most every
:data:`LOG_INTERVAL` seconds, so that a long run's log holds a line of progress now and then
instead of thousands of redraws. Keras' training progress is one line per epoch off a terminal
(:func:`keras_verbose`).

At the bottom of lib with :mod:`lib.errors` and :mod:`lib.config`: it imports nothing else of lib.
"""

import sys

TERMINAL_INTERVAL = 1.0  # seconds between redraws of a bar on a terminal
LOG_INTERVAL = 30.0  # and in a file


def on_terminal(stream=None):
    """True when ``stream`` (default ``sys.stderr``, where bars go) is a terminal."""
    stream = sys.stderr if stream is None else stream
    return bool(getattr(stream, "isatty", lambda: False)())


def bar(iterable=None, **kwargs):
    """A tqdm bar (``tqdm(iterable, **kwargs)``) redrawn at most every second on a terminal, every 30 s elsewhere."""
    from tqdm import tqdm

    kwargs.setdefault("mininterval", TERMINAL_INTERVAL if on_terminal(kwargs.get("file")) else LOG_INTERVAL)
    return tqdm(iterable, **kwargs)


def keras_verbose():
    """``verbose`` of ``model.fit``: Keras' redrawn bar on a terminal, else one plain line per epoch."""
    return 1 if on_terminal(sys.stdout) else 2
