"""Fixtures starting a real tritonserver on a toy two-step ensemble; skipped without the binary."""

from __future__ import annotations

from pathlib import Path

import pytest
from toy_operators import write_toy_repository

from mstage.errors import ServerError
from mstage.serving.server import TritonServer, find_binary, free_ports


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
