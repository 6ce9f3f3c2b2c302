"""Start, watch and stop a real `tritonserver` process on a model repository.

The binary is `tritonserver` on PATH (NVIDIA's container) or the one inside the
`nvidia-pytriton` wheel, which also ships the python backend and its stubs. The wheel's
server needs a backend directory holding the stub for this interpreter, this virtualenv's
`bin/` first on PATH (the stub finds its Python prefix from `python3` there, ignoring
PYTHONPATH) and the interpreter's LIBDIR on LD_LIBRARY_PATH. Nothing here touches
`os.environ`: the server gets its own environment.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from contextlib import closing
from dataclasses import asdict, dataclass
from pathlib import Path

from mstage.errors import ServerError, UsageError

BINARY_ENV = "MSTAGE_TRITONSERVER"
INSTALL_HINT = ("install it with `pip install --no-deps nvidia-pytriton==0.7.0` or run inside "
                "NVIDIA's Triton container (nvcr.io/nvidia/tritonserver)")
LOG_NAME = "tritonserver.log"
_NOISE = ("CUDA driver", "CudaDriverHelper")  # harmless start-up lines on CPU machines


def free_ports(count: int = 2, host: str = "127.0.0.1") -> list[int]:
    """`count` distinct TCP ports nobody listens on now (the OS picks them)."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for s in sockets:
            s.bind((host, 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def free_port(host: str = "127.0.0.1") -> int:
    return free_ports(1, host)[0]


def port_in_use(host: str, port: int) -> bool:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def _wheel_root() -> Path | None:
    spec = importlib.util.find_spec("pytriton")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "tritonserver"


def find_binary(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The tritonserver to run: `explicit`, else $MSTAGE_TRITONSERVER, else PATH, else the wheel."""
    chosen = explicit or os.environ.get(BINARY_ENV)
    if chosen:
        path = Path(chosen)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise ServerError(f"expected an executable tritonserver at {path}, found none; "
                              f"{INSTALL_HINT}")
        return path
    on_path = shutil.which("tritonserver")
    if on_path:
        return Path(on_path)
    root = _wheel_root()
    if root is not None and (root / "bin" / "tritonserver").is_file():
        return root / "bin" / "tritonserver"
    raise ServerError(f"expected a tritonserver binary on PATH or in the nvidia-pytriton wheel, "
                      f"found neither; {INSTALL_HINT}")


def _backend_dir(binary: Path, target: Path) -> Path | None:
    """For the wheel's binary, a backend directory with the stub for this Python; else None."""
    root = binary.parent.parent
    backend = root / "backends" / "python"
    if not (backend / "libtriton_python.so").is_file():
        return None  # a full install (container) finds its own backends
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise ServerError(f"expected a python-backend stub for Python {version} at {stub}, found "
                          f"none; use Python 3.8-3.13 or NVIDIA's Triton container")
    python_dir = target / "python"
    shutil.rmtree(python_dir, ignore_errors=True)
    python_dir.mkdir(parents=True)
    for source in (backend / "libtriton_python.so", backend / "triton_python_backend_utils.py",
                   stub):
        (python_dir / source.name).symlink_to(source)
    return target


def _environment(binary: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    libs = [sysconfig.get_config_var("LIBDIR") or ""]
    wheel_libs = binary.parent.parent.parent.parent / "nvidia_pytriton.libs"
    if wheel_libs.is_dir():
        libs.append(str(wheel_libs))
    env["LD_LIBRARY_PATH"] = os.pathsep.join([*filter(None, libs),
                                              env.get("LD_LIBRARY_PATH", "")]).rstrip(os.pathsep)
    return env


@dataclass(frozen=True)
class Endpoints:
    """Where a running server answers; also the content of a detached server's PID file."""

    pid: int
    host: str
    http_port: int
    grpc_port: int
    repository: str
    log: str
    ensemble: str = ""  # fingerprint of the workspace's ensemble it serves ("" for another)

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> Endpoints:
        return cls(**json.loads(path.read_text()))


class TritonServer:
    """A tritonserver process: `start()` returns once it is ready, `stop()` ends it and its stubs.

    Use as a context manager to always stop it. The process runs in its own process group,
    so Ctrl-C in a terminal reaches only us, and `stop()` signals the stubs too.
    `load_models` lists the models to load (explicit control mode); None loads them all.
    """

    def __init__(
        self,
        repository: Path,
        *,
        http_port: int = 8000,
        grpc_port: int = 8001,
        host: str = "127.0.0.1",
        log_dir: Path,
        load_models: list[str] | None = None,
        binary: str | os.PathLike[str] | None = None,
        ready_timeout_s: float = 120.0,
        exit_timeout_s: int = 5,
    ):
        self.repository = Path(repository).resolve()
        self.http_port, self.grpc_port, self.host = http_port, grpc_port, host
        self.log_dir = Path(log_dir)
        self.load_models = load_models
        self.binary = binary
        self.ready_timeout_s = ready_timeout_s
        self.exit_timeout_s = exit_timeout_s
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.log_dir / LOG_NAME

    @property
    def endpoints(self) -> Endpoints:
        pid = self.process.pid if self.process else 0
        return Endpoints(pid, self.host, self.http_port, self.grpc_port, str(self.repository),
                         str(self.log_path))

    def command(self, binary: Path, backend_dir: Path | None) -> list[str]:
        cmd = [str(binary), f"--model-repository={self.repository}",
               f"--http-address={self.host}", f"--http-port={self.http_port}",
               f"--grpc-address={self.host}", f"--grpc-port={self.grpc_port}",
               "--allow-metrics=false", f"--exit-timeout-secs={self.exit_timeout_s}"]
        if backend_dir is not None:
            cmd.append(f"--backend-directory={backend_dir}")
        if self.load_models is not None:
            cmd.append("--model-control-mode=explicit")
            cmd += [f"--load-model={m}" for m in self.load_models]
        return cmd

    def start(self) -> Endpoints:
        if not self.repository.is_dir():
            raise UsageError(f"expected a model repository at {self.repository}, found nothing; "
                             "run `mstage build-ensemble` first")
        binary = find_binary(self.binary)
        for option, port in (("--http-port", self.http_port), ("--grpc-port", self.grpc_port)):
            if port_in_use(self.host, port):
                raise ServerError(f"expected port {port} ({option}) free on {self.host}, found it "
                                  f"in use; stop what listens there or pass another {option}")
        if self.http_port == self.grpc_port:
            raise UsageError(f"expected different HTTP and gRPC ports, found {self.http_port} "
                             "for both")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        backend_dir = _backend_dir(binary, self.log_dir / "backends")
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                self.command(binary, backend_dir), stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, env=_environment(binary), start_new_session=True)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self.endpoints

    def _wait_ready(self) -> None:
        url = f"http://{self.host}:{self.http_port}/v2/health/ready"
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            code = self.process.poll()
            if code is not None:
                raise ServerError(f"expected tritonserver to become ready, found it exited with "
                                  f"code {code}: {log_tail(self.log_path)} (full log: "
                                  f"{self.log_path})")
            if http_ready(url):
                return
            time.sleep(0.1)
        raise ServerError(f"expected tritonserver ready at {url} within {self.ready_timeout_s:.0f} "
                          f"s, found it still starting: {log_tail(self.log_path)}")

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait(self) -> int:
        """Block until the server exits by itself; its exit code."""
        return self.process.wait()

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM the server's process group, then SIGKILL after `timeout_s`; idempotent.

        Close clients first: an open HTTP keep-alive connection holds the server for its
        exit timeout.
        """
        if self.process is None:
            return
        stop_process_group(self.process.pid, timeout_s, child=self.process)
        self.process = None

    def __enter__(self) -> TritonServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def http_ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def stop_process_group(pid: int, timeout_s: float = 15.0,
                       child: subprocess.Popen[bytes] | None = None) -> None:
    """SIGTERM process group `pid` (a server and its stubs), SIGKILL what is left after a while."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and _alive(pid, child):
        time.sleep(0.05)
    try:
        os.killpg(pid, signal.SIGKILL)  # leftover stubs of a server that did exit
    except ProcessLookupError:
        pass
    if child is not None:
        child.wait()


def _alive(pid: int, child: subprocess.Popen[bytes] | None) -> bool:
    if child is not None:
        return child.poll() is None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return not _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


PID_FILE = "tritonserver.pid"


def running_server(logs_dir: Path) -> Endpoints | None:
    """The Endpoints of a workspace's live detached server (from `logs_dir`'s PID file), or
    None; a PID file left by a server that died is removed."""
    path = Path(logs_dir) / PID_FILE
    if not path.is_file():
        return None
    try:
        endpoints = Endpoints.load(path)
    except (ValueError, TypeError):
        endpoints = None
    if endpoints is not None and is_tritonserver(endpoints.pid):
        return endpoints
    path.unlink(missing_ok=True)
    return None


def is_tritonserver(pid: int) -> bool:
    """Whether `pid` runs a tritonserver (guards a PID file against a reused pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
    except OSError:
        return False
    return Path(cmdline.decode(errors="replace")).name == "tritonserver" and not _is_zombie(pid)


def log_tail(path: Path, lines: int = 3) -> str:
    """The last error lines of a server log, on one line."""
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    wanted = [ln.strip() for ln in text if ln.strip() and not any(n in ln for n in _NOISE)]
    errors = [ln for ln in wanted if ln.startswith("E") or "error" in ln.lower()]
    return " | ".join((errors or wanted)[-lines:]) or "(empty log)"
