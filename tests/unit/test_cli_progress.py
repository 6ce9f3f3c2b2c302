"""The CLI's progress reporter when stderr is not a terminal: plain lines, throttled."""

from __future__ import annotations

import io
import re
import time

import pytest
from rich.console import Console

from mstage.cli import progress


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = Clock()
    monkeypatch.setattr(progress.time, "perf_counter", fake)
    return fake


def _reporter(enabled=True):
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=40)
    return progress.RichReporter(console, enabled=enabled), out


def test_epochs_print_at_most_one_line_per_interval_and_the_final_state(clock):
    reporter, out = _reporter()
    with reporter.task("train-retrieval: validation epoch", total=40) as task:
        for _ in range(12):
            clock.now += 0.9  # an epoch every 0.9 s: a line every third epoch
            task.advance(1, loss=2.3101, **{"val_recall@20": 0.21})
    lines = out.getvalue().splitlines()
    # long lines are not wrapped at the console width (log lines stay whole)
    assert lines[0] == ("train-retrieval: validation epoch 3/40 loss 2.31 val_recall@20 0.21 "
                        "(2.7 s)")
    assert [line.split()[3] for line in lines[:-1]] == ["3/40", "6/40", "9/40", "12/40"]
    assert lines[-1] == ("train-retrieval: validation epoch 12/40 loss 2.31 val_recall@20 0.21: "
                         "done (10.8 s)")


def test_a_quick_task_prints_one_line_when_done(clock):
    reporter, out = _reporter()
    with reporter.task("prepare data", total=5) as task:
        for step in ("read", "ids", "clean", "folds", "features"):
            clock.now += 0.1
            task.advance(1, step=step)
    assert out.getvalue().splitlines() == ["prepare data 5/5 step features: done (0.5 s)"]


def test_a_long_task_without_steps_says_it_is_running(monkeypatch):
    monkeypatch.setattr(progress, "PLAIN_INTERVAL", 0.05)
    reporter, out = _reporter()
    with reporter.task("building the model repository"):
        time.sleep(0.3)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2, lines
    assert re.fullmatch(r"building the model repository: running \(0\.\d s\)", lines[0])
    assert re.fullmatch(r"building the model repository: done \(0\.\d s\)", lines[1])


def test_a_quick_failure_adds_no_line(clock):
    """A command failing early keeps its one error line on stderr."""
    reporter, out = _reporter()
    with pytest.raises(KeyboardInterrupt), reporter.task("prepare data", total=5) as task:
        task.advance(1, step="read")
        raise KeyboardInterrupt
    assert out.getvalue() == ""


def test_a_long_failure_says_where_it_stopped(clock):
    reporter, out = _reporter()
    with pytest.raises(KeyboardInterrupt), reporter.task("evaluate", total=100) as task:
        clock.now += 2.5
        task.advance(40)
        raise KeyboardInterrupt
    assert out.getvalue().splitlines() == ["evaluate 40/100 (2.5 s)",
                                           "evaluate 40/100: stopped (2.5 s)"]


def test_disabled_reporter_prints_nothing(clock):
    reporter, out = _reporter(enabled=False)
    with reporter.task("evaluate", total=10) as task:
        clock.now += 5
        task.advance(10)
    assert out.getvalue() == ""
