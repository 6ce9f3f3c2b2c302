"""The real four-stage ensemble through Triton beside the in-process pipeline, on sample_data/.

    .venv/bin/python benchmarks/triton_pipeline.py [--workspace DIR] [--requests 1000]
        [--seconds 5] [--starts 2] [--batch-delay-us US]

Builds a workspace from sample_data/ once with the real commands (prepare-data,
train-retrieval, train-ranking, export-features, build-index; reused when
DIR already holds the index; build-ensemble always runs, so the repository matches the
code), then measures:

- in-process: `Recommender.recommend` for one user per call (p50/p99) and 64 users per call;
- Triton: start-up to ready, RSS of the server and its stubs, latency at concurrency 1
  (p50/p99) and throughput at concurrency 1/4/16 (one client per thread), gRPC and HTTP,
  through `RecommenderClient.recommend` (top-k 10, known users, so every request takes the
  retrieval -> filtering -> scoring -> ordering path, not the cold-start shortcut), and
  Triton's own per-model queue / compute / total time during the latency runs.

Prints one JSON object. Compare with benchmarks/triton_floor.py (the do-nothing ensemble).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from triton_floor import group_rss_mib, throughput  # noqa: E402

from mstage.serving.client import RecommenderClient  # noqa: E402
from mstage.serving.server import TritonServer, free_ports  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_data"
MSTAGE = [sys.executable, "-m", "mstage"]
TOP_K = 10


def build_workspace(ws: Path) -> dict[str, float]:
    """Run the pipeline's commands on sample_data/; seconds per command."""
    steps = [
        ["prepare-data", "--interactions", SAMPLE / "interactions.parquet",
         "--users", SAMPLE / "users.parquet", "--items", SAMPLE / "items.parquet",
         "--label-col", "click"],
        ["train-retrieval", "--epochs", "5"],
        ["train-ranking", "--epochs", "3"],
        ["export-features"],
        ["build-index"],
    ]
    seconds = {}
    for step in steps:
        started = time.perf_counter()
        subprocess.run([*MSTAGE, "--quiet", "--workspace", str(ws), *map(str, step)],
                       check=True, stdout=subprocess.DEVNULL)
        seconds[step[0]] = round(time.perf_counter() - started, 1)
    return seconds


def load_config_value(ws: Path, key: str):
    from mstage.config import load_config

    return getattr(load_config(ws / "mstage.toml").serving, key)


def known_users(ws: Path) -> list[int]:
    import pandas as pd

    return sorted(pd.read_parquet(ws / "data" / "users.parquet")["user_id"].tolist())


def percentiles(times_ms: list[float]) -> dict[str, float]:
    q = np.percentile(times_ms, [50, 99])
    return {"p50_ms": round(float(q[0]), 3), "p99_ms": round(float(q[1]), 3),
            "mean_ms": round(statistics.fmean(times_ms), 3)}


def in_process(ws: Path, users: list[int], requests: int) -> dict:
    from mstage.config import load_config
    from mstage.pipeline.recommender import Recommender
    from mstage.workspace import Workspace

    workspace = Workspace(ws)
    started = time.perf_counter()
    recommender = Recommender.from_workspace(workspace, load_config(workspace.config_path))
    load_s = time.perf_counter() - started
    for u in users[:20]:
        recommender.recommend(np.array([u]), TOP_K)
    single = []
    for i in range(requests):
        t = time.perf_counter()
        recommender.recommend(np.array([users[i % len(users)]]), TOP_K)
        single.append((time.perf_counter() - t) * 1000)
    batched = []
    for i in range(20):
        chunk = np.array([users[(i * 64 + j) % len(users)] for j in range(64)])
        t = time.perf_counter()
        recommender.recommend(chunk, TOP_K)
        batched.append((time.perf_counter() - t) * 1000)
    stages = recommender.recommend(np.array(users[:64]), TOP_K).timings
    return {"load_s": round(load_s, 2), "one_user": percentiles(single),
            "one_user_req_per_s": round(1000 / statistics.fmean(single), 1),
            "batch_64": percentiles(batched),
            "batch_64_users_per_s": round(64 * 1000 / statistics.fmean(batched), 1),
            "stage_ms_batch_64": {t.name: round(t.seconds * 1000, 2) for t in stages}}


def latency(url: str, protocol: str, users: list[int], requests: int) -> dict[str, float]:
    with RecommenderClient(url, protocol) as client:
        for u in users[:20]:
            client.recommend([u], top_k=TOP_K)
        times = []
        for i in range(requests):
            t = time.perf_counter()
            client.recommend([users[i % len(users)]], top_k=TOP_K)
            times.append((time.perf_counter() - t) * 1000)
    return percentiles(times)


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
            out[name] = {k: round((stats[k] - before[name][k]) / n / 1e6, 3)
                         for k in ("queue", "compute_infer", "success")}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", type=Path,
                        default=ROOT / "benchmarks" / ".work" / "triton_pipeline")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--starts", type=int, default=2)
    parser.add_argument("--batch-delay-us", type=int, default=None,
                        help="Write [serving] batch_delay_us into the workspace first.")
    args = parser.parse_args()

    ws = args.workspace.resolve()
    repo = ws / "ensemble" / "model_repository"
    result: dict = {"workspace": str(ws)}
    if not (ws / "index").is_dir():
        result["build_s"] = build_workspace(ws)
    if args.batch_delay_us is not None:
        from mstage.config import load_config, override, save_section

        serving = load_config(ws / "mstage.toml").serving
        save_section(ws / "mstage.toml", "serving",
                     override(serving, batch_delay_us=args.batch_delay_us))
    result["batch_delay_us"] = load_config_value(ws, "batch_delay_us")
    started = time.perf_counter()  # always: the repository must match the code measured
    subprocess.run([*MSTAGE, "--quiet", "--workspace", str(ws), "build-ensemble"], check=True,
                   stdout=subprocess.DEVNULL)
    result["build_ensemble_s"] = round(time.perf_counter() - started, 1)
    users = known_users(ws)
    result["in_process"] = in_process(ws, users, args.requests)

    logs = ws / "logs" / "bench"
    startup = []
    for _ in range(args.starts):
        http_port, grpc_port = free_ports(2)
        server = TritonServer(repo, http_port=http_port, grpc_port=grpc_port, log_dir=logs,
                              ready_timeout_s=600)
        t = time.perf_counter()
        server.start()
        startup.append(round(time.perf_counter() - t, 2))
        server.stop()
    result["startup_s"] = startup
    http_port, grpc_port = free_ports(2)
    with TritonServer(repo, http_port=http_port, grpc_port=grpc_port, log_dir=logs,
                      ready_timeout_s=600) as server:
        urls = {"grpc": server.endpoints.grpc_url, "http": server.endpoints.http_url}
        rss, processes = group_rss_mib(server.process.pid)
        result |= {"rss_idle_mib": round(rss, 1), "processes": processes,
                   "latency": {}, "throughput": {}}
        for protocol, url in urls.items():
            before = model_stats(urls["http"])
            result["latency"][protocol] = latency(url, protocol, users, args.requests)
            result.setdefault("server_ms_per_request", {})[protocol] = stage_breakdown(
                before, model_stats(urls["http"]))
            result["throughput"][protocol] = {
                str(c): throughput(url, protocol, c, args.seconds, users=users, top_k=TOP_K,
                                  warmup_s=1.0) for c in (1, 4, 16)}
        result["rss_after_load_mib"] = round(group_rss_mib(server.process.pid)[0], 1)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
