"""In-process speed of the four-stage pipeline: one-user latency, batch throughput, load and
cold CLI time, on workspaces built with the real `mstage` commands.

usage: .venv/bin/python benchmarks/pipeline_latency.py --data sample --dir /tmp/latency-bench
       .venv/bin/python benchmarks/pipeline_latency.py --data synthetic \
           --size 100000x100000x2000000 --epochs 2 --dir /tmp/latency-bench
       .venv/bin/python benchmarks/pipeline_latency.py --data synthetic \
           --size 200000x1000000x4000000 --epochs 2 --dir /tmp/latency-bench

Build: every command (`generate-data`, `prepare-data --label-col click`, `train-retrieval`,
`train-ranking`, `export-features`, `build-index`) runs as its own `mstage` subprocess; its
wall time and peak RSS (`os.wait4`) are recorded. An existing workspace is reused when every
artifact is ready (`Workspace.state`; `--rebuild` forces a new one).

Measure (in a fresh child process, so its peak RSS is the recommender's alone):
`Recommender.from_workspace(...).load()` time (the plan, with the exported item table read
into the stages' arrays, and every stage's models opened: first, with the TensorFlow / Feast /
Faiss imports; then again with imports done); one user per call, warm
(after --warmup calls), over --calls distinct known user ids: p50/p90/p99 of the whole
`recommend` call and of each stage's `Recommendations.timings` (`measure.percentiles_ms`);
users per second at batch
sizes 1, 16, 64, 256; peak RSS (`resource.getrusage`). Then the cold CLI: the wall time of
the whole `mstage recommend --user-id ID --json` process, median of --cli-runs.

The load average (`os.getloadavg`) is recorded beside every measurement: on a shared machine
it says how much the numbers are inflated. Prints a Markdown block and one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from measure import artifacts_ready, percentiles_ms, run_mstage

from mstage.workspace import Artifact, Workspace

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_data"
ARTIFACTS = (Artifact.DATA, Artifact.RETRIEVAL, Artifact.RANKING, Artifact.FEATURES,
             Artifact.INDEX)
BATCH_SIZES = (1, 16, 64, 256)


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def run_measured(args: list[str], log: Path, timeout: float) -> dict:
    """Run `mstage ARGS`, reaping it with os.wait4: wall seconds, peak RSS MiB, stdout JSON."""
    load = loadavg()
    run = run_mstage(args, log, timeout, poll_s=0.02)
    if run["code"] is None:
        return {"args": args, "seconds": run["seconds"], "timed_out": True, "load": load}
    return {"args": args, "seconds": round(run["seconds"], 2), "peak_mib": round(run["peak_mib"]),
            "load": load, "result": run["result"]}


def build(args: argparse.Namespace, ws: Path) -> list[dict]:
    """Build the workspace with the real CLI; one record per command."""
    import shutil

    root = ws.parent
    log = root / "build.log"
    if ws.exists():
        shutil.rmtree(ws)
    steps = []

    def step(name: str, command: list[str]) -> None:
        record = run_measured(command, log, args.step_timeout) | {"step": name}
        steps.append(record)
        print(f"  {name}: {record['seconds']} s, peak {record.get('peak_mib')} MiB, "
              f"load {record['load']}", file=sys.stderr, flush=True)
        if record.get("timed_out"):
            raise SystemExit(f"{name} ran past {args.step_timeout} s; stopped")

    if args.data == "sample":
        tables = SAMPLE
    else:
        users, items, interactions = args.size
        tables = root / "raw"
        if tables.exists():
            shutil.rmtree(tables)
        step("generate-data", ["--json", "generate-data", "--out", str(tables),
                               "--users", str(users), "--items", str(items),
                               "--interactions", str(interactions), "--seed", "0"])
    w = ["-w", str(ws), "--json", "--quiet"]
    step("prepare-data", w + ["prepare-data",
                              "--interactions", str(tables / "interactions.parquet"),
                              "--users", str(tables / "users.parquet"),
                              "--items", str(tables / "items.parquet"), "--label-col", "click"])
    epochs = ["--epochs", str(args.epochs)] if args.epochs else []
    step("train-retrieval", w + ["train-retrieval"] + epochs)
    step("train-ranking", w + ["train-ranking"] + epochs)
    step("export-features", w + ["export-features"])
    step("build-index", w + ["build-index"])
    return steps


def measure(args: argparse.Namespace, ws: Path) -> dict:
    """Everything in-process (runs in a child process of its own)."""
    import numpy as np

    out: dict = {"load_start": loadavg()}
    started = time.perf_counter()
    from mstage.config import load_config
    from mstage.pipeline.recommender import Recommender

    workspace = Workspace(ws)
    config = load_config(workspace.config_path)
    # Stages load lazily: `load()` opens every model now, so the first request is warm.
    recommender = Recommender.from_workspace(workspace, config).load()
    out["load_first_s"] = round(time.perf_counter() - started, 2)
    out["rss_after_load_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    del recommender
    started = time.perf_counter()
    recommender = Recommender.from_workspace(workspace, config).load()
    out["load_again_s"] = round(time.perf_counter() - started, 2)
    out["load_after_loads"] = loadavg()
    out["n_items"] = recommender.n_items

    users = np.sort(_known_users(workspace, recommender.plan.stage("retrieval")))
    rng = np.random.default_rng(args.seed)
    users = rng.permutation(users)
    need = args.warmup + args.calls
    if len(users) < need:
        raise SystemExit(f"expected at least {need} known users, found {len(users)}")
    out["known_users"] = int(len(users))
    top_k = config.serving.top_k
    out["top_k"], out["candidates"] = top_k, config.serving.candidates

    for u in users[: args.warmup]:
        recommender.recommend(np.array([u]), top_k)
    totals, stages, cold = [], {}, 0
    out["load_latency_start"] = loadavg()
    for u in users[args.warmup: need]:
        t0 = time.perf_counter()
        result = recommender.recommend(np.array([u]), top_k)
        totals.append(time.perf_counter() - t0)
        for t in result.timings:
            stages.setdefault(t.name, []).append(t.seconds)
        cold += int(result.fallback[0])
    out["load_latency_end"] = loadavg()
    out["latency_ms"] = {"total": percentiles_ms(totals)} | {k: percentiles_ms(v)
                                                            for k, v in stages.items()}
    out["latency_calls"] = len(totals)
    out["fallback_answers"] = cold

    throughput = []
    for size in BATCH_SIZES:
        load = loadavg()
        batches = [users[(i * size) % len(users):][:size] for i in range(10_000)]
        batches = [b for b in batches if len(b) == size]
        recommender.recommend(batches[0], top_k)
        recommender.recommend(batches[1], top_k)
        times, done, i = [], 0, 2
        t_start = time.perf_counter()
        while (time.perf_counter() - t_start < args.seconds or len(times) < 5) and i < len(batches):
            t0 = time.perf_counter()
            recommender.recommend(batches[i], top_k)
            times.append(time.perf_counter() - t0)
            done += size
            i += 1
        elapsed = sum(times)
        throughput.append({"batch": size, "batches": len(times), "users": done,
                           "users_per_s": round(done / elapsed, 1),
                           "batch_ms_p50": round(statistics.median(times) * 1000, 2),
                           "load": load})
    out["throughput"] = throughput
    out["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    out["load_end"] = loadavg()
    out["sample_user"] = int(users[0])
    return out


def _known_users(ws: Workspace, retrieval):
    """User ids of the prepared data that the (loaded) retrieval stage's query tower knows."""
    import numpy as np

    from mstage.data.schema import PreparedData

    ids = PreparedData(ws.path(Artifact.DATA)).users["user_id"].to_numpy(np.int64)
    known = retrieval.query_tower.encoders.user_ids.lookup(ids) > 0
    return ids[known]


def cold_cli(ws: Path, user: int, runs: int, log: Path) -> dict:
    records = [run_measured(["-w", str(ws), "recommend", "--user-id", str(user), "--json"],
                            log, 1800) for _ in range(runs)]
    seconds = [r["seconds"] for r in records]
    return {"seconds": seconds, "median_s": round(statistics.median(seconds), 2),
            "peak_mib": max(r["peak_mib"] for r in records),
            "load": [r["load"] for r in records],
            "answer_items": len((records[0]["result"] or {}).get("item_ids", []))}


def markdown(report: dict) -> str:
    lines = [f"### {report['name']}", ""]
    lines.append(f"Items {report['measure']['n_items']:,}; known users measured "
                 f"{report['measure']['known_users']:,}; top_k {report['measure']['top_k']}, "
                 f"candidates {report['measure']['candidates']}.")
    lines += ["", "| build step | wall s | peak RSS MiB | load avg (1/5/15 min) |",
              "|---|---|---|---|"]
    for s in report.get("build", []):
        lines.append(f"| {s['step']} | {s['seconds']} | {s.get('peak_mib', '-')} | "
                     f"{' / '.join(map(str, s['load']))} |")
    m = report["measure"]
    lines += ["", "| one user per call (ms) | p50 | p90 | p99 | mean |", "|---|---|---|---|---|"]
    for name, p in m["latency_ms"].items():
        lines.append(f"| {name} | {p['p50_ms']} | {p['p90_ms']} | {p['p99_ms']} | "
                     f"{p['mean_ms']} |")
    lines += ["", "| batch size | users/s | batch p50 ms | batches | load avg |",
              "|---|---|---|---|---|"]
    for t in m["throughput"]:
        lines.append(f"| {t['batch']} | {t['users_per_s']} | {t['batch_ms_p50']} | "
                     f"{t['batches']} | {t['load'][0]} |")
    c = report["cli"]
    lines += ["", f"Load `Recommender.from_workspace(...).load()`: {m['load_first_s']} s first "
              "(with imports), "
              f"{m['load_again_s']} s again. Peak RSS {m['peak_rss_mib']} MiB. Cold "
              f"`mstage recommend --user-id ID --json`: median {c['median_s']} s "
              f"({', '.join(map(str, c['seconds']))}), peak {c['peak_mib']} MiB. Load average "
              f"during latency {m['load_latency_start']} -> {m['load_latency_end']}."]
    return "\n".join(lines)


def parse_size(text: str) -> tuple[int, int, int]:
    parts = [int(p) for p in text.lower().split("x")]
    if len(parts) != 3:
        raise argparse.ArgumentTypeError("expected USERSxITEMSxINTERACTIONS")
    return tuple(parts)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", choices=["sample", "synthetic"], default="sample")
    p.add_argument("--size", type=parse_size, default=(100_000, 100_000, 2_000_000),
                   help="synthetic USERSxITEMSxINTERACTIONS")
    p.add_argument("--dir", type=Path, default=Path("/tmp/latency-bench"))
    p.add_argument("--epochs", type=int, default=0, help="training epochs (0: the defaults)")
    p.add_argument("--rebuild", action="store_true")
    p.add_argument("--calls", type=int, default=500)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--seconds", type=float, default=5.0, help="per batch size")
    p.add_argument("--cli-runs", type=int, default=3)
    p.add_argument("--step-timeout", type=float, default=1800)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--measure-child", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.measure_child:
        print(json.dumps(measure(args, args.measure_child)))
        return

    name = "sample" if args.data == "sample" else "synthetic-" + "x".join(map(str, args.size))
    root = args.dir / name
    root.mkdir(parents=True, exist_ok=True)
    ws = root / "ws"
    report: dict = {"name": name, "machine": platform.machine(),
                    "python": platform.python_version(), "cpus": os.cpu_count(),
                    "date": time.strftime("%Y-%m-%d %H:%M")}
    if args.rebuild or not artifacts_ready(ws, ARTIFACTS):
        print(f"building {ws}", file=sys.stderr, flush=True)
        report["build"] = build(args, ws)
        (root / "build.json").write_text(json.dumps(report["build"]))
    elif (root / "build.json").exists():
        report["build"] = json.loads((root / "build.json").read_text())

    print("measuring in-process", file=sys.stderr, flush=True)
    child = subprocess.run([sys.executable, __file__, "--measure-child", str(ws),
                            "--calls", str(args.calls), "--warmup", str(args.warmup),
                            "--seconds", str(args.seconds), "--seed", str(args.seed)],
                           capture_output=True, text=True)
    if child.returncode != 0:
        raise SystemExit(f"measurement failed:\n{child.stderr[-3000:]}")
    report["measure"] = json.loads(child.stdout.strip().splitlines()[-1])
    print("cold CLI", file=sys.stderr, flush=True)
    report["cli"] = cold_cli(ws, report["measure"]["sample_user"], args.cli_runs,
                             root / "cli.log")
    (root / "report.json").write_text(json.dumps(report, indent=1))
    print(markdown(report))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
