"""The whole mstage path, stage by stage: wall time and peak memory, then evaluate and bench.

usage: .venv/bin/python benchmarks/full_path.py [--dataset movielens|synthetic|both]
           [--synthetic 100000x100000x2000000] [--retrieval-epochs N] [--ranking-epochs N]
           [--eval-users N] [--bench-requests N] [--triton] [--keep [--from STAGE]]

Every command runs as its own `mstage` subprocess; its peak resident memory is the child's
`ru_maxrss` from `os.wait4`, so each stage is measured alone. Data and workspaces live in
the git-ignored benchmarks/.data/ and benchmarks/.work/full_path/ (MovieLens-100K's license
forbids committing it). Prints one Markdown block per data set, ready for RESULTS.md
(wall time, peak RSS and throughput per stage, then quality and latency), and keeps the
measurements as JSON beside each workspace (benchmarks/.work/full_path/NAME.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
from pathlib import Path

from measure import run_mstage
from movielens_protocol import extract_movielens

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "benchmarks" / ".work" / "full_path"
MOVIELENS = ROOT / "benchmarks" / ".data" / "movielens-100k"


def run_measured(args: list[str], workspace: Path | None, log: Path,
                 timeout: float = 3 * 3600) -> dict:
    """Run `mstage [--workspace WS] ARGS`, reaping the child with os.wait4 so its own peak RSS
    is known; wall seconds, peak RSS (MiB) and the parsed JSON of its stdout."""
    run = run_mstage((["--workspace", str(workspace)] if workspace else []) + args, log, timeout)
    if run["code"] is None:
        raise SystemExit(f"`mstage {' '.join(args[:2])}` ran past {timeout:.0f} s")
    return run


def movielens_stages(data: Path) -> list[tuple[str, list[str]]]:
    return [("prepare-data", ["prepare-data", "--interactions", str(data / "ratings.parquet"),
                              "--users", str(data / "users.parquet"),
                              "--items", str(data / "movies.parquet"), "--item-col", "movie_id",
                              "--ignore", "movie_title,release_date,video_release_date,"
                              "IMDb_URL,zip_code"])]


def synthetic_stages(raw: Path, users: int, items: int, rows: int) -> list[tuple[str, list[str]]]:
    return [
        ("generate-data", ["generate-data", "--out", str(raw), "--users", str(users),
                           "--items", str(items), "--interactions", str(rows), "--force"]),
        ("prepare-data", ["prepare-data", "--interactions", str(raw / "interactions.parquet"),
                          "--users", str(raw / "users.parquet"),
                          "--items", str(raw / "items.parquet"), "--label-col", "click"]),
    ]


def model_stages(args) -> list[tuple[str, list[str]]]:
    return [
        ("train-retrieval", ["train-retrieval", "--epochs", str(args.retrieval_epochs)]),
        ("train-ranking", ["train-ranking", "--epochs", str(args.ranking_epochs)]),
        ("export-features", ["export-features"]),
        ("build-index", ["build-index"]),
        ("evaluate", ["evaluate", "--users", str(args.eval_users)]),
        ("bench in-process", ["bench", "--requests", str(args.bench_requests),
                              "--concurrency", "1,4", "--duration-limit", "60"]),
    ]


def triton_stages(args) -> list[tuple[str, list[str]]]:
    return [
        ("build-ensemble", ["build-ensemble"]),
        ("serve --detach", ["serve", "--detach"]),
        ("bench triton grpc", ["bench", "--server", "127.0.0.1:{grpc}", "--protocol", "grpc",
                               "--requests", str(args.bench_requests),
                               "--concurrency", "1,4,16", "--duration-limit", "60"]),
    ]


def run_dataset(name: str, stages, workspace: Path, args) -> dict:
    if workspace.exists() and not args.keep:
        shutil.rmtree(workspace)
    workspace.parent.mkdir(parents=True, exist_ok=True)
    log = workspace.parent / f"{workspace.name}.log"
    log.unlink(missing_ok=True)
    measured: dict[str, dict] = {}
    all_stages = stages + model_stages(args) + (triton_stages(args)
                                                if args.triton else [])
    if args.start:  # re-measure from this stage on, over the kept workspace's artifacts
        labels = [label for label, _ in all_stages]
        if args.start not in labels:
            raise SystemExit(f"--from expects one of {', '.join(labels)}, found {args.start!r}")
        all_stages = all_stages[labels.index(args.start):]
    grpc = None
    try:
        for label, command in all_stages:
            if grpc is not None:
                command = [c.replace("{grpc}", str(grpc)) for c in command]
            print(f"[{name}] {label} ...", file=sys.stderr, flush=True)
            ws = None if label == "generate-data" else workspace
            try:
                measured[label] = run_measured(command + ["--json"], ws, log)
            except SystemExit as failure:  # report what was measured up to here
                measured[label] = {"failed": str(failure)}
                print(f"[{name}] {failure}", file=sys.stderr, flush=True)
                break
            print(f"[{name}] {label}: {measured[label]['seconds']:.1f} s, "
                  f"{measured[label]['peak_mib']:.0f} MiB", file=sys.stderr, flush=True)
            if label == "serve --detach":
                grpc = measured[label]["result"]["grpc"].rsplit(":", 1)[1]
    finally:
        if grpc is not None:
            run_measured(["stop", "--json"], workspace, log)
        log.with_suffix(f".{args.start}.json" if args.start else ".json").write_text(
            json.dumps(measured, indent=1))
    return measured


def stage_sizes(users: int, items: int, rows: int, eval_users: int) -> dict[str, tuple]:
    """What each stage's throughput counts: (unit, how many it processed)."""
    return {"generate-data": ("impressions/s", rows), "prepare-data": ("rows/s", rows),
            "train-retrieval": ("impressions/s", rows), "train-ranking": ("impressions/s", rows),
            "export-features": ("entities/s", users + items), "build-index": ("items/s", items),
            "evaluate": ("users/s", eval_users)}


def throughput(label: str, m: dict, sizes: dict[str, tuple]) -> str:
    if label.startswith("bench") and m.get("result"):
        return f"{max(lv['throughput_rps'] for lv in m['result']['levels']):,.0f} req/s (best)"
    if label in sizes and m["seconds"] > 0:
        unit, count = sizes[label]
        return f"{count / m['seconds']:,.0f} {unit}"
    return ""


def markdown(name: str, measured: dict, note: str, sizes: dict[str, tuple] | None = None) -> str:
    lines = [f"### {name}", "", note, "", "| stage | wall s | peak RSS MiB | throughput |",
             "|---|---|---|---|"]
    for label, m in measured.items():
        if "failed" in m:
            lines.append(f"| {label} | failed: {m['failed']} | | |")
        else:
            lines.append(f"| {label} | {m['seconds']:.1f} | {m['peak_mib']:.0f} | "
                         f"{throughput(label, m, sizes or {})} |")
    done = [m for m in measured.values() if "failed" not in m]
    lines.append(f"| **all stages** | **{sum(m['seconds'] for m in done):.1f}** | "
                 f"**{max((m['peak_mib'] for m in done), default=0):.0f}** (largest) | |")
    evaluation = measured.get("evaluate", {}).get("result")
    if evaluation:
        stats = evaluation["stats"]
        lines += ["", f"evaluate ({evaluation['split']} split, {evaluation['users']} users; train "
                  f"{stats['train_users']} users / {stats['train_items']} items / "
                  f"{stats['train_interactions']} interactions; ranker test AUC "
                  f"{evaluation['ranking'].get('test_auc', float('nan')):.4f}):", "",
                  "| model | recall@10 | recall@20 | recall@100 | NDCG@10 | HitRate@10 | "
                  "coverage@10 |", "|---|---|---|---|---|---|---|"]
        for model, row in evaluation["models"].items():
            lines.append(f"| {model} | " + " | ".join(
                f"{row[k]:.4f}" for k in ("recall@10", "recall@20", "recall@100", "ndcg@10",
                                          "hitrate@10", "coverage@10")) + " |")
    for label in ("bench in-process", "bench triton grpc"):
        bench = measured.get(label, {}).get("result")
        if bench:
            lines += ["", f"{label} (one user per request, top_k {bench['top_k']}):", "",
                      "| clients | requests | p50 ms | p90 ms | p99 ms | req/s |",
                      "|---|---|---|---|---|---|"]
            for lv in bench["levels"]:
                lines.append(f"| {lv['concurrency']} | {lv['requests']} | {lv['p50_ms']:.2f} | "
                             f"{lv['p90_ms']:.2f} | {lv['p99_ms']:.2f} | "
                             f"{lv['throughput_rps']:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=("movielens", "synthetic", "both"), default="both")
    parser.add_argument("--synthetic", default="100000x100000x2000000",
                        help="USERSxITEMSxIMPRESSIONS of the generated set")
    parser.add_argument("--retrieval-epochs", type=int, default=10)
    parser.add_argument("--ranking-epochs", type=int, default=5)
    parser.add_argument("--eval-users", type=int, default=2000)
    parser.add_argument("--bench-requests", type=int, default=500)
    parser.add_argument("--triton", action="store_true",
                        help="also build-ensemble, serve, and bench through Triton (gRPC)")
    parser.add_argument("--keep", action="store_true", help="reuse existing workspaces")
    parser.add_argument("--from", dest="start", metavar="STAGE",
                        help="with --keep: run only STAGE and the stages after it")
    args = parser.parse_args()
    machine = f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}"

    if args.dataset in ("movielens", "both"):
        extract_movielens(MOVIELENS, timeout=600)
        measured = run_dataset("movielens", movielens_stages(MOVIELENS), WORK / "movielens",
                               args)
        print(markdown("MovieLens-100K", measured, f"{machine}; ratings as positives; "
                       f"train-retrieval --epochs {args.retrieval_epochs}, train-ranking "
                       f"--epochs {args.ranking_epochs}"))
    if args.dataset in ("synthetic", "both"):
        users, items, rows = (int(v) for v in args.synthetic.lower().split("x"))
        stages = synthetic_stages(ROOT / "benchmarks" / ".data" / f"synthetic-{args.synthetic}",
                                  users, items, rows)
        measured = run_dataset("synthetic", stages, WORK / f"synthetic-{args.synthetic}", args)
        print(markdown(f"Synthetic {users:,} users x {items:,} items x {rows:,} impressions",
                       measured, f"{machine}; clicks as positives; train-retrieval --epochs "
                       f"{args.retrieval_epochs}, train-ranking --epochs {args.ranking_epochs}",
                       stage_sizes(users, items, rows, args.eval_users)))


if __name__ == "__main__":
    main()
