"""Two tiny operators whose answers are easy to compute by hand, to test the serving machinery.

`CandidatesForUser` plays retrieval: user u gets items u*100 + 0..n-1 with scores
(j % 3) / 10 for column j. `TopByScore` plays ordering: per row, the top_k items by score
(ties broken by smaller item id), padded with id -1 and score NaN to the widest top_k.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mstage.columns import ColumnSpec
from mstage.pipeline.plan import Plan
from mstage.pipeline.stage import Stage
from mstage.serving.repository import write_repository


class CandidatesForUser(Stage):
    """params: `n` candidates per user."""

    inputs = [ColumnSpec("user_id", "int64", (-1,))]

    @property
    def outputs(self):
        n = self.params["n"]
        return [ColumnSpec("item_ids", "int64", (-1, n)), ColumnSpec("scores", "float32", (-1, n))]

    def run(self, batch):
        users = batch["user_id"]  # [B]
        columns = np.arange(self.params["n"])
        items = users[:, None] * 100 + columns[None, :]  # [B, n]
        scores = np.broadcast_to((columns % 3) / 10, items.shape).astype(np.float32)
        return {"item_ids": items, "scores": scores}


class TopByScore(Stage):
    """params: `default_k`, used when a request has no top_k."""

    inputs = [ColumnSpec("item_ids", "int64", (-1, -1)),
              ColumnSpec("scores", "float32", (-1, -1)),
              ColumnSpec("top_k", "int64", (-1,), optional=True)]
    outputs = [ColumnSpec("item_ids", "int64", (-1, -1)),
               ColumnSpec("scores", "float32", (-1, -1))]

    def run(self, batch):
        items, scores = batch["item_ids"], batch["scores"]  # [B, N] each
        k = batch.get("top_k", np.full(len(items), self.params["default_k"]))  # [B]
        if np.any(k < 0):
            raise ValueError(f"top_k must be >= 0, got {k.min()}")
        order = np.lexsort((items, -scores), axis=1)  # best score first, then smaller id
        width = int(min(k.max(initial=0), items.shape[1]))
        top_items = np.take_along_axis(items, order, 1)[:, :width].copy()
        top_scores = np.take_along_axis(scores, order, 1)[:, :width].copy()
        pad = np.arange(width)[None, :] >= k[:, None]
        top_items[pad], top_scores[pad] = -1, np.nan
        return {"item_ids": top_items, "scores": top_scores}


class WrongDtype(CandidatesForUser):
    """CandidatesForUser with a bug: its scores come out float64, not the declared float32."""

    def run(self, batch):
        out = super().run(batch)
        return out | {"scores": out["scores"].astype(np.float64)}


def wrong_dtype_plan() -> Plan:
    return Plan([("toy_wrong_dtype", WrongDtype({"n": 5}))], response=("item_ids", "scores"))


def toy_plan(n: int = 5, default_k: int = 3) -> Plan:
    """CandidatesForUser -> TopByScore, answering item_ids and scores."""
    return Plan([("toy_candidates", CandidatesForUser({"n": n})),
                 ("toy_order", TopByScore({"default_k": default_k}))],
                response=("item_ids", "scores"))


def write_toy_repository(path: Path, **options) -> Path:
    """CandidatesForUser(n=5) -> TopByScore(default_k=3), as ensemble `mstage_recommender`,
    and beside it `toy_wrong_dtype_recommender`, the WrongDtype stage alone."""
    write_repository(path, toy_plan(), code=[Path(__file__)], **options)
    wrong = path.parent / "wrong_dtype_repository"
    write_repository(wrong, wrong_dtype_plan(), name="toy_wrong_dtype_recommender",
                     code=[Path(__file__)], **options)
    for model in wrong.iterdir():
        model.rename(path / model.name)
    return path
