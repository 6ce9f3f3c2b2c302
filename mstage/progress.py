"""Progress reporting the library can use without printing: the CLI passes a rich reporter.

Library functions take `reporter: Reporter = SILENT`; `with reporter.task("epoch", total=n) as t:
t.advance(1, loss=0.3)` shows a bar on stderr under the CLI and does nothing elsewhere.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Protocol


class Task(Protocol):
    def advance(self, n: float = 1, **fields: Any) -> None: ...


class Reporter(Protocol):
    def task(
        self, description: str, total: float | None = None
    ) -> contextlib.AbstractContextManager[Task]: ...

    def log(self, message: str) -> None: ...


class _SilentTask:
    def advance(self, n: float = 1, **fields: Any) -> None:
        pass


class SilentReporter:
    """Reports nothing; the default for library calls and tests."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    @contextlib.contextmanager
    def task(self, description: str, total: float | None = None) -> Iterator[Task]:
        yield _SilentTask()

    def log(self, message: str) -> None:
        self.messages.append(message)


SILENT = SilentReporter()
