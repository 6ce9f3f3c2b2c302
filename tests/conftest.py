"""Shared fixtures: every test gets its own workspace; `cli` runs the real app in-process."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from typer.testing import CliRunner


@pytest.fixture(autouse=True)
def isolated_workspace(tmp_path, monkeypatch):
    """Point MSTAGE_WORKSPACE at a fresh directory so no test touches another's artifacts."""
    ws = tmp_path / "ws"
    monkeypatch.setenv("MSTAGE_WORKSPACE", str(ws))
    monkeypatch.setenv("COLUMNS", "200")
    return ws


@dataclass
class Result:
    exit_code: int
    stdout: str
    stderr: str
    exception: BaseException | None


@pytest.fixture
def cli():
    """Run `mstage ARGS...` in-process; returns exit code, stdout and stderr separately."""
    from mstage.cli.main import app

    def run(*args: str, input: str | None = None) -> Result:
        result = CliRunner().invoke(app, [str(a) for a in args], input=input)
        return Result(result.exit_code, result.stdout, result.stderr, result.exception)

    return run
