"""mstage's Triton ensemble against the do-nothing 4-step floor, side by side, as ratios.

    .venv/bin/python benchmarks/triton_ratios.py --workspace W [--pairs 4] [--requests 300]
        [--seconds 3] [--starts 2] [--unpacked]

W is a workspace with every artifact built (`make demo WS=W`, or benchmarks/
triton_pipeline.py). Each pair measures the floor (benchmarks/floor_operators.py) and then
the workspace's own plan, both written by the same repository writer with the workspace's
serving settings, with `measure.measure_triton` (gRPC and HTTP, one user per request,
top-k 10, throughput at 16 clients), so the two see the same machine minutes apart.
Single pairs move by +-0.4 on a 2-core machine; the medians over pairs are the numbers to
quote. `--unpacked` writes both repositories with every column as its own tensor (no
wire packing: what it saves is measured against that). Prints one JSON object: each
measurement, each pair's ratios and their medians and ranges.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import floor_operators  # noqa: E402
from measure import measure_triton  # noqa: E402

from mstage.workspace import Workspace  # noqa: E402

CLIENTS = 16


def ratios(floor: dict, mstage: dict) -> dict[str, float]:
    """mstage / floor for the issue's targets (p50 and throughput per protocol, start-up),
    and mstage's own p99 / p50."""
    out = {}
    for protocol in ("grpc", "http"):
        out[f"p50_{protocol}"] = (mstage["latency"][protocol]["p50_ms"]
                                  / floor["latency"][protocol]["p50_ms"])
        out[f"throughput_{CLIENTS}_{protocol}"] = (
            mstage["throughput"][protocol][str(CLIENTS)]
            / floor["throughput"][protocol][str(CLIENTS)])
        out[f"p99_over_p50_{protocol}"] = (mstage["latency"][protocol]["p99_ms"]
                                           / mstage["latency"][protocol]["p50_ms"])
    out["startup"] = statistics.median(mstage["startup_s"]) / statistics.median(
        floor["startup_s"])
    return {k: round(v, 3) for k, v in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", type=Path, required=True)
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--starts", type=int, default=2)
    parser.add_argument("--unpacked", action="store_true")
    args = parser.parse_args()

    from triton_pipeline import TOP_K, known_users

    from mstage.config import load_config
    from mstage.pipeline.recommender import build_plan
    from mstage.serving.ensemble import MODEL_PREFIX
    from mstage.serving.repository import write_repository

    ws = Workspace(args.workspace.resolve())
    config = load_config(ws.config_path)
    serving = config.serving
    options = {"device": serving.device, "instances": serving.instances,
               "max_batch_size": serving.max_batch_size,
               "max_queue_delay_us": serving.batch_delay_us, "pack": not args.unpacked}
    users = known_users(ws)
    result: dict = {"workspace": str(ws.root), "packed": not args.unpacked, "pairs": []}
    with tempfile.TemporaryDirectory() as tmp:
        floor_repo, mstage_repo = Path(tmp) / "floor", Path(tmp) / "mstage"
        write_repository(floor_repo, floor_operators.floor_plan(),
                         code=[Path(floor_operators.__file__)], **options)
        write_repository(mstage_repo, build_plan(ws, config), model_prefix=MODEL_PREFIX,
                         **options)
        for _ in range(args.pairs):
            measured = {}
            for name, repo, who in (("floor", floor_repo, list(range(64))),
                                    ("mstage", mstage_repo, users)):
                measured[name] = measure_triton(
                    repo, Path(tmp) / f"logs-{name}", who, requests=args.requests,
                    seconds=args.seconds, starts=args.starts, top_k=TOP_K,
                    levels=[CLIENTS], ready_timeout_s=600)
            measured["ratios"] = ratios(measured["floor"], measured["mstage"])
            result["pairs"].append(measured)
            print(json.dumps(measured["ratios"]), file=sys.stderr)
    keys = result["pairs"][0]["ratios"]
    result["median"] = {k: statistics.median(p["ratios"][k] for p in result["pairs"])
                        for k in keys}
    result["range"] = {k: [min(p["ratios"][k] for p in result["pairs"]),
                           max(p["ratios"][k] for p in result["pairs"])] for k in keys}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
