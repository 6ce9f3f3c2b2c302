"""A small real workspace, built once per test session with the real commands.

generate-data (200 users, 150 items, 8000 impressions) -> prepare-data -> train-retrieval
(2 epochs) -> train-ranking (2 epochs) -> export-features -> build-index. The recommend,
build-ensemble and parity tests share it; a test that changes artifacts works on
`copy_workspace(...)`. Import the `pipeline_workspace` fixture into a test module to use it
(the build itself is cached here, so several modules still build it once).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

USERS, ITEMS, IMPRESSIONS = 200, 150, 8000
_BUILT: dict[str, Path] = {}


@dataclass
class Run:
    exit_code: int
    stdout: str
    stderr: str


def run_cli(workspace: Path, *args: str, input: str | None = None) -> Run:
    """`mstage --workspace WORKSPACE ARGS...` in-process (TensorFlow is imported only once)."""
    from mstage.cli.main import app

    result = CliRunner().invoke(app, ["--workspace", str(workspace), *map(str, args)],
                                input=input)
    return Run(result.exit_code, result.stdout, result.stderr)


def _must(result: Run, step: str) -> Run:
    assert result.exit_code == 0, f"{step} failed: {result.stderr[-2000:]}"
    return result


def build_pipeline_workspace(root: Path) -> Path:
    """Run the pipeline's commands up to build-index into `root/ws`; returns the workspace."""
    data, ws = root / "data", root / "ws"
    _must(run_cli(ws, "generate-data", "--out", data, "--users", USERS, "--items", ITEMS,
                  "--interactions", IMPRESSIONS, "--ctr", "0.25", "--seed", "0"),
          "generate-data")
    _must(run_cli(ws, "prepare-data", "--interactions", data / "interactions.parquet",
                  "--users", data / "users.parquet", "--items", data / "items.parquet",
                  "--label-col", "click"), "prepare-data")
    _must(run_cli(ws, "train-retrieval", "--epochs", "2"), "train-retrieval")
    _must(run_cli(ws, "train-ranking", "--epochs", "2"), "train-ranking")
    _must(run_cli(ws, "export-features"), "export-features")
    _must(run_cli(ws, "build-index"), "build-index")
    return ws


def copy_workspace(source: Path, target: Path) -> Path:
    """A private copy of a workspace (without its logs), safe to change."""
    shutil.copytree(source, target, symlinks=True, ignore=shutil.ignore_patterns("logs"))
    return target


def known_and_unknown_users(ws: Path) -> tuple[list[int], int]:
    """Every user id of the prepared data, and an id that is not one of them."""
    import pandas as pd

    users = sorted(pd.read_parquet(ws / "data" / "users.parquet")["user_id"].tolist())
    return users, max(users) + 1000


def stale_by_rebuild(ws: Path, artifact: str) -> None:
    """Record `artifact` as rebuilt (a new fingerprint), as a re-run of its command would:
    every artifact built from the old one turns stale."""
    path = ws / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["artifacts"][artifact]["fingerprint"] = "0123456789abcdef"
    path.write_text(json.dumps(manifest))


@pytest.fixture(scope="session")
def pipeline_workspace(tmp_path_factory) -> Path:
    """The shared workspace (read-only for tests: copy it before changing anything)."""
    if "ws" not in _BUILT:
        _BUILT["ws"] = build_pipeline_workspace(tmp_path_factory.mktemp("pipeline"))
    return _BUILT["ws"]
