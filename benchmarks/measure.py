"""What the benchmark scripts share: run-and-reap, percentiles, the closed-loop load, Triton.

- `run_and_reap`: run a command and reap it with os.wait4, so its own peak RSS is known;
  `run_mstage` runs one `mstage ... --json` command that way and parses its answer.
- `percentiles_ms`: the one percentile summary every script prints (p50/p90/p99 and mean, ms).
- `closed_loop`: the one closed-loop load generator, `mstage.evaluation.bench.run_level`
  (what `mstage bench` runs), sending one user per request through any `Recommends`;
  `latency_ms` and `throughput_rps` are its two uses here.
- `measure_triton`: start-up, RSS, latency, throughput and Triton's own per-model times of
  one model repository, for triton_floor.py and triton_pipeline.py alike.
- `artifacts_ready`: whether a workspace holds every artifact ready (through `Workspace`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mstage.evaluation.bench import LevelResult, recommend_sender, run_level

LEVELS = (1, 4, 16)
"""Client threads of the throughput points."""
MSTAGE = [sys.executable, "-m", "mstage"]


def run_and_reap(command: list[str], log: Path, out_path: Path, timeout: float,
                 poll_s: float = 0.05) -> tuple[int | None, float, float]:
    """Run `command` (stdout to out_path, stderr appended to log) until it exits or runs past
    `timeout` seconds (then it is killed). Returns (exit code, or None when killed; wall
    seconds; the child's peak RSS in MiB)."""
    started = time.perf_counter()
    with open(log, "ab") as err, open(out_path, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=err)
        deadline = time.monotonic() + timeout
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                return (os.waitstatus_to_exitcode(status), time.perf_counter() - started,
                        usage.ru_maxrss / 1024)
            if time.monotonic() > deadline:
                process.kill()
                _, _, usage = os.wait4(process.pid, 0)
                return None, time.perf_counter() - started, usage.ru_maxrss / 1024
            time.sleep(poll_s)


def run_mstage(args: list[str], log: Path, timeout: float, poll_s: float = 0.05) -> dict:
    """Run `mstage ARGS` with `run_and_reap` (stdout to LOG.stdout, stderr appended to LOG):
    {"code" (None when it ran past `timeout` and was killed), "seconds", "peak_mib",
    "result" (the JSON of its first stdout line, as `--json` prints it, or None)}. A non-zero
    exit is a SystemExit naming the command and the log."""
    out_path = log.with_suffix(".stdout")
    code, seconds, peak_mib = run_and_reap(MSTAGE + args, log, out_path, timeout, poll_s)
    if code is not None and code != 0:
        raise SystemExit(f"`mstage {' '.join(args)}` failed ({code}); see {log}")
    text = out_path.read_text() if code is not None else ""
    try:
        result = json.loads(text.splitlines()[0]) if text.strip() else None
    except json.JSONDecodeError:
        result = None
    return {"code": code, "seconds": seconds, "peak_mib": peak_mib, "result": result}


def percentiles_ms(seconds: Iterable[float], qs: Sequence[int] = (50, 90, 99)) -> dict[str, float]:
    """Durations in seconds -> {"p50_ms", "p90_ms", "p99_ms", "mean_ms"} (numpy's linear
    interpolation between ranks, as `mstage bench` reports), rounded to microseconds."""
    ms = np.asarray(list(seconds), dtype=np.float64) * 1000
    if not len(ms):
        return {**{f"p{q}_ms": float("nan") for q in qs}, "mean_ms": float("nan")}
    return {**{f"p{q}_ms": round(float(np.percentile(ms, q)), 3) for q in qs},
            "mean_ms": round(float(ms.mean()), 3)}


def timed(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> list[float]:
    """Seconds of each of `repeats` sequential calls of `fn`, after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return times


def closed_loop(open_recommender: Callable[[], Any], users: Sequence[int], concurrency: int, *,
                requests: int | None = None, seconds: float | None = None,
                top_k: int | None = None, warmup: int = 20,
                per_thread: bool = True) -> LevelResult:
    """One closed-loop level of `mstage.evaluation.bench`: `concurrency` clients, each
    sending one user per request (users taken in turn from `users`) and the next once
    answered, after `warmup` untimed requests each. It ends after `requests` timed
    requests or `seconds`, whichever comes first (give one or both).

    `open_recommender()` opens a `Recommends` (a `RecommenderClient`, or the in-process
    `Recommender`); `per_thread` opens one per client thread (tritonclient's HTTP client is
    not thread-safe), else all share one. What was opened is closed afterwards."""
    if requests is None and seconds is None:
        raise ValueError("expected requests or seconds to bound the level, found neither")
    make = recommend_sender(open_recommender, top_k, per_thread=per_thread)
    try:
        return run_level(make, np.asarray(users, dtype=np.int64), concurrency,
                         requests if requests is not None else 2**62,
                         seconds if seconds is not None else 24 * 3600.0, warmup)
    finally:
        make.close_all()


def latency_ms(open_recommender: Callable[[], Any], users: Sequence[int], requests: int,
               **options: Any) -> dict[str, float]:
    """`percentiles_ms` of `requests` sequential one-user requests (concurrency 1)."""
    return percentiles_ms(closed_loop(open_recommender, users, 1, requests=requests,
                                      **options).latencies_s)


def throughput_rps(open_recommender: Callable[[], Any], users: Sequence[int], concurrency: int,
                   seconds: float, **options: Any) -> float:
    """Closed-loop requests per second at `concurrency` over `seconds`."""
    level = closed_loop(open_recommender, users, concurrency, seconds=seconds, **options)
    return round(level.throughput, 1)


def artifacts_ready(root: Path, artifacts: Iterable[Any]) -> bool:
    """Every one of `artifacts` (mstage.workspace.Artifact) built and not stale in `root`."""
    from mstage.workspace import Workspace

    ws = Workspace(root)
    return all(ws.state(a)[0] == "ready" for a in artifacts)


def group_rss_mib(pgid: int) -> tuple[float, int]:
    """(total RSS in MiB, process count) of every process in group `pgid`."""
    total_kib, count = 0, 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[2]) != pgid:
                continue
            status = (stat.parent / "status").read_text()
        except (OSError, IndexError):
            continue
        rss = [ln for ln in status.splitlines() if ln.startswith("VmRSS:")]
        if rss:
            total_kib += int(rss[0].split()[1])
            count += 1
    return total_kib / 1024, count


def model_stats(http_url: str) -> dict[str, dict[str, int]]:
    """Per model: Triton's cumulative request count and queue / compute / total nanoseconds."""
    import urllib.request

    with urllib.request.urlopen(f"http://{http_url}/v2/models/stats", timeout=10) as response:
        raw = json.load(response)
    return {m["name"]: {"count": int(m["inference_stats"]["success"]["count"]),
                        **{k: int(m["inference_stats"][k]["ns"]) for k in
                           ("queue", "compute_infer", "success")}} for m in raw["model_stats"]}


def stage_breakdown(before: dict, after: dict) -> dict[str, dict[str, float]]:
    """Mean milliseconds per request and model between two `model_stats` snapshots."""
    out = {}
    for name, stats in after.items():
        n = stats["count"] - before.get(name, {}).get("count", 0)
        if n:
            out[name] = {k: round((stats[k] - before.get(name, {}).get(k, 0)) / n / 1e6, 3)
                         for k in ("queue", "compute_infer", "success")}
    return out


def measure_triton(repo: Path, log_dir: Path, users: Sequence[int], *, requests: int,
                   seconds: float, starts: int, top_k: int | None = None,
                   levels: Sequence[int] = LEVELS, warmup: int = 20,
                   ready_timeout_s: float = 120.0) -> dict[str, Any]:
    """Serve model repository `repo` with tritonserver on free loopback ports (as `mstage
    serve` does) and measure: start-up to ready (`starts` times), RSS of the server and its
    python stubs idle and after the load, then per protocol (gRPC, HTTP) `latency_ms` over
    `requests` one-user requests with Triton's per-model queue / compute / total ms during
    them, and `throughput_rps` at each of `levels` client threads over `seconds`."""
    from mstage.serving.client import RecommenderClient
    from mstage.serving.server import TritonServer, free_ports

    def server() -> TritonServer:
        http_port, grpc_port = free_ports(2)
        return TritonServer(repo, http_port=http_port, grpc_port=grpc_port, log_dir=log_dir,
                            ready_timeout_s=ready_timeout_s)

    startup = []
    for _ in range(starts):
        s = server()
        started = time.perf_counter()
        s.start()
        startup.append(round(time.perf_counter() - started, 2))
        s.stop()
    result: dict[str, Any] = {"startup_s": startup}
    with server() as s:
        urls = {"grpc": s.endpoints.grpc_url, "http": s.endpoints.http_url}
        rss, processes = group_rss_mib(s.process.pid)
        result |= {"rss_idle_mib": round(rss, 1), "processes": processes, "latency": {},
                   "server_ms_per_request": {}, "throughput": {}}
        for protocol, url in urls.items():
            def open_client(url=url, protocol=protocol) -> RecommenderClient:
                return RecommenderClient(url, protocol)

            before = model_stats(urls["http"])
            result["latency"][protocol] = latency_ms(open_client, users, requests, top_k=top_k,
                                                     warmup=warmup)
            result["server_ms_per_request"][protocol] = stage_breakdown(
                before, model_stats(urls["http"]))
            result["throughput"][protocol] = {
                str(c): throughput_rps(open_client, users, c, seconds, top_k=top_k,
                                       warmup=warmup) for c in levels}
        result["rss_after_load_mib"] = round(group_rss_mib(s.process.pid)[0], 1)
    return result
