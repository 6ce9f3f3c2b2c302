"""Finding tritonserver, ports, log tails and the PID-file record, without starting a server."""

from __future__ import annotations

import socket

import pytest

from mstage.errors import ServerError, UsageError
from mstage.serving import server as launcher
from mstage.serving.server import (
    Endpoints,
    TritonServer,
    find_binary,
    free_ports,
    log_tail,
    port_in_use,
)


def test_explicit_binary_that_does_not_exist_gives_the_install_hint():
    with pytest.raises(ServerError, match=r"expected an executable tritonserver at /nope/"
                       r"tritonserver, found none; install it with `pip install --no-deps "
                       r"nvidia-pytriton==0.7.0`"):
        find_binary("/nope/tritonserver")


def test_environment_variable_overrides_the_search(monkeypatch, tmp_path):
    fake = tmp_path / "tritonserver"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv("MSTAGE_TRITONSERVER", str(fake))
    assert find_binary() == fake


def test_path_comes_before_the_wheel(monkeypatch, tmp_path):
    fake = tmp_path / "tritonserver"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.delenv("MSTAGE_TRITONSERVER", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert find_binary() == fake


def test_no_binary_anywhere(monkeypatch, tmp_path):
    monkeypatch.delenv("MSTAGE_TRITONSERVER", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(launcher, "_wheel_root", lambda: None)
    with pytest.raises(ServerError, match="found neither; install it with"):
        find_binary()


def test_free_ports_are_distinct_and_free():
    ports = free_ports(3)
    assert len(set(ports)) == 3
    assert not any(port_in_use("127.0.0.1", p) for p in ports)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", ports[0]))
        taken.listen()
        assert port_in_use("127.0.0.1", ports[0])


def test_start_checks_ports_and_repository(tmp_path, monkeypatch):
    fake = tmp_path / "tritonserver"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv("MSTAGE_TRITONSERVER", str(fake))
    with pytest.raises(UsageError, match="expected a model repository at .*run `mstage "
                       "build-ensemble` first"):
        TritonServer(tmp_path / "none", log_dir=tmp_path).start()
    (port,) = free_ports(1)
    with pytest.raises(UsageError, match=f"different HTTP and gRPC ports, found {port}"):
        TritonServer(tmp_path, http_port=port, grpc_port=port, log_dir=tmp_path).start()


def test_log_tail_prefers_error_lines_and_drops_cuda_noise(tmp_path):
    log = tmp_path / "log"
    log.write_text("I0101 started\nE0101 CUDA driver version is insufficient\n"
                   "E0101 load failed for model 'x'\nI0101 bye\n")
    assert log_tail(log) == "E0101 load failed for model 'x'"
    assert log_tail(tmp_path / "missing") == "(no log)"


def test_endpoints_round_trip(tmp_path):
    e = Endpoints(12, "127.0.0.1", 8000, 8001, "/repo", "/log")
    e.save(tmp_path / "logs" / "x.pid")
    assert Endpoints.load(tmp_path / "logs" / "x.pid") == e
    assert (e.http_url, e.grpc_url) == ("127.0.0.1:8000", "127.0.0.1:8001")
