"""Two-tower retrieval model: towers, in-batch softmax with logQ correction, training, export.

Both towers map encoded features (see `mstage.models.encoders`) to L2-normalised embeddings
of size d, so retrieval is a maximum inner product search. TensorFlow is imported inside
functions: importing this module is cheap.
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
from mstage.models.encoders import FeatureEncoders, FeatureSpec
from mstage.models.retrieval_artifact import (
    ENCODERS_DIR,
    ITEM_TOWER,
    PARAMS_FILE,
    QUERY_TOWER,
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


def _tf():
    return import_tensorflow()


def build_tower(specs: list[FeatureSpec], params: TowerParams, name: str):
    """A Keras model: dict of encoded inputs ([b] or [b, L]) -> [b, embedding_dim], unit norm.

    Ids and categoricals are embedded, multi-valued features are mean-pooled over non-zero
    indices, numerics enter as they are; the concatenation goes through the MLP and a final
    linear projection to `embedding_dim`.
    """
    keras = import_keras()

    inputs, parts = {}, []
    for s in specs:
        inputs[s.name] = keras.Input(shape=s.shape, dtype=s.dtype, name=s.name)
        if s.kind == "numeric":
            parts.append(keras.layers.Reshape((1,))(inputs[s.name]))
            continue
        width = params.embedding_dim if s.kind == "id" else min(params.feature_dim,
                                                                params.embedding_dim)
        table = keras.layers.Embedding(s.cardinality, width, name=f"{name}_{s.name}_embedding",
                                       embeddings_initializer=keras.initializers.RandomNormal(
                                           stddev=1.0 / math.sqrt(width)))
        if s.kind == "multi":
            parts.append(MaskedMean(name=f"{name}_{s.name}_mean")(
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

    return _MaskedMean, _L2Normalize


def MaskedMean(**kw):  # noqa: N802 - behaves like a layer class
    return _layers()[0](**kw)


def L2Normalize(**kw):  # noqa: N802
    return _layers()[1](**kw)


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
        self.query_tower = build_tower(encoders.specs("user"), params, QUERY_TOWER)
        self.item_tower = build_tower(encoders.specs("item"), params, ITEM_TOWER)

    @property
    def trainable_variables(self) -> list:
        """Both towers' variables: what an optimizer of this model updates."""
        return self.query_tower.trainable_variables + self.item_tower.trainable_variables

    # inference ---------------------------------------------------------------------------
    def user_embeddings(self, rows: np.ndarray, batch: int = 4096) -> np.ndarray:
        """[n] user rows -> [n, d] float32 unit vectors."""
        return self._embed(self.query_tower, self.users, rows, batch)

    def item_embeddings(self, rows: np.ndarray, batch: int = 4096) -> np.ndarray:
        """[n] item rows -> [n, d] float32 unit vectors."""
        return self._embed(self.item_tower, self.items, rows, batch)

    def _embed(self, tower, table, rows, batch) -> np.ndarray:
        out = [np.zeros((0, self.params.embedding_dim), np.float32)]
        for start in range(0, len(rows), batch):
            part = rows[start:start + batch]
            out.append(np.asarray(tower({k: v[part] for k, v in table.items()}, training=False)))
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
            module = _serving_module(tower, self.encoders.tensor_specs(side))
            tf.saved_model.save(module, str(directory / sub),
                                signatures={"serving_default": module.serving_default})
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
    both is one positive pair). Each epoch shuffles the pairs with a generator seeded by
    `seed` and steps through full batches of `batch_size` (the ragged tail is dropped:
    in-batch negatives need full batches); `optimizer.apply(grads)` updates
    `model.trainable_variables`. The epoch loop itself is the training layer's.
    """

    def __init__(self, model: TwoTower, user_rows: np.ndarray, item_rows: np.ndarray,
                 optimizer, batch_size: int, seed: int):
        tf = _tf()
        n = len(user_rows)
        counts = np.bincount(item_rows, minlength=len(next(iter(model.items.values()))))
        log_q_table = tf.constant(np.log(np.maximum(counts, 1) / n).astype(np.float32))
        user_table = {k: tf.constant(v) for k, v in model.users.items()}
        item_table = {k: tf.constant(v) for k, v in model.items.items()}
        variables = model.trainable_variables
        temperature = float(model.params.temperature)
        item_key = "item_id"

        @tf.function(reduce_retracing=True)
        def step(u_rows, i_rows):
            u_in = {k: tf.gather(v, u_rows) for k, v in user_table.items()}
            i_in = {k: tf.gather(v, i_rows) for k, v in item_table.items()}
            with tf.GradientTape() as tape:
                q = model.query_tower(u_in, training=True)
                c = model.item_tower(i_in, training=True)
                loss = in_batch_softmax_loss(q, c, i_in[item_key], tf.gather(log_q_table, i_rows),
                                             temperature)
            optimizer.apply(tape.gradient(loss, variables))
            return loss

        self._step, self._rng = step, np.random.default_rng(seed)
        self.user_rows, self.item_rows = user_rows, item_rows
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
            idx = order[b * batch:(b + 1) * batch]
            total += float(self._step(tf.constant(self.user_rows[idx]),
                                      tf.constant(self.item_rows[idx])))
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

    Loads `encoders/` and the `query_tower/` SavedModel of a retrieval artifact; call it with
    a dict of numpy arrays (`user_id` int64 [b] plus each user feature as stored in
    users.parquet: strings for categoricals, floats for numerics, lists for multi-valued).
    Unknown ids and values map to index 0, so a cold user still gets an embedding.
    """

    def __init__(self, directory: Path):
        directory = Path(directory)
        if not (directory / QUERY_TOWER).is_dir():
            raise ArtifactMissing(
                f"expected a query tower at {directory / QUERY_TOWER}, found nothing; "
                "run `mstage train-retrieval` first"
            )
        self.encoders = FeatureEncoders.load(directory / ENCODERS_DIR)
        self.params = json.loads((directory / PARAMS_FILE).read_text())
        self._model = _tf().saved_model.load(str(directory / QUERY_TOWER))
        self.input_names = [s.name for s in self.encoders.specs("user")]
        self.embedding_dim = int(self.params["embedding_dim"])

    def encode(self, features: dict[str, Any]) -> dict[str, np.ndarray]:
        return self.encoders.encode_users(features)

    def embed_encoded(self, encoded: dict[str, np.ndarray]) -> np.ndarray:
        tf = _tf()
        # The concrete signature dispatches faster than the restored tf.function.
        out = self._model.signatures["serving_default"](
            **{k: tf.constant(v) for k, v in encoded.items()})
        return out["embedding"].numpy()

    def __call__(self, features: dict[str, Any]) -> np.ndarray:
        return self.embed_encoded(self.encode(features))


def load_query_tower(directory: Path) -> QueryTower:
    """The query tower of a retrieval artifact directory, ready to embed raw user features."""
    return QueryTower(directory)
