"""`mstage build-index` as a library call: retrieval artifact -> workspace/index/."""

from __future__ import annotations

from typing import Any

from mstage.config import IndexConfig, as_dict
from mstage.index.faiss_index import build_index
from mstage.index.queries import tuning_queries
from mstage.index.source import item_source
from mstage.index.spec import resolve
from mstage.progress import SILENT, Reporter
from mstage.workspace import Artifact, Workspace, fingerprint_file


def publish_index(
    ws: Workspace,
    config: IndexConfig,
    reporter: Reporter = SILENT,
    use_gpu: bool | None = None,
) -> dict[str, Any]:
    """Build the index over the retrieval artifact's item embeddings and publish it.

    Building and saving run inside `ws.build`: a failure there (or Ctrl-C) keeps the
    previous index. Returns the index metadata (what metadata.json holds).
    """
    source, metric = item_source(ws.require(Artifact.RETRIEVAL))
    choice = config.queries
    exact = resolve(config.index, len(source.item_ids), config.exact_below).kind == "flat"
    if choice == "auto" and exact:
        choice = "items"  # exact search has nothing to tune: skip loading the query tower
    queries = tuning_queries(ws, choice, config.tune_queries, config.seed, reporter)
    with ws.build(Artifact.INDEX) as build:
        index = build_index(
            source.embeddings, source.item_ids, config.index,
            metric=metric, target_recall=config.target_recall,
            exact_below=config.exact_below, queries=queries.embeddings,
            queries_source=queries.source, tune_queries=config.tune_queries,
            seed=config.seed, use_gpu=use_gpu,
            source_fingerprint=fingerprint_file(source.path), reporter=reporter,
        )
        index.save(build.dir)
        build.config = as_dict(config)
        build.metrics = {key: index.metadata[key] for key in (
            "kind", "factory", "n_items", "search_params", "recall_at_100", "target_met",
            "latency_p50_ms", "latency_p99_ms")}
        if queries.file is not None:
            build.files = {"queries": queries.file}
    return index.metadata
