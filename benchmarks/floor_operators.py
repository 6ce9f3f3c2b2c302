"""Do-nothing stages: the cheapest ensembles of the pipeline's shape, for `triton_floor.py`.

`floor_plan(steps=4)` has the real pipeline's four steps and tensor shapes (user id -> 200
candidates -> filtered 200 -> 200 scores -> top 10 + fallback) with no work in any step, so
the difference to the real ensemble is what mstage's stages cost; `steps=2` is the older
two-step floor (user id -> one item -> the same).
"""

from __future__ import annotations

import numpy as np

from mstage.columns import (
    CANDIDATE_IDS,
    FALLBACK,
    FILTERED_IDS,
    FILTERED_SCORES,
    ITEM_IDS,
    RANKING_SCORES,
    RETRIEVAL_SCORES,
    SCORES,
    USER_ID,
    ColumnSpec,
)
from mstage.pipeline.plan import Plan
from mstage.pipeline.stage import Stage

N, K = 200, 10


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


class Candidates(Stage):
    """user u -> items u*N + 0..N-1 [B, N] with zero scores."""

    inputs = [ColumnSpec(USER_ID, "int64")]
    outputs = [ColumnSpec(CANDIDATE_IDS, "int64", (-1, N)),
               ColumnSpec(RETRIEVAL_SCORES, "float32", (-1, N))]

    def run(self, batch):
        users = batch[USER_ID]
        ids = users[:, None] * N + np.arange(N)[None, :]
        return {CANDIDATE_IDS: ids, RETRIEVAL_SCORES: np.zeros(ids.shape, np.float32)}


class Keep(Stage):
    """candidates -> the same, as filtered ones."""

    inputs = Candidates.outputs
    outputs = [ColumnSpec(FILTERED_IDS, "int64", (-1, N)),
               ColumnSpec(FILTERED_SCORES, "float32", (-1, N))]

    def run(self, batch):
        return {FILTERED_IDS: batch[CANDIDATE_IDS], FILTERED_SCORES: batch[RETRIEVAL_SCORES]}


class Zeros(Stage):
    """filtered ids -> zero ranking scores [B, N]."""

    inputs = [ColumnSpec(FILTERED_IDS, "int64", (-1, N))]
    outputs = [ColumnSpec(RANKING_SCORES, "float32", (-1, N))]

    def run(self, batch):
        return {RANKING_SCORES: np.zeros(batch[FILTERED_IDS].shape, np.float32)}


class First(Stage):
    """the first K filtered ids and their scores, and no fallback."""

    inputs = [ColumnSpec(FILTERED_IDS, "int64", (-1, N)),
              ColumnSpec(RANKING_SCORES, "float32", (-1, N))]
    outputs = [ColumnSpec(ITEM_IDS, "int64", (-1, -1)), ColumnSpec(SCORES, "float32", (-1, -1)),
               ColumnSpec(FALLBACK, "int8")]

    def run(self, batch):
        ids = batch[FILTERED_IDS]
        return {ITEM_IDS: ids[:, :K].copy(), SCORES: batch[RANKING_SCORES][:, :K].copy(),
                FALLBACK: np.zeros(len(ids), np.int8)}


def floor_plan(steps: int = 4) -> Plan:
    """The do-nothing ensemble: four steps shaped like the pipeline, or the two-step one."""
    if steps == 2:
        return Plan([("echo_user", EchoUser()), ("pass_through", PassThrough())],
                    response=(ITEM_IDS, SCORES))
    return Plan([("floor_retrieval", Candidates()), ("floor_filtering", Keep()),
                 ("floor_scoring", Zeros()), ("floor_ordering", First())])
