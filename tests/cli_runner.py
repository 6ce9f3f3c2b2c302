"""How tests run mstage: `run_cli` in-process; `run_python` where a fresh process is the point.

Test functions use the `cli` fixture (tests/conftest.py), which is `run_cli`; module- and
session-scoped fixtures, which cannot take `cli`, import `run_cli` from here. `run_python`
and `run_mstage_process` start `sys.executable` for what needs its own interpreter (import
time, reloading saved models, a second process stopping a server).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass


@dataclass
class Result:
    exit_code: int
    stdout: str
    stderr: str
    exception: BaseException | None


def run_cli(*args, input: str | None = None) -> Result:
    """`mstage ARGS...` in-process (TensorFlow etc. are imported once); stdout and stderr apart."""
    from typer.testing import CliRunner

    from mstage.cli.main import app

    result = CliRunner().invoke(app, [str(a) for a in args], input=input)
    return Result(result.exit_code, result.stdout, result.stderr, result.exception)


def run_python(*args, check: bool = True, timeout: float = 300,
               **kwargs) -> subprocess.CompletedProcess:
    """`python ARGS...` in a fresh interpreter with text output captured; with `check`, a
    non-zero exit fails the test showing the process's stderr."""
    done = subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, **kwargs)
    if check:
        assert done.returncode == 0, (f"python {' '.join(map(str, args))[:200]} exited with "
                                      f"{done.returncode}:\n{done.stderr[-3000:]}")
    return done


def imports_after_commands(calls: list[list], modules: tuple[str, ...], exit_code: int = 0
                           ) -> tuple[list[str], subprocess.CompletedProcess]:
    """Run `mstage` once per argument list of `calls` in one fresh interpreter, each exiting
    with `exit_code`; returns which of `modules` got imported (sorted) and the process."""
    script = ("import sys\n"
              "from mstage.cli.main import app\n"
              f"for args in {[[str(a) for a in call] for call in calls]!r}:\n"
              "    try:\n"
              "        app(args)\n"
              "    except SystemExit as e:\n"
              f"        assert (e.code or 0) == {exit_code}, e.code\n"
              f"print(sorted(m for m in {tuple(modules)!r} if m in sys.modules))\n")
    done = run_python("-c", script)
    return ast.literal_eval(done.stdout.strip().splitlines()[-1]), done


def run_mstage_process(*args, **kwargs) -> subprocess.CompletedProcess:
    """`python -m mstage ARGS...` in a fresh process (see `run_python` for the options)."""
    return run_python("-m", "mstage", *args, **kwargs)
