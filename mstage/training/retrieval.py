"""`train_retrieval`: the two-tower protocol of docs/evaluation.md, end to end.

Validation phase (train on FIT, score VALID) picks the epoch count by early stopping on
recall@20; the model is then refit on all of train (FIT + VALID) for that many epochs and
measured on TEST beside popularity. The refit model is what gets exported and published.
With a history, each training pair sees only the user's items before it, and each evaluated
user is queried with their last items of the phase's train rows: nothing from the future.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mstage.config import RetrievalConfig
from mstage.data.lookup import IdLookup
from mstage.data.schema import FIT, TEST, VALID, PreparedData, fold_column
from mstage.errors import InputError
from mstage.models import distribute
from mstage.models.encoders import FeatureEncoders
from mstage.models.history import latest_items, prior_items
from mstage.models.retrieval_artifact import ValidationCandidates, write_validation_candidates
from mstage.models.tensorflow_runtime import import_keras
from mstage.models.two_tower import TowerParams, TowerTrainer, TwoTower
from mstage.progress import SILENT, Reporter
from mstage.training.core import (
    GateCheck,
    Phase,
    Schedule,
    fit_and_publish,
    make_optimizer,
    validate_then_refit,
)
from mstage.workspace import Artifact, Workspace

EARLY_STOPPING_METRIC = "recall@20"
BLEND_CANDIDATES = 200
"""Candidates kept per validation user for train-ranking's choice of the ordering blend (the
default `--candidates` of build-ensemble)."""
TEST_KS = (10, 20, 100)
# Fewer validation users than this cannot tell a model from popularity: the gate is skipped.
MIN_GATE_USERS = 10


@dataclass
class RetrievalRun:
    """What training measured: test metrics of the model and of popularity, the validation
    curve, the epoch count chosen, timings and anything adjusted on the way (`notes`)."""

    test: dict[str, float]
    popularity: dict[str, float]
    validation: list[dict[str, float]]
    best_epoch: int
    batch_size: int
    train_seconds: float
    examples_per_second: float
    stats: dict[str, int]
    notes: list[str] = field(default_factory=list)
    validation_popularity: float | None = None  # popularity's recall@20 on VALID
    validation_users: int = 0
    quality_gate: str | None = None  # passed, forced or skipped (set by train_retrieval)

    def gate_check(self) -> GateCheck:
        """Validation recall@20 of the best epoch against popularity's on the same users."""
        model = max((v[EARLY_STOPPING_METRIC] for v in self.validation), default=None)
        skipped = None
        if model is None or self.validation_popularity is None:
            skipped = "no validation phase ran"
        elif self.validation_users < MIN_GATE_USERS:
            skipped = (f"{self.validation_users} validation users, fewer than the "
                       f"{MIN_GATE_USERS} needed to compare with popularity")
        return GateCheck(EARLY_STOPPING_METRIC, model, self.validation_popularity,
                         "popularity", skipped)

    def metrics(self) -> dict[str, Any]:
        """Flat metrics for the manifest."""
        keep = ("recall@10", "recall@20", "recall@100", "ndcg@10", "hitrate@10", "coverage@10")
        out: dict[str, Any] = {k: round(self.test[k], 6) for k in keep if k in self.test}
        out.update({f"popularity_{k}": round(self.popularity[k], 6) for k in keep
                    if k in self.popularity})
        out.update(best_epoch=self.best_epoch, evaluated_users=int(self.test.get("users", 0)),
                   examples_per_second=round(self.examples_per_second, 1),
                   train_seconds=round(self.train_seconds, 3))
        if self.validation:
            out[f"validation_{EARLY_STOPPING_METRIC}"] = round(
                max(v[EARLY_STOPPING_METRIC] for v in self.validation), 6)
        if self.validation_popularity is not None:
            out[f"validation_popularity_{EARLY_STOPPING_METRIC}"] = round(
                self.validation_popularity, 6)
            out["validation_users"] = self.validation_users
        if self.quality_gate is not None:
            out["quality_gate"] = self.quality_gate
        return out


class _Phase:
    """Encoders, encoded tables and training pairs (with each pair's prior history) for one
    phase's train rows, and each user's latest history to query with."""

    def __init__(self, data: PreparedData, train_rows: np.ndarray, history: int):
        positives = data.positives().iloc[train_rows]  # by user, then time
        self.encoders = FeatureEncoders.fit(data.users, data.items, data.schema,
                                            interactions=positives)
        self.user_ids = data.users["user_id"].to_numpy(np.int64)
        self.item_ids = data.items["item_id"].to_numpy(np.int64)
        self.users = self.encoders.encode_users(data.users)
        self.items = self.encoders.encode_items(data.items)
        self.user_lookup, self.item_lookup = IdLookup(self.user_ids), IdLookup(self.item_ids)
        self.user_rows = _rows(self.user_lookup, positives["user_id"].to_numpy(np.int64), "user")
        self.item_rows = _rows(self.item_lookup, positives["item_id"].to_numpy(np.int64), "item")
        self.histories, self.latest = None, None
        if history > 0:
            codes = self.items["item_id"][self.item_rows]
            self.histories = prior_items(self.user_rows, codes, history)
            users, latest = latest_items(self.user_rows, codes, history)
            self.latest = np.zeros((len(self.user_ids), history), dtype=np.int32)
            self.latest[users] = latest

    def model(self, params: TowerParams, seed: int) -> TwoTower:
        keras = import_keras()

        keras.utils.set_random_seed(seed)
        with distribute.scope():
            return TwoTower(self.encoders, params, self.users, self.items)

    def trainer(self, model: TwoTower, batch_size: int, config: RetrievalConfig) -> TowerTrainer:
        with distribute.scope():
            optimizer = make_optimizer(config.optimizer, config.learning_rate,
                                       model.trainable_variables, key="retrieval.optimizer")
        return TowerTrainer(model, self.user_rows, self.item_rows, optimizer, batch_size,
                            config.seed, self.histories)

    def score_fn(self, model: TwoTower, catalog: np.ndarray):
        """user ids [b] -> inner products [b, n_catalog] with the catalog's item embeddings."""
        catalog_emb = model.item_embeddings(_rows(self.item_lookup, catalog, "item"))

        def score(user_ids: np.ndarray) -> np.ndarray:
            rows = _rows(self.user_lookup, user_ids, "user")
            latest = None if self.latest is None else self.latest[rows]
            return model.user_embeddings(rows, latest) @ catalog_emb.T

        return score


def _rows(lookup: IdLookup, ids: np.ndarray, side: str) -> np.ndarray:
    """[n] ids -> [n] int64 rows of the users / items table; InputError when an id has no row."""
    ids = np.asarray(ids, np.int64)
    rows, known = lookup.find(ids)
    if not known.all():
        bad = ~known
        raise InputError(
            f"expected every interaction's {side}_id in {side}s.parquet, found "
            f"{int(np.sum(bad))} missing (e.g. {int(ids[bad][0])}); "
            "run `mstage prepare-data` again"
        )
    return rows


def _batch_size(requested: int, n_positives: int, notes: list[str],
                reporter: Reporter) -> int:
    if n_positives < 2:
        raise InputError(
            f"expected at least 2 positive training interactions for in-batch negatives, "
            f"found {n_positives}; add data and run `mstage prepare-data` again"
        )
    if requested <= n_positives:
        return requested
    shrunk = 1 << (n_positives.bit_length() - 1)  # largest power of two that fits
    note = (f"--batch-size {requested} exceeds the {n_positives} training positives; "
            f"using {shrunk}")
    notes.append(note)
    reporter.log(f"warning: {note}")
    return shrunk


def tower_params(config: RetrievalConfig) -> TowerParams:
    return TowerParams(embedding_dim=config.embedding_dim, feature_dim=config.feature_dim,
                       hidden_units=tuple(config.hidden_units), temperature=config.temperature,
                       history=config.history)


def schedule(config: RetrievalConfig) -> Schedule:
    def diverged(loss: float, epoch: int) -> str:
        return (f"expected a finite training loss, found {loss} at epoch {epoch}; "
                f"lower --learning-rate (now {config.learning_rate}) or raise --temperature "
                f"(now {float(config.temperature)}); the previous artifact is kept")

    return Schedule(config.epochs, config.patience, f"val_{EARLY_STOPPING_METRIC}", diverged,
                    ("train-retrieval: validation epoch", "train-retrieval: refit epoch"))


def fit_retrieval(data: PreparedData, config: RetrievalConfig, out_dir: Path | None = None,
                  reporter: Reporter = SILENT, validation_only: bool = False) -> RetrievalRun:
    """Run validation (early stopping), refit on all train, evaluate on test and, when
    `out_dir` is given, export the refit model there (see TwoTower.export).
    `validation_only` stops after the validation phase (for tuning)."""
    from mstage.evaluation.baselines import popularity
    from mstage.evaluation.protocol import (
        TopLists,
        build_eval_set,
        evaluate_scores,
        sample_users,
    )

    distribute.start()
    positives = data.positives()
    folds = positives[fold_column(config.split)].to_numpy()
    params = tower_params(config)
    notes: list[str] = []
    batch = _batch_size(config.batch_size, int(np.sum(folds != TEST)), notes, reporter)
    valid_set = sample_users(build_eval_set(data.interactions, config.split, "validation"),
                             config.validation_users, config.seed)
    fit_rows = np.flatnonzero(folds == FIT)
    best: dict[str, Any] = {}  # the best validation epoch's score and candidate lists

    def validation() -> Phase | None:
        if not (len(valid_set.users) and np.sum(folds == VALID) and len(fit_rows) >= 2):
            note = (f"no validation users on the {config.split} split; training the full "
                    f"{config.epochs} epochs without early stopping")
            notes.append(note)
            reporter.log(f"warning: {note}")
            return None
        phase = _Phase(data, fit_rows, config.history)
        model = phase.model(params, config.seed)
        trainer = phase.trainer(model, min(batch, len(fit_rows)), config)

        def validate() -> float:
            scores, lists = phase.score_fn(model, valid_set.catalog), TopLists(BLEND_CANDIDATES)
            score = evaluate_scores(valid_set, scores, ks=(20,), top_lists=lists)[
                EARLY_STOPPING_METRIC]
            if score > best.get("score", -np.inf):
                best.update(score=score, lists=lists)
            return score

        return Phase(trainer.epoch, validate)

    def refit() -> Phase:
        phase = _Phase(data, np.flatnonzero(folds != TEST), config.history)
        model = phase.model(params, config.seed)
        trainer = phase.trainer(model, batch, config)
        return Phase(trainer.epoch, model=(phase, model, trainer))

    training = validate_then_refit(validation, None if validation_only else refit,
                                   schedule(config), reporter)
    history = [{"epoch": log.epoch, EARLY_STOPPING_METRIC: log.score}
               for log in training.validation]
    best_epoch = training.best_epoch
    if validation_only:
        return RetrievalRun({}, {}, history, best_epoch, batch, 0.0, 0.0, {}, notes,
                            validation_users=len(valid_set.users))
    phase, model, trainer = training.model
    seconds = training.refit_seconds
    examples = len(training.refit) * trainer.examples_per_epoch

    valid_pop = None
    if history:  # popularity on the validation users, for the quality gate
        valid_pop = evaluate_scores(valid_set, popularity(valid_set),
                                    ks=(20,))[EARLY_STOPPING_METRIC]

    test_set = sample_users(build_eval_set(data.interactions, config.split, "test"),
                            config.test_users, config.seed)
    if len(test_set.users):
        test = evaluate_scores(test_set, phase.score_fn(model, test_set.catalog), TEST_KS)
        pop = evaluate_scores(test_set, popularity(test_set), TEST_KS)
    else:
        test, pop = {}, {}
        notes.append(f"no evaluated test users on the {config.split} split; no test metrics")
    if out_dir is not None:
        model.export(out_dir, phase.item_ids, {
            "best_epoch": best_epoch, "split": config.split, "optimizer": config.optimizer,
            "learning_rate": config.learning_rate, "batch_size": batch, "seed": config.seed,
            "early_stopping_metric": EARLY_STOPPING_METRIC,
        })
        if "lists" in best:
            write_validation_candidates(out_dir, ValidationCandidates(
                config.split, valid_set.users, best["lists"].item_ids, best["lists"].scores))
    return RetrievalRun(test, pop, history, best_epoch, batch, seconds,
                        examples / seconds if seconds > 0 else 0.0, test_set.stats, notes,
                        valid_pop, len(valid_set.users))


def train_retrieval(ws: Workspace, config: RetrievalConfig,
                    reporter: Reporter = SILENT, force: bool = False) -> RetrievalRun:
    """`mstage train-retrieval`: fit on the workspace's prepared data and publish the
    retrieval artifact (towers, encoders, item embeddings; config and metrics in the manifest).
    A failure keeps the previous artifact, and so does a model whose validation recall@20 is
    not above popularity's (QualityGateFailed) unless `force`."""
    return fit_and_publish(
        ws, Artifact.RETRIEVAL, config,
        lambda data, directory: fit_retrieval(data, config, directory, reporter),
        "check --learning-rate/--temperature", force)
