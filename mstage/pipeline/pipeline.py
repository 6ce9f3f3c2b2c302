"""Pipeline: an ordered list of operators, its wiring checked when built, run in-process.

Each stage adds its outputs to a shared batch of columns, so a later stage can read any
earlier column (the user features read by retrieval travel on to scoring). `run` returns
the final columns and, per stage, the time spent and the candidate counts in and out.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mstage.errors import ConfigError
from mstage.pipeline.operator import ColumnSpec, Operator, check_batch
from mstage.pipeline.ordering import PAD


@dataclass(frozen=True)
class StageTiming:
    name: str
    seconds: float
    items_in: int
    items_out: int


def _candidate_count(batch: dict[str, np.ndarray], column: str | None) -> int:
    if column is None or column not in batch:
        return 0
    return int((batch[column] != PAD).sum())


class Pipeline:
    """Operators run in order over one batch of requests; see the module docstring."""

    def __init__(self, stages: Sequence[tuple[str, Operator]], request: Sequence[ColumnSpec]):
        self.stages = list(stages)
        self.request = list(request)
        available = {c.name: c for c in self.request}
        for name, op in self.stages:
            for spec in op.inputs:
                if spec.name not in available and not spec.optional:
                    raise ConfigError(
                        f"stage {name!r} expects column {spec.name!r}, found only "
                        f"{sorted(available)} upstream; check the stage order"
                    )
            available.update({c.name: c for c in op.outputs})
        self.columns = available

    def run(
        self, batch: dict[str, np.ndarray], pinned: dict[str, np.ndarray] | None = None
    ) -> tuple[dict[str, np.ndarray], list[StageTiming]]:
        """All columns after the last stage, and one StageTiming per stage.

        `pinned` columns win over what any stage writes under the same name (offline
        evaluation pins `recent_items` to each user's train items).
        """
        check_batch(self.request, batch, "request")
        pinned = pinned or {}
        columns = dict(batch) | pinned
        timings = []
        for name, op in self.stages:
            inputs = {s.name: columns[s.name] for s in op.inputs if s.name in columns}
            items_in = _candidate_count(columns, _candidates_column(op.inputs))
            started = time.perf_counter()
            out = op(inputs)
            seconds = time.perf_counter() - started
            columns.update(out)
            columns.update(pinned)
            produced = _candidates_column(op.outputs)
            items_out = items_in if produced is None else _candidate_count(out, produced)
            timings.append(StageTiming(name, seconds, items_in, items_out))
        return columns, timings


def _candidates_column(specs: Sequence[ColumnSpec]) -> str | None:
    """The stage's candidate-id column: the first 2-D int64 column ending in `_ids`.

    A stage without one (scoring) passes its candidates through unchanged.
    """
    for spec in specs:
        if spec.name.endswith("_ids") and spec.dtype == "int64" and len(spec.shape) == 2:
            return spec.name
    return None
