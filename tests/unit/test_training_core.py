"""The training core: early stopping, refit epoch count, divergence and optimizer errors, with
scripted phases instead of models."""

import pytest

from mstage.errors import ConfigError, QualityGateFailed, TrainingDiverged
from mstage.progress import SilentReporter
from mstage.training.core import (
    GateCheck,
    Phase,
    Schedule,
    make_optimizer,
    quality_gate,
    validate_then_refit,
)


def _schedule(epochs=10, patience=2):
    return Schedule(epochs, patience, "val_score",
                    lambda loss, epoch: f"found {loss} at epoch {epoch}")


class Scripted:
    """A phase whose losses and validation scores are given per epoch."""

    def __init__(self, losses, scores=None):
        self.losses, self.scores, self.epochs = list(losses), scores, 0

    def epoch(self):
        self.epochs += 1
        return self.losses[self.epochs - 1]

    def phase(self, model=None):
        validate = (lambda: self.scores[self.epochs - 1]) if self.scores else None
        return Phase(self.epoch, validate, model)


def test_stops_after_patience_and_refits_for_the_best_epoch_count():
    # scores peak at epoch 2 (0.7); epochs 3 and 4 do not beat it -> stop after 4 (patience 2)
    valid = Scripted([1.0] * 10, [0.5, 0.7, 0.6, 0.7, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9])
    refit = Scripted([1.0] * 10)
    result = validate_then_refit(valid.phase, lambda: refit.phase("model"), _schedule(),
                                 SilentReporter())
    assert [log.epoch for log in result.validation] == [1, 2, 3, 4]
    assert result.best_epoch == 2 and result.best_score == 0.7  # ties keep the earliest
    assert refit.epochs == 2 and len(result.refit) == 2 and result.model == "model"


def test_without_validation_the_refit_runs_every_epoch():
    refit = Scripted([1.0] * 5)
    result = validate_then_refit(lambda: None, refit.phase, _schedule(epochs=5),
                                 SilentReporter())
    assert result.validation == [] and result.best_score is None
    assert result.best_epoch == 5 and refit.epochs == 5


def test_validation_only_skips_the_refit():
    valid = Scripted([1.0] * 3, [0.1, 0.2, 0.3])
    result = validate_then_refit(valid.phase, None, _schedule(epochs=3), SilentReporter())
    assert result.best_epoch == 3 and result.refit == [] and result.model is None


@pytest.mark.parametrize("loss", [float("nan"), float("inf")])
def test_non_finite_loss_raises_the_models_message(loss):
    valid = Scripted([0.5, loss], [0.1, 0.2])
    with pytest.raises(TrainingDiverged, match=f"found {loss} at epoch 2"):
        validate_then_refit(valid.phase, None, _schedule(), SilentReporter())


def test_unknown_optimizer_names_the_setting():
    with pytest.raises(ConfigError,
                       match="expected ranking.optimizer in adagrad, sgd, adam, found 'rmsprop'"):
        make_optimizer("rmsprop", 0.1, [], key="ranking.optimizer")


# the quality gate ----------------------------------------------------------------------------
def _gate(model, baseline, skipped=None, force=False):
    return quality_gate(GateCheck("recall@20", model, baseline, "popularity", skipped),
                        "the previous retrieval artifact is kept", "check --learning-rate",
                        force)


def test_gate_passes_a_model_above_the_baseline():
    assert _gate(0.3, 0.2) == ("passed", None)


@pytest.mark.parametrize("model", [0.1, 0.2])  # equal is not above
def test_gate_refuses_a_model_not_above_the_baseline_naming_both_numbers(model):
    with pytest.raises(QualityGateFailed) as caught:
        _gate(model, 0.2)
    assert str(caught.value) == (
        f"expected validation recall@20 above popularity's 0.2000, found {model:.4f}; the "
        "previous retrieval artifact is kept; check --learning-rate, or publish anyway with "
        "--force")
    assert caught.value.exit_code == 1


def test_forced_gate_publishes_with_a_warning():
    state, note = _gate(0.1, 0.2, force=True)
    assert state == "forced"
    assert note == ("expected validation recall@20 above popularity's 0.2000, found 0.1000; "
                    "published anyway (--force)")


def test_gate_without_enough_validation_is_skipped_with_a_note():
    assert _gate(0.0, 0.5, skipped="3 validation users") == (
        "skipped", "quality gate skipped: 3 validation users")
    assert _gate(None, None)[0] == "skipped"
