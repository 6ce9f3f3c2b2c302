"""Two tiny operators whose answers are easy to compute by hand, to test the serving machinery.

`CandidatesForUser` plays retrieval: user u gets items u*100 + 0..n-1 with scores
(j % 3) / 10 for column j. `TopByScore` plays ordering: per row, the top_k items by score
(ties broken by smaller item id), padded with id -1 and score NaN to the widest top_k.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mstage.pipeline.operator import ColumnSpec
from mstage.serving.repository import write_repository


class CandidatesForUser:
    inputs = [ColumnSpec("user_id", "int64", (-1,))]

    def __init__(self, n: int = 5):
        self.n = n

    @property
    def outputs(self):
        return [ColumnSpec("item_ids", "int64", (-1, self.n)),
                ColumnSpec("scores", "float32", (-1, self.n))]

    @classmethod
    def load(cls, artifact_dir: Path) -> CandidatesForUser:
        return cls(**json.loads((Path(artifact_dir) / "params.json").read_text()))

    def save(self, artifact_dir: Path) -> None:
        (Path(artifact_dir) / "params.json").write_text(json.dumps({"n": self.n}))

    def __call__(self, batch):
        users = batch["user_id"]  # [B]
        columns = np.arange(self.n)
        items = users[:, None] * 100 + columns[None, :]  # [B, n]
        scores = np.broadcast_to((columns % 3) / 10, items.shape).astype(np.float32)
        return {"item_ids": items, "scores": scores}


class TopByScore:
    inputs = [ColumnSpec("item_ids", "int64", (-1, -1)),
              ColumnSpec("scores", "float32", (-1, -1)),
              ColumnSpec("top_k", "int64", (-1,), optional=True)]
    outputs = [ColumnSpec("item_ids", "int64", (-1, -1)),
               ColumnSpec("scores", "float32", (-1, -1))]

    def __init__(self, default_k: int = 3):
        self.default_k = default_k

    @classmethod
    def load(cls, artifact_dir: Path) -> TopByScore:
        return cls(**json.loads((Path(artifact_dir) / "params.json").read_text()))

    def save(self, artifact_dir: Path) -> None:
        (Path(artifact_dir) / "params.json").write_text(json.dumps({"default_k": self.default_k}))

    def __call__(self, batch):
        items, scores = batch["item_ids"], batch["scores"]  # [B, N] each
        k = batch.get("top_k", np.full(len(items), self.default_k))  # [B]
        if np.any(k < 0):
            raise ValueError(f"top_k must be >= 0, got {k.min()}")
        order = np.lexsort((items, -scores), axis=1)  # best score first, then smaller id
        width = int(min(k.max(initial=0), items.shape[1]))
        top_items = np.take_along_axis(items, order, 1)[:, :width].copy()
        top_scores = np.take_along_axis(scores, order, 1)[:, :width].copy()
        pad = np.arange(width)[None, :] >= k[:, None]
        top_items[pad], top_scores[pad] = -1, np.nan
        return {"item_ids": top_items, "scores": top_scores}


def write_toy_repository(path: Path, **options) -> Path:
    """CandidatesForUser(n=5) -> TopByScore(default_k=3), as ensemble `mstage_recommender`."""
    write_repository(path, [("toy_candidates", CandidatesForUser(5)),
                            ("toy_order", TopByScore(3))],
                     code=[Path(__file__)], **options)
    return path
