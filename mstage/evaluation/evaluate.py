"""`evaluate`: the protocol of docs/evaluation.md for popularity, EASE, retrieval alone and the
pipeline, with per-user standard errors and paired differences.

All rows use one EvalSet (same split, same evaluated users), so they compare directly:
- popularity ranks the train catalog by train counts;
- EASE, a closed-form linear item-item model, its L2 weight chosen on validation: the strong
  simple baseline (only for catalogs of at most 20k items: it solves an item x item system);
- retrieval scores the whole train catalog exactly with query-tower user embeddings against
  the exported item embeddings (no index, no filtering: the model's own ceiling);
- the pipeline runs retrieval -> filtering -> scoring -> ordering in-process through
  `Recommender.recommend`, with each user's train items as `seen`, and is measured on the ids
  it returns. Its index is approximate and its business rules may drop relevant items, so a
  small loss against exact retrieval at large k is expected; at small k its ranker has to
  earn its place (docs/evaluate.md says how to read a pipeline below retrieval).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mstage.data.schema import SPLITS
from mstage.errors import InputError, UsageError
from mstage.evaluation.metrics import PAD
from mstage.evaluation.protocol import (
    DEFAULT_KS,
    EvalSet,
    MetricTotals,
    evaluate_scores,
    load_eval_set,
    sample_users,
)
from mstage.progress import SILENT, Reporter
from mstage.workspace import Artifact, Workspace

# Artifacts the three rows read, in the order their commands run.
REQUIRED = (Artifact.DATA, Artifact.RETRIEVAL, Artifact.RANKING, Artifact.FEATURES,
            Artifact.INDEX)
RecommendFn = Callable[[np.ndarray, int, list[np.ndarray]], Any]


@dataclass
class EvaluationReport:
    """Metrics per model (`rows[model]["recall@10"]`...), the ranker's AUC and the set's stats."""

    split: str
    ks: list[int]
    rows: dict[str, dict[str, float]]
    stats: dict[str, int]
    users: int
    ranking: dict[str, float] = field(default_factory=dict)
    pipeline: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    standard_errors: dict[str, dict[str, float]] = field(default_factory=dict)
    comparisons: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    ease: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"split": self.split, "ks": self.ks, "users": self.users, "stats": self.stats,
                "models": self.rows, "standard_errors": self.standard_errors,
                "comparisons": self.comparisons, "ease": self.ease, "ranking": self.ranking,
                "pipeline": self.pipeline, "seconds": self.seconds, "notes": self.notes}


def parse_ks(ks: Sequence[int]) -> list[int]:
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise UsageError(f"expected cut-offs k >= 1, found {list(ks)}; pass e.g. --k 10,20,100")
    return ks


def seen_items(eval_set: EvalSet, user_ids: np.ndarray) -> list[np.ndarray]:
    """Each user's distinct train item ids, int64 arrays: what the protocol excludes."""
    rows, cols = eval_set.train_pairs(user_ids)
    ids = eval_set.catalog[cols]
    bounds = np.searchsorted(rows, np.arange(len(user_ids) + 1))
    return [ids[bounds[i]:bounds[i + 1]] for i in range(len(user_ids))]


def evaluate_recommendations(eval_set: EvalSet, recommend: RecommendFn, ks: Sequence[int],
                             batch_size: int = 256, reporter: Reporter = SILENT,
                             per_user: dict[str, np.ndarray] | None = None
                             ) -> tuple[dict[str, float], dict[str, Any]]:
    """Protocol metrics of a recommender that returns item ids rather than catalog scores.

    `recommend(user_ids int64 [b], top_k, seen)` must return an object with `item_ids` int64
    [b, >= top_k] (-1 padded) and, optionally, `fallback` bool [b] and `timings` (per stage
    name and seconds). Ids outside the train catalog never hit and do not count toward
    coverage. Returns (metrics like `evaluate_scores`, extras: fallback share, seconds per
    stage, ids outside the catalog, rows with duplicate ids)."""
    ks = parse_ks(ks)
    k_max, n_users = ks[-1], len(eval_set.users)
    if n_users == 0:
        raise InputError(f"expected at least one evaluated user on the {eval_set.split} split, "
                         "found none; use more data or the user-temporal split")
    totals = MetricTotals(ks, eval_set.n_catalog)
    extras: dict[str, Any] = {"fallback_users": 0, "outside_catalog": 0, "duplicate_rows": 0,
                              "stage_seconds": {}}
    with reporter.task("evaluate pipeline", total=n_users) as task:
        for start in range(0, n_users, batch_size):
            users = eval_set.users[start:start + batch_size]
            out = recommend(users, k_max, seen_items(eval_set, users))
            ids = _padded(np.asarray(out.item_ids, dtype=np.int64), len(users), k_max)
            cols = eval_set.columns_of(ids.reshape(-1)).reshape(ids.shape)
            extras["outside_catalog"] += int(((ids != PAD) & (cols < 0)).sum())
            extras["duplicate_rows"] += _rows_with_duplicates(ids)
            extras["fallback_users"] += int(np.sum(getattr(out, "fallback", 0)))
            for timing in getattr(out, "timings", None) or []:
                spent = extras["stage_seconds"]
                spent[timing.name] = spent.get(timing.name, 0.0) + float(timing.seconds)
            totals.add(cols, ids, eval_set.relevant_sets.rows(start, start + len(users)))
            task.advance(len(users))
    metrics = totals.result(n_users)
    if per_user is not None:
        per_user.update(totals.per_user())
    extras["fallback_share"] = extras["fallback_users"] / n_users
    return metrics, extras


def _padded(ids: np.ndarray, rows: int, width: int) -> np.ndarray:
    if ids.ndim != 2 or ids.shape[0] != rows:
        raise InputError(f"expected recommended item ids of shape [{rows}, top_k], "
                         f"found {ids.shape}")
    if ids.shape[1] >= width:
        return ids[:, :width]
    return np.pad(ids, ((0, 0), (0, width - ids.shape[1])), constant_values=PAD)


def _rows_with_duplicates(ids: np.ndarray) -> int:
    ordered = np.sort(ids, axis=1)
    repeated = (ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] != PAD)
    return int(repeated.any(axis=1).sum())


def train_histories(data, split: str, length: int) -> Callable[[np.ndarray], np.ndarray]:
    """user ids [b] -> their latest `length` train item ids [b, length] (most recent first,
    -1 padded; train = every fold but TEST of `split`): what the query tower reads offline
    in place of the feature store's recent items, which also hold the test interactions."""
    from mstage.data.schema import TEST, fold_column
    from mstage.models.history import history_of

    positives = data.positives()
    train = positives[positives[fold_column(split)].to_numpy() != TEST]
    return history_of(train["user_id"].to_numpy(), train["item_id"].to_numpy(), length)


def retrieval_scores(ws: Workspace, eval_set: EvalSet, users_table,
                     history_of: Callable[[np.ndarray], np.ndarray]) -> Callable:
    """Exact two-tower scores: user ids [b] -> inner products float32 [b, n_catalog], the
    query tower reading each user's train history (`history_of`).

    Catalog items without an exported embedding score -inf (never recommended)."""
    from mstage.data.lookup import IdLookup
    from mstage.models.retrieval_artifact import read_item_embeddings
    from mstage.models.two_tower import load_query_tower

    directory = ws.require(Artifact.RETRIEVAL)
    tower = load_query_tower(directory)
    items = read_item_embeddings(directory)
    rows, known = IdLookup(items.item_ids).find(eval_set.catalog)
    catalog_emb = np.where(known[:, None], items.embeddings[rows], 0.0).astype(np.float32)
    users = IdLookup(users_table["user_id"].to_numpy(np.int64))
    columns = {c: users_table[c].to_numpy() for c in users_table.columns}

    def score(batch_users: np.ndarray) -> np.ndarray:
        at, _ = users.find(batch_users)
        query = tower({c: v[at] for c, v in columns.items()}, history_of(batch_users))
        scores = query @ catalog_emb.T
        scores[:, ~known] = -np.inf
        return scores

    return score


def pipeline_recommend(ws: Workspace, config, top_k: int, history_of: Callable,
                       catalog: np.ndarray, notes: list[str] | None = None) -> RecommendFn:
    """`Recommender.recommend` over the workspace's artifacts, recommending from `catalog`
    only (the train catalog, as every model of the protocol does), each user's train items
    passed as seen and their train history as the query tower's history (`history_of`).

    The pipeline retrieves at least `top_k` candidates (serving.candidates otherwise), so
    recall@k for the largest k is not capped by the candidate count."""
    from mstage.pipeline.recommender import Recommender

    candidates = max(config.serving.candidates, top_k)
    recommender = Recommender.from_workspace(ws, config, candidates=candidates, top_k=top_k,
                                             only_items=catalog)
    if notes is not None:
        notes.extend(getattr(recommender, "warnings", []))

    def recommend(user_ids: np.ndarray, k: int, seen: list[np.ndarray]):
        return recommender.recommend(user_ids, k, seen=seen, history=history_of(user_ids))

    return recommend


def ranking_metrics(ws: Workspace) -> dict[str, float]:
    """The ranker's test AUC (and its log loss and baseline when recorded) from the manifest."""
    metrics = (ws.record(Artifact.RANKING) or {}).get("metrics", {})
    keep = ("test_auc", "test_log_loss", "baseline_auc", "best_valid_auc")
    return {k: float(metrics[k]) for k in keep if isinstance(metrics.get(k), int | float)}


def evaluate_workspace(ws: Workspace, config, *, ks: Sequence[int] = DEFAULT_KS,
                       split: str = "user-temporal", users: int | None = None, seed: int = 0,
                       reporter: Reporter = SILENT,
                       recommend: RecommendFn | None = None) -> EvaluationReport:
    """Evaluate popularity, retrieval alone and the whole pipeline on the test phase of `split`.

    `recommend` replaces the in-process pipeline (tests pass a fake with its interface)."""
    from mstage.data.schema import PreparedData
    from mstage.evaluation.baselines import MAX_ITEMKNN_ITEMS, popularity
    from mstage.evaluation.intervals import paired_differences, standard_errors

    ks = parse_ks(ks)
    if split not in SPLITS:
        raise UsageError(f"expected --split user-temporal or global, found {split!r}")
    for artifact in REQUIRED:
        ws.require(artifact)
    data = PreparedData(ws.path(Artifact.DATA))
    full = load_eval_set(data, split, "test")
    if len(full.users) == 0:
        raise InputError(
            f"expected evaluated users on the {split} split, found none (train "
            f"{full.stats['train_interactions']} / test {full.stats['test_interactions']} "
            "interactions); use more data or --split user-temporal")
    eval_set = sample_users(full, users, seed)
    report = EvaluationReport(split, ks, {}, dict(eval_set.stats), len(eval_set.users))
    report.ranking = ranking_metrics(ws)
    report.notes += _split_notes(ws, split)

    per_user: dict[str, dict[str, np.ndarray]] = {}

    def measure(model: str, score_fn, batch_size: int = 1024) -> None:
        started = time.perf_counter()
        per_user[model] = {}
        report.rows[model] = evaluate_scores(eval_set, score_fn, ks, batch_size=batch_size,
                                             reporter=reporter, per_user=per_user[model])
        report.seconds[model] = time.perf_counter() - started

    measure("popularity", popularity(eval_set))
    if eval_set.n_catalog <= MAX_ITEMKNN_ITEMS:
        score, report.ease = tuned_ease(data, split, users, seed, reporter)
        measure("ease", score(eval_set))
    from mstage.models.retrieval_artifact import read_params

    history_of = train_histories(data, split, int(read_params(ws.path(Artifact.RETRIEVAL))
                                                  .get("history", 0)))
    measure("retrieval", retrieval_scores(ws, eval_set, data.users, history_of), batch_size=512)

    started = time.perf_counter()
    recommend = recommend or pipeline_recommend(ws, config, ks[-1], history_of,
                                                eval_set.catalog, report.notes)
    per_user["pipeline"] = {}
    report.rows["pipeline"], report.pipeline = evaluate_recommendations(
        eval_set, recommend, ks, reporter=reporter, per_user=per_user["pipeline"])
    report.seconds["pipeline"] = time.perf_counter() - started
    report.notes += _pipeline_notes(report.pipeline)
    report.standard_errors = {m: standard_errors(v) for m, v in per_user.items()}
    report.comparisons = {f"pipeline - {m}": paired_differences(per_user["pipeline"], v)
                          for m, v in per_user.items() if m != "pipeline"}
    return report


def tuned_ease(data, split: str, users: int | None, seed: int, reporter: Reporter):
    """EASE with the L2 weight of EASE_LAMBDAS that scores the best validation recall@20
    (train FIT, evaluate VALID; on the same user sample size): a function of an EvalSet
    giving its score function, and what was chosen."""
    from mstage.evaluation.baselines import EASE_LAMBDAS, ease

    validation = sample_users(load_eval_set(data, split, "validation"), users, seed)
    if len(validation.users) == 0:
        l2, best = 250.0, float("nan")
    else:
        results = {l2: evaluate_scores(validation, ease(validation, l2), (20,))["recall@20"]
                   for l2 in EASE_LAMBDAS}
        l2 = max(results, key=lambda value: (results[value], -value))
        best = results[l2]
    return (lambda eval_set: ease(eval_set, l2)), {"l2": l2, "validation_recall@20": best}


def _split_notes(ws: Workspace, split: str) -> list[str]:
    """Models trained on another split may have seen this split's test interactions."""
    notes = []
    for artifact in (Artifact.RETRIEVAL, Artifact.RANKING):
        trained_on = (ws.record(artifact) or {}).get("config", {}).get("split")
        if trained_on and trained_on != split:
            notes.append(f"{artifact.dirname} was trained on the {trained_on} split; some of "
                         f"the {split} split's test interactions were in its training data, so "
                         "its numbers are optimistic")
    return notes


def _pipeline_notes(extras: dict[str, Any]) -> list[str]:
    notes = []
    if extras.get("duplicate_rows"):
        notes.append(f"the pipeline returned {extras['duplicate_rows']} lists with repeated "
                     "items; each repeat can only lower its metrics")
    if extras.get("outside_catalog"):
        notes.append(f"the pipeline recommended {extras['outside_catalog']} items without train "
                     "interactions; they cannot hit and do not count toward coverage")
    return notes


def manifest_summary(report: EvaluationReport, ws: Workspace) -> dict[str, Any]:
    """What `mstage evaluate` records in the manifest: headline metrics per model, plus the
    fingerprints of the artifacts measured, so a reader can tell whether they are stale."""
    headline = [f"{m}@{k}" for k in report.ks for m in ("recall", "ndcg", "hitrate")]
    return {
        "users": report.users,
        "ks": report.ks,
        "models": {model: {k: round(v, 6) for k, v in metrics.items() if k in headline}
                   for model, metrics in report.rows.items()},
        "ranking_test_auc": report.ranking.get("test_auc"),
        "measured": {a.dirname: (ws.record(a) or {}).get("fingerprint") for a in REQUIRED},
    }
