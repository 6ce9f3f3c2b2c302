"""`Plan`: the ordered stages, their wiring and the request/response columns, checked once.

The in-process `Pipeline` and the Triton repository writer both take a Plan, so both wire
the same way: a stage reads each input from the latest earlier stage that wrote a column of
that name, else from the request. Building a plan checks that every input is produced
upstream with a compatible dtype and shape (errors name the column and what is available)
and that some stage writes every response column. No stage is loaded to do so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from mstage.columns import REQUEST, RESPONSE, ColumnSpec
from mstage.errors import ConfigError
from mstage.pipeline.stage import Stage


@dataclass
class Step:
    """One stage in the plan and where each of its inputs comes from (None: the request)."""

    name: str
    stage: Stage
    sources: dict[str, str | None] = field(default_factory=dict)  # input -> producing step


class Plan:
    """Stages in order, wired by column name; see the module docstring."""

    def __init__(self, stages: Sequence[tuple[str, Stage]],
                 request: Sequence[ColumnSpec] = REQUEST, response: Sequence[str] = RESPONSE):
        if not stages:
            raise ConfigError("expected at least one stage in a plan, found none")
        names = [n for n, _ in stages]
        if len(set(names)) != len(names):
            raise ConfigError(f"expected distinct stage names, found {names}")
        self.request = list(request)
        self.response = list(response)
        available: dict[str, tuple[ColumnSpec, str | None]] = {c.name: (c, None) for c in request}
        self.steps: list[Step] = []
        readers: dict[str, list[ColumnSpec]] = {}
        for name, stage in stages:
            step = Step(name, stage)
            for spec in stage.inputs:
                if spec.name not in available:
                    if spec.optional:
                        continue
                    raise ConfigError(
                        f"stage {name!r} expects column {spec.describe()}, found no earlier "
                        f"stage or request input writing it; available: {sorted(available)}")
                source, producer = available[spec.name]
                _check_compatible(source, spec, name)
                step.sources[spec.name] = producer
                if producer is None:
                    readers.setdefault(spec.name, []).append(spec)
            for spec in stage.outputs:
                available[spec.name] = (spec, name)
            self.steps.append(step)
        self.columns = {column: spec for column, (spec, _) in available.items()}
        self.last_writer = {column: producer for column, (_, producer) in available.items()
                            if producer is not None}
        missing = [c for c in self.response if c not in self.last_writer]
        if missing:
            raise ConfigError(f"expected a stage writing response output {missing[0]!r}, found "
                              f"stages writing only {sorted(self.last_writer)}")
        # A request column is optional only when every stage reading it says so.
        self.inputs = [
            ColumnSpec(c.name, c.dtype, c.shape, optional=all(r.optional for r in readers[c.name]))
            for c in self.request if c.name in readers
        ]
        self.outputs = [self.columns[c] for c in self.response]

    @property
    def stages(self) -> list[tuple[str, Stage]]:
        return [(s.name, s.stage) for s in self.steps]

    def stage(self, name: str) -> Stage:
        return next(s.stage for s in self.steps if s.name == name)


def _check_compatible(source: ColumnSpec, target: ColumnSpec, stage: str) -> None:
    same_rank = len(source.shape) == len(target.shape)
    if source.dtype != target.dtype or not same_rank or any(
        -1 not in (a, b) and a != b for a, b in zip(source.shape, target.shape, strict=False)
    ):
        raise ConfigError(f"stage {stage!r} expects column {target.describe()}, found "
                          f"{source.describe()} upstream")
