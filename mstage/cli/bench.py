"""`mstage bench`: latency percentiles and throughput, in-process or through Triton."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from mstage.cli.app import (
    check_catalog,
    command,
    parse_int_list,
    server_address,
    session,
    table,
)

SAMPLED_USERS = 10_000


def _user_ids(ws, seed: int):
    """Up to SAMPLED_USERS prepared user ids in a seeded random order (requests cycle them)."""
    import numpy as np

    from mstage.data.schema import PreparedData
    from mstage.workspace import Artifact

    ids = PreparedData(ws.require(Artifact.DATA)).users["user_id"].to_numpy(np.int64)
    rng = np.random.default_rng(seed)
    return rng.permutation(ids)[:SAMPLED_USERS]


@command("bench")
def bench(
    server: str = typer.Option(None, "--server", metavar="HOST:PORT",
                               help="Bench a running Triton server (default: in-process)."),
    protocol: str = typer.Option("grpc", "--protocol", help="grpc or http (with --server)."),
    requests: int = typer.Option(1000, "--requests", min=1, metavar="N",
                                 help="Timed requests per concurrency level."),
    concurrency: str = typer.Option("1,4,16", "--concurrency", metavar="C,C",
                                    help="Concurrent closed-loop clients, one level each."),
    duration_limit: float = typer.Option(30.0, "--duration-limit", metavar="S",
                                         help="Most seconds per level (ends it early)."),
    warmup: int = typer.Option(10, "--warmup", min=0, metavar="N",
                               help="Untimed requests per client before timing."),
    top_k: int = typer.Option(None, "--top-k", min=1, help="Items per request "
                              "[default: serving.top_k, 10]."),
    seed: int = typer.Option(0, "--seed", help="Seed of the order users are sent in."),
    plot: Path = typer.Option(None, "--plot", metavar="FILE.png",
                              help="Latency histogram and throughput-vs-concurrency PNG."),
) -> None:
    """Closed-loop load: one user per request, p50/p90/p99 latency and throughput per level."""
    from mstage.config import check_seed
    from mstage.errors import UsageError
    from mstage.evaluation.bench import parse_concurrency, recommend_sender, run_bench
    from mstage.evaluation.plots import check_png_path, plot_bench

    levels = parse_concurrency(parse_int_list(concurrency, "--concurrency"))
    check_seed("--seed", seed)
    if not duration_limit > 0:
        raise UsageError(f"expected --duration-limit > 0, found {duration_limit}")
    if protocol not in ("grpc", "http"):
        raise UsageError(f"expected --protocol grpc or http, found {protocol!r}")
    if plot is not None:
        check_png_path(plot)
    server = server_address(server)
    s = session()
    ws = s.workspace
    user_ids = _user_ids(ws, seed)
    check_catalog(ws, {"--top-k" if top_k else "serving.top_k": top_k or s.config.serving.top_k})
    top_k = top_k or s.config.serving.top_k

    if server is None:
        from mstage.pipeline.recommender import Recommender

        mode = "in-process"
        recommender = Recommender.from_workspace(ws, s.config)
        make = recommend_sender(lambda: recommender, top_k, per_thread=False)
    else:
        from mstage.serving.client import RecommenderClient

        mode = f"{protocol}://{server}"
        make = recommend_sender(lambda: RecommenderClient(server, protocol), top_k,
                                per_thread=True)
    try:
        make()(int(user_ids[0]))  # fails fast, naming the address, when nothing answers
        result = run_bench(make, user_ids, levels, requests, duration_limit, warmup, top_k,
                           mode, s.progress())
    finally:
        make.close_all()

    out = result.as_dict()
    ws.reports_dir.mkdir(parents=True, exist_ok=True)
    name = "in-process" if server is None else f"triton-{protocol}"
    report_path = ws.reports_dir / f"bench-{name}.json"
    report_path.write_text(json.dumps(out, indent=2))
    out["report"] = str(report_path)
    if plot is not None:
        out["plot"] = str(plot_bench(result.levels, plot, f"{mode}, top_k {top_k}"))

    def render(console):
        columns = ["concurrency", "requests", "p50 ms", "p90 ms", "p99 ms", "mean ms",
                   "req/s", "ended by"]
        rows = [(lv["concurrency"], lv["requests"],
                 *[f"{lv[key]:.2f}" for key in ("p50_ms", "p90_ms", "p99_ms", "mean_ms")],
                 f"{lv['throughput_rps']:.1f}", lv["stopped_by"]) for lv in out["levels"]]
        console.print(table(f"bench {mode}, one user per request, top_k {top_k}", columns,
                            rows))
        console.print(f"report: {report_path}" + (f"   plot: {out['plot']}"
                                                   if plot is not None else ""))

    s.emit(out, render)
