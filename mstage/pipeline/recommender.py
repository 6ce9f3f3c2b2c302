"""The four-stage recommender assembled from a workspace, run in-process.

`Recommender.from_workspace` builds retrieval -> filtering -> scoring -> ordering from the
published artifacts and the resolved config; the same operator objects are what
`mstage build-ensemble` saves into the Triton repository, so both paths answer alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from mstage.config import Config
from mstage.errors import UsageError
from mstage.pipeline.base import item_table, popularity_order
from mstage.pipeline.filtering import FilterCandidates
from mstage.pipeline.operator import ColumnSpec
from mstage.pipeline.ordering import PAD, OrderCandidates
from mstage.pipeline.pipeline import Pipeline, StageTiming
from mstage.pipeline.retrieval import RetrieveCandidates
from mstage.pipeline.scoring import ScoreCandidates
from mstage.workspace import Artifact, Workspace

REQUEST = [ColumnSpec("user_id", "int64"), ColumnSpec("top_k", "int64", optional=True)]


@dataclass
class Recommendations:
    """Per user (rows): best-first item ids [b, k] (-1 padded) and ranking scores [b, k]."""

    item_ids: np.ndarray
    scores: np.ndarray
    fallback: np.ndarray
    timings: list[StageTiming]
    explain: list[list[dict[str, Any]]] | None = None


def _popular_items(items) -> np.ndarray:
    """Item ids by the feature store's `popularity` (positive interactions), best first."""
    return popularity_order(items["item_id"].to_numpy(np.int64), items["popularity"].to_numpy())


def _stale_warnings(ws: Workspace) -> list[str]:
    warnings = []
    for artifact in (Artifact.RETRIEVAL, Artifact.RANKING, Artifact.FEATURES, Artifact.INDEX):
        state, reason = ws.state(artifact)
        if state == "stale":
            warnings.append(f"{artifact.dirname} is stale ({reason}); "
                            f"run `mstage {artifact.command}`")
    return warnings


class Recommender:
    """retrieval -> filtering -> scoring -> ordering over one workspace's artifacts."""

    def __init__(self, stages: list[tuple[str, Any]], warnings: list[str] | None = None):
        self.stages = stages
        self.pipeline = Pipeline(stages, REQUEST)
        self.warnings = warnings or []
        filtering = dict(stages)["filtering"]
        self._items = (str(filtering.sources["features"]), filtering.params["item_source"])

    @classmethod
    def from_workspace(cls, ws: Workspace, config: Config, *, candidates: int | None = None,
                       top_k: int | None = None) -> Recommender:
        paths = {a: ws.require(a) for a in (Artifact.RETRIEVAL, Artifact.RANKING,
                                            Artifact.FEATURES, Artifact.INDEX)}
        serving = config.serving
        n = candidates or serving.candidates
        k = top_k or serving.top_k
        if n < k:
            raise UsageError(f"expected --candidates >= --top-k, found {n} < {k}")
        source = serving.item_source
        popular = {"popular": _popular_items(item_table(str(paths[Artifact.FEATURES]), source))}
        features = paths[Artifact.FEATURES]
        retrieval = RetrieveCandidates(
            {"retrieval": paths[Artifact.RETRIEVAL], "index": paths[Artifact.INDEX],
             "features": features, "ranking": paths[Artifact.RANKING]},
            {"candidates": n},
            popular)
        filtering = FilterCandidates(
            {"features": features},
            {**_asdict(config.filtering), "candidates": n, "min_candidates": k,
             "item_source": source},
            popular)
        width = filtering.width
        scoring = ScoreCandidates(
            {"ranking": paths[Artifact.RANKING], "features": features},
            {"width": width, "item_source": source})
        ordering = OrderCandidates(
            {"features": features},
            {**_asdict(config.ordering), "top_k": k, "width": width, "item_source": source})
        stages = [("retrieval", retrieval), ("filtering", filtering), ("scoring", scoring),
                  ("ordering", ordering)]
        return cls(stages, _stale_warnings(ws))

    @property
    def n_items(self) -> int:
        return len(item_table(*self._items))

    def item_attributes(self, item_ids: np.ndarray):
        """item_id + item features for display, in the order of `item_ids`."""
        items = item_table(*self._items).set_index("item_id")
        return items.reindex(np.asarray(item_ids, dtype=np.int64)).reset_index()

    def recommend(self, user_ids: np.ndarray, top_k: int, *,
                  seen: list[np.ndarray] | None = None, explain: bool = False) -> Recommendations:
        """Top-k for each user id (int64 [b]). `seen` replaces the feature store's recent
        items as the items to exclude (offline evaluation passes each user's train items)."""
        user_ids = np.asarray(user_ids, dtype=np.int64).reshape(-1)
        batch = {"user_id": user_ids, "top_k": np.full(len(user_ids), top_k, dtype=np.int64)}
        pinned = {"recent_items": _pad_rows(seen)} if seen is not None else None
        columns, timings = self.pipeline.run(batch, pinned=pinned)
        return Recommendations(columns["item_ids"], columns["scores"],
                               columns["fallback"].astype(bool), timings,
                               _explain(columns) if explain else None)


def _asdict(section: Any) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(section)


def _pad_rows(rows: list[np.ndarray]) -> np.ndarray:
    width = max((len(r) for r in rows), default=0) or 1
    out = np.full((len(rows), width), PAD, dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def _explain(columns: dict[str, np.ndarray]) -> list[list[dict[str, Any]]]:
    """For each final item: its rank, the score it was ordered by, and that score's parts
    (retrieval score, ranking score = click probability)."""
    out = []
    for r, row in enumerate(columns["item_ids"]):
        position = {int(i): j for j, i in enumerate(columns["filtered_ids"][r]) if i != PAD}
        entries = []
        for rank, item in enumerate(row, start=1):
            if item == PAD:
                break
            j = position[int(item)]
            entries.append({"item_id": int(item), "rank": rank,
                            "score": float(columns["scores"][r, rank - 1]),
                            "retrieval_score": float(columns["filtered_scores"][r, j]),
                            "ranking_score": float(columns["ranking_scores"][r, j])})
        out.append(entries)
    return out
