"""Stage 2, filtering: drop seen and rule-excluded candidates, refill short lists from popularity.

Works on padded candidate lists ([batch, n] item ids with -1 padding, scores with -inf).
Surviving candidates keep their retrieval order and are packed to the left; a row left with
fewer than `min_candidates` is topped up with the most popular items that pass the same
rules, and flagged, so no request ever gets an empty answer. The rules' item attributes
are arrays computed when the stage is built: no store is opened online.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mstage.columns import (
    CANDIDATE_IDS,
    FILTERED_IDS,
    FILTERED_SCORES,
    PAD,
    RECENT_ITEMS,
    REFILLED,
    RETRIEVAL_SCORES,
    ColumnSpec,
    in_rows,
)
from mstage.data.lookup import IdLookup
from mstage.pipeline.stage import Stage


def excluded_items(
    n_items: int,
    in_stock: np.ndarray | None,
    categories: np.ndarray | None,
    *,
    exclude_out_of_stock: bool,
    exclude_categories: list[str],
) -> np.ndarray:
    """Boolean [n_items]: items that business rules never allow, from catalog attributes
    (None where the catalog lacks the attribute: that rule then excludes nothing)."""
    excluded = np.zeros(n_items, dtype=bool)
    if exclude_out_of_stock and in_stock is not None:
        excluded |= np.asarray(in_stock, dtype=float) == 0
    if exclude_categories and categories is not None:
        excluded |= np.isin(np.asarray(categories, dtype=str), exclude_categories)
    return excluded


def allowed_mask(
    ids: np.ndarray, catalog: IdLookup, excluded: np.ndarray, seen: np.ndarray | None
) -> np.ndarray:
    """Boolean [b, n]: candidate is real, in the catalog, not excluded and not seen.

    `excluded` [n_items] is indexed by catalog row; `seen` [b, r] holds each user's
    seen ids (-1 padded) or None.
    """
    pos, known = catalog.find(ids)
    ok = (ids != PAD) & known & ~excluded[pos]
    if seen is not None and seen.size:
        ok &= ~in_rows(ids, seen)
    return ok


def pack_left(ids: np.ndarray, scores: np.ndarray, keep: np.ndarray):
    """Move kept candidates to the left in their original order; pad the rest."""
    order = np.argsort(~keep, axis=1, kind="stable")
    ids = np.where(keep, ids, PAD)
    scores = np.where(keep, scores, -np.inf).astype(np.float32)
    return np.take_along_axis(ids, order, 1), np.take_along_axis(scores, order, 1)


def refill_from_popular(
    ids: np.ndarray,
    scores: np.ndarray,
    popular: np.ndarray,
    seen: np.ndarray | None,
    min_candidates: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top up rows with fewer than `min_candidates` ids from `popular` (allowed ids, best first).

    Skips ids the row already holds or has seen. Refilled items get retrieval scores just
    below the row's retrieved ones, in popularity order. Returns ids, scores, refilled [b].
    """
    counts = (ids != PAD).sum(axis=1)
    short = np.flatnonzero(counts < min_candidates)
    refilled = np.zeros(ids.shape[0], dtype=bool)
    if short.size == 0:
        return ids, scores, refilled
    width = max(ids.shape[1], min_candidates)
    out_ids = np.full((ids.shape[0], width), PAD, dtype=np.int64)
    out_scores = np.full((ids.shape[0], width), -np.inf, dtype=np.float32)
    out_ids[:, : ids.shape[1]], out_scores[:, : ids.shape[1]] = ids, scores
    for r in short:
        taken = set(ids[r][ids[r] != PAD].tolist())
        if seen is not None:
            taken |= set(seen[r][seen[r] != PAD].tolist())
        extra = [i for i in popular[: min_candidates + len(taken)] if i not in taken]
        extra = extra[: min_candidates - counts[r]]
        floor = np.min(scores[r][ids[r] != PAD], initial=0.0) - 1.0
        out_ids[r, counts[r] : counts[r] + len(extra)] = extra
        out_scores[r, counts[r] : counts[r] + len(extra)] = floor - np.arange(len(extra)) * 1e-3
        refilled[r] = len(extra) > 0
    return out_ids, out_scores, refilled


class FilterCandidates(Stage):
    """Drops seen and rule-excluded candidates; refills short lists from popular items.

    params: the [filtering] config, `candidates` (N), `min_candidates`, `recent_items`.
    arrays: `item_ids` (the catalog), `excluded` (per catalog row), `popular_allowed`
    (allowed item ids, most popular first). Build it with `from_catalog`.
    """

    @classmethod
    def from_catalog(cls, items: Any, popular: np.ndarray, params: dict[str, Any],
                     only_items: np.ndarray | None = None) -> FilterCandidates:
        """The stage for catalog `items` (DataFrame: item_id + attributes) and `popular`;
        with `only_items` (ids), every other item is excluded too."""
        item_ids = items["item_id"].to_numpy(dtype=np.int64)
        stock, category = params["stock_column"], params["category_column"]
        excluded = excluded_items(
            len(items),
            items[stock].to_numpy() if stock in items else None,
            items[category].to_numpy() if category in items else None,
            exclude_out_of_stock=params["exclude_out_of_stock"],
            exclude_categories=params["exclude_categories"],
        )
        if only_items is not None:
            excluded |= ~np.isin(item_ids, only_items)
        allowed = allowed_mask(popular[None, :], IdLookup(item_ids), excluded, None)[0]
        return cls(params, {"item_ids": item_ids, "excluded": excluded,
                            "popular_allowed": popular[allowed]})

    @property
    def width(self) -> int:
        return max(int(self.params["candidates"]), int(self.params["min_candidates"]))

    @property
    def inputs(self):
        n = int(self.params["candidates"])
        return [ColumnSpec(CANDIDATE_IDS, "int64", (-1, n)),
                ColumnSpec(RETRIEVAL_SCORES, "float32", (-1, n)),
                ColumnSpec(RECENT_ITEMS, "int64", (-1, -1))]

    @property
    def outputs(self):
        return [ColumnSpec(FILTERED_IDS, "int64", (-1, self.width)),
                ColumnSpec(FILTERED_SCORES, "float32", (-1, self.width)),
                ColumnSpec(REFILLED, "int8")]

    def _open(self) -> None:
        self.catalog = IdLookup(self.arrays["item_ids"])

    def run(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids, scores = batch[CANDIDATE_IDS], batch[RETRIEVAL_SCORES]
        seen = batch[RECENT_ITEMS] if self.params["exclude_seen"] else None
        keep = allowed_mask(ids, self.catalog, self.arrays["excluded"], seen)
        ids, scores = pack_left(ids, scores, keep)
        ids, scores, refilled = refill_from_popular(
            ids, scores, self.arrays["popular_allowed"], seen,
            int(self.params["min_candidates"]))
        if ids.shape[1] < self.width:
            pad = self.width - ids.shape[1]
            ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=PAD)
            scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
        return {FILTERED_IDS: ids, FILTERED_SCORES: scores.astype(np.float32),
                REFILLED: refilled.astype(np.int8)}
