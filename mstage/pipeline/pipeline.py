"""Pipeline: a Plan run in-process, each stage checked exactly as the Triton runner checks it.

Each stage adds its outputs to a shared batch of columns, so a later stage can read any
earlier column (the user features read by retrieval travel on to scoring). `run` returns
the final columns and, per stage, the time spent and the candidate counts in and out.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mstage.columns import PAD, ColumnSpec, check_batch
from mstage.pipeline.plan import Plan
from mstage.pipeline.stage import run_stage


@dataclass(frozen=True)
class StageTiming:
    name: str
    seconds: float
    items_in: int
    items_out: int


class Pipeline:
    """Runs a Plan's stages in order over one batch of requests."""

    def __init__(self, plan: Plan):
        self.plan = plan

    def run(
        self, batch: dict[str, np.ndarray], pinned: dict[str, np.ndarray] | None = None
    ) -> tuple[dict[str, np.ndarray], list[StageTiming]]:
        """All columns after the last stage, and one StageTiming per stage.

        `pinned` columns win over what any stage writes under the same name (offline
        evaluation pins `recent_items` to each user's train items).
        """
        check_batch(self.plan.inputs, batch, "request")
        pinned = pinned or {}
        columns = dict(batch) | pinned
        timings = []
        for step in self.plan.steps:
            stage = step.stage
            declared_in, declared_out = stage.declared
            inputs = {s.name: columns[s.name] for s in declared_in if s.name in columns}
            items_in = _candidate_count(columns, _candidates_column(declared_in))
            started = time.perf_counter()
            out = run_stage(stage, inputs, f"stage {step.name}")
            seconds = time.perf_counter() - started
            columns.update(out)
            columns.update(pinned)
            produced = _candidates_column(declared_out)
            items_out = items_in if produced is None else _candidate_count(out, produced)
            timings.append(StageTiming(step.name, seconds, items_in, items_out))
        return columns, timings


def _candidate_count(batch: dict[str, np.ndarray], column: str | None) -> int:
    if column is None or column not in batch:
        return 0
    return int((batch[column] != PAD).sum())


def _candidates_column(specs: Sequence[ColumnSpec]) -> str | None:
    """The stage's candidate-id column: the first 2-D int64 column ending in `_ids`.

    A stage without one (scoring) passes its candidates through unchanged.
    """
    for spec in specs:
        if spec.name.endswith("_ids") and spec.dtype == "int64" and len(spec.shape) == 2:
            return spec.name
    return None
