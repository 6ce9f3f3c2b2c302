"""The floor Triton adds: a do-nothing ensemble's latency, throughput, start-up, RSS.

    .venv/bin/python benchmarks/triton_floor.py [--requests 1000] [--seconds 5] [--starts 3]

Starts the real tritonserver on free loopback ports (as `mstage serve` does), measures
start-up to readiness, the resident memory of the server and its python stubs, per-request
latency at concurrency 1 (p50/p90/p99) and closed-loop throughput at concurrency 1/4/16
(one client per thread) over gRPC and HTTP, with Triton's own per-model times during the
latency runs (`measure.measure_triton`, shared with triton_pipeline.py), and prints one JSON
object.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import floor_operators  # noqa: E402
from measure import LEVELS, measure_triton  # noqa: E402

from mstage.serving.repository import write_repository  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--starts", type=int, default=3)
    parser.add_argument("--levels", default=",".join(map(str, LEVELS)),
                        help="client threads of the throughput points")
    parser.add_argument("--steps", type=int, choices=(2, 4), default=4,
                        help="4: the pipeline's steps and shapes (default); 2: the old floor")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        write_repository(repo, floor_operators.floor_plan(args.steps),
                         code=[Path(floor_operators.__file__)])
        # The echo stage answers any user; 64 distinct ones spread requests like real traffic.
        result = measure_triton(repo, Path(tmp) / "logs", list(range(64)),
                                requests=args.requests, seconds=args.seconds,
                                starts=args.starts,
                                levels=[int(c) for c in args.levels.split(",")])
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
