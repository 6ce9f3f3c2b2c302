"""Two do-nothing stages: the cheapest possible two-step ensemble, for `triton_floor.py`."""

from __future__ import annotations

import numpy as np

from mstage.columns import ITEM_IDS, SCORES, USER_ID, ColumnSpec
from mstage.pipeline.plan import Plan
from mstage.pipeline.stage import Stage


class EchoUser(Stage):
    """user u -> one candidate u with score 0: item_ids [B, 1], scores [B, 1]."""

    inputs = [ColumnSpec(USER_ID, "int64")]
    outputs = [ColumnSpec(ITEM_IDS, "int64", (-1, 1)), ColumnSpec(SCORES, "float32", (-1, 1))]

    def run(self, batch):
        users = batch[USER_ID]  # [B]
        return {ITEM_IDS: users[:, None].copy(), SCORES: np.zeros((len(users), 1), np.float32)}


class PassThrough(Stage):
    """item_ids, scores -> the same arrays."""

    inputs = [ColumnSpec(ITEM_IDS, "int64", (-1, -1)), ColumnSpec(SCORES, "float32", (-1, -1))]
    outputs = inputs

    def run(self, batch):
        return {ITEM_IDS: batch[ITEM_IDS], SCORES: batch[SCORES]}


def floor_plan() -> Plan:
    """EchoUser -> PassThrough, answering item_ids and scores (no fallback flag)."""
    return Plan([("echo_user", EchoUser()), ("pass_through", PassThrough())],
                response=(ITEM_IDS, SCORES))
