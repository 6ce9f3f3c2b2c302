"""The evaluation set of docs/evaluation.md and exact top-k evaluation of any score function.

An `EvalSet` fixes, for one split and phase, the train catalog (columns of every score
matrix), each train user's items (excluded from recommendations) and the evaluated users with
their relevant items. `evaluate_scores` asks a score function for [batch, n_catalog] scores,
ranks the whole catalog exactly and averages recall / NDCG / hit rate, plus coverage.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from mstage.data.lookup import IdLookup
from mstage.data.schema import FIT, SPLITS, TEST, VALID, fold_column
from mstage.errors import InputError, UsageError
from mstage.evaluation.metrics import (
    PAD,
    RelevantSets,
    hit_matrix,
    ndcg_per_user,
    recall_per_user,
    top_k_columns,
)
from mstage.progress import SILENT, Reporter

PHASES = ("test", "validation")
DEFAULT_KS = (10, 20, 100)
# Score cells per batch: bounds the float64 temporaries of exact top-k to ~100 MB each.
MAX_BATCH_CELLS = 1 << 24
ScoreFn = Callable[[np.ndarray], np.ndarray]


@dataclass
class EvalSet:
    """One split + phase of the protocol. Shapes: catalog [n_catalog] sorted item ids;
    train_users [n_train_users] sorted user ids; train_indptr [n_train_users + 1] and
    train_cols [nnz] the CSR of each train user's distinct catalog columns (sorted);
    item_counts [n_catalog] train interactions per catalog item; users [n_eval] evaluated
    user ids (sorted) with `relevant` their distinct relevant item ids."""

    split: str
    phase: str
    catalog: np.ndarray
    train_users: np.ndarray
    train_indptr: np.ndarray
    train_cols: np.ndarray
    item_counts: np.ndarray
    users: np.ndarray
    relevant_sets: RelevantSets
    stats: dict[str, int] = field(default_factory=dict)
    _lookups: dict[str, tuple[np.ndarray, IdLookup]] = field(
        default_factory=dict, repr=False, compare=False)

    @property
    def n_catalog(self) -> int:
        return len(self.catalog)

    def _lookup(self, name: str) -> IdLookup:
        """IdLookup of the id array `name` ("catalog", "train_users"), rebuilt if replaced."""
        ids = getattr(self, name)
        cached = self._lookups.get(name)
        if cached is None or cached[0] is not ids:
            cached = self._lookups[name] = (ids, IdLookup(ids))
        return cached[1]

    @property
    def relevant(self) -> list[np.ndarray]:
        """Relevant item ids per evaluated user, in the order of `users`."""
        p, items = self.relevant_sets.indptr, self.relevant_sets.items
        return [items[p[i]:p[i + 1]] for i in range(len(self.users))]

    def train_rows(self, user_ids: np.ndarray) -> np.ndarray:
        """Row in the train CSR of each user id; -1 for users without train interactions."""
        return self._lookup("train_users").rows(np.asarray(user_ids, dtype=np.int64), missing=-1)

    def train_pairs(self, user_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(position in user_ids, catalog column) of every train interaction of these users,
        ready to exclude from a [len(user_ids), n_catalog] score matrix."""
        rows = self.train_rows(user_ids)
        known = rows >= 0
        starts = np.where(known, self.train_indptr[np.maximum(rows, 0)], 0)
        lengths = np.where(known, self.train_indptr[np.maximum(rows, 0) + 1] - starts, 0)
        positions = np.repeat(np.arange(len(user_ids), dtype=np.int64), lengths)
        firsts = np.repeat(np.cumsum(lengths) - lengths, lengths)
        offsets = np.arange(lengths.sum(), dtype=np.int64) - firsts
        return positions, self.train_cols[np.repeat(starts, lengths) + offsets]

    def columns_of(self, item_ids: np.ndarray) -> np.ndarray:
        """Catalog column of each item id; -1 for items outside the train catalog."""
        return self._lookup("catalog").rows(np.asarray(item_ids, dtype=np.int64), missing=-1)


def _fold_masks(folds: np.ndarray, phase: str) -> tuple[np.ndarray, np.ndarray]:
    if phase == "test":
        return folds != TEST, folds == TEST
    return folds == FIT, folds == VALID


def build_eval_set(interactions, split: str = "user-temporal", phase: str = "test") -> EvalSet:
    """Build the EvalSet from an interactions table with user_id, item_id, label and the fold
    column of `split` (the layout of workspace/data/interactions.parquet). Only label == 1
    rows count. phase "test": train = FIT|VALID vs TEST; "validation": FIT vs VALID."""
    if split not in SPLITS:
        raise UsageError(
            f"expected split in {list(SPLITS)}, found {split!r}; "
            "pass --split user-temporal or --split global"
        )
    if phase not in PHASES:
        raise UsageError(f"expected phase in {list(PHASES)}, found {phase!r}")
    column = fold_column(split)
    needed = ["user_id", "item_id", "label", column]
    missing = [c for c in needed if c not in interactions.columns]
    if missing:
        raise InputError(
            f"expected columns {needed} in the interactions, found {list(interactions.columns)}; "
            "run `mstage prepare-data` again to write the fold columns"
        )
    positive = interactions["label"].to_numpy() == 1
    user = interactions["user_id"].to_numpy(dtype=np.int64)[positive]
    item = interactions["item_id"].to_numpy(dtype=np.int64)[positive]
    in_train, in_eval = _fold_masks(interactions[column].to_numpy()[positive], phase)

    train_user, train_item = user[in_train], item[in_train]
    catalog, item_col, item_counts = np.unique(train_item, return_inverse=True, return_counts=True)
    train_users, user_row = np.unique(train_user, return_inverse=True)
    # Distinct (row, column) train pairs as sorted int64 keys: row * n_catalog + column.
    n_cat = max(len(catalog), 1)
    train_keys = np.unique(user_row.astype(np.int64) * n_cat + item_col)
    train_rows_of_keys = train_keys // n_cat
    train_indptr = np.zeros(len(train_users) + 1, dtype=np.int64)
    np.cumsum(np.bincount(train_rows_of_keys, minlength=len(train_users)), out=train_indptr[1:])
    no_relevant = RelevantSets(np.zeros(1, dtype=np.int64), np.empty(0, dtype=np.int64))
    eval_set = EvalSet(split, phase, catalog.astype(np.int64), train_users.astype(np.int64),
                       train_indptr, (train_keys % n_cat).astype(np.int64),
                       item_counts.astype(np.int64), np.empty(0, dtype=np.int64), no_relevant)

    eval_user, eval_item = user[in_eval], item[in_eval]
    rows, cols = eval_set.train_rows(eval_user), eval_set.columns_of(eval_item)
    keep = (rows >= 0) & (cols >= 0)  # users with train history, items in the train catalog
    keys = np.unique(rows[keep] * n_cat + cols[keep])
    keys = keys[~np.isin(keys, train_keys, assume_unique=True)]  # not already seen in train
    eval_rows, pair_users = np.unique(keys // n_cat, return_inverse=True)
    eval_set.users = train_users[eval_rows].astype(np.int64)
    eval_set.relevant_sets = RelevantSets.from_pairs(
        pair_users.astype(np.int64), catalog[keys % n_cat], len(eval_rows))
    eval_set.stats = {
        "train_users": len(train_users),
        "train_items": len(catalog),
        "train_interactions": int(in_train.sum()),
        "test_users": len(np.unique(eval_user)),
        "test_items": len(np.unique(eval_item)),
        "test_interactions": int(in_eval.sum()),
        "evaluated_users": len(eval_rows),
    }
    return eval_set


def sample_users(eval_set: EvalSet, n: int | None, seed: int = 0) -> EvalSet:
    """The same EvalSet restricted to n evaluated users drawn without replacement (seeded).

    Coverage stays relative to the whole train catalog, so it shrinks with the sample."""
    if n is None or n >= len(eval_set.users):
        return eval_set
    if n < 1:
        raise UsageError(f"expected --users >= 1, found {n}")
    keep = np.sort(np.random.default_rng(seed).choice(len(eval_set.users), n, replace=False))
    relevant = eval_set.relevant
    sampled = EvalSet(**{**eval_set.__dict__})
    sampled.users = eval_set.users[keep]
    sampled.relevant_sets = RelevantSets.from_lists([relevant[i] for i in keep])
    sampled.stats = {**eval_set.stats, "sampled_users": n}
    return sampled


def load_eval_set(data, split: str = "user-temporal", phase: str = "test") -> EvalSet:
    """EvalSet from `mstage.data.schema.PreparedData` (workspace/data/)."""
    return build_eval_set(data.interactions, split, phase)


@dataclass
class TopLists:
    """Each evaluated user's best `n` catalog items (train items excluded), filled by
    `evaluate_scores`: item ids int64 [users, n] (PAD padded) and their float32 scores.
    Batches are kept apart and joined once, when read."""

    n: int
    parts: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list, repr=False)

    def add(self, top_cols: np.ndarray, top_ids: np.ndarray, scores: np.ndarray) -> None:
        cols = top_cols[:, :self.n]
        kept = np.take_along_axis(scores, np.maximum(cols, 0), axis=1).astype(np.float32)
        self.parts.append((np.where(cols >= 0, top_ids[:, :self.n], PAD),
                           np.where(cols >= 0, kept, np.float32(-np.inf))))

    @property
    def item_ids(self) -> np.ndarray:
        return np.concatenate([ids for ids, _ in self.parts]) if self.parts else \
            np.zeros((0, self.n), dtype=np.int64)

    @property
    def scores(self) -> np.ndarray:
        return np.concatenate([s for _, s in self.parts]) if self.parts else \
            np.zeros((0, self.n), dtype=np.float32)


def evaluate_scores(eval_set: EvalSet, score_fn: ScoreFn, ks: Sequence[int] = DEFAULT_KS,
                    batch_size: int = 1024, reporter: Reporter = SILENT,
                    per_user: dict[str, np.ndarray] | None = None,
                    top_lists: TopLists | None = None) -> dict[str, float]:
    """Exact top-k metrics of score_fn(user_ids int64 [b]) -> float [b, n_catalog] over the
    evaluated users, with each user's train items excluded and ties to the smaller item id.
    Batches hold at most batch_size users and MAX_BATCH_CELLS scores.

    Returns {"recall@k", "ndcg@k", "hitrate@k", "coverage@k" for k in ks, "users": n};
    `per_user`, when given, receives each metric's value per user (for intervals), and
    `top_lists` each user's best `top_lists.n` items from the same pass.
    """
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise UsageError(f"expected cut-offs k >= 1, found {list(ks)}")
    n_users = len(eval_set.users)
    if n_users == 0:
        raise InputError(
            f"expected at least one evaluated user on the {eval_set.split} split "
            f"({eval_set.phase}), found none; users need train interactions and unseen "
            "test items from the train catalog - use more data or the user-temporal split"
        )
    k_max = max(ks + ([top_lists.n] if top_lists else []))
    batch_size = max(1, min(batch_size, MAX_BATCH_CELLS // max(eval_set.n_catalog, 1)))
    totals = MetricTotals(ks, eval_set.n_catalog)
    with reporter.task("evaluate", total=n_users) as task:
        for start in range(0, n_users, batch_size):
            users = eval_set.users[start:start + batch_size]
            scores = np.asarray(score_fn(users))
            if scores.shape != (len(users), eval_set.n_catalog):
                raise InputError(
                    f"expected scores of shape [{len(users)}, {eval_set.n_catalog}] "
                    f"(batch x train catalog), found {scores.shape}"
                )
            rows, cols = eval_set.train_pairs(users)
            top = top_k_columns(scores, k_max, rows, cols)
            top_ids = np.where(top == PAD, PAD, eval_set.catalog[np.maximum(top, 0)])
            totals.add(top, top_ids, eval_set.relevant_sets.rows(start, start + len(users)))
            if top_lists is not None:
                top_lists.add(top, top_ids, scores)
            task.advance(len(users))
    if per_user is not None:
        per_user.update(totals.per_user())
    return totals.result(n_users)


class MetricTotals:
    """The protocol's metrics summed over batches of evaluated users: recall, NDCG and hit
    rate per k, and the catalog columns recommended in some top k (coverage). Every
    evaluation (catalog scores or recommended ids) accumulates through this one class."""

    def __init__(self, ks: Sequence[int], n_catalog: int):
        self.ks, self.n_catalog = list(ks), n_catalog
        self.values: dict[str, list[np.ndarray]] = {
            f"{name}@{k}": [] for k in self.ks for name in ("recall", "ndcg", "hitrate")}
        self.covered = {k: np.zeros(n_catalog, dtype=bool) for k in self.ks}

    def add(self, top_cols: np.ndarray, top_ids: np.ndarray, relevant: RelevantSets) -> None:
        """One batch of b users: top_ids int64 [b, >= max k] recommended ids, best first (PAD
        pads); top_cols [b, >= max k] their catalog columns (negative: PAD or an id outside the
        catalog, never covered); relevant the b users' relevant sets."""
        hits = hit_matrix(top_ids, relevant, max(self.ks))
        sizes = relevant.sizes
        for k in self.ks:
            self.values[f"recall@{k}"].append(recall_per_user(hits[:, :k], sizes))
            self.values[f"ndcg@{k}"].append(ndcg_per_user(hits[:, :k], sizes))
            self.values[f"hitrate@{k}"].append(hits[:, :k].any(axis=1).astype(np.float64))
            chosen = top_cols[:, :k]
            self.covered[k][chosen[chosen >= 0]] = True

    def per_user(self) -> dict[str, np.ndarray]:
        """Each metric's value per evaluated user, in the order of the EvalSet's users."""
        return {name: np.concatenate(parts) if parts else np.zeros(0)
                for name, parts in self.values.items()}

    def result(self, n_users: int) -> dict[str, float]:
        """Means over n_users, then coverage@k over the catalog, then "users"."""
        result = {name: float(values.sum()) / n_users
                  for name, values in self.per_user().items()}
        for k in self.ks:
            result[f"coverage@{k}"] = float(self.covered[k].sum() / self.n_catalog)
        result["users"] = n_users
        return result
