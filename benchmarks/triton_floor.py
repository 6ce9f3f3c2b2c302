"""The floor Triton adds: a two-step do-nothing ensemble's latency, throughput, start-up, RSS.

    .venv/bin/python benchmarks/triton_floor.py [--requests 1000] [--seconds 5] [--starts 3]

Starts the real tritonserver on free loopback ports (as `mstage serve` does), measures
start-up to readiness, the resident memory of the server and its python stubs, per-request
latency at concurrency 1 (p50/p99) and throughput at concurrency 1/4/16 (one client per
thread) over gRPC and HTTP, and prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

import floor_operators  # noqa: E402

from mstage.serving.client import RecommenderClient  # noqa: E402
from mstage.serving.repository import write_repository  # noqa: E402
from mstage.serving.server import TritonServer, free_ports  # noqa: E402


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


def latency_ms(url: str, protocol: str, requests: int) -> dict[str, float]:
    with RecommenderClient(url, protocol) as client:
        for u in range(20):  # warm-up: connection, model config, first-call paths
            client.recommend([u])
        times = []
        for u in range(requests):
            started = time.perf_counter()
            client.recommend([u])
            times.append((time.perf_counter() - started) * 1000)
    q = np.percentile(times, [50, 99])
    return {"p50_ms": round(float(q[0]), 3), "p99_ms": round(float(q[1]), 3),
            "mean_ms": round(statistics.fmean(times), 3)}


def throughput(url: str, protocol: str, threads: int, seconds: float,
               users: list[int] | None = None, top_k: int | None = None,
               warmup_s: float = 0.5) -> float:
    """Closed-loop requests/s: `threads` clients, client i cycling through every threads-th
    of `users` (default: user i alone), one user per request, timed after `warmup_s`."""
    users = users or list(range(threads))
    counts = [0] * threads
    stop = threading.Event()

    def worker(i: int) -> None:
        with RecommenderClient(url, protocol) as client:  # HTTP clients are not thread-safe
            n = i % len(users)
            client.recommend([users[n]], top_k=top_k)
            while not stop.is_set():
                n = (n + threads) % len(users)
                client.recommend([users[n]], top_k=top_k)
                counts[i] += 1

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    time.sleep(warmup_s)
    start_count, started = sum(counts), time.perf_counter()
    time.sleep(seconds)
    done, elapsed = sum(counts) - start_count, time.perf_counter() - started
    stop.set()
    for t in pool:
        t.join()
    return round(done / elapsed, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--starts", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        write_repository(repo, [("echo_user", floor_operators.EchoUser()),
                                ("pass_through", floor_operators.PassThrough())],
                         code=[Path(floor_operators.__file__)])
        startup = []
        for _ in range(args.starts):
            http_port, grpc_port = free_ports(2)
            server = TritonServer(repo, http_port=http_port, grpc_port=grpc_port,
                                  log_dir=Path(tmp) / "logs")
            started = time.perf_counter()
            server.start()
            startup.append(time.perf_counter() - started)
            server.stop()
        http_port, grpc_port = free_ports(2)
        with TritonServer(repo, http_port=http_port, grpc_port=grpc_port,
                          log_dir=Path(tmp) / "logs") as server:
            urls = {"grpc": server.endpoints.grpc_url, "http": server.endpoints.http_url}
            rss_idle, processes = group_rss_mib(server.process.pid)
            result = {"startup_s": [round(s, 2) for s in startup], "rss_idle_mib":
                      round(rss_idle, 1), "processes": processes, "latency": {}, "throughput": {}}
            for protocol, url in urls.items():
                result["latency"][protocol] = latency_ms(url, protocol, args.requests)
                result["throughput"][protocol] = {
                    str(c): throughput(url, protocol, c, args.seconds) for c in (1, 4, 16)}
            result["rss_after_load_mib"] = round(group_rss_mib(server.process.pid)[0], 1)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
