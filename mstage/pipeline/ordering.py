"""Stage 4, ordering: the final top-k, by score, by softmax sampling, or capped per category.

Candidate lists are padded to a fixed width with item id -1 (score -inf); every strategy
returns [batch, k] ids (padded with -1 when fewer than k candidates exist) and scores.
Equal scores are ordered by smaller item id, the evaluation protocol's rule.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mstage.columns import (
    COLD_START,
    FALLBACK,
    FILTERED_IDS,
    FILTERED_SCORES,
    ITEM_IDS,
    PAD,
    RANKING_SCORES,
    REFILLED,
    SCORES,
    TOP_K,
    USER_ID,
    ColumnSpec,
)
from mstage.data.lookup import IdLookup
from mstage.errors import InputError
from mstage.pipeline.stage import Stage


def _ordering_keys(ids: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Indices [b, n] that sort each row by key descending, then id ascending, padding last."""
    padded = ids == PAD
    # np.lexsort sorts by the last key first.
    return np.lexsort((ids, -np.where(padded, -np.inf, keys), padded), axis=-1)


def top_k(ids: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best candidates per row: ids [b, n] int64, scores [b, n] -> ([b, k], [b, k])."""
    order = _ordering_keys(ids, scores)[:, :k]
    return _take(ids, scores, order, k)


def softmax_sample(
    ids: np.ndarray, scores: np.ndarray, k: int, temperature: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Sample k candidates without replacement with probability proportional to exp(score / T).

    Uses the Gumbel-top-k identity: the top k of score/T + Gumbel noise are distributed as
    successive draws without replacement from softmax(score/T). As T -> 0 this is top_k.
    """
    noise = rng.gumbel(size=scores.shape)
    keys = scores / temperature + noise
    order = _ordering_keys(ids, keys)[:, :k]
    return _take(ids, scores, order, k)


def category_capped(
    ids: np.ndarray, scores: np.ndarray, k: int, categories: np.ndarray, cap: int
) -> tuple[np.ndarray, np.ndarray]:
    """Best-first, at most `cap` items per category; topped up from the rest when short.

    `categories` [b, n] holds a category code per candidate. A row whose candidates span
    too few categories to fill k under the cap is topped up with its best skipped items,
    so the answer is never shorter than plain top-k would be.
    """
    order = _ordering_keys(ids, scores)
    out_ids = np.full((ids.shape[0], k), PAD, dtype=ids.dtype)
    out_scores = np.full((ids.shape[0], k), -np.inf, dtype=np.float32)
    for r in range(ids.shape[0]):
        kept, skipped, count = [], [], {}
        for j in order[r]:
            if ids[r, j] == PAD or len(kept) == k:
                break
            c = categories[r, j]
            if count.get(c, 0) < cap:
                count[c] = count.get(c, 0) + 1
                kept.append(j)
            else:
                skipped.append(j)
        chosen = (kept + skipped)[:k]
        out_ids[r, : len(chosen)] = ids[r, chosen]
        out_scores[r, : len(chosen)] = scores[r, chosen]
    return out_ids, out_scores


def _take(ids, scores, order, k):
    out_ids = np.take_along_axis(ids, order, axis=1)
    out_scores = np.take_along_axis(scores, order, axis=1).astype(np.float32)
    out_scores[out_ids == PAD] = -np.inf
    if out_ids.shape[1] < k:
        pad = k - out_ids.shape[1]
        out_ids = np.pad(out_ids, ((0, 0), (0, pad)), constant_values=PAD)
        out_scores = np.pad(out_scores, ((0, 0), (0, pad)), constant_values=-np.inf)
    return out_ids, out_scores


def blended_score(click_probability: np.ndarray, retrieval_score: np.ndarray,
                  retrieval_weight: float) -> np.ndarray:
    """logit(p) + w * retrieval score, [b, n] float32 (-inf stays -inf at padding).

    A product of the two models' odds: the ranker, trained mostly on what users were shown,
    is unsure about unshown items that retrieval brings, and the retrieval score (cosine of
    the towers, ~1/temperature per unit of logit) carries what it knows about them.
    """
    p = np.clip(click_probability, 1e-7, 1 - 1e-7)
    logit = np.log(p) - np.log1p(-p)
    padded = ~np.isfinite(click_probability)
    key = logit + retrieval_weight * np.where(np.isfinite(retrieval_score), retrieval_score, 0)
    return np.where(padded, -np.inf, key).astype(np.float32)


class OrderCandidates(Stage):
    """Final top-k: `topk`, `softmax` sampling, optionally capped per category.

    Candidates are ordered by `blended_score`: the ranker's click logit plus
    `retrieval_weight` times the retrieval score (0 orders by the ranker alone).
    params: the [ordering] config, `top_k` (default when a request has none) and `width`.
    arrays (with a category cap): `item_ids` and their `categories` codes. Softmax draws are
    seeded per (seed, user id), so a user's sample does not depend on who shares the batch.
    """

    @classmethod
    def from_catalog(cls, items: Any, params: dict[str, Any]) -> OrderCandidates:
        """The stage for catalog `items` (DataFrame); categories are kept only for a cap."""
        arrays = {}
        if params["category_cap"] > 0 and params["category_column"] in items:
            import pandas as pd

            codes, _ = pd.factorize(items[params["category_column"]])
            arrays = {"item_ids": items["item_id"].to_numpy(dtype=np.int64),
                      "categories": codes.astype(np.int64)}
        return cls(params, arrays)

    @property
    def inputs(self):
        width = int(self.params["width"])
        seeds = [ColumnSpec(USER_ID, "int64")] if self.params["strategy"] == "softmax" else []
        return [
            *seeds,  # softmax draws are seeded per user; top-k needs no user id
            ColumnSpec(FILTERED_IDS, "int64", (-1, width)),
            ColumnSpec(FILTERED_SCORES, "float32", (-1, width)),
            ColumnSpec(RANKING_SCORES, "float32", (-1, width)),
            ColumnSpec(COLD_START, "int8"),
            ColumnSpec(REFILLED, "int8"),
            ColumnSpec(TOP_K, "int64", optional=True),
        ]

    @property
    def outputs(self):
        return [ColumnSpec(ITEM_IDS, "int64", (-1, -1)),
                ColumnSpec(SCORES, "float32", (-1, -1)),
                ColumnSpec(FALLBACK, "int8")]

    def _open(self) -> None:
        self.catalog = IdLookup(self.arrays["item_ids"]) if self.arrays else None

    def run(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        p = self.params
        ids = batch[FILTERED_IDS]
        scores = blended_score(batch[RANKING_SCORES], batch[FILTERED_SCORES],
                               p["retrieval_weight"])
        requested = batch.get(TOP_K)
        k = int(requested.max()) if requested is not None and requested.size else int(p["top_k"])
        if k < 1:
            raise InputError(f"expected top_k >= 1, found {k}")
        if p["strategy"] == "softmax":
            out_ids, out_scores = zip(*[
                softmax_sample(ids[r : r + 1], scores[r : r + 1], k, p["temperature"],
                               np.random.default_rng([p["seed"], int(u)]))
                for r, u in enumerate(batch[USER_ID])
            ], strict=True)
            out_ids, out_scores = np.concatenate(out_ids), np.concatenate(out_scores)
        elif self.catalog is not None:
            pos, _ = self.catalog.find(ids)
            out_ids, out_scores = category_capped(ids, scores, k, self.arrays["categories"][pos],
                                                  p["category_cap"])
        else:
            out_ids, out_scores = top_k(ids, scores, k)
        if requested is not None:
            beyond = np.arange(k)[None, :] >= requested.reshape(-1, 1)
            out_ids[beyond], out_scores[beyond] = PAD, -np.inf
        fallback = (batch[COLD_START] > 0) | (batch[REFILLED] > 0)
        return {ITEM_IDS: out_ids, SCORES: out_scores, FALLBACK: fallback.astype(np.int8)}
