"""Two do-nothing operators: the cheapest possible two-step ensemble, for `triton_floor.py`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mstage.pipeline.operator import ColumnSpec


class EchoUser:
    """user u -> one candidate u with score 0: item_ids [B, 1], scores [B, 1]."""

    inputs = [ColumnSpec("user_id", "int64")]
    outputs = [ColumnSpec("item_ids", "int64", (-1, 1)), ColumnSpec("scores", "float32", (-1, 1))]

    @classmethod
    def load(cls, artifact_dir: Path) -> EchoUser:
        return cls()

    def save(self, artifact_dir: Path) -> None:
        pass

    def __call__(self, batch):
        users = batch["user_id"]
        return {"item_ids": users[:, None].copy(), "scores": np.zeros((len(users), 1), np.float32)}


class PassThrough:
    """item_ids, scores -> the same arrays."""

    inputs = [ColumnSpec("item_ids", "int64", (-1, -1)), ColumnSpec("scores", "float32", (-1, -1))]
    outputs = inputs

    @classmethod
    def load(cls, artifact_dir: Path) -> PassThrough:
        return cls()

    def save(self, artifact_dir: Path) -> None:
        pass

    def __call__(self, batch):
        return {"item_ids": batch["item_ids"], "scores": batch["scores"]}
