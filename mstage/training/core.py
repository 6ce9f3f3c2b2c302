"""The training core: epochs with early stopping, the refit, the divergence check, the optimizer.

Both models follow the protocol of docs/evaluation.md: a validation phase trains on FIT and
scores VALID after every epoch, stopping once `patience` epochs pass without a better score;
the epoch count of the best score is then used to refit a fresh model on all of train
(FIT + VALID). Models supply a `Phase` (one epoch of training, and for validation a score);
this module runs the epochs, so the loop, the stopping rule and the divergence check exist once.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from mstage.errors import ConfigError, QualityGateFailed, TrainingDiverged
from mstage.progress import Reporter


@dataclass
class Phase:
    """One freshly built model of one phase. `epoch()` trains one pass over its train rows and
    returns the mean loss (NaN or infinite when training diverged); `validate()`, in the
    validation phase only, scores the model on held-out rows (larger is better). `model` is
    whatever the caller wants back once the refit is done (`Training.model`)."""

    epoch: Callable[[], float]
    validate: Callable[[], float] | None = None
    model: Any = None


@dataclass(frozen=True)
class Schedule:
    """How long to train and what to call things.

    `epochs` is the most the validation phase runs (and what the refit runs when there is no
    validation); `metric` names the validation score in the progress display; `diverged(loss,
    epoch)` is the message of the TrainingDiverged raised on a non-finite loss; `descriptions`
    name the validation and refit progress tasks."""

    epochs: int
    patience: int
    metric: str
    diverged: Callable[[float, int], str]
    descriptions: tuple[str, str] = ("validation", "refit")


@dataclass
class EpochLog:
    epoch: int
    loss: float
    seconds: float  # training time of the epoch, validation excluded
    score: float | None = None  # validation score after the epoch


@dataclass
class Training:
    """What the core measured: the validation curve, the epoch count chosen, and the refit's
    epochs, wall time and `Phase.model` (empty, 0 and None when the refit was not run)."""

    validation: list[EpochLog]
    best_epoch: int
    best_score: float | None
    refit: list[EpochLog] = field(default_factory=list)
    refit_seconds: float = 0.0
    model: Any = None


def best(logs: Sequence[EpochLog]) -> EpochLog:
    """The epoch with the highest validation score; the earliest of equal scores."""
    return max(logs, key=lambda log: log.score)


def run_epochs(phase: Phase, epochs: int, schedule: Schedule, reporter: Reporter,
               description: str) -> list[EpochLog]:
    """Train `phase` for up to `epochs` epochs; with `phase.validate`, stop once
    `schedule.patience` epochs pass without beating the best score. Raises TrainingDiverged
    on a non-finite loss."""
    logs: list[EpochLog] = []
    with reporter.task(description, total=epochs) as task:
        for epoch in range(1, epochs + 1):
            started = time.perf_counter()
            loss = float(phase.epoch())
            if not math.isfinite(loss):
                raise TrainingDiverged(schedule.diverged(loss, epoch))
            log = EpochLog(epoch, loss, time.perf_counter() - started)
            logs.append(log)
            if phase.validate is None:
                task.advance(1, loss=loss)
                continue
            log.score = float(phase.validate())
            task.advance(1, loss=loss, **{schedule.metric: log.score})
            if epoch - best(logs).epoch >= schedule.patience:
                break
    return logs


def validate_then_refit(validation: Callable[[], Phase | None],
                        refit: Callable[[], Phase] | None, schedule: Schedule,
                        reporter: Reporter) -> Training:
    """The protocol: build and train the validation phase (`validation()` returns None when
    there is nothing to validate on: then the refit runs all `schedule.epochs`), then build and
    train the refit phase for the best epoch count. `refit=None` stops after validation."""
    phase = validation()
    history: list[EpochLog] = []
    result = Training(history, schedule.epochs, None)
    if phase is not None:
        history += run_epochs(phase, schedule.epochs, schedule, reporter,
                              schedule.descriptions[0])
        top = best(history)
        result.best_epoch, result.best_score = top.epoch, top.score
    if refit is None:
        return result
    phase = refit()
    started = time.perf_counter()
    result.refit = run_epochs(Phase(phase.epoch), result.best_epoch, schedule, reporter,
                              schedule.descriptions[1])
    result.refit_seconds = time.perf_counter() - started
    result.model = phase.model
    return result


@dataclass(frozen=True)
class GateCheck:
    """The check a retrained model passes before it is published: its validation `metric`
    (`model`) must be above the `baseline`'s on the same validation rows. `skipped` says why
    validation could not decide (too few users or rows); such a model is published."""

    metric: str
    model: float | None
    baseline: float | None
    baseline_name: str
    skipped: str | None = None


def quality_gate(check: GateCheck, kept: str, hint: str, force: bool) -> tuple[str, str | None]:
    """("passed" | "forced" | "skipped", a note to warn with or None). Raises QualityGateFailed
    when the model is not above the baseline and not `force`: `kept` says what happens to
    the published artifact ("the previous retrieval artifact is kept"), `hint` what to try."""
    if check.skipped is not None or check.model is None or check.baseline is None:
        return "skipped", f"quality gate skipped: {check.skipped or 'no validation score'}"
    if check.model > check.baseline:
        return "passed", None
    found = (f"expected validation {check.metric} above {check.baseline_name}'s "
             f"{check.baseline:.4f}, found {check.model:.4f}")
    if force:
        return "forced", f"{found}; published anyway (--force)"
    raise QualityGateFailed(f"{found}; {kept}; {hint}, or publish anyway with --force")


def make_optimizer(name: str, learning_rate: float, variables: list,
                   key: str = "optimizer"):
    """The optimizer `name` (adagrad, sgd or adam) over `variables`: a SparseOptimizer, whose
    `apply(grads)` runs inside a tf.function. `key` names the setting in the error."""
    from mstage.models.optimizers import OPTIMIZERS, SparseOptimizer

    if name not in OPTIMIZERS:
        raise ConfigError(f"expected {key} in {', '.join(OPTIMIZERS)}, found {name!r}")
    return SparseOptimizer(name, learning_rate, variables)


def fit_and_publish(ws, artifact, config, fit: Callable, advice: str, force: bool):
    """Fit on the workspace's prepared data into a staging directory and publish it as
    `artifact` (config and metrics in the manifest) unless the quality gate refuses it:
    then, as on any failure, the previous artifact stays. `fit(data, directory)` returns a
    run with `gate_check()`, `metrics()` and `notes`; `advice` is what to try on refusal."""
    from mstage.config import as_dict
    from mstage.data.schema import PreparedData
    from mstage.workspace import Artifact

    data = PreparedData(ws.require(Artifact.DATA))
    kept = (f"the previous {artifact.dirname} artifact is kept" if ws.exists(artifact)
            else f"no {artifact.dirname} artifact is published")
    with ws.build(artifact) as b:
        run = fit(data, b.dir)
        run.quality_gate, note = quality_gate(run.gate_check(), kept, advice, force)
        if note is not None:
            run.notes.append(note)
        b.config = as_dict(config)
        b.metrics = run.metrics()
    return run
