"""`mstage serve` and `mstage stop`: run the ensemble on a real tritonserver on loopback."""

from __future__ import annotations

import dataclasses
import signal
from pathlib import Path

import typer

from mstage.cli.app import command, require_built, session


@command("serve")
def serve(
    repository: Path = typer.Option(
        None, "--repository", help="Model repository to serve "
        "(default: WORKSPACE/ensemble/model_repository, written by `mstage build-ensemble`)."),
    http_port: int = typer.Option(None, "--http-port", help="HTTP port (default: "
                                  "serving.http_port, 8000)."),
    grpc_port: int = typer.Option(None, "--grpc-port", help="gRPC port (default: "
                                  "serving.grpc_port, 8001)."),
    host: str = typer.Option(None, "--host", help="Address to listen on (default: "
                             "serving.host, 127.0.0.1)."),
    detach: bool = typer.Option(False, "--detach", help="Return once the server is ready; "
                                "stop it later with `mstage stop`."),
    ready_timeout: float = typer.Option(120.0, "--ready-timeout", help="Seconds to wait for "
                                        "the server to load its models."),
) -> None:
    """Start tritonserver on the ensemble; runs until Ctrl-C (or returns with --detach)."""
    from mstage.config import override
    from mstage.errors import ServerError, UsageError
    from mstage.serving.ensemble import repository_path
    from mstage.serving.server import PID_FILE, TritonServer, log_tail, running_server
    from mstage.workspace import Artifact

    s = session()
    ws = s.workspace
    cfg = override(s.config.serving, flags=True, http_port=http_port, grpc_port=grpc_port,
                   host=host)
    if repository is None:
        require_built(ws, (Artifact.ENSEMBLE,))
        repository = repository_path(ws)
    elif not Path(repository).is_dir():
        raise UsageError(f"expected a model repository at {repository}, found nothing; pass "
                         "the directory `mstage build-ensemble` wrote (WORKSPACE/ensemble/"
                         "model_repository)")
    running = running_server(ws.logs_dir)
    if running is not None:
        raise ServerError(f"expected no server running for workspace {ws.root}, found pid "
                          f"{running.pid} on http {running.http_url}; run `mstage stop` first")

    server = TritonServer(repository, http_port=cfg.http_port, grpc_port=cfg.grpc_port,
                          host=cfg.host, log_dir=ws.logs_dir, ready_timeout_s=ready_timeout)
    s.log(f"starting tritonserver on {repository} (log: {server.log_path})")
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        with s.progress().task("starting tritonserver"):
            endpoints = server.start()
        record = ws.record(Artifact.ENSEMBLE)
        if record and Path(repository).resolve() == repository_path(ws).resolve():
            endpoints = dataclasses.replace(endpoints, ensemble=record["fingerprint"])
        endpoints.save(ws.logs_dir / PID_FILE)
        result = {"http": endpoints.http_url, "grpc": endpoints.grpc_url, "pid": endpoints.pid,
                  "repository": endpoints.repository, "log": endpoints.log, "detached": detach}
        s.emit(result, lambda console: console.print(
            f"serving {endpoints.repository}\n  grpc  {endpoints.grpc_url}\n"
            f"  http  {endpoints.http_url}\n  log   {endpoints.log}\n  pid   {endpoints.pid}"
            + ("\nstop it with `mstage stop`" if detach else "\nCtrl-C to stop")))
        if detach:
            server.process = None  # leave it running; `mstage stop` ends it
            return
        code = server.wait()
        raise ServerError(f"expected tritonserver to keep serving, found it exited with code "
                          f"{code}: {log_tail(server.log_path)}")
    except KeyboardInterrupt:
        s.log("stopping tritonserver")
    finally:
        signal.signal(signal.SIGTERM, previous)
        if server.process is not None:
            server.stop()
            (ws.logs_dir / PID_FILE).unlink(missing_ok=True)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


@command("stop")
def stop(
    timeout: float = typer.Option(15.0, "--timeout", help="Seconds to wait before SIGKILL."),
) -> None:
    """Stop the server that `mstage serve` started for this workspace (its stubs too)."""
    from mstage.serving.server import PID_FILE, running_server, stop_process_group

    s = session()
    endpoints = running_server(s.workspace.logs_dir)
    if endpoints is None:
        s.emit({"stopped": None}, lambda console: console.print(
            f"no server is running for workspace {s.workspace.root}"))
        return
    stop_process_group(endpoints.pid, timeout)
    (s.workspace.logs_dir / PID_FILE).unlink(missing_ok=True)
    s.emit({"stopped": endpoints.pid, "http": endpoints.http_url, "grpc": endpoints.grpc_url},
           lambda console: console.print(f"stopped tritonserver (pid {endpoints.pid})"))
