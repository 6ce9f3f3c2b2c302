"""Shared fixtures: every test gets its own workspace; `cli` runs the real app in-process."""

from __future__ import annotations

import pytest
from cli_runner import run_cli


@pytest.fixture(autouse=True)
def isolated_workspace(tmp_path, monkeypatch):
    """Point MSTAGE_WORKSPACE at a fresh directory so no test touches another's artifacts."""
    ws = tmp_path / "ws"
    monkeypatch.setenv("MSTAGE_WORKSPACE", str(ws))
    monkeypatch.setenv("COLUMNS", "200")
    return ws


@pytest.fixture
def cli():
    """Run `mstage ARGS...` in-process; returns exit code, stdout and stderr separately.

    This is tests/cli_runner.py's `run_cli`, which module and session fixtures import."""
    return run_cli
