"""Progress bars and Keras' training output on a terminal and in a log file."""

import io

from lib import progress


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_bars_redraw_every_second_on_a_terminal_and_every_30_s_in_a_file():
    with progress.bar(total=3, file=Terminal()) as on_screen, progress.bar(total=3, file=io.StringIO()) as logged:
        assert on_screen.mininterval == progress.TERMINAL_INTERVAL == 1.0
        assert logged.mininterval == progress.LOG_INTERVAL == 30.0
    assert progress.bar(total=1, file=io.StringIO(), mininterval=5).mininterval == 5  # a caller's choice wins


def test_keras_prints_one_line_per_epoch_off_a_terminal(monkeypatch):
    monkeypatch.setattr("sys.stdout", io.StringIO())
    assert progress.keras_verbose() == 2
    monkeypatch.setattr("sys.stdout", Terminal())
    assert progress.keras_verbose() == 1
