"""Bad input never crashes: every case is one line on stderr, no traceback, and exit code 2
(the user's options, paths or files) or 1 (the machine: permissions, a full disk).

A corpus of cases runs the real CLI in-process; what needs a real process (a closed or full
stdout, what was imported) runs `python -m mstage` or `run_python`. No model is trained:
the workspaces hold prepared data at most (and, for the catalog, a features artifact's item
table alone).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cli_runner import run_python
from retrieval_data import publish_prepared

INTERACTIONS = "user_id,item_id,timestamp\n" + "".join(
    f"{u},{10 + (u + k) % 5},{1000 + 60 * k + u}\n" for u in range(1, 5) for k in range(6))


def one_line(result) -> str:
    """The single stderr line of a failed command (asserting there is exactly one)."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    return lines[0]


def _csv(ws: Path) -> None:
    (ws.parent / "i.csv").write_text(INTERACTIONS)


def _data(n_items: int) -> Callable[[Path], None]:
    def setup(ws: Path) -> None:
        publish_prepared(ws, n_users=12, n_items=n_items, per_user=4)
    return setup


def _features_items(n_items: int) -> Callable[[Path], None]:
    """Prepared data of 20 items and a features artifact that exported only `n_items`."""
    def setup(ws: Path) -> None:
        import pandas as pd

        from mstage.features.online import EXPORTED_ITEMS
        from mstage.workspace import Artifact, Workspace

        publish_prepared(ws, n_users=12, n_items=20, per_user=4)
        with Workspace(ws).build(Artifact.FEATURES) as b:
            path = b.dir / EXPORTED_ITEMS
            path.parent.mkdir(parents=True)
            pd.DataFrame({"item_id": range(5000, 5000 + n_items)}).to_parquet(path)
    return setup


def _lock_dir(ws: Path) -> None:
    _csv(ws)
    (ws / ".lock").mkdir(parents=True)


def _toml_dir(ws: Path) -> None:
    _csv(ws)
    (ws / "mstage.toml").mkdir(parents=True)


def _toml_latin1(ws: Path) -> None:
    ws.mkdir(parents=True)
    (ws / "mstage.toml").write_bytes("[serving]\ntop_k = 5  # café\n".encode("latin-1"))


def _a_file(ws: Path) -> None:
    _csv(ws)
    (ws.parent / "afile").write_text("x")


@dataclass
class Case:
    id: str
    args: list[str]
    code: int
    message: str  # a fragment of the one line; {ws} and {tmp} are filled in
    setup: Callable[[Path], None] | None = None
    absent: list[str] = field(default_factory=list)  # fragments the line must not have


CASES = [
    # click's own usage errors, in mstage's one-line format
    Case("unknown-option", ["recommend", "--bogus"], 2,
         "error: No such option: --bogus; run `mstage recommend --help`"),
    Case("missing-value", ["recommend", "--user-id"], 2,
         "error: Option '--user-id' requires an argument; run `mstage recommend --help`"),
    Case("bad-int", ["recommend", "--user-id", "1", "--top-k", "abc"], 2,
         "error: Invalid value for '--top-k'"),
    Case("unknown-command", ["frobnicate"], 2,
         "error: No such command 'frobnicate'; run `mstage --help`"),
    Case("global-missing-value", ["-w"], 2,
         "error: Option '-w' requires an argument; run `mstage --help`"),
    Case("flag-with-value", ["recommend", "--explain=yes", "--user-id", "1"], 2,
         "Option '--explain' does not take a value; run `mstage recommend --help`"),
    Case("extra-argument", ["status", "extra"], 2,
         "Got unexpected extra argument(s) (extra); run `mstage status --help`"),
    Case("bench-bad-concurrency", ["bench", "--concurrency", "0"], 2,
         "expected positive integers, found '0'; run `mstage bench --help`"),
    # option values, checked before anything heavy
    Case("serve-http-port", ["serve", "--http-port", "70000"], 2,
         "error: expected --http-port in 1..65535, found 70000"),
    Case("serve-grpc-port", ["serve", "--grpc-port", "0"], 2,
         "error: expected --grpc-port in 1..65535, found 0"),
    Case("recommend-server-port", ["recommend", "--user-id", "1", "--server", "127.0.0.1:99999"],
         2, "expected the port of --server in 1..65535, found 99999 in '127.0.0.1:99999'",
         absent=["34463"]),
    Case("bench-server-port", ["bench", "--server", "127.0.0.1:99999"], 2,
         "found 99999 in '127.0.0.1:99999'"),
    Case("server-without-port", ["recommend", "--user-id", "1", "--server", "localhost"], 2,
         "expected --server HOST:PORT (e.g. 127.0.0.1:8001), found 'localhost'"),
    Case("candidates-above-catalog",
         ["recommend", "--user-id", "1000", "--candidates", "100000000000"], 2,
         "expected --candidates <= the catalog size 20, found 100000000000; lower --candidates",
         setup=_data(20)),
    Case("top-k-above-catalog", ["recommend", "--user-id", "1000", "--top-k", "25"], 2,
         "expected --top-k <= the catalog size 20, found 25; lower --top-k", setup=_data(20),
         absent=["--candidates", "raise"]),
    Case("top-k-above-exported-catalog", ["recommend", "--user-id", "1000", "--top-k", "8"], 2,
         "expected --top-k <= the catalog size 7, found 8", setup=_features_items(7)),
    Case("bench-top-k-above-catalog", ["bench", "--top-k", "5000"], 2,
         "expected --top-k <= the catalog size 2000, found 5000; lower --top-k",
         setup=_data(2000)),
    # hints name the first missing step
    Case("recommend-empty-workspace", ["recommend", "--user-id", "1"], 2,
         "run `mstage prepare-data` first", absent=["train-retrieval` first"]),
    Case("build-ensemble-empty-workspace", ["build-ensemble"], 2,
         "run `mstage prepare-data` first"),
    Case("build-index-empty-workspace", ["build-index"], 2, "run `mstage prepare-data` first"),
    Case("recommend-without-retrieval", ["recommend", "--user-id", "1000"], 2,
         "expected the retrieval artifact at {ws}/retrieval, found nothing; run `mstage "
         "train-retrieval` first", setup=_data(20)),
    # the file system
    Case("workspace-through-a-file",
         ["-w", "{tmp}/afile/ws", "prepare-data", "--interactions", "{tmp}/i.csv"], 2,
         "expected directories along the path {tmp}/afile/ws, found a file in the way "
         "([Errno 20] Not a directory)", setup=_a_file),
    Case("lock-is-a-directory", ["prepare-data", "--interactions", "{tmp}/i.csv"], 1,
         "expected a file at {ws}/.lock, found a directory ([Errno 21] Is a directory); "
         "remove or rename that directory, then rerun `mstage prepare-data`", setup=_lock_dir),
    Case("toml-is-a-directory", ["prepare-data", "--interactions", "{tmp}/i.csv"], 2,
         "expected {ws}/mstage.toml to be a file, found a directory", setup=_toml_dir),
    Case("toml-not-utf8", ["recommend", "--user-id", "1"], 2,
         "expected UTF-8 text in {ws}/mstage.toml, found byte 0xe9 at offset 26; save it as "
         "UTF-8", setup=_toml_latin1),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line(cli, isolated_workspace, case):
    ws = isolated_workspace
    if case.setup is not None:
        case.setup(ws)
    fill = {"ws": str(ws), "tmp": str(ws.parent)}
    result = cli(*[a.format(**fill) for a in case.args])
    line = one_line(result)
    assert result.exit_code == case.code, line
    assert line.startswith("error: ")
    assert case.message.format(**fill) in line
    for fragment in case.absent:
        assert fragment not in line


def test_verbose_shows_the_traceback(cli, isolated_workspace):
    _lock_dir(isolated_workspace)
    result = cli("-v", "prepare-data", "--interactions", isolated_workspace.parent / "i.csv")
    assert result.exit_code == 1
    assert "Traceback" in result.stderr and "IsADirectoryError" in result.stderr


def test_permission_denied_in_the_workspace_is_exit_1(cli, isolated_workspace, monkeypatch):
    """Tests run as root, which ignores file modes: a read-only workspace is simulated deep
    down, where taking the lock opens `.lock`."""
    from mstage.workspace import Workspace

    lock = isolated_workspace / ".lock"

    def denied(self, what):
        raise PermissionError(13, "Permission denied", str(lock))

    monkeypatch.setattr(Workspace, "lock", denied)
    _csv(isolated_workspace)
    result = cli("prepare-data", "--interactions", isolated_workspace.parent / "i.csv")
    line = one_line(result)
    assert result.exit_code == 1
    assert line == (f"error: expected access to {lock}, found [Errno 13] Permission denied; "
                    "make the workspace writable (or pass another --workspace), then rerun "
                    "`mstage prepare-data`")


def test_permission_denied_on_a_given_file_is_exit_2(cli, tmp_path, monkeypatch):
    ids = tmp_path / "users.txt"
    ids.write_text("1\n")
    read_text = Path.read_text

    def guarded(self, *args, **kwargs):
        if self == ids:
            raise PermissionError(13, "Permission denied", str(self))
        return read_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", guarded)
    result = cli("recommend", "--user-ids-file", ids)
    line = one_line(result)
    assert result.exit_code == 2
    assert f"expected access to {ids}, found [Errno 13] Permission denied; check its " \
           "permissions or pass another path" in line


def test_a_deleted_raw_input_is_not_the_next_step(cli, isolated_workspace, tmp_path):
    """prepare-data would fail without its saved input: status names the step after it."""
    import json

    csv = tmp_path / "i.csv"
    csv.write_text(INTERACTIONS)
    assert cli("prepare-data", "--interactions", csv).exit_code == 0
    csv.unlink()
    status = json.loads(cli("status", "--json").stdout)
    assert status["artifacts"][0]["state"] == "stale"
    assert status["next"] == "mstage train-retrieval"
    rerun = cli("prepare-data")
    assert rerun.exit_code == 2  # what the old hint, `mstage prepare-data`, led to


def test_boolean_flags_show_no_metavar(cli):
    """Every command's --help (and the app's): a flag takes no value, so nothing like
    `<bool>` stands between its name and its help."""
    import typer

    from mstage.cli.main import app

    group = typer.main.get_command(app)
    commands = [([], group)] + [([name], cmd) for name, cmd in group.commands.items()]
    checked = 0
    for path, cmd in commands:
        out = cli(*path, "--help").stdout
        assert "<bool>" not in out, path
        ctx = typer.Context(cmd)
        for param in cmd.get_params(ctx):
            if not getattr(param, "is_flag", False) or not param.help:
                continue
            first_word = re.escape(param.help.split()[0])
            assert re.search(rf"{re.escape(param.opts[0])}(\s+-\w)?\s+{first_word}", out), \
                (path, param.opts, out)
            checked += 1
    assert checked > len(commands)  # --help everywhere, and the real flags


def test_recommend_refuses_option_values_without_tensorflow(isolated_workspace):
    publish_prepared(isolated_workspace, n_users=12, n_items=20, per_user=4)
    script = ("import sys\n"
              "from mstage.cli.main import app\n"
              "for args in (['--candidates', '100000000000'], ['--top-k', '21']):\n"
              "    try:\n"
              f"        app(['-w', {str(isolated_workspace)!r}, 'recommend', '--user-id',"
              " '1000', *args])\n"
              "    except SystemExit as e:\n"
              "        assert e.code == 2, e.code\n"
              "print(sorted(m for m in ('tensorflow', 'keras', 'feast', 'faiss', 'tritonclient')"
              " if m in sys.modules))\n")
    done = run_python("-c", script)
    assert done.stdout.strip().splitlines()[-1] == "[]"
    assert done.stderr.count("catalog size 20") == 2


def _mstage(args: list[str], stdout, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mstage", *args], stdout=stdout,
                          stderr=subprocess.PIPE, text=True, timeout=120, cwd=cwd,
                          env=os.environ | {"PYTHONPATH": str(Path(__file__).parents[2])})


@pytest.mark.parametrize("args", [["status", "--json"], ["status"]])
def test_closed_stdout_exits_1_silently(tmp_path, args):
    """`mstage ... | head -1`: the reader is gone; like other Unix tools, say nothing."""
    read, write = os.pipe()
    os.close(read)
    try:
        done = _mstage(args, write, tmp_path)
    finally:
        os.close(write)
    assert done.returncode == 1
    assert done.stderr == ""


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full")
def test_full_stdout_is_one_line(tmp_path):
    with open("/dev/full", "w") as full:
        done = _mstage(["status", "--json"], full, tmp_path)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "error: expected to write the result to stdout, found [Errno 28] No space left on "
        "device; send it to a file or pipe that can take it"]


@pytest.fixture
def grpc_port():
    """A gRPC server with no services: what Triton's gRPC port looks like to HTTP."""
    from concurrent import futures

    import grpc

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield port
    server.stop(None)


def test_http_protocol_at_the_grpc_port_is_one_line(cli, grpc_port):
    result = cli("recommend", "--user-id", "1", "--server", f"127.0.0.1:{grpc_port}",
                 "--protocol", "http")
    line = one_line(result)
    assert result.exit_code == 1
    assert f"expected a Triton http endpoint at http://127.0.0.1:{grpc_port}, found a server " \
           "speaking another protocol" in line
    assert "pass --protocol grpc" in line


@pytest.fixture
def http_port():
    """A plain HTTP/1.1 server: what Triton's HTTP port looks like to gRPC."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    class Quiet(BaseHTTPRequestHandler):
        def log_message(self, *args):  # not on the test's stderr
            pass

    server = HTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_grpc_protocol_at_the_http_port_is_one_line(cli, http_port):
    result = cli("recommend", "--user-id", "1", "--server", f"127.0.0.1:{http_port}")
    line = one_line(result)
    assert result.exit_code == 1
    assert f"expected a Triton grpc endpoint at grpc://127.0.0.1:{http_port}, found a server " \
           "speaking another protocol" in line
    assert "pass --protocol http" in line
