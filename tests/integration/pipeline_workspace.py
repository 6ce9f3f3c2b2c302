"""A small real workspace, built once per test session with the real commands.

generate-data (200 users, 150 items, 8000 impressions) -> prepare-data -> train-retrieval
(2 epochs) -> train-ranking (5 epochs: at 2 its validation AUC, 0.70, is below item CTR's
0.77 and the quality gate refuses it; a history of 20 items, so every path carries the
`query_history` the ranker reads) -> export-features -> build-index. The recommend,
build-ensemble and parity tests share it; a test that changes artifacts works on
`copy_workspace(...)`. The `pipeline_workspace` session fixture (tests/integration/conftest.py)
builds it once with `build_pipeline_workspace`; the other helpers here are plain functions.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

from cli_runner import run_cli

USERS, ITEMS, IMPRESSIONS = 200, 150, 8000


def _must(workspace: Path, step: str, *args) -> None:
    """`mstage --workspace WORKSPACE STEP ARGS...`, which must succeed."""
    result = run_cli("--workspace", workspace, step, *args)
    assert result.exit_code == 0, f"{step} failed: {result.stderr[-2000:]}"


def build_pipeline_workspace(root: Path, rewrite=None) -> Path:
    """Run the pipeline's commands up to build-index into `root/ws`; returns the workspace.

    `rewrite(tables)` may rewrite the generated tables (name -> DataFrame) and return the
    paths prepare-data reads (name -> file), e.g. with the ids written another way."""
    data, ws = root / "data", root / "ws"
    _must(ws, "generate-data", "--out", data, "--users", USERS, "--items", ITEMS,
          "--interactions", IMPRESSIONS, "--ctr", "0.25", "--seed", "0")
    paths = {name: data / f"{name}.parquet" for name in ("interactions", "users", "items")}
    if rewrite is not None:
        import pandas as pd

        paths = rewrite({name: pd.read_parquet(path) for name, path in paths.items()}, root)
    _must(ws, "prepare-data", "--interactions", paths["interactions"],
          "--users", paths["users"], "--items", paths["items"], "--label-col", "click")
    _must(ws, "train-retrieval", "--epochs", "2")
    with open(ws / "mstage.toml", "a") as config:
        config.write("\n[ranking]\nhistory = 20\n")
    _must(ws, "train-ranking", "--epochs", "5")
    _must(ws, "export-features")
    _must(ws, "build-index")
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


@contextlib.contextmanager
def serving(ws: Path) -> Iterator[dict]:
    """build-ensemble, then `serve --detach` on free ports; yields serve's JSON (pid, grpc,
    http, ...) plus `max_batch_size` from the build, and always stops the server."""
    from mstage.serving.server import free_ports, is_tritonserver, log_tail, stop_process_group

    built = run_cli("-w", ws, "build-ensemble", "--json")
    assert built.exit_code == 0, built.stderr
    http_port, grpc_port = free_ports(2)
    started = run_cli("-w", ws, "serve", "--detach", "--json", "--http-port", http_port,
                      "--grpc-port", grpc_port, "--ready-timeout", "300")
    assert started.exit_code == 0, started.stderr + log_tail(ws / "logs" / "tritonserver.log")
    endpoints = json.loads(started.stdout)
    try:
        yield endpoints | {"max_batch_size": json.loads(built.stdout)["max_batch_size"]}
    finally:
        run_cli("-w", ws, "stop")
        if is_tritonserver(endpoints["pid"]):
            stop_process_group(endpoints["pid"])
