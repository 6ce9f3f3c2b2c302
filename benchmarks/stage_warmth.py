"""What a stage costs when it runs warm, after a short sleep, and after its caches are evicted.

    .venv/bin/python benchmarks/stage_warmth.py --repository W/ensemble/model_repository
        [--users 64] [--rounds 2]

Restores the four stages from a model repository written by `mstage build-ensemble` (the
objects the Triton stubs run), then times each stage's one-user `run_stage` call in three
conditions, in rounds: back to back ("warm", the in-process hot loop); with a 0.5 ms sleep
before each stage ("after_sleep": the process idles between requests, as a stub does while
the other stages work); and with a 32 MiB array read before each stage ("caches_evicted":
what four other processes on the same cores do to a stub's caches). Prints one JSON object:
mean milliseconds per stage and their sum, per condition and round.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

STAGES = ("retrieval", "filtering", "scoring", "ordering")
MODEL_PREFIX = "mstage_"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, required=True)
    parser.add_argument("--users", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # as the stubs run

    import numpy as np

    from mstage.pipeline.stage import Stage, run_stage

    stages = {name: Stage.restore(args.repository / f"{MODEL_PREFIX}{name}" / "1" / "artifacts")
              for name in STAGES}
    for stage in stages.values():
        stage.load()
    evict = np.ones(32 * 2**20 // 8)
    before = {"warm": lambda: None, "after_sleep": lambda: time.sleep(0.0005),
              "caches_evicted": evict.sum}

    def chain(user: int, wait) -> dict[str, float]:
        columns, seconds = {"user_id": np.array([user])}, {}
        for name, stage in stages.items():
            batch = {c.name: columns[c.name] for c in stage.declared[0] if c.name in columns}
            wait()
            started = time.perf_counter()
            columns |= run_stage(stage, batch, name)
            seconds[name] = time.perf_counter() - started
        return seconds

    users = range(1, args.users + 1)
    result: dict = {"repository": str(args.repository), "users": args.users, "rounds": []}
    for _ in range(args.rounds):
        row = {}
        for condition, wait in before.items():
            for user in users:  # untimed pass: every user's path once
                chain(user, wait)
            totals = dict.fromkeys(STAGES, 0.0)
            for user in users:
                for name, s in chain(user, wait).items():
                    totals[name] += s
            ms = {name: round(t / len(users) * 1000, 3) for name, t in totals.items()}
            row[condition] = ms | {"sum": round(sum(ms.values()), 3)}
        result["rounds"].append(row)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
