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
from cli_runner import imports_after_commands
from retrieval_data import publish_prepared

INTERACTIONS = "user_id,item_id,timestamp\n" + "".join(
    f"{u},{10 + (u + k) % 5},{1000 + 60 * k + u}\n" for u in range(1, 5) for k in range(6))


def one_line(result, warns: bool = False) -> str:
    """The single stderr line of a failed command (asserting there is exactly one); with
    `warns`, `warning:` lines before it are allowed (and required)."""
    lines = result.stderr.strip().splitlines()
    if warns:
        warnings = [line for line in lines if line.startswith("warning: ")]
        assert warnings, result.stderr
        lines = [line for line in lines if line not in warnings]
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


def _prior(*more: Callable[[Path], None]) -> Callable[[Path], None]:
    """A workspace holding a good `data` artifact (20 items) and i.csv beside it, then
    `more`: the failed command must leave that artifact (and everything else) as it was."""
    def setup(ws: Path) -> None:
        _data(20)(ws)
        _csv(ws)
        for step in more:
            step(ws)
    return setup


def _file(name: str, content: str | bytes | None) -> Callable[[Path], None]:
    """A file beside the workspace ({tmp}/name): text, bytes, or a directory for None."""
    def setup(ws: Path) -> None:
        path = ws.parent / name
        if content is None:
            path.mkdir()
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    return setup


def _toml(text: str) -> Callable[[Path], None]:
    def setup(ws: Path) -> None:
        ws.mkdir(parents=True, exist_ok=True)
        (ws / "mstage.toml").write_text(text)
    return setup


def _manifest(content: str | bytes | None) -> Callable[[Path], None]:
    """manifest.json replaced by `content` (None: a directory)."""
    def setup(ws: Path) -> None:
        path = ws / "manifest.json"
        path.unlink()
        if content is None:
            path.mkdir()
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    return setup


def _data_record(change: Callable[[dict], None]) -> Callable[[Path], None]:
    """The manifest's `data` record edited by `change` (still JSON, still fingerprinted)."""
    def setup(ws: Path) -> None:
        import json

        path = ws / "manifest.json"
        manifest = json.loads(path.read_text())
        change(manifest["artifacts"]["data"])
        path.write_text(json.dumps(manifest))
    return setup


def _unlink(relative: str) -> Callable[[Path], None]:
    return lambda ws: (ws / relative).unlink()


def _truncate(relative: str) -> Callable[[Path], None]:
    def setup(ws: Path) -> None:
        path = ws / relative
        path.write_bytes(path.read_bytes()[:-10])
    return setup


def _remove_dir(relative: str) -> Callable[[Path], None]:
    import shutil

    return lambda ws: shutil.rmtree(ws / relative)


def _staging_is_a_file(ws: Path) -> None:
    _remove_dir(".staging")(ws)
    (ws / ".staging").write_text("x")


def _interrupted_publish(ws: Path) -> None:
    """A publish killed between its two renames: the old `data` is `.data.previous`."""
    (ws / "data").rename(ws / ".data.previous")


def _locked(ws: Path) -> Callable[[], None]:
    """Another writer holds the workspace lock (a second open file description in this
    process conflicts like another process would); returns its release."""
    import fcntl

    fd = os.open(ws / ".lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.write(fd, b"pid 4242 (mstage train-retrieval)")
    return lambda: os.close(fd)


def _files(ws: Path) -> dict[str, str]:
    """Every file of the workspace (but the lock, staging and logs) -> its sha256."""
    import hashlib

    if not ws.is_dir():
        return {}
    skip = (".lock", ".staging", "logs")
    return {str(p.relative_to(ws)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(ws.rglob("*"))
            if p.is_file() and p.relative_to(ws).parts[0] not in skip}


def _recovered(ws: Path, before: dict[str, str]) -> None:
    """The interrupted publish's previous `data` is back in place, byte for byte, and the
    manifest still records it."""
    assert not (ws / ".data.previous").exists()
    assert _files(ws) == {k.replace(".data.previous/", "data/", 1): v
                          for k, v in before.items()}


@dataclass
class Case:
    id: str
    args: list[str]
    code: int
    message: str  # a fragment of the one line; {ws}, {tmp} and {port} are filled in
    setup: Callable[[Path], Callable[[], None] | None] | None = None  # may return a cleanup
    absent: list[str] = field(default_factory=list)  # fragments the line must not have
    warns: bool = False  # `warning:` lines come before the error
    input: str | None = None  # stdin
    after: Callable[[Path, dict[str, str]], None] | None = None
    """Checks the workspace after the command, given its files before; default: unchanged."""
    bug: str | None = None  # a known bug in mstage: the case is a strict xfail until fixed


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

PREPARE = ["prepare-data", "--interactions"]
HEADER = "user_id,item_id,timestamp"
UNREADABLE = "check the file (re-export it if it is truncated or corrupt)"

DATA_CASES = [
    # raw tables given to prepare-data: the previous data artifact is kept
    Case("data-directory-as-file", [*PREPARE, "{tmp}/d.csv"], 2,
         "expected the interactions file at {tmp}/d.csv, found a directory; check the path "
         "given to --interactions", setup=_prior(_file("d.csv", None))),
    Case("data-zero-byte-csv", [*PREPARE, "{tmp}/e.csv"], 2,
         "expected a readable csv file at {tmp}/e.csv, found an error: No columns to parse "
         f"from file; {UNREADABLE}", setup=_prior(_file("e.csv", ""))),
    Case("data-zero-byte-parquet", [*PREPARE, "{tmp}/e.parquet"], 2,
         "expected a readable parquet file at {tmp}/e.parquet, found an error: Parquet file "
         "size is 0 bytes", setup=_prior(_file("e.parquet", b""))),
    Case("data-csv-header-without-newline", [*PREPARE, "{tmp}/e.csv"], 2,
         "expected a readable csv file at {tmp}/e.csv, found an error: CSV parse error: Empty "
         "CSV file", setup=_prior(_file("e.csv", HEADER))),
    Case("data-ragged-csv-row", [*PREPARE, "{tmp}/e.csv"], 2,
         "found an error: CSV parse error: Expected 3 columns, got 4: 1,2,3,4",
         setup=_prior(_file("e.csv", f"{HEADER}\n1,2,3\n1,2,3,4\n"))),
    Case("data-unclosed-quote", [*PREPARE, "{tmp}/e.csv"], 2,
         "expected a readable csv file at {tmp}/e.csv, found an error:",
         setup=_prior(_file("e.csv", f'{HEADER}\n1,"2,3\n1,2,3\n'))),
    Case("data-gz-that-is-not-gzip", [*PREPARE, "{tmp}/e.csv.gz"], 2,
         "expected a readable csv file at {tmp}/e.csv.gz, found an error: Not a gzipped file",
         setup=_prior(_file("e.csv.gz", f"{HEADER}\n1,2,3\n"))),
    Case("data-csv-not-utf8", [*PREPARE, "{tmp}/e.csv"], 2,
         "found an error: 'utf-8' codec can't decode byte 0xe9",
         setup=_prior(_file("e.csv", f"{HEADER}\ncafé,2,3\n".encode("latin-1")))),
    Case("data-two-columns-missing", [*PREPARE, "{tmp}/e.csv"], 2,
         "expected column 'user_id' (--user-col), 'timestamp' (--time-col) in interactions "
         "file e.csv, found columns 'user', 'item_id', 'ts'; name the right one with "
         "--user-col/--time-col", setup=_prior(_file("e.csv", "user,item_id,ts\n1,2,3\n"))),
    Case("data-fractional-user-id", [*PREPARE, "{tmp}/e.csv"], 2,
         "expected integer or text user ids in column 'user_id' of e.csv, found '1.5' in data "
         "row 1 (first data row = 1)", setup=_prior(_file("e.csv", f"{HEADER}\n1.5,2,3\n2,2,3\n"))),
    Case("data-padding-user-id", [*PREPARE, "{tmp}/e.csv"], 2,
         "expected user ids other than -1 in column 'user_id' of e.csv (-1 pads candidate "
         "lists)", setup=_prior(_file("e.csv", f"{HEADER}\n-1,2,3\n2,2,3\n"))),
    Case("data-infinite-timestamp", [*PREPARE, "{tmp}/e.csv"], 2,
         "expected finite timestamps in column 'timestamp' of e.csv, found inf; drop or fix "
         "those rows", setup=_prior(_file("e.csv", f"{HEADER}\n1,2,3.5\n1,3,inf\n"))),
    Case("data-boolean-timestamps", [*PREPARE, "{tmp}/e.csv"], 2,
         "expected timestamps in column 'timestamp' of e.csv, found booleans; pass the time "
         "column with --time-col",
         setup=_prior(_file("e.csv", f"{HEADER}\n1,2,true\n1,3,false\n"))),
    Case("data-mixed-time-units", [*PREPARE, "{tmp}/e.csv"], 2,
         "expected timestamps in one unit in column 'timestamp' of e.csv",
         setup=_prior(_file("e.csv", f"{HEADER}\n1,2,1000\n1,3,1700000000000\n"))),
    Case("data-missing-timestamp", [*PREPARE, "{tmp}/e.csv"], 2,
         "expected a value in every row of column 'timestamp' of e.csv, found 1 missing (data "
         "rows 1;", setup=_prior(_file("e.csv", f"{HEADER}\n1,2,\n1,3,5\n"))),
    Case("data-missing-label", [*PREPARE, "{tmp}/e.csv", "--label-col", "click"], 2,
         "expected a value in every row of column 'click' of e.csv, found 1 missing",
         setup=_prior(_file("e.csv", f"{HEADER},click\n1,2,3,1\n1,3,4,\n"))),
    Case("data-fractional-label", [*PREPARE, "{tmp}/e.csv", "--label-col", "click"], 2,
         "expected labels 0 or 1 in column 'click' of e.csv, found 1 other values, like 0.5",
         setup=_prior(_file("e.csv", f"{HEADER},click\n1,2,3,0.5\n1,3,4,1\n"))),
    Case("data-label-column-absent", [*PREPARE, "{tmp}/i.csv", "--label-col", "click"], 2,
         "expected column 'click' (--label-col) in interactions file i.csv, found columns "
         "'user_id', 'item_id', 'timestamp'", setup=_prior()),
    Case("data-users-is-a-directory", [*PREPARE, "{tmp}/i.csv", "--users", "{tmp}/u.csv"], 2,
         "expected the users file at {tmp}/u.csv, found a directory; check the path given to "
         "--users", setup=_prior(_file("u.csv", None))),
    Case("data-items-json", [*PREPARE, "{tmp}/i.csv", "--items", "{tmp}/items.json"], 2,
         "expected a .parquet, .pq, .csv or .csv.gz file, found {tmp}/items.json",
         setup=_prior(_file("items.json", "{}"))),
    Case("data-items-missing-id", [*PREPARE, "{tmp}/i.csv", "--items", "{tmp}/items.csv"], 2,
         "expected a value in every row of column 'item_id' of items.csv, found 1 missing",
         setup=_prior(_file("items.csv", "item_id,category\n10,a\n,b\n"))),
    Case("data-empty-multi-sep", [*PREPARE, "{tmp}/i.csv", "--multi-sep", ""], 2,
         "expected a non-empty multi-valued separator (--multi-sep), found ''", setup=_prior()),
    Case("data-column-of-two-kinds", [*PREPARE, "{tmp}/i.csv", "--items", "{tmp}/items.csv",
                                      "--categorical", "category", "--numeric", "category"], 2,
         "found 'category' declared both categorical and numeric (--numeric)",
         setup=_prior(_file("items.csv", "item_id,category\n10,a\n11,b\n"))),
    Case("data-reserved-feature-name", [*PREPARE, "{tmp}/i.csv", "--items", "{tmp}/items.csv"],
         2, "expected item feature names other than user_id, item_id, timestamp, label",
         setup=_prior(_file("items.csv", "item_id,label\n10,a\n11,b\n"))),
    Case("data-saved-input-gone", ["prepare-data"], 2,
         "expected the interactions file at {tmp}/gone.csv, found nothing",
         setup=_prior(lambda ws: _toml(f'[data]\ninteractions = "{ws.parent}/gone.csv"\n')(ws))),
    Case("ids-file-without-ids", ["recommend", "--user-ids-file", "{tmp}/ids.txt"], 2,
         "expected at least one user id in {tmp}/ids.txt, found none (0 malformed line(s))",
         setup=_file("ids.txt", "# nobody\n\n")),
    Case("ids-stdin-only-malformed", ["recommend", "--user-ids-file", "-"], 2,
         "expected at least one user id in stdin, found none (1 malformed line(s))",
         input="abc\n", warns=True),
    Case("ids-file-is-a-directory", ["recommend", "--user-ids-file", "{tmp}"], 2,
         "expected a file of user ids (one per line) at {tmp}, found a directory"),
]


def _bad_toml(id: str, text: str, message: str, bug: str | None = None) -> Case:
    """mstage.toml holding `text`: prepare-data (which would rebuild `data`) refuses it."""
    return Case(f"toml-{id}", [*PREPARE, "{tmp}/i.csv"], 2, message,
                setup=_prior(_toml(text)), bug=bug)


TOML = "{ws}/mstage.toml"
CONFIG_CASES = [
    _bad_toml("syntax", "[serving\ntop_k = 5\n",
              f"expected valid TOML in {TOML}, found an error: Expected ']' at the end of a "
              "table declaration (at line 1, column 9)"),
    _bad_toml("duplicate-key", "[serving]\ntop_k = 5\ntop_k = 6\n",
              f"expected valid TOML in {TOML}, found an error: Cannot overwrite a value"),
    _bad_toml("unknown-section", "[bogus]\nx = 1\n",
              f"unknown section [bogus] in {TOML}; expected one of: data, retrieval, ranking"),
    _bad_toml("unknown-key", "[serving]\ntopk = 5\n",
              f"unknown key 'topk' in [serving] of {TOML}; expected one of: top_k, candidates"),
    _bad_toml("text-for-int", '[serving]\ntop_k = "ten"\n',
              f"expected int for [serving] of {TOML} key 'top_k', found 'ten'"),
    _bad_toml("bool-for-int", "[serving]\ntop_k = true\n",
              f"expected int for [serving] of {TOML} key 'top_k', found True"),
    _bad_toml("float-for-int", "[serving]\ntop_k = 10.5\n",
              f"expected int for [serving] of {TOML} key 'top_k', found 10.5"),
    _bad_toml("section-not-a-table", "serving = 5\n",
              f"expected a [serving] table in {TOML}, found 5"),
    _bad_toml("text-for-list", '[filtering]\nexclude_categories = "a"\n',
              f"expected a list for [filtering] of {TOML} key 'exclude_categories', found 'a'"),
    _bad_toml("negative-seed", "[retrieval]\nseed = -1\n",
              "expected retrieval.seed in 0..4294967295, found -1"),
    _bad_toml("seed-2-to-the-32", "[ranking]\nseed = 4294967296\n",
              "expected ranking.seed in 0..4294967295, found 4294967296"),
    _bad_toml("temperature-inf", "[ordering]\ntemperature = inf\n",
              "expected ordering.temperature > 0, found inf"),
    _bad_toml("temperature-nan", "[retrieval]\ntemperature = nan\n",
              "expected retrieval.temperature > 0, found nan"),
    _bad_toml("http-port-0", "[serving]\nhttp_port = 0\n",
              "expected serving.http_port in 1..65535, found 0"),
    _bad_toml("grpc-port-70000", "[serving]\ngrpc_port = 70000\n",
              "expected serving.grpc_port in 1..65535, found 70000"),
    _bad_toml("candidates-below-top-k", "[serving]\ncandidates = 5\ntop_k = 10\n",
              "expected serving.candidates >= serving.top_k, found 5 < 10; raise "
              "serving.candidates or lower serving.top_k"),
    _bad_toml("unknown-optimizer", '[retrieval]\noptimizer = "rmsprop"\n',
              "expected retrieval.optimizer in adagrad, sgd, adam, found 'rmsprop'"),
    _bad_toml("unknown-split", '[ranking]\nsplit = "random"\n',
              "expected ranking.split in user-temporal, global, found 'random'"),
    _bad_toml("unknown-strategy", '[ordering]\nstrategy = "random"\n',
              "expected ordering.strategy in topk, softmax, found 'random'"),
    _bad_toml("target-recall-nan", "[index]\ntarget_recall = nan\n",
              "expected index.target_recall in (0, 1], found nan"),
    _bad_toml("unknown-online-store", '[features]\nonline_store = "memcached"\n',
              "expected features.online_store to be 'sqlite' or 'redis://HOST:PORT', found "
              "'memcached'"),
    _bad_toml("hidden-unit-0", "[retrieval]\nhidden_units = [64, 0]\n",
              "expected retrieval.hidden_units[1] > 0, found 0"),
    _bad_toml("history-above-1000", "[retrieval]\nhistory = 5000\n",
              "expected retrieval.history in 0..1000, found 5000"),
    _bad_toml("retrieval-weight-nan", "[ordering]\nretrieval_weight = nan\n",
              "expected ordering.retrieval_weight >= 0, found nan"),
]

OPTION_CASES = [
    # each command's option values and combinations, refused before anything heavy
    Case("train-retrieval-temperature-nan", ["train-retrieval", "--temperature", "nan"], 2,
         "expected --temperature > 0, found nan; pass a positive value", setup=_prior()),
    Case("train-retrieval-temperature-inf", ["train-retrieval", "--temperature", "inf"], 2,
         "expected --temperature > 0, found inf", setup=_prior()),
    Case("train-retrieval-seed-2-to-the-32", ["train-retrieval", "--seed", "4294967296"], 2,
         "expected --seed in 0..4294967295, found 4294967296", setup=_prior()),
    Case("train-ranking-negative-seed", ["train-ranking", "--seed", "-1"], 2,
         "expected --seed in 0..4294967295, found -1", setup=_prior()),
    Case("train-ranking-learning-rate-inf", ["train-ranking", "--learning-rate", "inf"], 2,
         "expected --learning-rate > 0, found inf", setup=_prior()),
    Case("build-index-target-recall-0", ["build-index", "--target-recall", "0"], 2,
         "expected index.target_recall in (0, 1], found 0.0"),
    Case("build-index-negative-exact-below", ["build-index", "--exact-below", "-1"], 2,
         "expected index.exact_below >= 0, found -1"),
    Case("build-index-empty-index", ["build-index", "--index", ""], 2,
         "expected index.index auto, flat, ivf, hnsw or a faiss factory string, found an "
         "empty string"),
    Case("build-ensemble-device", ["build-ensemble", "--device", "tpu"], 2,
         "expected --device in cpu, gpu, found 'tpu'"),
    Case("build-ensemble-instances-0", ["build-ensemble", "--instances", "0"], 2,
         "expected --instances > 0, found 0; pass a positive value"),
    Case("build-ensemble-candidates-below-top-k",
         ["build-ensemble", "--candidates", "5", "--top-k", "10"], 2,
         "expected --candidates >= --top-k, found 5 < 10; raise --candidates or lower --top-k"),
    Case("export-features-recent-items-0", ["export-features", "--recent-items", "0"], 2,
         "expected features.recent_items > 0, found 0"),
    Case("export-features-check-sample-0", ["export-features", "--check-sample", "0"], 2,
         "error: Invalid value for '--check-sample'"),
    Case("export-features-redis-without-port",
         ["export-features", "--online-store", "redis://localhost"], 2,
         "expected features.online_store to be 'sqlite' or 'redis://HOST:PORT', found "
         "'redis://localhost'"),
    Case("evaluate-users-0", ["evaluate", "--users", "0"], 2,
         "error: Invalid value for '--users'"),
    Case("evaluate-empty-k", ["evaluate", "--k", ","], 2,
         "Invalid value for --k: expected positive integers, found ','"),
    Case("bench-negative-warmup", ["bench", "--warmup", "-1"], 2,
         "error: Invalid value for '--warmup'"),
    Case("bench-top-k-0", ["bench", "--top-k", "0"], 2, "error: Invalid value for '--top-k'"),
    Case("bench-concurrency-not-integers", ["bench", "--concurrency", "1,x"], 2,
         "Invalid value for --concurrency: expected comma-separated integers, found '1,x'"),
    Case("bench-duration-limit-nan", ["bench", "--duration-limit", "nan"], 2,
         "expected --duration-limit > 0, found nan"),
    Case("bench-negative-seed", ["bench", "--seed", "-1"], 2,
         "expected --seed in 0..4294967295, found -1", setup=_prior()),
    Case("recommend-negative-seed", ["recommend", "--user-id", "1", "--seed", "-1"], 2,
         "expected --seed in 0..4294967295, found -1"),
    Case("recommend-seed-with-server",
         ["recommend", "--user-id", "1", "--server", "127.0.0.1:1", "--seed", "3"], 2,
         "expected --seed only in-process, found it with --server"),
    Case("recommend-in-process-with-server",
         ["recommend", "--user-id", "1", "--in-process", "--server", "127.0.0.1:1"], 2,
         "expected --in-process or --server, found both"),
    Case("recommend-text-user-id", ["recommend", "--user-id", "abc"], 2,
         "expected an integer user id (this workspace's ids are integers), found 'abc'",
         setup=_prior()),
    Case("recommend-empty-user-id", ["recommend", "--user-id", ""], 2,
         "expected an integer user id (this workspace's ids are integers), found ''"),
    Case("recommend-padding-user-id", ["recommend", "--user-id", "-1"], 2,
         "expected a user id within int64 and other than -1, found '-1'", setup=_prior()),
    Case("generate-ctr-nan", ["generate-data", "--out", "{tmp}/g", "--ctr", "nan"], 2,
         "expected a target CTR in (0, 1), found nan"),
    Case("generate-out-is-a-file", ["generate-data", "--out", "{tmp}/i.csv"], 2,
         "expected --out to be a directory, found a file at {tmp}/i.csv", setup=_csv),
    Case("generate-negative-seed",
         ["generate-data", "--out", "{tmp}/g", "--seed", "-1", "--users", "10", "--items", "10",
          "--interactions", "100"], 2, "expected --seed in 0..4294967295, found -1"),
]

WORKSPACE_CASES = [
    # missing artifacts: the hint names the first missing step
    Case("export-features-empty-workspace", ["export-features"], 2,
         "run `mstage prepare-data` first"),
    Case("bench-empty-workspace", ["bench"], 2,
         "expected the data artifact at {ws}/data, found nothing; run `mstage prepare-data` "
         "first"),
    Case("build-ensemble-without-retrieval", ["build-ensemble"], 2,
         "expected the retrieval artifact at {ws}/retrieval, found nothing; run `mstage "
         "train-retrieval` first", setup=_prior()),
    Case("evaluate-without-retrieval", ["evaluate"], 2,
         "run `mstage train-retrieval` first", setup=_prior()),
    Case("data-directory-deleted", ["build-index"], 2,
         "found nothing; run `mstage prepare-data` first", setup=_prior(_remove_dir("data"))),
    Case("serve-empty-workspace", ["serve"], 2, "run `mstage prepare-data` first"),
    Case("serve-missing-repository", ["serve", "--repository", "{tmp}/nope"], 2,
         "expected a model repository at {tmp}/nope, found nothing; pass the directory"),
    # damaged artifacts (exit 1): the hint names the rebuild
    Case("data-file-deleted", ["bench"], 1,
         "expected the data artifact as published, found data/interactions.parquet missing; "
         "rebuild it with `mstage prepare-data`",
         setup=_prior(_unlink("data/interactions.parquet"))),
    Case("data-file-truncated", ["train-retrieval"], 1,
         "found data/items.parquet changed; rebuild it with `mstage prepare-data`",
         setup=_prior(_truncate("data/items.parquet"))),
    # the workspace's own files
    Case("workspace-locked", [*PREPARE, "{tmp}/i.csv"], 1,
         "expected to write workspace {ws}, found it locked by pid 4242 (mstage "
         "train-retrieval); wait for that command to finish", setup=_prior(_locked)),
    Case("staging-is-a-file", [*PREPARE, "{tmp}/i.csv"], 2,
         "expected directories along the path {ws}/.staging/data-",
         setup=_prior(_staging_is_a_file)),
    Case("manifest-is-a-directory", ["status"], 1,
         "expected a file at {ws}/manifest.json, found a directory ([Errno 21] Is a "
         "directory)", setup=_prior(_manifest(None))),
    # corrupt manifest.json (exit 1): every command names `mstage status --repair`
    *[Case(f"manifest-{id}", args, 1,
           f"expected a readable manifest at {{ws}}/manifest.json, found {found}; run `mstage "
           "status --repair` to rebuild it from the artifacts on disk",
           setup=_prior(_manifest(content)))
      for id, args, content, found in [
          ("truncated", ["train-retrieval"], '{"artifacts": [',
           "JSONDecodeError: Expecting value: line 1 column 16 (char 15)"),
          ("empty", ["status"], "", "JSONDecodeError: Expecting value: line 1 column 1 (char 0)"),
          ("null", ["export-features"], "null",
           "TypeError: 'NoneType' object is not subscriptable"),
          ("without-artifacts", ["build-index"], "{}", "KeyError: 'artifacts'"),
          ("artifacts-a-list", ["recommend", "--user-id", "1000"], '{"artifacts": []}',
           "TypeError: an artifact record lacks its fingerprint"),
          ("record-without-fingerprint", ["bench"], '{"artifacts": {"data": {}}}',
           "TypeError: an artifact record lacks its fingerprint"),
          ("binary", ["evaluate"], b"\xff\xfe\x00garbage",
           "UnicodeDecodeError: 'utf-8' codec can't decode byte 0xff in position 0: invalid "
           "start byte")]],
    Case("manifest-corrupt-prepare-data", [*PREPARE, "{tmp}/i.csv"], 1,
         "run `mstage status --repair`", setup=_prior(_manifest('{"artifacts": ['))),
    *[Case(f"manifest-{id}", ["status"], 1, "the data record's inputs or files are malformed; "
           "run `mstage status --repair`", setup=_prior(_data_record(change)))
      for id, change in [
          ("files-a-list", lambda r: r.update(files=["x"])),
          ("inputs-a-number", lambda r: r.update(inputs=5)),
          ("file-without-digest", lambda r: r["files"]["users.parquet"].pop("digest"))]],
    # faults left by a killed command
    Case("interrupted-publish-recovered", ["recommend", "--user-id", "1000", "--top-k", "25"],
         2, "expected --top-k <= the catalog size 20, found 25",
         setup=_prior(_interrupted_publish), after=_recovered),
]

SERVER_CASES = [
    Case("server-without-host", ["recommend", "--user-id", "1", "--server", ":8001"], 2,
         "expected --server HOST:PORT (e.g. 127.0.0.1:8001), found ':8001'"),
    Case("server-port-not-a-number", ["recommend", "--user-id", "1", "--server", "host:abc"], 2,
         "expected --server HOST:PORT (e.g. 127.0.0.1:8001), found 'host:abc'"),
    Case("server-empty", ["recommend", "--user-id", "1", "--server", ""], 2,
         "expected --server HOST:PORT (e.g. 127.0.0.1:8001), found ''"),
    Case("server-port-0", ["bench", "--server", "127.0.0.1:0"], 2,
         "expected the port of --server in 1..65535, found 0 in '127.0.0.1:0'"),
    Case("server-as-url", ["recommend", "--user-id", "1", "--server", "http://127.0.0.1:8001"],
         2, "expected --server HOST:PORT"),
    Case("server-unreachable-bench", ["bench", "--server", "127.0.0.1:{port}", "--protocol",
                                      "http", "--requests", "1"], 1,
         "expected a Triton server at http://127.0.0.1:{port}, found none answering",
         setup=_prior()),
]

CASES += DATA_CASES + CONFIG_CASES + OPTION_CASES + WORKSPACE_CASES + SERVER_CASES


def _param(case: Case):
    marks = [pytest.mark.xfail(strict=True, reason=case.bug)] if case.bug else []
    return pytest.param(case, id=case.id, marks=marks)


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_bad_input_is_one_line(cli, isolated_workspace, case):
    ws = isolated_workspace
    cleanup = case.setup(ws) if case.setup is not None else None
    before = _files(ws)
    fill = {"ws": str(ws), "tmp": str(ws.parent)}
    if any("{port}" in a for a in case.args):
        from mstage.serving.server import free_port

        fill["port"] = str(free_port())
    try:
        result = cli(*[a.format(**fill) for a in case.args], input=case.input)
    finally:
        if cleanup is not None:
            cleanup()
    line = one_line(result, case.warns)
    assert result.exit_code == case.code, line
    assert line.startswith("error: ")
    assert case.message.format(**fill) in line
    for fragment in case.absent:
        assert fragment not in line
    if case.after is not None:
        case.after(ws, before)
    else:
        assert _files(ws) == before  # the last good artifact, its record and settings


def test_the_corpus_is_large_and_uniquely_named():
    assert len(CASES) >= 60
    assert len({c.id for c in CASES}) == len(CASES)


def test_staging_left_by_a_killed_command_is_removed_by_the_next_write(cli, isolated_workspace):
    ws = isolated_workspace
    _prior()(ws)
    left = ws / ".staging" / "data-0badc0de"
    left.mkdir(parents=True)
    (left / "interactions.parquet").write_bytes(b"half written")
    result = cli(*PREPARE, ws.parent / "i.csv")
    assert result.exit_code == 0, result.stderr
    assert not any((ws / ".staging").iterdir())
    assert not [n for n in os.listdir(ws) if n.endswith(".previous")]


def test_a_repaired_manifest_lets_the_command_run(cli, isolated_workspace):
    """The one line's advice works: after `status --repair` the refused command succeeds."""
    ws = isolated_workspace
    _prior(_manifest('{"artifacts": ['))(ws)
    assert cli(*PREPARE, ws.parent / "i.csv").exit_code == 1
    repaired = cli("status", "--repair")
    assert repaired.exit_code == 0, repaired.stderr
    assert cli(*PREPARE, ws.parent / "i.csv").exit_code == 0


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
    recommend = ["-w", isolated_workspace, "recommend", "--user-id", "1000"]
    imported, done = imports_after_commands(
        [[*recommend, "--candidates", "100000000000"], [*recommend, "--top-k", "21"]],
        ("tensorflow", "keras", "feast", "faiss", "tritonclient"), exit_code=2)
    assert imported == []
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
