"""The typer app, global options, output helpers and the error boundary every command shares.

Results go to stdout (a rich table, or JSON with `--json`); progress and logs go to stderr.
Library errors (`MstageError`) become one red line and exit code 1 or 2; a traceback only
with `--verbose`. Global flags are accepted before or after the command name.
"""

from __future__ import annotations

import functools
import json
import sys
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from mstage import __version__
from mstage.errors import MstageError

GLOBAL_FLAGS = {"--json", "--quiet", "-q", "--verbose", "-v"}
GLOBAL_VALUED = {"--workspace", "-w"}


class HoistingGroup(TyperGroup):
    """Lets `mstage recommend --user-id 1 --json` mean `mstage --json recommend --user-id 1`."""

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        if "--" in args:
            return super().parse_args(ctx, args)
        hoisted, rest = [], []
        i = 0
        while i < len(args):
            arg = args[i]
            if arg in GLOBAL_VALUED and i + 1 < len(args):
                hoisted += args[i : i + 2]
                i += 2
                continue
            is_global = arg in GLOBAL_FLAGS or arg.split("=", 1)[0] in GLOBAL_VALUED
            (hoisted if is_global else rest).append(arg)
            i += 1
        return super().parse_args(ctx, hoisted + rest)


app = typer.Typer(
    cls=HoistingGroup,
    name="mstage",
    help="Turn interaction logs into a running four-stage recommender "
    "(retrieval → filtering → scoring → ordering), served by Triton.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


@dataclass
class Session:
    """What every command needs from the global options."""

    workspace_dir: Path
    json: bool = False
    quiet: bool = False
    verbose: bool = False

    @functools.cached_property
    def out(self) -> Console:
        # Piped output (scripts, logs) gets room for wide tables instead of rich's 80 columns.
        return Console(soft_wrap=True, width=None if sys.stdout.isatty() else 160)

    @functools.cached_property
    def err(self) -> Console:
        return Console(stderr=True, quiet=self.quiet)

    @functools.cached_property
    def workspace(self):
        from mstage.workspace import Workspace

        return Workspace(self.workspace_dir)

    @functools.cached_property
    def config(self):
        from mstage.config import load_config

        return load_config(self.workspace.config_path)

    def progress(self):
        """A rich progress display on stderr; silent with --quiet or when stderr is not a tty."""
        from mstage.cli.progress import RichReporter

        return RichReporter(self.err, enabled=not self.quiet and self.err.is_terminal)

    def log(self, message: str) -> None:
        self.err.print(escape(message), highlight=False)

    def warn(self, message: str) -> None:
        Console(stderr=True, soft_wrap=True).print(f"[yellow]warning:[/] {escape(message)}",
                                                   highlight=False)

    def emit(self, result: Any, render: Callable[[Console], None] | None = None) -> None:
        """Print a command's result: JSON with --json, else `render` (or pretty JSON)."""
        if self.json or render is None:
            text = json.dumps(result, default=_jsonable, indent=None if self.json else 2)
            sys.stdout.write(text + "\n")
            sys.stdout.flush()
        else:
            render(self.out)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {value!r}")


_current: Session | None = None


def session() -> Session:
    """The Session of the command being run (set by the global-options callback)."""
    if _current is None:
        raise RuntimeError("no mstage command is running")
    return _current


def _version(value: bool) -> None:
    if value:
        print(f"mstage {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    ctx: typer.Context,
    workspace: Path = typer.Option(
        Path("./mstage-workspace"), "--workspace", "-w", envvar="MSTAGE_WORKSPACE",
        help="Workspace directory holding all artifacts.", show_default=True,
    ),
    json_output: bool = typer.Option(False, "--json", help="Print results as JSON on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress or logs on stderr."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show tracebacks on errors."),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    global _current
    _current = ctx.obj = Session(workspace, json=json_output, quiet=quiet, verbose=verbose)


def fail(message: str, code: int = 2) -> typer.Exit:
    """One red line on stderr and an exit code; raise the returned exception."""
    Console(stderr=True, soft_wrap=True).print(f"[red]error:[/] {escape(message)}",
                                               highlight=False)
    return typer.Exit(code)


def command(name: str, **kwargs: Any) -> Callable:
    """Register a command behind the error boundary: MstageError -> one line + exit code."""

    def decorate(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def guarded(*args: Any, **kw: Any) -> Any:
            try:
                return fn(*args, **kw)
            except MstageError as e:
                if _verbose():
                    traceback.print_exc()
                raise fail(str(e), e.exit_code) from None
            except KeyboardInterrupt:
                raise fail("interrupted; earlier artifacts are intact", 130) from None

        return app.command(name, **kwargs)(guarded)

    return decorate


def _verbose() -> bool:
    try:
        return session().verbose
    except RuntimeError:
        return False


def parse_int_list(text: str, option: str) -> list[int]:
    """'10,20,100' -> [10, 20, 100], or a usage error naming the option."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated integers, found {text!r}",
                                 param_hint=option) from None
    if not values or min(values) <= 0:
        raise typer.BadParameter(f"expected positive integers, found {text!r}", param_hint=option)
    return values


def next_step(workspace) -> str:
    """The workspace's next command to run, or the first online one when all is built."""
    return workspace.next_command() or "mstage recommend --user-id ID"


def table(title: str, columns: Iterable[str], rows: Iterable[Iterable[Any]]):
    """A rich table with the given columns; numbers formatted to 4 decimals."""
    from rich.table import Table

    t = Table(title=title, title_justify="left")
    for c in columns:
        t.add_column(c)
    for row in rows:
        t.add_row(*[f"{v:.4f}" if isinstance(v, float) else str(v) for v in row])
    return t
