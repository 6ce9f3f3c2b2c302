"""Training the DLRM ranker: rows and negatives, the trainer, and the evaluation protocol.

Validation phase on FIT with early stopping on VALID AUC, then a refit on all of train for
the best epoch count, then test AUC and log loss beside an item-rate baseline
(docs/train-ranking.md). The network and its export are in `mstage.models.dlrm`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mstage.errors import InputError
from mstage.models.dlrm import (
    BOTTOM_UNITS,
    PREDICT_BATCH,
    TOP_UNITS,
    build_dlrm,
    export_dlrm,
    input_signature,
    model_specs,
)
from mstage.models.encoders import FeatureEncoders
from mstage.models.tensorflow_runtime import import_keras, import_tensorflow

VALID_NEGATIVES_SEED = 1_000_003
TEST_NEGATIVES_SEED = 2_000_003
BASELINE_PRIOR_WEIGHT = 10.0
OPTIMIZERS = ("adagrad", "adam", "sgd")


@dataclass
class Rows:
    """Labelled (user, item) rows as positions in the encoded tables; all arrays [n]."""

    user_rows: np.ndarray
    item_rows: np.ndarray
    labels: np.ndarray  # float32, 1 = click / positive

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, index: np.ndarray) -> Rows:
        return Rows(self.user_rows[index], self.item_rows[index], self.labels[index])

    @staticmethod
    def concat(*parts: Rows) -> Rows:
        return Rows(*(np.concatenate([getattr(p, f) for p in parts])
                      for f in ("user_rows", "item_rows", "labels")))


def _lookup_rows(sorted_ids: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Positions of `ids` in `sorted_ids`; ids not there map to len(sorted_ids), the
    all-zero 'unknown' row appended to every encoded table."""
    ids = np.asarray(ids, dtype=np.int64)
    if len(sorted_ids) == 0:
        return np.zeros(len(ids), dtype=np.int64)
    pos = np.clip(np.searchsorted(sorted_ids, ids), 0, len(sorted_ids) - 1)
    return np.where(sorted_ids[pos] == ids, pos, len(sorted_ids)).astype(np.int64)


def _with_unknown_row(encoded: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([v, np.zeros((1, *v.shape[1:]), dtype=v.dtype)])
            for k, v in encoded.items()}


class RankingProblem:
    """Encoded user / item tables and the labelled rows of one (train, evaluation) fold pair.

    Train rows are the train fold's rows (impressions with their clicks, or positives on
    implicit data) plus `negatives` catalog items sampled per positive, drawn afresh every
    epoch. On labelled data those sampled negatives matter as much as on implicit data:
    impressions show the ranker only items an earlier system chose to show, while online it
    must also score the unshown items retrieval brings. Evaluation rows: the evaluation
    fold's impressions on labelled data (comparable with the item-CTR baseline); on implicit
    data its positives on train-catalog items plus negatives drawn once with a fixed seed,
    excluding every positive of the user up to and including the evaluation fold.
    """

    def __init__(self, data, train_mask: np.ndarray, eval_mask: np.ndarray,
                 known_mask: np.ndarray, negatives: int, eval_seed: int):
        from mstage.models.negatives import NegativeSampler, PositiveSet

        frame = data.interactions
        self.labelled = bool(data.schema.has_label)
        train = frame[train_mask]
        self.encoders = FeatureEncoders.fit(data.users, data.items, data.schema,
                                            interactions=train)
        users = data.users.sort_values("user_id")
        items = data.items.sort_values("item_id")
        self.user_ids = users["user_id"].to_numpy(dtype=np.int64)
        self.item_ids = items["item_id"].to_numpy(dtype=np.int64)
        self.users = _with_unknown_row(self.encoders.encode_users(users))
        self.items = _with_unknown_row(self.encoders.encode_items(items))
        self.negatives = negatives

        def rows_of(mask: np.ndarray) -> Rows:
            part = frame[mask]
            return Rows(_lookup_rows(self.user_ids, part["user_id"].to_numpy()),
                        _lookup_rows(self.item_ids, part["item_id"].to_numpy()),
                        part["label"].to_numpy().astype(np.float32))

        self._train_rows = rows_of(train_mask)
        self._train_positives = self._train_rows.take(self._train_rows.labels == 1)
        evaluation = rows_of(eval_mask)
        n_rows = len(self.item_ids) + 1
        counts = np.bincount(self._train_positives.item_rows, minlength=n_rows)
        counts[-1] = 0  # the unknown row is never a candidate
        # Labelled data: every item may be a sampled negative (never-clicked items are the
        # unshown candidates retrieval brings); implicit data: the train catalog.
        self.catalog = np.arange(n_rows - 1) if self.labelled else np.flatnonzero(counts)
        self.sampler = NegativeSampler(counts[self.catalog].astype(np.float64),
                                       items=self.catalog)
        self._train_known = PositiveSet.from_pairs(self._train_positives.user_rows,
                                                   self._train_positives.item_rows, n_rows)
        if self.labelled:
            self.eval_rows = evaluation
            return
        known = rows_of(known_mask)
        eval_known = PositiveSet.from_pairs(known.user_rows, known.item_rows, n_rows)
        in_catalog = counts[evaluation.item_rows] > 0
        self.eval_rows = self._with_negatives(evaluation.take(in_catalog), eval_known,
                                              np.random.default_rng(eval_seed))

    def _negatives(self, positives: Rows, known, rng: np.random.Generator) -> Rows:
        """`negatives` sampled catalog items per positive row, never a known positive."""
        neg_users, neg_items = self.sampler.sample(positives.user_rows, self.negatives, known, rng)
        return Rows(neg_users, neg_items, np.zeros(len(neg_users), dtype=np.float32))

    def _with_negatives(self, positives: Rows, known, rng: np.random.Generator) -> Rows:
        return Rows.concat(positives, self._negatives(positives, known, rng))

    def given_rows(self, rng: np.random.Generator) -> Rows:
        """Rows whose labels must hold both classes: the clicks as given on labelled data
        (sampled negatives would hide all-1 labels), positives plus negatives otherwise."""
        return self._train_rows if self.labelled else self.train_rows(rng)

    def train_rows(self, rng: np.random.Generator) -> Rows:
        """The rows of one epoch: the train fold plus freshly sampled catalog negatives."""
        return Rows.concat(self._train_rows,
                           self._negatives(self._train_positives, self._train_known, rng))

    def features(self, rows: Rows, index: np.ndarray | slice) -> dict[str, np.ndarray]:
        """Encoded model inputs for rows[index]: user table and item table gathered."""
        u, i = rows.user_rows[index], rows.item_rows[index]
        return {**{k: v[u] for k, v in self.users.items()},
                **{k: v[i] for k, v in self.items.items()}}


class ItemRateBaseline:
    """Per-item positive rate on the training rows, smoothed towards the global rate:
    (positives + w * prior) / (rows + w). On labelled data this is the item's CTR; on
    implicit data it orders items like their popularity."""

    def __init__(self, rows: Rows, n_item_rows: int, prior_weight: float = BASELINE_PRIOR_WEIGHT):
        shown = np.bincount(rows.item_rows, minlength=n_item_rows).astype(np.float64)
        clicked = np.bincount(rows.item_rows, weights=rows.labels, minlength=n_item_rows)
        self.prior = float(rows.labels.mean()) if len(rows) else 0.0
        self.rate = (clicked + prior_weight * self.prior) / (shown + prior_weight)
        self.popularity = clicked

    def predict(self, rows: Rows) -> np.ndarray:
        return self.rate[rows.item_rows]


def _optimizer(name: str, learning_rate: float):
    keras = import_keras()

    from mstage.errors import ConfigError

    if name not in OPTIMIZERS:
        raise ConfigError(f"expected ranking.optimizer in {', '.join(OPTIMIZERS)}, found {name!r}")
    return {"adagrad": keras.optimizers.Adagrad, "adam": keras.optimizers.Adam,
            "sgd": keras.optimizers.SGD}[name](learning_rate=learning_rate)


class Trainer:
    """A DLRM, its optimizer and compiled train / predict steps for one RankingProblem."""

    def __init__(self, problem: RankingProblem, config):
        keras = import_keras()
        tf = import_tensorflow()

        keras.utils.set_random_seed(config.seed)
        self.problem, self.config = problem, config
        specs = model_specs(problem.encoders)
        self.model = build_dlrm(specs, config.embedding_dim)
        self.optimizer = _optimizer(config.optimizer, config.learning_rate)
        signature = input_signature(specs)
        model, optimizer = self.model, self.optimizer

        @tf.function(input_signature=[signature, tf.TensorSpec((None,), tf.float32)])
        def train_step(features, labels):
            with tf.GradientTape() as tape:
                logits = model(features, training=True)
                loss = tf.reduce_mean(
                    tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits))
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
            return loss

        @tf.function(input_signature=[signature])
        def predict_step(features):
            return tf.sigmoid(model(features, training=False))

        self._train_step, self._predict_step = train_step, predict_step

    def epoch(self, rng: np.random.Generator) -> float:
        """One pass over freshly shuffled train rows; returns the mean loss (may be NaN)."""
        rows = self.problem.train_rows(rng)
        order = rng.permutation(len(rows))
        batch, total = self.config.batch_size, 0.0
        for start in range(0, len(order), batch):
            index = order[start:start + batch]
            features = self.problem.features(rows, index)
            loss = float(self._train_step(features, rows.labels[index]))
            total += loss * len(index)
            if not np.isfinite(loss):
                return loss
        return total / max(len(rows), 1)

    def predict(self, rows: Rows) -> np.ndarray:
        """float64 [n] click probabilities for rows."""
        out = [self._predict_step(self.problem.features(rows, slice(i, i + PREDICT_BATCH)))
               .numpy() for i in range(0, len(rows), PREDICT_BATCH)]
        return np.concatenate(out).astype(np.float64) if out else np.zeros(0)


def _check_finite(loss: float, epoch: int, learning_rate: float) -> None:
    from mstage.errors import TrainingDiverged

    if not np.isfinite(loss):
        raise TrainingDiverged(
            f"expected a finite training loss, found {loss} in epoch {epoch} with learning rate "
            f"{learning_rate}; the previous ranking model is kept; run `mstage train-ranking` "
            f"again with a lower --learning-rate (e.g. {learning_rate / 10:g})"
        )


def _check_labels(rows: Rows, what: str) -> None:
    positives = int(rows.labels.sum())
    if len(rows) == 0:
        raise InputError(f"expected {what} rows to train the ranker, found none; "
                         "run `mstage prepare-data` with more interactions")
    if positives in (0, len(rows)):
        value = 1 if positives else 0
        raise InputError(
            f"expected both clicks (1) and non-clicks (0) in the {what} labels, found all "
            f"{len(rows)} rows labelled {value}; a click model cannot learn from one class: "
            "fix the label column given to `mstage prepare-data`, or drop it to sample negatives"
        )


def _has_both_classes(rows: Rows) -> bool:
    return 0 < rows.labels.sum() < len(rows)


def train_ranking(data, config, out_dir: Path, reporter=None) -> dict[str, Any]:
    """Train, evaluate and export a DLRM into `out_dir`; returns the metrics.

    Protocol (docs/evaluation.md): train on FIT, pick the epoch count by validation AUC on
    VALID (early stopping with `config.patience`), then refit a fresh model on FIT + VALID
    for that many epochs and report test AUC / log loss beside the item-rate baseline.
    """
    from mstage.config import RankingConfig
    from mstage.data.schema import FIT, SPLITS, TEST, VALID, fold_column
    from mstage.errors import ConfigError
    from mstage.models.metrics import auc, log_loss
    from mstage.progress import SILENT

    reporter = reporter or SILENT
    config = config or RankingConfig()
    if config.split not in SPLITS:
        raise ConfigError(f"expected ranking.split in {', '.join(SPLITS)}, found {config.split!r}")
    _optimizer(config.optimizer, config.learning_rate)  # fail on a bad name before any work
    if fold_column(config.split) not in data.interactions.columns:
        raise InputError(f"expected a {fold_column(config.split)} column in the prepared "
                         "interactions, found none; run `mstage prepare-data` again")
    folds = data.fold(config.split)
    rng = np.random.default_rng(config.seed)
    history: list[dict[str, float]] = []

    best_epochs, best_auc = config.epochs, None
    validation = RankingProblem(data, folds == FIT, folds == VALID, folds != TEST,
                                config.negatives, VALID_NEGATIVES_SEED)
    _check_labels(validation.given_rows(np.random.default_rng(config.seed)), "FIT")
    if _has_both_classes(validation.eval_rows):
        trainer = Trainer(validation, config)
        stale = 0
        with reporter.task("train-ranking: fit, validate", total=config.epochs) as task:
            for epoch in range(1, config.epochs + 1):
                loss = trainer.epoch(rng)
                _check_finite(loss, epoch, config.learning_rate)
                val_auc = auc(validation.eval_rows.labels, trainer.predict(validation.eval_rows))
                history.append({"epoch": epoch, "loss": loss, "valid_auc": val_auc})
                task.advance(1, loss=loss, valid_auc=val_auc)
                if best_auc is None or val_auc > best_auc:
                    best_epochs, best_auc, stale = epoch, val_auc, 0
                else:
                    stale += 1
                    if stale >= config.patience:
                        break
    else:
        reporter.log("validation rows lack both classes; training for all --epochs "
                     "without early stopping")

    final = RankingProblem(data, folds != TEST, folds == TEST, np.ones(len(folds), bool),
                           config.negatives, TEST_NEGATIVES_SEED)
    first_rows = final.given_rows(np.random.default_rng(config.seed))
    _check_labels(first_rows, "train")
    test = final.eval_rows
    if not _has_both_classes(test):
        raise InputError(
            f"expected test rows with both classes to measure AUC, found {len(test)} rows and "
            f"{int(test.labels.sum())} positives; use more data or another ranking.split"
        )
    trainer = Trainer(final, config)
    with reporter.task("train-ranking: refit on train", total=best_epochs) as task:
        for epoch in range(1, best_epochs + 1):
            loss = trainer.epoch(rng)
            _check_finite(loss, epoch, config.learning_rate)
            task.advance(1, loss=loss)
    probs = trainer.predict(test)
    baseline = ItemRateBaseline(first_rows, len(final.item_ids) + 1)
    baseline_scores = baseline.predict(test) if final.labelled else \
        baseline.popularity[test.item_rows]
    metrics = {
        "test_auc": auc(test.labels, probs),
        "test_log_loss": log_loss(test.labels, probs),
        "baseline": "item CTR (smoothed)" if final.labelled else "item popularity",
        "baseline_auc": auc(test.labels, baseline_scores),
        "baseline_log_loss": log_loss(test.labels, baseline.predict(test)),
        "best_valid_auc": best_auc,
        "epochs_trained": best_epochs,
        "labels": "clicks" if final.labelled else f"{config.negatives} sampled negatives",
        "train_rows": len(first_rows),
        "test_rows": len(test),
        "test_positives": int(test.labels.sum()),
        "history": history,
    }
    params = {"embedding_dim": config.embedding_dim, "bottom_units": list(BOTTOM_UNITS),
              "top_units": list(TOP_UNITS), "epochs_trained": best_epochs,
              "labelled": final.labelled, "split": config.split}
    export_dlrm(trainer.model, final.encoders, Path(out_dir), params)
    return metrics
