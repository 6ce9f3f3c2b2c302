"""The four-stage recommender: its plan built from a workspace, and the in-process runner.

`build_plan` turns the published artifacts and the resolved config into retrieval ->
filtering -> scoring -> ordering without loading a model (it reads JSON, the exported item
table and the ranker's encoders), so `mstage build-ensemble` writes a Triton repository from
the very plan `Recommender` runs in-process. `Recommender` and the Triton client answer
through one interface, `Recommends`, which `recommend`, `evaluate` and `bench` use.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Protocol

import numpy as np

from mstage.columns import (
    FALLBACK,
    FILTERED_IDS,
    FILTERED_SCORES,
    HISTORY,
    HISTORY_ONLY,
    ITEM_IDS,
    PAD,
    RANKING_SCORES,
    RECENT_ITEMS,
    SCORES,
    TOP_K,
    USER_ID,
)
from mstage.config import DEFAULT_RETRIEVAL_WEIGHT, Config
from mstage.errors import UsageError
from mstage.features.online import ItemAttributes
from mstage.pipeline.filtering import FilterCandidates
from mstage.pipeline.ordering import OrderCandidates
from mstage.pipeline.pipeline import Pipeline, StageTiming
from mstage.pipeline.plan import Plan
from mstage.pipeline.retrieval import RetrieveCandidates
from mstage.pipeline.scoring import ScoreCandidates
from mstage.workspace import Artifact, Workspace

IN_PROCESS_BATCH = 256
SERVED_ARTIFACTS = (Artifact.RETRIEVAL, Artifact.RANKING, Artifact.FEATURES, Artifact.INDEX)


@dataclass
class Recommendations:
    """Per user (rows): best-first item ids [b, k] (-1 padded), their ordering scores [b, k]
    and whether the popularity fallback answered [b]; timings and explain in-process only.
    `history_only` [b]: a user the model never saw, answered from the history the store holds
    (in-process only: the served ensemble's response has no such column, all False there)."""

    item_ids: np.ndarray
    scores: np.ndarray
    fallback: np.ndarray
    timings: list[StageTiming]
    explain: list[list[dict[str, Any]]] | None = None
    history_only: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.history_only is None:
            self.history_only = np.zeros(len(self.fallback), dtype=bool)


class Recommends(Protocol):
    """What answers recommendation requests: the in-process Recommender or a Triton client."""

    batch_size: int  # users per call that the answerer handles best (and at most)

    def recommend(self, user_ids: np.ndarray, top_k: int) -> Recommendations: ...

    def close(self) -> None: ...


def popularity_order(item_ids: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Item ids, most interacted first, ties by smaller id: the cold-start and refill order."""
    order = np.lexsort((item_ids, -counts))
    return np.asarray(item_ids, dtype=np.int64)[order]


def stale_warnings(ws: Workspace, artifacts=SERVED_ARTIFACTS) -> list[str]:
    """One warning per artifact that an upstream rebuild made stale."""
    warnings = []
    for artifact in artifacts:
        state, reason = ws.state(artifact)
        if state == "stale":
            warnings.append(f"{artifact.dirname} is stale ({reason}); "
                            f"run `mstage {artifact.command}`")
    return warnings


def build_plan(ws: Workspace, config: Config, only_items: np.ndarray | None = None) -> Plan:
    """The four stages over the workspace's artifacts for `config` (serving.candidates and
    serving.top_k size the lists), recommending only `only_items` when given (offline
    evaluation's train catalog). Loads no model: imports neither TensorFlow nor Feast."""
    from mstage.features.online import StoreSpec, exported_items
    from mstage.models.dlrm import ENCODERS_DIR, LITE_FILE
    from mstage.models.encoders import FeatureEncoders
    from mstage.models.lite import require_lite
    from mstage.models.retrieval_artifact import QUERY_TOWER_LITE, read_params

    paths = {a: ws.require(a) for a in SERVED_ARTIFACTS}
    require_lite(paths[Artifact.RETRIEVAL] / QUERY_TOWER_LITE, Artifact.RETRIEVAL.command)
    require_lite(paths[Artifact.RANKING] / LITE_FILE, Artifact.RANKING.command)
    n, k = config.serving.candidates, config.serving.top_k
    if n < k:
        raise UsageError(f"expected --candidates >= --top-k, found {n} < {k}; raise "
                         "--candidates or lower --top-k")
    items = exported_items(paths[Artifact.FEATURES]).sort_values("item_id", kind="stable")
    items = items.reset_index(drop=True)
    popular = popularity_order(items["item_id"].to_numpy(np.int64),
                               items["popularity"].to_numpy())
    encoders = FeatureEncoders.load(paths[Artifact.RANKING] / ENCODERS_DIR)
    user_features = [{"name": s.name, "dtype": s.dtype, "shape": list(s.shape)}
                     for s in encoders.specs("user")]
    ranker = read_params(paths[Artifact.RANKING])
    filtering = FilterCandidates.from_catalog(
        items, popular, {**asdict(config.filtering), "candidates": n, "min_candidates": k},
        only_items)
    excluded = filtering.arrays["item_ids"][filtering.arrays["excluded"]]
    retrieval = RetrieveCandidates(
        {"candidates": n, "recent_items": StoreSpec.load(paths[Artifact.FEATURES]).recent_items,
         "user_features": user_features, "exclude_seen": config.filtering.exclude_seen,
         "query_history": int(ranker.get("history", 0))},
        {"popular": popular, "excluded": np.sort(excluded)},
        {"retrieval": paths[Artifact.RETRIEVAL], "index": paths[Artifact.INDEX],
         "features": paths[Artifact.FEATURES], "ranking": paths[Artifact.RANKING]})
    scoring = ScoreCandidates.from_catalog(
        items, encoders, {"width": filtering.width, "user_features": user_features,
                          "history": int(ranker.get("history", 0))},
        paths[Artifact.RANKING])
    weight = config.ordering.retrieval_weight
    if weight is None:
        weight = float(ranker.get("retrieval_weight", DEFAULT_RETRIEVAL_WEIGHT))
    ordering = OrderCandidates.from_catalog(
        items, {**asdict(config.ordering), "retrieval_weight": weight, "top_k": k,
                "width": filtering.width})
    return Plan([("retrieval", retrieval), ("filtering", filtering), ("scoring", scoring),
                 ("ordering", ordering)])


class Recommender:
    """The plan's stages run in-process; implements `Recommends`."""

    batch_size = IN_PROCESS_BATCH

    def __init__(self, plan: Plan, warnings: list[str] | None = None,
                 features_dir: Any = None):
        self.plan = plan
        self.pipeline = Pipeline(plan)
        self.warnings = warnings or []
        self.item_attributes = ItemAttributes(features_dir)
        """item ids -> item_id + item features, for display."""

    @classmethod
    def from_workspace(cls, ws: Workspace, config: Config, *, candidates: int | None = None,
                       top_k: int | None = None, only_items: np.ndarray | None = None
                       ) -> Recommender:
        """The workspace's recommender; `candidates`/`top_k` override config.serving and
        `only_items` restricts what it may recommend (`build_plan`)."""
        from mstage.config import override

        serving = override(config.serving, candidates=candidates, top_k=top_k)
        plan = build_plan(ws, replace(config, serving=serving), only_items)
        return cls(plan, stale_warnings(ws), ws.path(Artifact.FEATURES))

    @property
    def n_items(self) -> int:
        return len(self.plan.stage("filtering").arrays["item_ids"])

    def load(self) -> Recommender:
        """Open every stage's models now (else at the first request)."""
        for _, stage in self.plan.stages:
            stage.load()
        return self

    def recommend(self, user_ids: np.ndarray, top_k: int, *,
                  seen: list[np.ndarray] | None = None, history: np.ndarray | None = None,
                  explain: bool = False) -> Recommendations:
        """Top-k for each user id (int64 [b]). Offline evaluation replaces what the feature
        store knows (it holds test items too): `seen`, the items to exclude (each user's
        train items), and `history` [b, L], the item ids the query tower reads (each user's
        latest train items, most recent first, -1 padded)."""
        user_ids = np.asarray(user_ids, dtype=np.int64).reshape(-1)
        batch = {USER_ID: user_ids, TOP_K: np.full(len(user_ids), top_k, dtype=np.int64)}
        pinned = {}
        if seen is not None:
            pinned[RECENT_ITEMS] = pad_rows(seen)
        if history is not None:
            pinned[HISTORY] = np.asarray(history, dtype=np.int64)
        columns, timings = self.pipeline.run(batch, pinned=pinned)
        return Recommendations(columns[ITEM_IDS], columns[SCORES],
                               columns[FALLBACK].astype(bool), timings,
                               _explain(columns) if explain else None,
                               columns[HISTORY_ONLY].astype(bool))

    def close(self) -> None:
        pass


def pad_rows(rows: list[np.ndarray]) -> np.ndarray:
    """Id lists -> int64 [len(rows), longest] padded with PAD."""
    width = max((len(r) for r in rows), default=0) or 1
    out = np.full((len(rows), width), PAD, dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def _explain(columns: dict[str, np.ndarray]) -> list[list[dict[str, Any]]]:
    """For each final item: its rank, the score it was ordered by, and that score's parts
    (retrieval score, ranking score = the ranker's probability)."""
    out = []
    for r, row in enumerate(columns[ITEM_IDS]):
        position = {int(i): j for j, i in enumerate(columns[FILTERED_IDS][r]) if i != PAD}
        entries = []
        for rank, item in enumerate(row, start=1):
            if item == PAD:
                break
            j = position[int(item)]
            entries.append({"item_id": int(item), "rank": rank,
                            "score": float(columns[SCORES][r, rank - 1]),
                            "retrieval_score": float(columns[FILTERED_SCORES][r, j]),
                            "ranking_score": float(columns[RANKING_SCORES][r, j])})
        out.append(entries)
    return out
