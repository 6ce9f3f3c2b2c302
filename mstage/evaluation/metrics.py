"""Ranking and classification metrics of the evaluation protocol, in numpy only.

Ranking metrics take `recommended` int [n_users, >= k] item ids (row order = rank; -1 pads
short lists and never counts as a hit; rows are expected to hold distinct ids) and
`relevant`, a list of n_users 1-D int arrays (duplicates are ignored). Each returns the mean
over users. Membership is tested for all users at once with one searchsorted on
(user, item) keys, so no per-user Python loop runs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mstage.columns import PAD
from mstage.errors import InputError


class RelevantSets:
    """Distinct relevant items per user as CSR arrays: items of user u are
    `items[indptr[u]:indptr[u + 1]]`, sorted. indptr int64 [n_users + 1], items int64 [nnz]."""

    def __init__(self, indptr: np.ndarray, items: np.ndarray):
        self.indptr = indptr
        self.items = items

    @classmethod
    def from_lists(cls, relevant: Sequence[np.ndarray]) -> RelevantSets:
        lengths = np.array([len(r) for r in relevant], dtype=np.int64)
        users = np.repeat(np.arange(len(relevant), dtype=np.int64), lengths)
        items = (np.concatenate([np.asarray(r, dtype=np.int64) for r in relevant])
                 if len(relevant) else np.empty(0, dtype=np.int64))
        return cls.from_pairs(users, items, len(relevant))

    @classmethod
    def from_pairs(cls, users: np.ndarray, items: np.ndarray, n_users: int) -> RelevantSets:
        """Build from (user row, item id) pairs, dropping duplicates."""
        order = np.lexsort((items, users))
        users, items = users[order], items[order]
        keep = np.ones(len(users), dtype=bool)
        keep[1:] = (users[1:] != users[:-1]) | (items[1:] != items[:-1])
        users, items = users[keep], items[keep]
        indptr = np.zeros(n_users + 1, dtype=np.int64)
        np.cumsum(np.bincount(users, minlength=n_users), out=indptr[1:])
        return cls(indptr, items.astype(np.int64, copy=False))

    def __len__(self) -> int:
        return len(self.indptr) - 1

    @property
    def sizes(self) -> np.ndarray:
        return np.diff(self.indptr)

    def rows(self, start: int, stop: int) -> RelevantSets:
        """Users start..stop-1 as their own RelevantSets (views, no copy of items)."""
        lo, hi = self.indptr[start], self.indptr[stop]
        return RelevantSets(self.indptr[start:stop + 1] - lo, self.items[lo:hi])


def _as_relevant(relevant, n_users: int) -> RelevantSets:
    sets = relevant if isinstance(relevant, RelevantSets) else RelevantSets.from_lists(relevant)
    if len(sets) != n_users:
        raise InputError(
            f"expected one relevant set per recommended row ({n_users}), found {len(sets)}")
    return sets


def _as_recommended(recommended, k: int) -> np.ndarray:
    rec = np.asarray(recommended)
    if rec.ndim != 2 or rec.shape[1] < k or k < 1:
        raise InputError(
            f"expected recommended ids of shape [n_users, >= k={k}] with k >= 1, "
            f"found {rec.shape}")
    return rec[:, :k].astype(np.int64, copy=False)


def hit_matrix(recommended: np.ndarray, relevant, k: int) -> np.ndarray:
    """bool [n_users, k]: True where recommended[u, r] is in relevant[u]."""
    rec = _as_recommended(recommended, k)
    sets = _as_relevant(relevant, len(rec))
    if len(sets.items) == 0:
        return np.zeros(rec.shape, dtype=bool)
    # Dense codes for relevant items keep (user, item) keys inside int64 for any id range.
    vocab = np.unique(sets.items)
    rel_user = np.repeat(np.arange(len(sets), dtype=np.int64), sets.sizes)
    rel_keys = np.sort(rel_user * len(vocab) + np.searchsorted(vocab, sets.items))
    code = np.minimum(np.searchsorted(vocab, rec), len(vocab) - 1)
    known = (vocab[code] == rec) & (rec != PAD)
    rec_keys = np.arange(len(rec), dtype=np.int64)[:, None] * len(vocab) + code
    slot = np.minimum(np.searchsorted(rel_keys, rec_keys), len(rel_keys) - 1)
    return known & (rel_keys[slot] == rec_keys)


def _discounts(k: int) -> np.ndarray:
    """1 / log2(rank + 1) for ranks 1..k; float64 [k]."""
    return 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))


def _nonempty_sizes(sets: RelevantSets) -> np.ndarray:
    sizes = sets.sizes
    if (sizes == 0).any():
        raise InputError(
            "expected a non-empty relevant set for every evaluated user, "
            f"found {int((sizes == 0).sum())} empty; "
            "drop users without relevant items before computing recall or NDCG"
        )
    return sizes


def recall_per_user(hits: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    return hits.sum(axis=1) / sizes


def ndcg_per_user(hits: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    k = hits.shape[1]
    discounts = _discounts(k)
    ideal = np.cumsum(discounts)[np.minimum(sizes, k) - 1]
    return (hits * discounts).sum(axis=1) / ideal


def recall_at_k(recommended: np.ndarray, relevant, k: int) -> float:
    """Mean over users of |top-k ∩ R| / |R|."""
    hits = hit_matrix(recommended, relevant, k)
    sets = _as_relevant(relevant, len(hits))
    return float(recall_per_user(hits, _nonempty_sizes(sets)).mean()) if len(hits) else 0.0


def ndcg_at_k(recommended: np.ndarray, relevant, k: int) -> float:
    """Mean over users of DCG / ideal DCG with binary gains 1/log2(rank + 1); the ideal DCG
    places min(k, |R|) hits at the top."""
    per_user = ndcg_at_k_per_user(recommended, relevant, k)
    return float(per_user.mean()) if len(per_user) else 0.0


def ndcg_at_k_per_user(recommended: np.ndarray, relevant, k: int) -> np.ndarray:
    """float64 [n_users]: each user's NDCG@k (see `ndcg_at_k`)."""
    hits = hit_matrix(recommended, relevant, k)
    return ndcg_per_user(hits, _nonempty_sizes(_as_relevant(relevant, len(hits))))


def hit_rate_at_k(recommended: np.ndarray, relevant, k: int) -> float:
    """Share of users with at least one relevant item in their top k."""
    hits = hit_matrix(recommended, relevant, k)
    return float(hits.any(axis=1).mean()) if len(hits) else 0.0


def coverage_at_k(recommended: np.ndarray, n_train_items: int, k: int) -> float:
    """|union of all top-k lists| / n_train_items (padding excluded)."""
    if n_train_items < 1:
        raise InputError(f"expected n_train_items >= 1 for coverage, found {n_train_items}")
    rec = _as_recommended(recommended, k)
    distinct = np.unique(rec)
    return float(np.count_nonzero(distinct != PAD) / n_train_items)


def _binary_labels(labels: np.ndarray, n: int) -> np.ndarray:
    y = np.asarray(labels).ravel()
    if len(y) != n:
        raise InputError(f"expected as many labels as predictions ({n}), found {len(y)}")
    if not np.isin(y, (0, 1)).all():
        raise InputError(
            f"expected labels in {{0, 1}}, found {np.unique(y[~np.isin(y, (0, 1))])[:5].tolist()}; "
            "labels must be clicks (1) or not (0)")
    return y.astype(bool)


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Exact ROC AUC: the Mann-Whitney U statistic with average ranks for tied scores, i.e.
    P(score of a random positive > that of a random negative) + 0.5 P(tie)."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = _binary_labels(labels, len(s))
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise InputError(
            "expected both positive and negative labels for AUC, "
            f"found {n_pos} positives and {n_neg} negatives; "
            "evaluate on labelled impressions or sampled negatives"
        )
    order = np.argsort(s, kind="stable")
    sorted_s = s[order]
    # Tie groups: every member gets the mean of the 1-based ranks first+1 .. last+1.
    starts = np.flatnonzero(np.r_[True, sorted_s[1:] != sorted_s[:-1]])
    ends = np.r_[starts[1:], len(s)]
    group_rank = (starts + 1 + ends) / 2.0
    ranks = np.empty(len(s), dtype=np.float64)
    ranks[order] = np.repeat(group_rank, ends - starts)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def log_loss(labels: np.ndarray, probs: np.ndarray, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy; probabilities are clipped to [eps, 1 - eps]."""
    p = np.clip(np.asarray(probs, dtype=np.float64).ravel(), eps, 1.0 - eps)
    y = _binary_labels(labels, len(p))
    if len(p) == 0:
        raise InputError("expected at least one prediction for log loss, found none")
    return float(-np.mean(np.where(y, np.log(p), np.log1p(-p))))


def top_k_columns(scores: np.ndarray, k: int, exclude_rows: np.ndarray | None = None,
                  exclude_cols: np.ndarray | None = None) -> np.ndarray:
    """Column indices int64 [b, k] of the k highest scores per row of float [b, n_items],
    ignoring (exclude_rows[i], exclude_cols[i]) cells; ties go to the smaller column; -1 pads
    rows with fewer than k eligible columns. Exact: the k-th largest value comes from
    np.partition, every larger score is kept and tied columns fill the remaining slots in
    column order. float32 scores stay float32 (half the memory traffic)."""
    scores = np.asarray(scores)
    s = np.array(scores, dtype=np.result_type(scores.dtype, np.float32), copy=True)
    if s.ndim != 2:
        raise InputError(f"expected a score matrix [n_users, n_items], found shape {s.shape}")
    if np.isnan(s).any():
        raise InputError("expected finite scores, found NaN; the model produced invalid scores")
    b, n = s.shape
    out = np.full((b, k), PAD, dtype=np.int64)
    kk = min(k, n)
    if b == 0 or kk == 0:
        return out
    if exclude_rows is not None and len(exclude_rows):
        s[exclude_rows, exclude_cols] = -np.inf
    kth = np.partition(s, n - kk, axis=1)[:, n - kk]  # the kk-th largest score per row
    chosen = s > kth[:, None]
    need = kk - np.count_nonzero(chosen, axis=1)
    tied_rows, tied_cols = np.nonzero(s == kth[:, None])  # row-major: columns ascend per row
    per_row = np.bincount(tied_rows, minlength=b)
    rank_in_row = np.arange(len(tied_rows)) - np.repeat(np.cumsum(per_row) - per_row, per_row)
    fill = rank_in_row < need[tied_rows]
    chosen[tied_rows[fill], tied_cols[fill]] = True
    cols = np.nonzero(chosen)[1].reshape(b, kk)  # ascending columns per row
    vals = np.take_along_axis(s, cols, axis=1)
    order = np.argsort(-vals, axis=1, kind="stable")  # stable: equal scores keep column order
    cols = np.take_along_axis(cols, order, axis=1)
    vals = np.take_along_axis(vals, order, axis=1)
    out[:, :kk] = np.where(vals == -np.inf, PAD, cols)
    return out


def top_k_excluding(scores: np.ndarray, exclude_rows: np.ndarray, exclude_cols: np.ndarray, k: int,
                    item_ids: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """Top-k item ids int64 [n_users, k] from scores float [n_users, n_items] (column j scores
    item_ids[j]), skipping each user's (row, column) exclusions; equal scores are ordered by
    smaller item id; -1 pads. Runs in row batches so temporaries stay [batch_size, n_items]."""
    item_ids = np.asarray(item_ids, dtype=np.int64)
    scores = np.asarray(scores)
    exclude_rows = np.asarray(exclude_rows, dtype=np.int64)
    exclude_cols = np.asarray(exclude_cols, dtype=np.int64)
    if scores.ndim != 2 or scores.shape[1] != len(item_ids):
        raise InputError(
            f"expected scores of shape [n_users, {len(item_ids)}], found {scores.shape}")
    by_id = np.argsort(item_ids, kind="stable")
    if not np.array_equal(by_id, np.arange(len(item_ids))):
        # Reorder columns by item id so "smaller column" means "smaller item id".
        scores = scores[:, by_id]
        position = np.empty_like(by_id)
        position[by_id] = np.arange(len(by_id))
        exclude_cols = position[exclude_cols]
        item_ids = item_ids[by_id]
    row_order = np.argsort(exclude_rows, kind="stable")
    exclude_rows, exclude_cols = exclude_rows[row_order], exclude_cols[row_order]
    out = np.full((len(scores), k), PAD, dtype=np.int64)
    for start in range(0, len(scores), batch_size):
        stop = min(start + batch_size, len(scores))
        lo, hi = np.searchsorted(exclude_rows, [start, stop])
        cols = top_k_columns(scores[start:stop], k, exclude_rows[lo:hi] - start,
                             exclude_cols[lo:hi])
        out[start:stop] = np.where(cols == PAD, PAD, item_ids[np.maximum(cols, 0)])
    return out
