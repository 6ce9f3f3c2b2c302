"""`mstage build-index`: a Faiss index over the retrieval model's item embeddings."""

from __future__ import annotations

import typer

from mstage.cli.app import command, require_built, session, table

DEVICES = {"auto": None, "cpu": False, "gpu": True}


@command("build-index")
def build_index(
    index: str = typer.Option(
        None, "--index", help="auto, flat, ivf, hnsw or a faiss factory string "
        "(e.g. 'IVF1024,Flat'). Default: auto, or index in the \\[index] section of mstage.toml."),
    target_recall: float = typer.Option(
        None, "--target-recall", help="Recall@100 against exact search that tuning must reach. "
        "Default: 0.95."),
    exact_below: int = typer.Option(
        None, "--exact-below", help="auto builds an exact index below this many items. "
        "Default: 50000."),
    queries: str = typer.Option(
        None, "--queries", help="What to tune on: auto (users through the query tower when "
        "there is one, else items), users, items, or a .parquet (column `embedding`) / .npy "
        "file of query embeddings. Default: auto."),
    device: str = typer.Option(
        "auto", "--device", help="auto (GPU when faiss-gpu sees one), cpu or gpu."),
) -> None:
    """Build, tune and save the item index; report its recall@100 and query latency."""
    from mstage.config import override
    from mstage.errors import UsageError
    from mstage.index.publish import publish_index
    from mstage.workspace import Artifact

    s = session()
    if device not in DEVICES:
        raise UsageError(f"expected --device auto, cpu or gpu, found {device!r}")
    config = override(s.config.index, index=index, target_recall=target_recall,
                      exact_below=exact_below, queries=queries)
    require_built(s.workspace, [Artifact.RETRIEVAL])
    meta = publish_index(s.workspace, config, s.progress(), use_gpu=DEVICES[device])
    if not meta["target_met"]:
        s.warn(f"recall@100 {meta['recall_at_100']:.4f} is below the target "
               f"{meta['target_recall']}; try --index hnsw or a larger nlist")
    result = {"path": str(s.workspace.path(Artifact.INDEX)), **meta}

    def render(console):
        params = ", ".join(f"{k}={v}" for k, v in meta["search_params"].items()) or "-"
        console.print(table(
            f"index {result['path']}", ["", "value"],
            [("index", f"{meta['kind']} ({meta['factory']})"),
             ("items", meta["n_items"]), ("dimension", meta["dimension"]),
             ("metric", meta["metric"]), ("search params", params),
             ("recall@100", meta["recall_at_100"]), ("target", meta["target_recall"]),
             ("tuned on", f"{meta['tuning']['queries']} {meta['tuning']['query_source']}"),
             ("latency p50 ms", meta["latency_p50_ms"]),
             ("latency p99 ms", meta["latency_p99_ms"]),
             ("built on", meta["built_on"]), ("build seconds", meta["build_seconds"])],
        ))

    s.emit(result, render)
