"""A rich progress display on stderr implementing mstage.progress.Reporter."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

PLAIN_INTERVAL = 2.0  # seconds between two plain progress lines of one task


class _RichTask:
    def __init__(self, progress: Progress, task_id: int):
        self._progress, self._id = progress, task_id

    def advance(self, n: float = 1, **fields: Any) -> None:
        info = _fields(fields, ".4f")
        if info:
            self._progress.update(self._id, advance=n, info=info)
        else:
            self._progress.update(self._id, advance=n)


def _fields(fields: dict[str, Any], digits: str, sep: str = "  ") -> str:
    return sep.join(f"{k} {v:{digits}}" if isinstance(v, float) else f"{k} {v}"
                    for k, v in fields.items())


class _PlainTask:
    """Progress as plain lines (stderr is a log, not a terminal). A task that ends within
    PLAIN_INTERVAL seconds prints one line, its final state; a longer one also says it is
    running once PLAIN_INTERVAL has passed (a timer, so a task without steps shows too) and
    then at most one line per PLAIN_INTERVAL. A failed task adds a line only when it printed
    before: a quick failure stays the command's one error line."""

    def __init__(self, console: Console, description: str, total: float | None):
        self.console, self.description, self.total = console, description, total
        self.started = self._printed = time.perf_counter()
        self.completed: float = 0
        self.info = ""
        self.lines, self._open, self._lock = 0, True, threading.Lock()
        self._timer = threading.Timer(PLAIN_INTERVAL, self._running)
        self._timer.daemon = True

    def _state(self) -> str:
        """'DESCRIPTION 3/40 loss 2.31 val_recall@20 0.21' (count and fields when known)."""
        line = self.description
        if self.total is not None:
            line += f" {self.completed:g}/{self.total:g}"
        elif self.completed:
            line += f" {self.completed:g}"
        return f"{line} {self.info}" if self.info else line

    def _print(self, line: str) -> None:  # with self._lock held
        self.console.print(line, highlight=False, markup=False, soft_wrap=True)
        self._printed = time.perf_counter()
        self.lines += 1

    def _elapsed(self) -> str:
        return f"({time.perf_counter() - self.started:.1f} s)"

    def start(self) -> None:
        self._timer.start()

    def _running(self) -> None:
        with self._lock:
            if self._open and not self.lines:
                self._print(f"{self._state()}: running {self._elapsed()}")

    def advance(self, n: float = 1, **fields: Any) -> None:
        with self._lock:
            self.completed += n
            if fields:
                self.info = _fields(fields, ".4g", " ")
            finished = self.total is not None and self.completed >= self.total  # end() says it
            if not finished and time.perf_counter() - self._printed >= PLAIN_INTERVAL:
                self._print(f"{self._state()} {self._elapsed()}")

    def end(self, failed: bool) -> None:
        with self._lock:
            self._open = False
            if not failed:
                self._print(f"{self._state()}: done {self._elapsed()}")
            elif self.lines:
                self._print(f"{self._state()}: stopped {self._elapsed()}")
        self._timer.cancel()


class RichReporter:
    """Bars while a task runs when stderr is a terminal, plain lines otherwise (CI logs);
    logs always go to stderr. Nothing at all when not `enabled` (--quiet)."""

    def __init__(self, console: Console, enabled: bool = True, interactive: bool | None = None):
        self.console, self.enabled = console, enabled
        self.interactive = console.is_terminal if interactive is None else interactive

    @contextlib.contextmanager
    def task(self, description: str, total: float | None = None) -> Iterator[Any]:
        if self.enabled and not self.interactive:
            plain = _PlainTask(self.console, description, total)
            plain.start()
            try:
                yield plain
            except BaseException:
                plain.end(failed=True)
                raise
            plain.end(failed=False)
            return
        progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TextColumn("{task.fields[info]}"),
            console=self.console, disable=not self.enabled, transient=False,
        )
        with progress:
            yield _RichTask(progress, progress.add_task(description, total=total, info=""))

    def log(self, message: str) -> None:
        self.console.print(message, highlight=False)
