"""The real four-stage ensemble through Triton beside the in-process pipeline, on sample_data/.

    .venv/bin/python benchmarks/triton_pipeline.py [--workspace DIR] [--requests 1000]
        [--seconds 5] [--starts 2] [--batch-delay-us US]

Builds a workspace from sample_data/ once with the real commands (prepare-data,
train-retrieval, train-ranking, export-features, build-index; reused when
every one of those artifacts is ready in DIR; build-ensemble always runs, so the repository
matches the code), then measures:

- in-process: `Recommender.recommend` for one user per call (p50/p90/p99, the same
  closed-loop driver at concurrency 1) and 64 users per call;
- Triton: start-up to ready, RSS of the server and its stubs, latency at concurrency 1
  (p50/p90/p99) and closed-loop throughput at concurrency 1/4/16 (one client per thread),
  gRPC and HTTP, through `RecommenderClient.recommend` (top-k 10, known users, so every
  request takes the retrieval -> filtering -> scoring -> ordering path, not the cold-start
  shortcut), and Triton's own per-model queue / compute / total time during the latency
  runs (`measure.measure_triton`, shared with triton_floor.py).

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

from measure import (  # noqa: E402
    MSTAGE,
    artifacts_ready,
    latency_ms,
    measure_triton,
    percentiles_ms,
    timed,
)

from mstage.workspace import Artifact, Workspace  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_data"
TOP_K = 10
BUILT = (Artifact.DATA, Artifact.RETRIEVAL, Artifact.RANKING, Artifact.FEATURES, Artifact.INDEX)


def build_workspace(ws: Workspace) -> dict[str, float]:
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
        subprocess.run([*MSTAGE, "--quiet", "--workspace", str(ws.root), *map(str, step)],
                       check=True, stdout=subprocess.DEVNULL)
        seconds[step[0]] = round(time.perf_counter() - started, 1)
    return seconds


def known_users(ws: Workspace) -> list[int]:
    from mstage.data.schema import PreparedData

    return sorted(PreparedData(ws.path(Artifact.DATA)).users["user_id"].tolist())


def in_process(ws: Workspace, users: list[int], requests: int) -> dict:
    from mstage.config import load_config
    from mstage.pipeline.recommender import Recommender

    started = time.perf_counter()
    recommender = Recommender.from_workspace(ws, load_config(ws.config_path)).load()
    load_s = time.perf_counter() - started
    single = latency_ms(lambda: recommender, users, requests, top_k=TOP_K, per_thread=False)
    chunks = iter([np.array([users[(i * 64 + j) % len(users)] for j in range(64)])
                   for i in range(21)])
    batched = timed(lambda: recommender.recommend(next(chunks), TOP_K), 20)
    stages = recommender.recommend(np.array(users[:64]), TOP_K).timings
    return {"load_s": round(load_s, 2), "one_user": single,
            "one_user_req_per_s": round(1000 / single["mean_ms"], 1),
            "batch_64": percentiles_ms(batched),
            "batch_64_users_per_s": round(64 / statistics.fmean(batched), 1),
            "stage_ms_batch_64": {t.name: round(t.seconds * 1000, 2) for t in stages}}


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

    from mstage.config import load_config, override, save_section
    from mstage.serving.ensemble import repository_path

    ws = Workspace(args.workspace.resolve())
    result: dict = {"workspace": str(ws.root)}
    if not artifacts_ready(ws.root, BUILT):
        result["build_s"] = build_workspace(ws)
    serving = load_config(ws.config_path).serving
    if args.batch_delay_us is not None:
        serving = override(serving, batch_delay_us=args.batch_delay_us)
        save_section(ws.config_path, "serving", serving)
    result["batch_delay_us"] = serving.batch_delay_us
    started = time.perf_counter()  # always: the repository must match the code measured
    subprocess.run([*MSTAGE, "--quiet", "--workspace", str(ws.root), "build-ensemble"],
                   check=True, stdout=subprocess.DEVNULL)
    result["build_ensemble_s"] = round(time.perf_counter() - started, 1)
    users = known_users(ws)
    result["in_process"] = in_process(ws, users, args.requests)
    result |= measure_triton(repository_path(ws), ws.logs_dir / "bench", users,
                             requests=args.requests, seconds=args.seconds, starts=args.starts,
                             top_k=TOP_K, ready_timeout_s=600)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
