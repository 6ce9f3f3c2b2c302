"""Two-tower retrieval model: towers, in-batch softmax with logQ correction, training, export.

Both towers map encoded features (see `mstage.models.encoders`) to L2-normalised embeddings
of size d, so retrieval is a maximum inner product search. With `history` > 0 the query
tower also reads the user's last `history` items (`HISTORY`: encoded item indices, most
recent first, 0-padded), embedded with the item tower's own item-id table and pooled by
learned attention over position-aware embeddings: what the user just did moves the query.
TensorFlow is imported inside functions: importing this module is cheap.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mstage.errors import ArtifactMissing, TrainingDiverged
from mstage.models import distribute
from mstage.models.embedding import RowEmbedding
from mstage.models.encoders import FeatureEncoders, FeatureSpec
from mstage.models.lite import LiteModel, export_lite
from mstage.models.retrieval_artifact import (
    ENCODERS_DIR,
    ITEM_TOWER,
    PARAMS_FILE,
    QUERY_TOWER,
    QUERY_TOWER_LITE,
    write_item_embeddings,
)
from mstage.models.tensorflow_runtime import import_keras, import_tensorflow


@dataclass(frozen=True)
class TowerParams:
    """Shape of both towers. Ids get `embedding_dim`-wide tables, other features narrower ones."""

    embedding_dim: int = 64
    feature_dim: int = 16
    hidden_units: tuple[int, ...] = ()
    temperature: float = 0.05
    history: int = 0


HISTORY = "history"


def _tf():
    return import_tensorflow()


def build_tower(specs: list[FeatureSpec], params: TowerParams, name: str, history_table=None):
    """A Keras model: dict of encoded inputs ([b] or [b, L]) -> [b, embedding_dim], unit norm.

    Ids and categoricals are embedded, multi-valued features are mean-pooled over non-zero
    indices, numerics enter as they are; with `history_table` (an item-id Embedding) the
    `history` input [b, params.history] is embedded with it and attention-pooled. The
    concatenation goes through the MLP and a final linear projection to `embedding_dim`.
    """
    keras = import_keras()

    inputs, parts = {}, []
    if history_table is not None:
        inputs[HISTORY] = keras.Input(shape=(params.history,), dtype="int64", name=HISTORY)
        parts.append(HistoryAttention(params.history, params.embedding_dim,
                                      name=f"{name}_history")(
            [history_table(inputs[HISTORY]), inputs[HISTORY]]))
    for s in specs:
        inputs[s.name] = keras.Input(shape=s.shape, dtype=s.dtype, name=s.name)
        if s.kind == "numeric":
            parts.append(keras.layers.Reshape((1,))(inputs[s.name]))
            continue
        width = params.embedding_dim if s.kind == "id" else min(params.feature_dim,
                                                                params.embedding_dim)
        table = RowEmbedding(s.cardinality, width, name=f"{name}_{s.name}_embedding",
                             embeddings_initializer=keras.initializers.RandomNormal(
                                 stddev=1.0 / math.sqrt(width)))
        if s.kind == "multi":
            parts.append(MaskedMean(name=f"{name}_{s.name}_mean")(
                [table(inputs[s.name]), inputs[s.name]]))
        elif s.kind == "id":
            parts.append(KnownOnly(name=f"{name}_{s.name}_known")(
                [table(inputs[s.name]), inputs[s.name]]))
        else:
            parts.append(table(inputs[s.name]))
    x = parts[0] if len(parts) == 1 else keras.layers.Concatenate()(parts)
    for i, units in enumerate(params.hidden_units):
        x = keras.layers.Dense(units, activation="relu", name=f"{name}_hidden_{i}")(x)
    x = keras.layers.Dense(params.embedding_dim, name=f"{name}_projection")(x)
    x = L2Normalize(name=f"{name}_l2")(x)
    return keras.Model(inputs, x, name=name)


@functools.cache
def _layers():
    keras = import_keras()

    class _MaskedMean(keras.layers.Layer):
        """[b, L, w] embeddings + [b, L] indices -> [b, w] mean over positions with index > 0."""

        def call(self, inputs):
            embedded, indices = inputs
            mask = keras.ops.cast(keras.ops.greater(indices, 0), embedded.dtype)[..., None]
            total = keras.ops.sum(embedded * mask, axis=1)
            return total / keras.ops.maximum(keras.ops.sum(mask, axis=1), 1.0)

    class _L2Normalize(keras.layers.Layer):
        def call(self, x):
            return keras.ops.normalize(x, axis=-1, order=2)

    class _KnownOnly(keras.layers.Layer):
        """[b, w] id embeddings + [b] indices -> zeros where the index is 0 (an id unseen in
        training): such a user or item is its features alone, never the untrained row 0
        that every unseen id would share (it would pull them all to one random point)."""

        def call(self, inputs):
            embedded, indices = inputs
            return embedded * keras.ops.cast(keras.ops.greater(indices, 0), embedded.dtype)[
                ..., None]

    class _HistoryAttention(keras.layers.Layer):
        """[b, L, d] item embeddings + [b, L] indices (0 = padding) -> [b, d]: the embeddings
        plus a learned embedding of their position (0 = most recent), weighted by a softmax
        over positions of a learned score; an empty history pools to zeros."""

        def __init__(self, length: int, dim: int, **kw):
            super().__init__(**kw)
            self.position = keras.layers.Embedding(length, dim)
            self.score = keras.layers.Dense(1)

        def call(self, inputs):
            embedded, indices = inputs
            ops = keras.ops
            x = embedded + self.position(ops.arange(ops.shape(indices)[1]))[None]
            present = ops.cast(ops.greater(indices, 0), x.dtype)
            logits = ops.squeeze(self.score(x), -1) + (present - 1.0) * 1e9
            weights = ops.softmax(logits, axis=-1) * ops.max(present, axis=-1, keepdims=True)
            return ops.sum(weights[..., None] * x, axis=1)

    return _MaskedMean, _L2Normalize, _HistoryAttention, _KnownOnly


def MaskedMean(**kw):  # noqa: N802 - behaves like a layer class
    return _layers()[0](**kw)


def L2Normalize(**kw):  # noqa: N802
    return _layers()[1](**kw)


def HistoryAttention(length: int, dim: int, **kw):  # noqa: N802
    return _layers()[2](length, dim, **kw)


def KnownOnly(**kw):  # noqa: N802
    return _layers()[3](**kw)


def in_batch_softmax_loss(query, candidates, item_ids, log_q, temperature: float):
    """Mean sampled-softmax loss of each query against all candidates of its batch.

    query, candidates: [B, d] unit vectors (row i is a positive pair); item_ids: [B] int64;
    log_q: [B] log sampling probability of each candidate (its share of positives). Logits
    are q·c / T - log q(c) (logQ correction: popular items appear more often as in-batch
    negatives, so they are penalised less); candidates equal to the positive item in other
    rows ("accidental hits") are masked out.
    """
    tf = _tf()
    logits = tf.matmul(query, candidates, transpose_b=True) / temperature - log_q[None, :]
    same = tf.equal(item_ids[:, None], item_ids[None, :])
    accidental = tf.logical_and(same, tf.logical_not(tf.eye(tf.shape(item_ids)[0], dtype=tf.bool)))
    logits = tf.where(accidental, tf.constant(-1e9, logits.dtype), logits)
    labels = tf.range(tf.shape(query)[0])
    return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))


class TwoTower:
    """The two towers, their training state, and the encoded tables they read from.

    `users` / `items` hold encoded feature tables (dicts of arrays, one row per user / item of
    the prepared tables); training examples are (user row, item row) pairs.
    """

    def __init__(self, encoders: FeatureEncoders, params: TowerParams,
                 users: dict[str, np.ndarray], items: dict[str, np.ndarray]):
        self.encoders, self.params = encoders, params
        self.users, self.items = users, items
        self.item_tower = build_tower(encoders.specs("item"), params, ITEM_TOWER)
        shared = (self.item_tower.get_layer(f"{ITEM_TOWER}_item_id_embedding")
                  if params.history > 0 else None)
        self.query_tower = build_tower(encoders.specs("user"), params, QUERY_TOWER, shared)

    @property
    def trainable_variables(self) -> list:
        """Both towers' variables (a shared item-id table once): what an optimizer updates."""
        seen, out = set(), []
        for v in self.query_tower.trainable_variables + self.item_tower.trainable_variables:
            if id(v) not in seen:
                seen.add(id(v))
                out.append(v)
        return out

    # inference ---------------------------------------------------------------------------
    def user_embeddings(self, rows: np.ndarray, histories: np.ndarray | None = None,
                        batch: int = 4096) -> np.ndarray:
        """[n] user rows (+ their histories [n, history] with a history) -> [n, d] float32."""
        return self._embed(self.query_tower, self.users, rows, batch, histories)

    def item_embeddings(self, rows: np.ndarray, batch: int = 4096) -> np.ndarray:
        """[n] item rows -> [n, d] float32 unit vectors."""
        return self._embed(self.item_tower, self.items, rows, batch)

    def _embed(self, tower, table, rows, batch, histories=None) -> np.ndarray:
        out = [np.zeros((0, self.params.embedding_dim), np.float32)]
        for start in range(0, len(rows), batch):
            part = rows[start:start + batch]
            inputs = {k: v[part] for k, v in table.items()}
            if tower is self.query_tower and self.params.history > 0:
                inputs[HISTORY] = np.asarray(histories[start:start + batch], dtype=np.int64)
            out.append(np.asarray(tower(inputs, training=False)))
        emb = np.concatenate(out).astype(np.float32)
        if not np.isfinite(emb).all():
            raise TrainingDiverged(
                "expected finite embeddings, found NaN or infinity; lower --learning-rate or "
                "raise --temperature; the previous artifact is kept"
            )
        return emb

    # export ------------------------------------------------------------------------------
    def export(self, directory: Path, item_ids: np.ndarray, extra_params: dict[str, Any]) -> None:
        """Write the retrieval artifact (see `retrieval_artifact`) into `directory`: both
        towers, the encoders, every item row's embedding (ids `item_ids`) and params.json."""
        tf = _tf()
        directory = Path(directory)
        for tower, side, sub in ((self.query_tower, "user", QUERY_TOWER),
                                 (self.item_tower, "item", ITEM_TOWER)):
            specs = self.encoders.tensor_specs(side)
            if side == "user" and self.params.history > 0:
                specs[HISTORY] = tf.TensorSpec((None, self.params.history), tf.int64, HISTORY)
            module = _serving_module(tower, specs)
            tf.saved_model.save(module, str(directory / sub),
                                signatures={"serving_default": module.serving_default})
        export_lite(directory / QUERY_TOWER, directory / QUERY_TOWER_LITE)
        self.encoders.save(directory / ENCODERS_DIR)
        write_item_embeddings(directory, item_ids, self.item_embeddings(np.arange(len(item_ids))))
        params = {
            **asdict(self.params),
            "similarity": "inner_product",
            "normalized": True,
            "query_inputs": [_spec_doc(s) for s in self.encoders.specs("user")],
            "item_inputs": [_spec_doc(s) for s in self.encoders.specs("item")],
            "signature": "serving_default",
            "output": "embedding",
            **extra_params,
        }
        (directory / PARAMS_FILE).write_text(json.dumps(params, indent=2))


class TowerTrainer:
    """Epochs of in-batch softmax training of a TwoTower on positive pairs.

    user_rows, item_rows: [N] int64 rows into the model's `users` / `items` tables (row i of
    both is one positive pair); histories [N, history]: the user's items before pair i
    (`mstage.models.history.prior_items`), for a history-aware model. Each epoch shuffles
    the pairs with a generator seeded by `seed` and steps through full batches of
    `batch_size` (the ragged tail is dropped:
    in-batch negatives need full batches); `optimizer.apply(grads)` updates
    `model.trainable_variables`. With several workers (`mstage.models.distribute`) each
    takes its share of every batch, whose rows are its in-batch negatives. The epoch loop
    itself is the training layer's.
    """

    def __init__(self, model: TwoTower, user_rows: np.ndarray, item_rows: np.ndarray,
                 optimizer, batch_size: int, seed: int, histories: np.ndarray | None = None):
        tf = _tf()
        n = len(user_rows)
        counts = np.bincount(item_rows, minlength=len(next(iter(model.items.values()))))
        log_q_table = tf.constant(np.log(np.maximum(counts, 1) / n).astype(np.float32))
        user_table = {k: tf.constant(v) for k, v in model.users.items()}
        item_table = {k: tf.constant(v) for k, v in model.items.items()}
        variables = model.trainable_variables
        temperature = float(model.params.temperature)
        item_key = "item_id"

        def replica_step(u_rows, i_rows, history):
            u_in = {k: tf.gather(v, u_rows) for k, v in user_table.items()}
            if model.params.history > 0:
                u_in[HISTORY] = history
            i_in = {k: tf.gather(v, i_rows) for k, v in item_table.items()}
            with tf.GradientTape() as tape:
                q = model.query_tower(u_in, training=True)
                c = model.item_tower(i_in, training=True)
                loss = in_batch_softmax_loss(q, c, i_in[item_key], tf.gather(log_q_table, i_rows),
                                             temperature)
            optimizer.apply(tape.gradient(loss, variables))
            return loss

        @tf.function(reduce_retracing=True)
        def step(u_rows, i_rows, history):
            return distribute.run(replica_step, u_rows, i_rows, history)

        self._step, self._rng = step, np.random.default_rng(seed)
        self._workers = distribute.workers_from_env()
        self.user_rows, self.item_rows = user_rows, item_rows
        self.histories = (np.asarray(histories, dtype=np.int64) if histories is not None
                          else np.zeros((len(user_rows), 0), dtype=np.int64))
        self.batch_size = batch_size
        self.n_batches = max(1, n // batch_size)
        self.examples_per_epoch = min(n, self.n_batches * batch_size)

    def epoch(self) -> float:
        """One pass over freshly shuffled pairs; the mean batch loss (NaN or infinite when
        training diverged)."""
        tf = _tf()
        order = self._rng.permutation(len(self.user_rows))
        batch, total = self.batch_size, 0.0
        for b in range(self.n_batches):
            idx = self._workers.share(order[b * batch:(b + 1) * batch])
            total += float(self._step(tf.constant(self.user_rows[idx]),
                                      tf.constant(self.item_rows[idx]),
                                      tf.constant(self.histories[idx])))
        return total / self.n_batches


def _spec_doc(s: FeatureSpec) -> dict[str, Any]:
    return {"name": s.name, "kind": s.kind, "dtype": s.dtype, "shape": [None, *s.shape],
            "cardinality": s.cardinality}


def _serving_module(tower, specs: dict[str, Any]):
    """A tf.Module whose `serving_default` maps a dict of encoded tensors -> {'embedding'}.

    Only the tower's variables are tracked once (Keras' `model.export` stores them twice).
    """
    tf = _tf()
    module = tf.Module()
    module.tower = tower
    module.serving_default = tf.function(
        lambda features: {"embedding": tower(features, training=False)},
        input_signature=[specs],
    )
    return module


class QueryTower:
    """Serving-side query tower: raw user ids and feature values -> [b, d] unit embeddings.

    Loads `encoders/` and the query tower's LiteRT export (`query_tower.tflite`, no
    TensorFlow) of a retrieval artifact; call it with
    a dict of numpy arrays (`user_id` int64 [b] plus each user feature as stored in
    users.parquet: strings for categoricals, floats for numerics, lists for multi-valued)
    and, for a history-aware tower, `history`: the user's recent item ids [b, R], most recent
    first, padded with -1 (the online store's `recent_items`). Unknown ids and values map to
    index 0, so a cold user still gets an embedding.
    """

    def __init__(self, directory: Path):
        directory = Path(directory)
        if not (directory / ENCODERS_DIR).is_dir():
            raise ArtifactMissing(
                f"expected a query tower at {directory}, found nothing; "
                "run `mstage train-retrieval` first"
            )
        self.encoders = FeatureEncoders.load(directory / ENCODERS_DIR)
        self.params = json.loads((directory / PARAMS_FILE).read_text())
        self._model = LiteModel(directory / QUERY_TOWER_LITE, "train-retrieval")
        self.input_names = [s.name for s in self.encoders.specs("user")]
        self.embedding_dim = int(self.params["embedding_dim"])
        self.history = int(self.params.get("history", 0))

    def encode(self, features: dict[str, Any], history: np.ndarray | None = None
               ) -> dict[str, np.ndarray]:
        """Encoded inputs; `history` raw item ids [b, R] (None: no history known)."""
        encoded = self.encoders.encode_users(features)
        if self.history > 0:
            known = np.full((len(encoded["user_id"]), 0), -1) if history is None else history
            encoded[HISTORY] = self.encoders.encode_history(known, self.history)
        return encoded

    def embed_encoded(self, encoded: dict[str, np.ndarray]) -> np.ndarray:
        return self._model(**encoded)["embedding"]

    def __call__(self, features: dict[str, Any], history: np.ndarray | None = None
                 ) -> np.ndarray:
        return self.embed_encoded(self.encode(features, history))


def load_query_tower(directory: Path) -> QueryTower:
    """The query tower of a retrieval artifact directory, ready to embed raw user features."""
    return QueryTower(directory)
