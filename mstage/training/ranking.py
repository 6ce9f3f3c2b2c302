"""`train_ranking`: the DLRM ranker's rows and negatives, its trainer, and the protocol.

Validation phase on FIT with early stopping on VALID AUC, then a refit on all of train for
the best epoch count, then test AUC and log loss beside an item-rate baseline
(docs/train-ranking.md). The network and its export are in `mstage.models.dlrm`; the epoch
loop is `mstage.training.core`'s.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mstage.config import DEFAULT_RETRIEVAL_WEIGHT, RankingConfig
from mstage.data.lookup import IdLookup
from mstage.data.schema import FIT, TEST, VALID, PreparedData, fold_column
from mstage.errors import InputError
from mstage.models import distribute
from mstage.models.dlrm import (
    BOTTOM_UNITS,
    HISTORY,
    PREDICT_BATCH,
    TOP_UNITS,
    build_dlrm,
    build_dlrm_heads,
    export_dlrm,
    input_signature,
    model_specs,
)
from mstage.models.encoders import ITEM_ID, FeatureEncoders
from mstage.models.retrieval_artifact import ValidationCandidates, read_validation_candidates
from mstage.models.tensorflow_runtime import import_keras, import_tensorflow
from mstage.progress import SILENT, Reporter
from mstage.training.blend import BlendChoice, choose_blend
from mstage.training.core import (
    GateCheck,
    Phase,
    Schedule,
    fit_and_publish,
    make_optimizer,
    validate_then_refit,
)
from mstage.workspace import Artifact, Workspace

VALID_NEGATIVES_SEED = 1_000_003
TEST_NEGATIVES_SEED = 2_000_003
BASELINE_PRIOR_WEIGHT = 10.0
# Fewer validation positives (or negatives) than this cannot tell the DLRM from its baseline.
MIN_GATE_CLASS_ROWS = 10


@dataclass
class RankingRun:
    """What training measured: the DLRM's test AUC and log loss beside the baseline's, the best
    validation AUC (None without validation), the epoch count refit, the kind of labels, row
    counts and the validation curve (`history`: epoch, loss, valid_auc)."""

    test_auc: float
    test_log_loss: float
    baseline: str
    baseline_auc: float
    baseline_log_loss: float
    best_valid_auc: float | None
    epochs_trained: int
    labels: str
    train_rows: int
    test_rows: int
    test_positives: int
    history: list[dict[str, float]]
    valid_baseline_auc: float | None = None  # the baseline's AUC on the validation rows
    valid_rows: int = 0
    valid_positives: int = 0
    quality_gate: str | None = None  # passed, forced or skipped (set by train_ranking)
    blend: BlendChoice | None = None  # the ordering blend chosen on validation
    notes: list[str] = dataclasses.field(default_factory=list)

    def metrics(self) -> dict[str, Any]:
        """The metrics the manifest records (and `--json` prints), in field order."""
        out = dataclasses.asdict(self)
        del out["notes"], out["blend"]
        return out | (self.blend.metrics() if self.blend else {})

    def gate_check(self) -> GateCheck:
        """Best validation AUC against the baseline's on the same validation rows."""
        skipped = None
        negatives = self.valid_rows - self.valid_positives
        if self.best_valid_auc is None or self.valid_baseline_auc is None:
            skipped = "no validation phase ran"
        elif min(self.valid_positives, negatives) < MIN_GATE_CLASS_ROWS:
            skipped = (f"{self.valid_positives} positive and {negatives} negative validation "
                       f"rows, fewer than the {MIN_GATE_CLASS_ROWS} of each needed to compare "
                       f"with {self.baseline}")
        return GateCheck("AUC", self.best_valid_auc, self.valid_baseline_auc, self.baseline,
                         skipped)


@dataclass
class Rows:
    """Labelled (user, item) rows as positions in the encoded tables, and each row's history
    as the slice [history_start, history_end) of the problem's Timeline; all arrays [n].
    `shown` is 1 for a row of the data (an impression, or a positive) and 0 for a sampled
    catalog negative: what the exposure head learns."""

    user_rows: np.ndarray
    item_rows: np.ndarray
    labels: np.ndarray  # float32, 1 = click / positive
    history_start: np.ndarray | None = None  # None: no history (empty slices)
    history_end: np.ndarray | None = None
    shown: np.ndarray | None = None  # float32; None: every row is a row of the data

    def __post_init__(self) -> None:
        for name in ("history_start", "history_end"):
            if getattr(self, name) is None:
                setattr(self, name, np.zeros(len(self.labels), dtype=np.int64))
        if self.shown is None:
            self.shown = np.ones(len(self.labels), dtype=np.float32)

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, index: np.ndarray) -> Rows:
        return Rows(*(getattr(self, f.name)[index] for f in dataclasses.fields(self)))

    @staticmethod
    def concat(*parts: Rows) -> Rows:
        return Rows(*(np.concatenate([getattr(p, f.name) for p in parts])
                      for f in dataclasses.fields(Rows)))


def _lookup_rows(lookup: IdLookup, ids: np.ndarray) -> np.ndarray:
    """Rows of `ids` in the table; ids not there map to len(lookup), the all-zero 'unknown'
    row appended to every encoded table."""
    return lookup.rows(ids, missing=len(lookup))


def _with_unknown_row(encoded: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([v, np.zeros((1, *v.shape[1:]), dtype=v.dtype)])
            for k, v in encoded.items()}


class RankingProblem:
    """Encoded user / item tables and the labelled rows of one (train, evaluation) fold pair,
    with each row's history of `history` items.

    Train rows are the train fold's rows (impressions with their clicks, or positives on
    implicit data) plus `negatives` catalog items sampled per positive, drawn afresh every
    epoch. On labelled data those sampled negatives matter as much as on implicit data:
    impressions show the ranker only items an earlier system chose to show, while online it
    must also score the unshown items retrieval brings. Evaluation rows: the evaluation
    fold's impressions on labelled data (comparable with the item-CTR baseline); on implicit
    data its positives on train-catalog items plus negatives drawn once with a fixed seed,
    excluding every positive of the user up to and including the evaluation fold.

    Histories hold positives only (clicks on labelled data) and never look ahead: a train row
    sees the user's train positives before it; an evaluation row sees the user's latest train
    positives, as the online store would hold them; a sampled negative shares the history of
    the positive it was drawn for.
    """

    def __init__(self, data, train_mask: np.ndarray, eval_mask: np.ndarray,
                 known_mask: np.ndarray, negatives: int, eval_seed: int, history: int = 0):
        from mstage.models.history import Timeline
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
        self.negatives, self.history = negatives, history
        user_lookup, item_lookup = IdLookup(self.user_ids), IdLookup(self.item_ids)
        no_history = np.zeros(len(self.user_ids) + 1, dtype=np.int64)

        def rows_of(mask: np.ndarray, start=no_history, end=no_history) -> Rows:
            """The rows of `mask`; a user's history is [start, end) of their user row."""
            part = frame[mask]
            users = _lookup_rows(user_lookup, part["user_id"].to_numpy())
            return Rows(users, _lookup_rows(item_lookup, part["item_id"].to_numpy()),
                        part["label"].to_numpy().astype(np.float32), start[users], end[users])

        train = rows_of(train_mask)
        self.timeline = Timeline(train.user_rows, self.items[ITEM_ID][train.item_rows],
                                 train.labels == 1)
        train.history_start, train.history_end = self.timeline.start, self.timeline.end
        self.latest_start, self.latest_end = no_history.copy(), no_history.copy()
        self.latest_start[self.timeline.group_users] = self.timeline.group_start
        self.latest_end[self.timeline.group_users] = self.timeline.group_end
        self.user_lookup, self.item_lookup = user_lookup, item_lookup
        self._train_rows = train
        self._train_positives = self._train_rows.take(self._train_rows.labels == 1)
        evaluation = rows_of(eval_mask, self.latest_start, self.latest_end)
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
        """`negatives` sampled catalog items per positive row, never a known positive, each
        with the history of the positive it was drawn for."""
        origin, items = self.sampler.sample(positives.user_rows, self.negatives, known, rng)
        zeros = np.zeros(len(items), dtype=np.float32)
        return dataclasses.replace(positives.take(origin), item_rows=items, labels=zeros,
                                   shown=zeros)

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

    def candidate_rows(self, user_ids: np.ndarray, item_ids: np.ndarray) -> Rows:
        """Unlabelled rows for each user id [u] against their item ids [u, n] (row-major),
        with the user's latest train history, as the online store would hold it."""
        users = _lookup_rows(self.user_lookup, np.repeat(user_ids, item_ids.shape[1]))
        return Rows(users, _lookup_rows(self.item_lookup, item_ids.ravel()),
                    np.zeros(users.size, dtype=np.float32), self.latest_start[users],
                    self.latest_end[users])

    def features(self, rows: Rows, index: np.ndarray | slice) -> dict[str, np.ndarray]:
        """Encoded model inputs for rows[index]: user table and item table gathered, and the
        rows' histories with a history."""
        u, i = rows.user_rows[index], rows.item_rows[index]
        features = {**{k: v[u] for k, v in self.users.items()},
                    **{k: v[i] for k, v in self.items.items()}}
        if self.history > 0:
            features[HISTORY] = self.timeline.window(
                rows.history_start[index], rows.history_end[index], self.history).astype(np.int64)
        return features


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


def _baseline_scores(problem: RankingProblem, train_rows: Rows, rows: Rows) -> np.ndarray:
    """The baseline's AUC scores for `rows`: item CTR on labelled data, item popularity on
    implicit data, both counted on `train_rows`."""
    baseline = ItemRateBaseline(train_rows, len(problem.item_ids) + 1)
    return baseline.predict(rows) if problem.labelled else baseline.popularity[rows.item_rows]


class Trainer:
    """A DLRM, its optimizer and compiled train / predict steps for one RankingProblem. With
    several workers (`mstage.models.distribute`) each trains on its share of every batch.

    On labelled data the DLRM has an exposure and a click head (`build_dlrm_heads`), trained
    together: exposure on every row (impressions 1, sampled catalog items 0), click on the
    impressions only. `predict` gives what is served, `predict_click` the click head's
    probability, which AUC and log loss on impressions measure. On implicit data there is
    one head, trained on positives against sampled negatives, and the two agree."""

    def __init__(self, problem: RankingProblem, config: RankingConfig):
        keras = import_keras()
        tf = import_tensorflow()

        keras.utils.set_random_seed(config.seed)
        self.problem, self.config = problem, config
        specs = model_specs(problem.encoders, problem.history)
        with distribute.scope():
            if problem.labelled:
                self.model, heads = build_dlrm_heads(specs, config.embedding_dim)
            else:
                self.model, heads = build_dlrm(specs, config.embedding_dim), None
            variables = self.model.trainable_variables
            self.optimizer = make_optimizer(config.optimizer, config.learning_rate, variables,
                                            key="ranking.optimizer")
        signature = input_signature(specs)
        model, optimizer = self.model, self.optimizer
        self._workers = distribute.workers_from_env()

        def cross_entropy(labels, logits):
            return tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits)

        def replica_step(features, labels, shown):
            with tf.GradientTape() as tape:
                if heads is None:
                    loss = tf.reduce_mean(cross_entropy(labels, model(features, training=True)))
                else:
                    exposure, click = heads(features, training=True)
                    clicks = tf.reduce_sum(shown * cross_entropy(labels, click))
                    loss = (tf.reduce_mean(cross_entropy(shown, exposure))
                            + clicks / tf.maximum(tf.reduce_sum(shown), 1.0))
            optimizer.apply(tape.gradient(loss, variables))
            return loss

        rows = tf.TensorSpec((None,), tf.float32)

        @tf.function(input_signature=[signature, rows, rows])
        def train_step(features, labels, shown):
            return distribute.run(replica_step, features, labels, shown)

        @tf.function(input_signature=[signature])
        def predict_step(features):
            return tf.sigmoid(model(features, training=False))

        @tf.function(input_signature=[signature])
        def click_step(features):
            return tf.sigmoid(heads(features, training=False)[1])

        self._train_step, self._predict_step = train_step, predict_step
        self._click_step = predict_step if heads is None else click_step

    def epoch(self, rng: np.random.Generator) -> float:
        """One pass over freshly shuffled train rows; returns the mean loss (may be NaN)."""
        rows = self.problem.train_rows(rng)
        order = rng.permutation(len(rows))
        total, count = 0.0, 0
        for index in self._workers.shares(order, self.config.batch_size):
            features = self.problem.features(rows, index)
            loss = float(self._train_step(features, rows.labels[index], rows.shown[index]))
            total, count = total + loss * len(index), count + len(index)
            if not np.isfinite(loss):
                return loss
        return total / max(count, 1)

    def predict(self, rows: Rows) -> np.ndarray:
        """float64 [n]: what the model serves for rows (click probabilities, on labelled data
        those of being shown and clicked)."""
        return self._run(self._predict_step, rows)

    def predict_click(self, rows: Rows) -> np.ndarray:
        """float64 [n] click probabilities given shown, for rows that are impressions."""
        return self._run(self._click_step, rows)

    def _run(self, step, rows: Rows) -> np.ndarray:
        out = [step(self.problem.features(rows, slice(i, i + PREDICT_BATCH))).numpy()
               for i in range(0, len(rows), PREDICT_BATCH)]
        return np.concatenate(out).astype(np.float64) if out else np.zeros(0)


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


def schedule(config: RankingConfig) -> Schedule:
    def diverged(loss: float, epoch: int) -> str:
        rate = config.learning_rate
        return (f"expected a finite training loss, found {loss} in epoch {epoch} with learning "
                f"rate {rate}; the previous ranking model is kept; run `mstage train-ranking` "
                f"again with a lower --learning-rate (e.g. {rate / 10:g})")

    return Schedule(config.epochs, config.patience, "valid_auc", diverged,
                    ("train-ranking: validation epoch", "train-ranking: refit epoch"))


def _blend_users(data: PreparedData, split: str, candidates: ValidationCandidates | None,
                 notes: list[str]) -> list[np.ndarray] | None:
    """Each candidate user's VALID items, or None (with a note) when the candidates cannot
    choose the blend: absent, from another split, or from other data."""
    from mstage.evaluation.protocol import build_eval_set

    keep = f"the ordering blend keeps retrieval_weight {DEFAULT_RETRIEVAL_WEIGHT:g}"
    if candidates is None:
        notes.append(f"no validation candidates from train-retrieval; {keep}; run `mstage "
                     "train-retrieval` before `mstage train-ranking` to choose it on validation")
        return None
    if candidates.split != split:
        notes.append(f"retrieval was validated on the {candidates.split} split, the ranker on "
                     f"{split}; {keep}")
        return None
    valid = build_eval_set(data.interactions, split, "validation")
    rows, known = IdLookup(valid.users).find(candidates.user_ids)
    if not known.all():
        notes.append(f"retrieval's validation users are not this data's; {keep}; run `mstage "
                     "train-retrieval` again")
        return None
    relevant = valid.relevant
    return [relevant[r] for r in rows]


def fit_ranking(data: PreparedData, config: RankingConfig, out_dir: Path,
                reporter: Reporter = SILENT,
                candidates: ValidationCandidates | None = None) -> RankingRun:
    """Train, evaluate and export a DLRM into `out_dir`.

    Protocol (docs/evaluation.md): train on FIT, pick the epoch count by validation AUC on
    VALID (early stopping with `config.patience`), then refit a fresh model on FIT + VALID
    for that many epochs and report test AUC / log loss beside the item-rate baseline. At
    each best validation epoch the ordering blend is chosen on retrieval's validation
    `candidates` (`mstage.training.blend`).
    """
    from mstage.evaluation.metrics import auc, log_loss

    if fold_column(config.split) not in data.interactions.columns:
        raise InputError(f"expected a {fold_column(config.split)} column in the prepared "
                         "interactions, found none; run `mstage prepare-data` again")
    distribute.start()
    folds = data.fold(config.split)
    rng = np.random.default_rng(config.seed)
    valid: dict[str, Any] = {}  # the baseline on the validation rows, for the quality gate
    notes: list[str] = []

    def validation() -> Phase | None:
        problem = RankingProblem(data, folds == FIT, folds == VALID, folds != TEST,
                                 config.negatives, VALID_NEGATIVES_SEED, config.history)
        fit_rows = problem.given_rows(np.random.default_rng(config.seed))
        _check_labels(fit_rows, "FIT")
        if not _has_both_classes(problem.eval_rows):
            reporter.log("validation rows lack both classes; training for all --epochs "
                         "without early stopping")
            return None
        trainer = Trainer(problem, config)
        rows = problem.eval_rows
        valid.update(rows=len(rows), positives=int(rows.labels.sum()),
                     baseline_auc=auc(rows.labels, _baseline_scores(problem, fit_rows, rows)))
        relevant = _blend_users(data, config.split, candidates, notes)
        pairs = None if relevant is None else problem.candidate_rows(candidates.user_ids,
                                                                     candidates.item_ids)

        def validate() -> float:
            score = auc(rows.labels, trainer.predict_click(rows))
            if pairs is not None and score > valid.get("best_auc", -np.inf):
                probability = trainer.predict(pairs).reshape(candidates.item_ids.shape)
                valid.update(best_auc=score,
                             blend=choose_blend(candidates, probability, relevant))
            return score

        return Phase(lambda: trainer.epoch(rng), validate)

    def refit() -> Phase:
        final = RankingProblem(data, folds != TEST, folds == TEST, np.ones(len(folds), bool),
                               config.negatives, TEST_NEGATIVES_SEED, config.history)
        first_rows = final.given_rows(np.random.default_rng(config.seed))
        _check_labels(first_rows, "train")
        test = final.eval_rows
        if not _has_both_classes(test):
            raise InputError(
                f"expected test rows with both classes to measure AUC, found {len(test)} rows "
                f"and {int(test.labels.sum())} positives; use more data or another ranking.split"
            )
        trainer = Trainer(final, config)
        return Phase(lambda: trainer.epoch(rng), model=(final, trainer, first_rows))

    training = validate_then_refit(validation, refit, schedule(config), reporter)
    final, trainer, first_rows = training.model
    test = final.eval_rows
    probs = trainer.predict_click(test)
    baseline = ItemRateBaseline(first_rows, len(final.item_ids) + 1)
    baseline_scores = _baseline_scores(final, first_rows, test)
    run = RankingRun(
        test_auc=auc(test.labels, probs),
        test_log_loss=log_loss(test.labels, probs),
        baseline="item CTR (smoothed)" if final.labelled else "item popularity",
        baseline_auc=auc(test.labels, baseline_scores),
        baseline_log_loss=log_loss(test.labels, baseline.predict(test)),
        best_valid_auc=training.best_score,
        epochs_trained=training.best_epoch,
        labels="clicks" if final.labelled else f"{config.negatives} sampled negatives",
        train_rows=len(first_rows),
        test_rows=len(test),
        test_positives=int(test.labels.sum()),
        history=[{"epoch": log.epoch, "loss": log.loss, "valid_auc": log.score}
                 for log in training.validation],
        valid_baseline_auc=valid.get("baseline_auc"),
        valid_rows=valid.get("rows", 0),
        valid_positives=valid.get("positives", 0),
        blend=valid.get("blend"),
        notes=notes,
    )
    params = {"embedding_dim": config.embedding_dim, "bottom_units": list(BOTTOM_UNITS),
              "top_units": list(TOP_UNITS), "history": config.history,
              "epochs_trained": training.best_epoch,
              "labelled": final.labelled, "split": config.split,
              "heads": ["exposure", "click"] if final.labelled else ["click"]}
    if run.blend is not None:
        params["retrieval_weight"] = run.blend.weight
    export_dlrm(trainer.model, final.encoders, Path(out_dir), params)
    return run


def train_ranking(ws: Workspace, config: RankingConfig,
                  reporter: Reporter = SILENT, force: bool = False) -> RankingRun:
    """`mstage train-ranking`: fit on the workspace's prepared data and publish the ranking
    artifact (SavedModel, encoders; config and metrics in the manifest). A failure keeps the
    previous artifact, and so does a model whose best validation AUC is not above the
    baseline's on the validation rows (QualityGateFailed) unless `force`."""
    retrieval = ws.path(Artifact.RETRIEVAL)
    candidates = read_validation_candidates(retrieval) if retrieval.is_dir() else None
    return fit_and_publish(
        ws, Artifact.RANKING, config,
        lambda data, directory: fit_ranking(data, config, directory, reporter, candidates),
        "check --learning-rate/--epochs", force)
