"""DLRM click model: the network, its SavedModel export and the serving-side scorer
(training lives in `mstage.training.ranking`).

Inputs are the encoded arrays of `mstage.models.encoders` for a batch of b (user, item)
rows: `user_id`, `item_id` and every user and item feature, merged into one dict. There are
no context features: the online request carries only a user id and candidates, so the
model sees nothing the scoring stage would not have at serving time.

Network, with d = embedding dim:
- one embedding table per id / categorical feature: [b] -> [b, d]; per multi-valued
  feature: [b, L] -> mean over non-padding positions -> [b, d];
- bottom MLP over the numeric features plus a constant 1 -> [b, d]; the constant makes
  the bottom vector a learned bias even without numeric features, so its dot product with
  the item embedding acts as a per-item bias;
- with a history of length L > 0 (`history`: the user's latest positive items, encoded
  item indices [b, L], most recent first, 0-padded), the history is embedded with the
  item-id table and pooled twice: by target attention (softmax over positions of the
  history items' dot products with the candidate, as in DIN) and by a plain mean; both
  pooled vectors join the interaction, and the largest candidate-history dot product joins
  the top MLP (the item-to-item similarity signal of neighbourhood models);
- pairwise dot products of all F vectors ([b, F, d] -> [b, F(F-1)/2]), concatenated with
  the bottom vector, through the top MLP -> one logit per row; sigmoid = click probability.
  On impressions with clicks, two top MLPs share the interaction (`build_dlrm_heads`): one
  for being shown, one for the click given shown; the model serves their combination.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mstage.errors import InputError
from mstage.models.embedding import RowEmbedding
from mstage.models.encoders import ITEM_ID, FeatureEncoders, FeatureSpec
from mstage.models.lite import LiteModel, export_lite
from mstage.models.tensorflow_runtime import import_keras, import_tensorflow

SAVED_MODEL_DIR = "saved_model"
LITE_FILE = "ranker.tflite"
ENCODERS_DIR = "encoders"
PARAMS_FILE = "params.json"
OUTPUT = "probability"
HISTORY = "history"
BOTTOM_UNITS = (64,)
TOP_UNITS = (128, 64)
PREDICT_BATCH = 8192


def build_dlrm(specs: list[FeatureSpec], embedding_dim: int,
               bottom_units: tuple[int, ...] = BOTTOM_UNITS,
               top_units: tuple[int, ...] = TOP_UNITS):
    """A Keras functional model: dict of encoded inputs (see module docstring) -> logits [b]."""
    keras = import_keras()
    inputs, top = _interaction(specs, embedding_dim, bottom_units)
    return keras.Model(inputs=inputs, outputs=_head(top, top_units), name="dlrm")


def build_dlrm_heads(specs: list[FeatureSpec], embedding_dim: int,
                     bottom_units: tuple[int, ...] = BOTTOM_UNITS,
                     top_units: tuple[int, ...] = TOP_UNITS):
    """(served, heads) for impressions with clicks: two top MLPs on one interaction.

    A click the pipeline can predict is an item the user is shown and then clicks, so
    P(click) = P(shown) x P(click | shown). `heads` maps inputs to (exposure logit, click
    logit) [b] each: the first is trained on impressions against sampled catalog items, the
    second on clicks among impressions. `served` maps inputs to exposure + log sigmoid(click),
    the log-odds of a shown-and-clicked item, what scoring and ordering use."""
    keras = import_keras()
    from keras import ops

    inputs, top = _interaction(specs, embedding_dim, bottom_units)
    exposure, click = _head(top, top_units), _head(top, top_units)
    served = keras.Model(inputs=inputs, outputs=exposure + ops.log_sigmoid(click), name="dlrm")
    return served, keras.Model(inputs=inputs, outputs=[exposure, click], name="dlrm_heads")


def _head(top, units: tuple[int, ...]):
    """The top MLP over the interaction -> one logit per row [b]."""
    from keras import layers, ops

    for width in units:
        top = layers.Dense(width, activation="relu")(top)
    return ops.reshape(layers.Dense(1)(top), (-1,))


def _interaction(specs: list[FeatureSpec], embedding_dim: int, bottom_units: tuple[int, ...]):
    """(the model's inputs, the top MLP's input [b, w]: bottom vector, pairwise dots and the
    history's closest-item score)."""
    keras = import_keras()
    from keras import layers, ops

    inputs = {s.name: keras.Input(shape=s.shape, dtype=s.dtype, name=s.name) for s in specs}
    scalar = next(s for s in specs if s.shape == ())  # ids are always scalar per row
    ones = ops.ones_like(ops.cast(ops.expand_dims(inputs[scalar.name], -1), "float32"))
    numeric = [ops.expand_dims(inputs[s.name], -1) for s in specs if s.kind == "numeric"]
    dense = ops.concatenate(numeric + [ones], axis=1)  # [b, n_numeric + 1]
    for units in bottom_units:
        dense = layers.Dense(units, activation="relu")(dense)
    bottom = layers.Dense(embedding_dim, name="bottom_out")(dense)  # [b, d]

    vectors, tables, extra = [bottom], {}, []
    for s in specs:
        if s.kind in ("numeric", "history"):
            continue
        table = tables[s.name] = RowEmbedding(s.cardinality, embedding_dim,
                                              name=f"emb_{s.name}")
        x = inputs[s.name]
        if s.kind == "multi":
            mask = ops.expand_dims(ops.cast(ops.greater(x, 0), "float32"), -1)  # [b, L, 1]
            summed = ops.sum(table(x) * mask, axis=1)
            vectors.append(summed / ops.maximum(ops.sum(mask, axis=1), 1.0))
        else:
            vectors.append(table(x))
    if HISTORY in inputs:
        pooled, closest = _history_pooling(tables[ITEM_ID], inputs[HISTORY],
                                           tables[ITEM_ID](inputs[ITEM_ID]), embedding_dim)
        vectors.extend(pooled)
        extra.append(closest)
    stacked = ops.stack(vectors, axis=1)  # [b, F, d]
    n = len(vectors)
    gram = ops.reshape(ops.matmul(stacked, ops.transpose(stacked, (0, 2, 1))), (-1, n * n))
    upper_i, upper_j = np.triu_indices(n, k=1)
    dots = ops.take(gram, (upper_i * n + upper_j).astype("int32"), axis=1)  # [b, n(n-1)/2]
    return inputs, ops.concatenate([bottom, dots, *extra], axis=1)


def _history_pooling(table, history, target, dim: int):
    """([attended [b, d], mean [b, d]], closest [b, 1]) for a history [b, L] of item indices
    and the candidates' embeddings `target` [b, d]; an empty history gives zeros."""
    from keras import ops

    embedded = table(history)  # [b, L, d]
    mask = ops.cast(ops.greater(history, 0), "float32")  # [b, L]
    affinity = ops.sum(embedded * ops.expand_dims(target, 1), axis=-1) / float(np.sqrt(dim))
    masked = ops.where(mask > 0, affinity, -1e9)
    weights = ops.softmax(masked, axis=-1) * mask  # all-padding rows weigh nothing
    attended = ops.sum(ops.expand_dims(weights, -1) * embedded, axis=1)
    count = ops.maximum(ops.sum(mask, axis=1, keepdims=True), 1.0)
    mean = ops.sum(embedded * ops.expand_dims(mask, -1), axis=1) / count
    any_item = ops.max(mask, axis=1, keepdims=True)
    closest = ops.max(masked, axis=1, keepdims=True) * any_item  # 0 without a history
    return [attended, mean], closest


def input_signature(specs: list[FeatureSpec]) -> dict[str, Any]:
    """tf.TensorSpecs [None, *shape] per encoded input, for the serving and training steps."""
    tf = import_tensorflow()
    return {s.name: tf.TensorSpec((None, *s.shape), getattr(tf, s.dtype), name=s.name)
            for s in specs}


def model_specs(encoders: FeatureEncoders, history: int = 0) -> list[FeatureSpec]:
    """The model's inputs: user side then item side, ids first (see encoders.FeatureSpec),
    then the `history` of item indices [L] when L = `history` > 0."""
    specs = encoders.specs("user") + encoders.specs("item")
    if history > 0 and any(s.name == HISTORY for s in specs):
        raise InputError(f"expected no feature named {HISTORY!r} beside the ranker's history "
                         "input; rename that column, or set [ranking] history = 0")
    if history > 0:
        items = next(s for s in specs if s.name == ITEM_ID)
        specs.append(FeatureSpec(HISTORY, "history", "int64", (history,), items.cardinality))
    return specs


def export_dlrm(model, encoders: FeatureEncoders, directory: Path, params: dict[str, Any]) -> None:
    """Write `saved_model/` (signature `serving_default`: encoded inputs -> {"probability":
    float32 [b]}), its LiteRT export `ranker.tflite` (what serving runs), `encoders/` and
    `params.json` into `directory`; nothing is pickled."""
    tf = import_tensorflow()

    specs = model_specs(encoders, int(params.get("history", 0)))

    class DlrmServing(tf.Module):
        def __init__(self, keras_model):
            super().__init__()
            self.model = keras_model

        @tf.function(input_signature=[input_signature(specs)])
        def serve(self, features):
            return {OUTPUT: tf.sigmoid(self.model(features, training=False))}

    module = DlrmServing(model)
    tf.saved_model.save(module, str(directory / SAVED_MODEL_DIR),
                        signatures={"serving_default": module.serve})
    export_lite(directory / SAVED_MODEL_DIR, directory / LITE_FILE)
    encoders.save(directory / ENCODERS_DIR)
    inputs = [{"name": s.name, "kind": s.kind, "dtype": s.dtype, "shape": ["b", *s.shape],
               "cardinality": s.cardinality} for s in specs]
    doc = {"format": 1, "signature": "serving_default", "output": OUTPUT, "inputs": inputs,
           **params}
    (directory / PARAMS_FILE).write_text(json.dumps(doc, indent=1))


class RankingScorer:
    """Click probabilities for (user, candidate item) rows from raw feature values.

    Applies the saved encoders (unknown ids and values map to index 0) and the model's LiteRT
    export (no TensorFlow); the scoring stage uses `score_encoded`. Load once, call per
    request.
    """

    def __init__(self, encoders: FeatureEncoders | None, serve, params: dict[str, Any]):
        self.encoders = encoders
        self._serve = serve
        self.params = params

    @classmethod
    def load(cls, directory: Path) -> RankingScorer:
        directory = Path(directory)
        if not (directory / SAVED_MODEL_DIR).is_dir() or not (directory / PARAMS_FILE).is_file():
            raise InputError(
                f"expected a ranking model (saved_model/, params.json) in {directory}, found "
                "none; run `mstage train-ranking` first"
            )
        scorer = cls.from_lite(directory)
        scorer.encoders = FeatureEncoders.load(directory / ENCODERS_DIR)
        scorer.params = json.loads((directory / PARAMS_FILE).read_text())
        return scorer

    @classmethod
    def from_lite(cls, directory: Path) -> RankingScorer:
        """A scorer of already-encoded inputs (`score_encoded`) from `ranker.tflite` alone."""
        return cls(None, LiteModel(Path(directory) / LITE_FILE, "train-ranking"), {})

    def score(self, user_features: Mapping[str, Any], item_features: Mapping[str, Any],
              history: np.ndarray | None = None) -> np.ndarray:
        """float32 [n] click probabilities.

        `user_features`: `user_id` (int64 ids) and every user feature, raw (category strings,
        numbers, lists or "a|b" strings for multi-valued), each of length n or 1 (one user
        scored against n candidates). `item_features`: `item_id` and every item feature,
        length n. `history`: item ids [1 or n, L], most recent first, -1 padded (None: none).
        """
        return self.score_with_encoded_items(user_features, self.encode_items(item_features),
                                             history)

    def encode_items(self, item_features: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Encoded item inputs for n raw item rows. Encoding strings costs ~10 us per item,
        more than the model itself: encode the catalog once (at load) and pass row subsets
        (`{k: v[rows]}`) to `score_with_encoded_items`."""
        return self.encoders.encode_items(item_features)

    def score_with_encoded_items(self, user_features: Mapping[str, Any],
                                 encoded_items: Mapping[str, np.ndarray],
                                 history: np.ndarray | None = None) -> np.ndarray:
        """float32 [n]: raw user features and history (1 or n rows) against n encoded items."""
        users = self.encoders.encode_users(user_features)
        width = int(self.params.get("history", 0))
        if width > 0:
            encoded = self.encoders.encode_history(
                np.full((1, width), -1) if history is None else history, width)
            rows = len(users["user_id"])
            if len(encoded) not in (1, rows):
                raise InputError(f"expected a history of 1 or {rows} rows (one per user row), "
                                 f"found {len(encoded)}")
            users[HISTORY] = np.broadcast_to(encoded, (rows, width))
        n = len(encoded_items["item_id"])
        if len(users["user_id"]) == 1 and n != 1:
            users = {k: np.repeat(v, n, axis=0) for k, v in users.items()}
        elif len(users["user_id"]) != n:
            raise InputError(
                f"expected user features for 1 or {n} rows (one per item), found "
                f"{len(users['user_id'])}; pass one user, or one user row per candidate"
            )
        return self.score_encoded({**users, **encoded_items})

    def score_encoded(self, features: Mapping[str, np.ndarray]) -> np.ndarray:
        """float32 [n] from already-encoded inputs (the SavedModel's own signature)."""
        n = len(features["item_id"])
        if n == 0:
            return np.zeros(0, dtype=np.float32)
        out = [self._serve(**{k: np.ascontiguousarray(v[i:i + PREDICT_BATCH])
                              for k, v in features.items()})[OUTPUT]
               for i in range(0, n, PREDICT_BATCH)]
        return np.concatenate(out).astype(np.float32, copy=False)
