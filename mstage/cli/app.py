"""The typer app, global options, output helpers and the error boundary every command shares.

Results go to stdout (a rich table, or JSON with `--json`); progress and logs go to stderr.
Library errors (`MstageError`), OS errors (a read-only or full disk, a path through a file)
and click's usage errors become one red line and exit code 1 or 2; a traceback only with
`--verbose`. Global flags are accepted before or after the command name.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import select
import sys
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperCommand, TyperGroup

from mstage import __version__
from mstage.errors import MstageError, UsageError

GLOBAL_FLAGS = {"--json", "--quiet", "-q", "--verbose", "-v"}
GLOBAL_VALUED = {"--workspace", "-w"}
_click_errors = sys.modules[typer.BadParameter.__module__]
"""click's exceptions module as typer uses it (typer 0.2x ships its own copy of click)."""


class _FlagsWithoutMetavar:
    """Flags take no value, so their help shows no metavar (typer would show `<bool>`)."""

    def get_params(self, ctx: typer.Context) -> list:
        params = super().get_params(ctx)  # type: ignore[misc]
        for param in params:
            if (getattr(param, "is_flag", False) or getattr(param, "count", False)) \
                    and param.metavar is None:
                param.metavar = ""
        return params


@contextlib.contextmanager
def _usage_errors_in_one_line(command: str | None = None) -> Iterator[None]:
    """click's own usage errors (unknown option or command, missing or bad value) as one
    line naming the help to read, exit code 2, instead of typer's multi-line box.
    `command`: the subcommand being parsed, for errors that carry no context."""
    try:
        yield
    except _click_errors.NoArgsIsHelpError:
        raise  # bare `mstage`: the help, as before
    except _click_errors.UsageError as e:
        names = [command] if command else []
        if e.ctx is not None:
            names, ctx = [], e.ctx
            while ctx.parent is not None:
                names.insert(0, ctx.info_name)
                ctx = ctx.parent
        message = " ".join(e.format_message().split()).rstrip(".")
        raise fail(f"{message}; run `{' '.join(['mstage', *names, '--help'])}`",
                   e.exit_code) from None


class MstageCommand(_FlagsWithoutMetavar, TyperCommand):
    """Every mstage command's click class (see `command`): usage errors as one line."""

    def make_context(self, info_name, args, parent=None, **extra) -> typer.Context:
        with _usage_errors_in_one_line(info_name):
            return super().make_context(info_name, args, parent=parent, **extra)


class HoistingGroup(_FlagsWithoutMetavar, TyperGroup):
    """Lets `mstage recommend --user-id 1 --json` mean `mstage --json recommend --user-id 1`;
    usage errors print as one line."""

    def make_context(self, info_name, args, parent=None, **extra) -> typer.Context:
        with _usage_errors_in_one_line():
            return super().make_context(info_name, args, parent=parent, **extra)

    def invoke(self, ctx: typer.Context) -> Any:
        with _usage_errors_in_one_line():
            return super().invoke(ctx)

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
        """Progress on stderr: rich bars on a tty, plain lines otherwise; silent with --quiet."""
        from mstage.cli.progress import RichReporter

        return RichReporter(self.err, enabled=not self.quiet)

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
    """Register a command behind the error boundary: MstageError and OSError -> one line +
    exit code."""

    def decorate(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def guarded(*args: Any, **kw: Any) -> Any:
            try:
                return fn(*args, **kw)
            except MstageError as e:
                if _verbose():
                    traceback.print_exc()
                raise fail(str(e), e.exit_code) from None
            except OSError as e:
                if _verbose():
                    traceback.print_exc()
                raise os_failure(e, name, kw.values()) from None
            except KeyboardInterrupt:
                raise fail("interrupted; earlier artifacts are intact", 130) from None

        kwargs.setdefault("cls", MstageCommand)
        return app.command(name, **kwargs)(guarded)

    return decorate


def os_failure(e: OSError, command: str, options: Iterable[Any] = ()) -> typer.Exit:
    """An OSError as one line naming the path and the errno text, and what to do; exit 1, or
    2 when the path is one the user gave (one of the command's `options` values, or a path
    through a file).

    A closed stdout (`mstage ... | head -1`) exits 1 silently, as Unix tools do."""
    if e.errno in (errno.EPIPE, errno.ENOSPC) and e.filename is None and _stdout_failed(e):
        _discard_stdout()
        if e.errno == errno.EPIPE:
            return typer.Exit(1)
        return fail(f"expected to write the result to stdout, found {_reason(e)}; send it to "
                    "a file or pipe that can take it", 1)
    path = e.filename
    given = isinstance(e, NotADirectoryError) or _is_given_path(path, options)
    where = f" {path}" if path else ""
    rerun = f"then rerun `mstage {command}`"
    if isinstance(e, PermissionError):
        fix = ("check its permissions or pass another path" if given else
               "make the workspace writable (or pass another --workspace)")
        message = f"expected access to{where}, found {_reason(e)}; {fix}, {rerun}"
    elif isinstance(e, NotADirectoryError):
        message = (f"expected directories along the path{where}, found a file in the way "
                   f"({_reason(e)}); pass a path whose parents are directories (e.g. "
                   f"--workspace), {rerun}")
    elif isinstance(e, IsADirectoryError):
        message = (f"expected a file at{where}, found a directory ({_reason(e)}); remove or "
                   f"rename that directory, {rerun}")
    elif e.errno == errno.ENOSPC:
        message = (f"expected room to write{where or ' to the workspace'}, found "
                   f"{_reason(e)}; free disk space (or pass another --workspace), {rerun}")
    elif isinstance(e, FileNotFoundError):
        message = f"expected{where or ' a file'}, found nothing ({_reason(e)}); check the " \
                  f"path, {rerun}"
    else:
        message = f"expected to use{where or ' a file or connection'}, found {_reason(e)}; " \
                  f"fix that, {rerun}"
    return fail(message, 2 if given else 1)


def _reason(e: OSError) -> str:
    if e.errno is not None and e.strerror:
        return f"[Errno {e.errno}] {e.strerror}"
    return str(e) or type(e).__name__


def _is_given_path(path: Any, options: Iterable[Any]) -> bool:
    """Whether `path` is one of the command's option values (an input or output file the
    user named, not one inside the workspace)."""
    if path is None:
        return False
    target = os.path.abspath(os.fsdecode(path))
    return any(isinstance(v, str | Path) and str(v) and os.path.abspath(v) == target
               for v in options)


def _stdout_failed(e: OSError) -> bool:
    """Whether `e` (naming no file) came from stdout: a pipe whose reader has exited
    (`| head -1`: the pipe polls as an error) or a full device (`> /dev/full`: even an empty
    write fails). Python drops what failed to flush, so writing again would not tell."""
    try:
        fd = sys.stdout.fileno()
        if e.errno == errno.EPIPE:
            poller = select.poll()
            poller.register(fd, select.POLLOUT)
            return any(events & select.POLLERR for _, events in poller.poll(0))
        os.write(fd, b"")
    except OSError as again:  # also io.UnsupportedOperation: no file descriptor
        return again.errno == e.errno
    except (ValueError, AttributeError):  # closed; no poll() on this platform
        return False
    return False


def _discard_stdout() -> None:
    """Point stdout at /dev/null, so exiting does not fail again flushing what is left."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


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


def server_address(text: str | None, option: str = "--server") -> str | None:
    """HOST:PORT with PORT in 1..65535, checked before a client is imported (gRPC would
    silently take 99999 as 99999 % 65536); None stays None."""
    if text is None:
        return None
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or "/" in host:
        raise UsageError(f"expected {option} HOST:PORT (e.g. 127.0.0.1:8001), found {text!r}")
    if not 1 <= int(port) <= 65535:
        raise UsageError(f"expected the port of {option} in 1..65535, found {port} in "
                         f"{text!r}; pass the port `mstage serve` printed")
    return text


def catalog_size(ws) -> int | None:
    """How many items the workspace serves, read without loading a model: the features
    artifact's exported items, else the prepared data's items; None when neither is built."""
    from mstage.workspace import Artifact

    if ws.exists(Artifact.FEATURES):
        from mstage.features.online import catalog_size as exported

        return exported(ws.path(Artifact.FEATURES))
    if ws.exists(Artifact.DATA):
        from mstage.data.schema import PreparedData

        return PreparedData(ws.path(Artifact.DATA)).schema.counts.get("items")
    return None


def check_catalog(ws, values: dict[str, int | None]) -> None:
    """Each value (option name -> value, None when not given) at most the catalog size, or a
    usage error naming the option; cheap, so commands call it before any heavy import."""
    given = {option: value for option, value in values.items() if value is not None}
    n_items = catalog_size(ws) if given else None
    if n_items is None:
        return
    for option, value in given.items():
        if value > n_items:
            raise UsageError(f"expected {option} <= the catalog size {n_items}, found {value}; "
                             f"lower {option}")


def require_built(ws, artifacts: Iterable) -> None:
    """ArtifactMissing when one of `artifacts` is not built, naming the first command to run:
    the earliest missing step it depends on (on an empty workspace `mstage prepare-data`,
    not the artifact's own command, which would fail for want of data)."""
    from mstage.errors import ArtifactMissing

    def earliest(artifact):
        missing = [a for a in artifact.inputs if not ws.exists(a)]
        return earliest(missing[0]) if missing else artifact

    wanted = [a for a in artifacts if not ws.exists(a)]
    if not wanted:
        return
    first = earliest(wanted[0])
    then = "" if first is wanted[0] else " (`mstage status` lists the steps after it)"
    raise ArtifactMissing(f"expected the {wanted[0].dirname} artifact at "
                          f"{ws.path(wanted[0])}, found nothing; run `mstage {first.command}` "
                          f"first{then}")


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
