"""The progress display of the long commands: redrawn in place on a terminal, plain lines in a log."""

from __future__ import annotations

import io

import pytest

from fffcore.commands import progress as progress_module
from fffcore.commands.progress import Progress


class FakeClock:
    """tqdm's clock, moved on by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr("tqdm.std.time", fake)
    return fake


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_in_a_log_a_line_at_the_start_at_most_one_per_interval_and_one_at_the_end(clock):
    log = io.StringIO()  # not a terminal
    progress = Progress(log, unit="step", description="fff compare")
    for done in range(101):  # 100 steps, one second apart: 100 s
        progress(done, 100, f"case {done}")
        clock.now += 1.0
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue()
    assert lines[0].startswith("fff compare:   0% 0/100 steps")
    assert lines[-1].startswith("fff compare: 100% 100/100 steps") and lines[-1].endswith("case 100")
    # a line every LOG_INTERVAL_S (10 s) of the 100 s, besides the first and the last
    assert len(lines) <= 2 + 100 / progress_module.LOG_INTERVAL_S
    assert len(lines) >= 100 / progress_module.LOG_INTERVAL_S - 1


def test_on_a_terminal_the_bar_is_redrawn_in_place_within_the_width(monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    terminal = Terminal()
    progress = Progress(terminal, unit="step", description="fff compare")
    long_label = "paper/d768-D11-K1-B16384-float32/dense:numpy-1thread:4095"
    for done in range(11):
        progress(done, 10, long_label)
    drawn = terminal.getvalue()
    assert drawn.count("\n") == 1 and drawn.endswith("\n")  # one line, redrawn with carriage returns, ended once
    redraws = [part for part in drawn.strip("\n").split("\r") if part.strip()]
    assert len(redraws) >= 2
    last = redraws[-1].rstrip()
    assert "100%" in last and "10/10" in last
    assert len(last) <= 100  # fitted to the terminal
    assert last.endswith("numpy-1thread:4095")  # the end of a long label, its most specific part, is kept


def test_closing_before_the_end_and_twice_is_harmless():
    log = io.StringIO()
    progress = Progress(log, unit="chunk", description="fff apply")
    progress.close()  # before anything was drawn
    progress(3, 13)
    progress.close()
    progress.close()
    assert log.getvalue().splitlines()[-1].startswith("fff apply:  23% 3/13 chunks")
