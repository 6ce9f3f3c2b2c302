"""A rich progress display on stderr implementing mstage.progress.Reporter."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class _RichTask:
    def __init__(self, progress: Progress, task_id: int):
        self._progress, self._id = progress, task_id

    def advance(self, n: float = 1, **fields: Any) -> None:
        info = "  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                         for k, v in fields.items())
        if info:
            self._progress.update(self._id, advance=n, info=info)
        else:
            self._progress.update(self._id, advance=n)


class RichReporter:
    """Bars while a task runs; logs always go to stderr (unless --quiet)."""

    def __init__(self, console: Console, enabled: bool = True):
        self.console, self.enabled = console, enabled

    @contextlib.contextmanager
    def task(self, description: str, total: float | None = None) -> Iterator[_RichTask]:
        progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TextColumn("{task.fields[info]}"),
            console=self.console, disable=not self.enabled, transient=False,
        )
        with progress:
            yield _RichTask(progress, progress.add_task(description, total=total, info=""))

    def log(self, message: str) -> None:
        self.console.print(message, highlight=False)
