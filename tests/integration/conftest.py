"""Fixtures shared by the integration tests, used by name (no imports needed).

`pipeline_workspace`: a small real workspace trained once per session with the real commands
(see pipeline_workspace.py). `tritonserver_binary`, `toy_repository`, `toy_server`: a real
tritonserver on a toy two-step ensemble, skipped without the binary. `redis_url`: a real
redis-server on loopback, skipped without the binary.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from pipeline_workspace import build_pipeline_workspace
from redis_server import run_redis_server
from toy_operators import write_toy_repository

from mstage.errors import ServerError
from mstage.serving.server import TritonServer, find_binary, free_ports


@pytest.fixture(scope="session")
def pipeline_workspace(tmp_path_factory) -> Path:
    """The shared trained workspace (read-only for tests: `copy_workspace` it before changing
    anything). Building it trains both models: tests using it are marked slow."""
    return build_pipeline_workspace(tmp_path_factory.mktemp("pipeline"))


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    """A running redis-server's URL for the module's tests (skipped where it is absent)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    with run_redis_server(binary) as url:
        yield url


@pytest.fixture(scope="session")
def tritonserver_binary() -> Path:
    try:
        return find_binary()
    except ServerError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="session")
def toy_repository(tmp_path_factory) -> Path:
    return write_toy_repository(tmp_path_factory.mktemp("toy") / "model_repository")


@pytest.fixture(scope="module")
def toy_server(tritonserver_binary, toy_repository, tmp_path_factory):
    """A running server on free loopback ports, always stopped at the end."""
    http_port, grpc_port = free_ports(2)
    server = TritonServer(toy_repository, http_port=http_port, grpc_port=grpc_port,
                          log_dir=tmp_path_factory.mktemp("triton-logs"))
    server.start()  # stops the process itself when start-up fails
    try:
        yield server
    finally:
        server.stop()
