"""Reference recommenders reported beside every model: popularity, ItemKNN and EASE.

Both return a score function for `evaluate_scores`: user ids int64 [b] -> float64
[b, n_catalog] over the EvalSet's train catalog. Ties (equal counts or similarity sums) are
resolved by the evaluator in favour of the smaller item id.
"""

from __future__ import annotations

import numpy as np

from mstage.errors import InputError
from mstage.evaluation.protocol import EvalSet, ScoreFn

# A dense item x item similarity matrix of this many items takes 8 * n^2 bytes (3.2 GB at 20k).
MAX_ITEMKNN_ITEMS = 20_000


def popularity(eval_set: EvalSet) -> ScoreFn:
    """Score = number of train interactions of the item, the same for every user."""
    counts = eval_set.item_counts.astype(np.float64)

    def score(user_ids: np.ndarray) -> np.ndarray:
        return np.broadcast_to(counts, (len(user_ids), len(counts)))

    return score


def _user_item_rows(eval_set: EvalSet, user_ids: np.ndarray) -> np.ndarray:
    """Binary user x catalog matrix float64 [len(user_ids), n_catalog] of train interactions."""
    rows, cols = eval_set.train_pairs(user_ids)
    matrix = np.zeros((len(user_ids), eval_set.n_catalog), dtype=np.float64)
    matrix[rows, cols] = 1.0
    return matrix


def item_cosine_similarity(eval_set: EvalSet, batch_size: int = 4096) -> np.ndarray:
    """float64 [n_catalog, n_catalog]: |U_i ∩ U_j| / sqrt(|U_i| |U_j|) on the binary train
    user x item matrix, accumulated over user batches to bound memory."""
    n = eval_set.n_catalog
    if n > MAX_ITEMKNN_ITEMS:
        raise InputError(
            f"expected at most {MAX_ITEMKNN_ITEMS} train items for ItemKNN "
            f"(dense item x item similarities), found {n}; "
            "report popularity only on catalogs this large"
        )
    co_counts = np.zeros((n, n), dtype=np.float64)
    for start in range(0, len(eval_set.train_users), batch_size):
        block = _user_item_rows(eval_set, eval_set.train_users[start:start + batch_size])
        co_counts += block.T @ block
    norms = np.sqrt(np.diag(co_counts))
    return co_counts / np.outer(norms, norms)


def item_knn(eval_set: EvalSet) -> ScoreFn:
    """Score of item j for user u = sum over u's train items i of cosine(i, j)."""
    similarity = item_cosine_similarity(eval_set)

    def score(user_ids: np.ndarray) -> np.ndarray:
        return _user_item_rows(eval_set, user_ids) @ similarity

    return score


EASE_LAMBDAS = (10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0)
"""The grid EASE's L2 weight is chosen from, on validation (MovieLens-100K's best is ~250)."""


def ease(eval_set: EvalSet, l2: float) -> ScoreFn:
    """EASE (Steck 2019): the item x item weights B = argmin |X - XB|^2 + l2 |B|^2 with
    diag(B) = 0, in closed form: P = (X'X + l2 I)^-1, B = -P / diag(P), diag(B) = 0.
    Score of item j for user u = sum over u's train items i of B[i, j]."""
    n = eval_set.n_catalog
    if n > MAX_ITEMKNN_ITEMS:
        raise InputError(f"expected at most {MAX_ITEMKNN_ITEMS} train items for EASE (a dense "
                         f"item x item solve), found {n}")
    gram = np.zeros((n, n), dtype=np.float64)
    for start in range(0, len(eval_set.train_users), 4096):
        block = _user_item_rows(eval_set, eval_set.train_users[start:start + 4096])
        gram += block.T @ block
    gram[np.diag_indices(n)] += l2
    inverse = np.linalg.inv(gram)
    weights = -inverse / np.diag(inverse)
    weights[np.diag_indices(n)] = 0.0

    def score(user_ids: np.ndarray) -> np.ndarray:
        return _user_item_rows(eval_set, user_ids) @ weights

    return score


BASELINES = {"popularity": popularity, "itemknn": item_knn}
