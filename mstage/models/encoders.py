"""Feature encoders shared by retrieval and ranking: raw ids and features -> dense model inputs.

One `FeatureEncoders` object, fitted on training data, turns user and item rows into the
arrays every model consumes, the same way in training (Keras) and serving (numpy, vectorised
over a batch). Index 0 always means unknown / out-of-vocabulary / padding.

Encoded arrays, for a batch of b rows (`encode_users` / `encode_items`):

- ``user_id`` / ``item_id``: int64 [b], dense id index (0 = id unseen when fitted).
- categorical feature: int64 [b], vocabulary index (0 = unknown or missing value).
- numeric feature: float32 [b], ``(x - mean) / std`` with train statistics; NaN -> 0.
- multi-valued feature: int64 [b, L], vocabulary indices left-aligned and padded with 0
  (unknown values are dropped); L is fixed at fit time, longer lists are truncated.
  Models mean-pool the non-zero positions.

Saved as ``encoders.json`` (vocabularies, statistics) plus ``ids.npz`` (id tables, which may
be large); never pickled.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mstage.data.lookup import IdLookup
from mstage.data.schema import Feature, Schema
from mstage.errors import InputError
from mstage.models.tensorflow_runtime import import_tensorflow

USER_ID = "user_id"
ITEM_ID = "item_id"
SIDES = ("user", "item")
MAX_MULTI_LEN = 32
ENCODERS_FILE = "encoders.json"
IDS_FILE = "ids.npz"


@dataclass(frozen=True)
class FeatureSpec:
    """One encoded input: its name, kind ('id', 'categorical', 'numeric', 'multi'),
    dtype, per-row shape (() or (L,)) and vocabulary size including index 0 (0 for numeric)."""

    name: str
    kind: str
    dtype: str
    shape: tuple[int, ...]
    cardinality: int


class IdVocab:
    """int64 ids -> dense indices 1..n (0 for ids not seen when fitted), in sorted id order."""

    def __init__(self, ids: np.ndarray):
        self.ids = np.unique(np.asarray(ids, dtype=np.int64))  # sorted; index i -> i + 1
        self._lookup = IdLookup(self.ids)

    def __len__(self) -> int:
        return len(self.ids) + 1

    def lookup(self, ids: Any) -> np.ndarray:
        """[b] int64 ids -> [b] int64 indices."""
        return self._lookup.rows(np.asarray(ids, dtype=np.int64).reshape(-1), missing=-1) + 1


class StringVocab:
    """String values -> indices 1..n in `values` order (0 for unknown), by binary search."""

    def __init__(self, values: Sequence[str]):
        self.values = [str(v) for v in values]
        arr = np.asarray(self.values, dtype=str)
        order = np.argsort(arr, kind="stable")
        self._sorted = arr[order]
        self._index = (order + 1).astype(np.int64)

    def __len__(self) -> int:
        return len(self.values) + 1

    @classmethod
    def fit(cls, values: Sequence[Any]) -> StringVocab:
        """Vocabulary of the non-missing values, most frequent first (ties by value)."""
        counts: dict[str, int] = {}
        for v in values:
            if not _missing(v):
                counts[str(v)] = counts.get(str(v), 0) + 1
        return cls(sorted(counts, key=lambda v: (-counts[v], v)))

    def lookup(self, values: Any) -> np.ndarray:
        """[b] values (strings; None/NaN allowed) -> [b] int64 indices."""
        arr = np.asarray([("" if _missing(v) else str(v)) for v in values], dtype=str) \
            if _is_object(values) else np.asarray(values).astype(str).reshape(-1)
        if len(self.values) == 0 or arr.size == 0:
            return np.zeros(arr.size, dtype=np.int64)
        # searchsorted is >= 0: a ufunc minimum, np.clip's Python wrapper costs more
        pos = np.minimum(np.searchsorted(self._sorted, arr), len(self._sorted) - 1)
        found = (self._sorted[pos] == arr) & (arr != "")
        return np.where(found, self._index[pos], 0).astype(np.int64)


def _is_object(values: Any) -> bool:
    return not isinstance(values, np.ndarray) or values.dtype == object


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


def _as_list(value: Any) -> list[Any]:
    """One multi-valued cell (list, array, 'a|b' string, None) -> list of values."""
    if _missing(value):
        return []
    if isinstance(value, str):
        return [v for v in value.split("|") if v]
    return list(value)


class FeatureEncoders:
    """Fitted encoders for both sides; build with `fit`, persist with `save` / `load`.

    Feature names must be distinct across users and items, so that a ranker can merge the
    two encoded dicts into one set of model inputs.
    """

    def __init__(
        self,
        user_features: list[Feature],
        item_features: list[Feature],
        user_ids: IdVocab,
        item_ids: IdVocab,
        vocabs: dict[str, StringVocab],
        numeric_stats: dict[str, tuple[float, float]],
        multi_lengths: dict[str, int],
    ):
        self.user_features = list(user_features)
        self.item_features = list(item_features)
        self.user_ids = user_ids
        self.item_ids = item_ids
        self.vocabs = vocabs
        self.numeric_stats = numeric_stats
        self.multi_lengths = multi_lengths

    # fitting -----------------------------------------------------------------------------
    @classmethod
    def fit(
        cls,
        users: Any,
        items: Any,
        schema: Schema,
        interactions: Any | None = None,
        max_multi_len: int = MAX_MULTI_LEN,
    ) -> FeatureEncoders:
        """Fit on pandas frames. Id vocabularies come from `interactions` (the training rows)
        when given, else from the users / items tables; feature vocabularies and statistics
        come from the users / items tables."""
        names = [f.name for f in schema.user_features + schema.item_features]
        clash = sorted({n for n in names if names.count(n) > 1} | ({USER_ID, ITEM_ID} & set(names)))
        if clash:
            raise InputError(
                f"expected distinct user and item feature names, found {', '.join(clash)} "
                "on both sides (or named like an id); rename them and run `mstage prepare-data`"
            )
        source_users = interactions if interactions is not None else users
        source_items = interactions if interactions is not None else items
        vocabs, stats, lengths = {}, {}, {}
        for frame, features in ((users, schema.user_features), (items, schema.item_features)):
            for f in features:
                column = frame[f.name]
                if f.kind == "categorical":
                    vocabs[f.name] = StringVocab.fit(column.tolist())
                elif f.kind == "multi":
                    cells = [_as_list(v) for v in column.tolist()]
                    vocabs[f.name] = StringVocab.fit([v for cell in cells for v in cell])
                    lengths[f.name] = max(1, min(max_multi_len, max((len(c) for c in cells),
                                                                    default=1)))
                elif f.kind == "numeric":
                    x = np.asarray(column, dtype=np.float64)
                    x = x[np.isfinite(x)]
                    mean = float(x.mean()) if x.size else 0.0
                    std = float(x.std()) if x.size else 1.0
                    stats[f.name] = (mean, std if std > 0 else 1.0)
                else:
                    raise InputError(
                        f"expected feature kind categorical, numeric or multi for {f.name!r}, "
                        f"found {f.kind!r}; run `mstage prepare-data` again"
                    )
        return cls(schema.user_features, schema.item_features,
                   IdVocab(np.asarray(source_users[USER_ID])),
                   IdVocab(np.asarray(source_items[ITEM_ID])), vocabs, stats, lengths)

    # encoding ----------------------------------------------------------------------------
    def encode_users(self, data: Any) -> dict[str, np.ndarray]:
        """A DataFrame or dict of arrays with `user_id` and the user features -> model inputs."""
        return self._encode(data, USER_ID, self.user_ids, self.user_features)

    def encode_items(self, data: Any) -> dict[str, np.ndarray]:
        """A DataFrame or dict of arrays with `item_id` and the item features -> model inputs."""
        return self._encode(data, ITEM_ID, self.item_ids, self.item_features)

    def encode_history(self, item_ids: np.ndarray, width: int) -> np.ndarray:
        """Item ids [b, R], most recent first, -1 padded -> int64 item indices [b, width]
        (cut or 0-padded to `width`; 0 for padding and items not seen when fitted): the
        history input of a history-aware model."""
        ids = np.atleast_2d(np.asarray(item_ids, dtype=np.int64))[:, :width]
        out = np.zeros((len(ids), width), dtype=np.int64)
        out[:, :ids.shape[1]] = self.item_ids.lookup(ids.ravel()).reshape(ids.shape)
        return out

    def _encode(self, data: Any, id_name: str, ids: IdVocab,
                features: list[Feature]) -> dict[str, np.ndarray]:
        missing = [n for n in [id_name] + [f.name for f in features] if n not in data]
        if missing:
            raise InputError(
                f"expected columns {', '.join(missing)} to encode, found only "
                f"{', '.join(map(str, _keys(data)))}; pass every feature listed in schema.json"
            )
        out = {id_name: ids.lookup(_column(data, id_name))}
        for f in features:
            values = _column(data, f.name)
            if f.kind == "categorical":
                out[f.name] = self.vocabs[f.name].lookup(values)
            elif f.kind == "numeric":
                mean, std = self.numeric_stats[f.name]
                x = (np.asarray(values, dtype=np.float64).reshape(-1) - mean) / std
                out[f.name] = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)
            else:
                out[f.name] = self._encode_multi(f.name, values)
        return out

    def _encode_multi(self, name: str, values: Any) -> np.ndarray:
        """[b] cells (lists / 'a|b' strings) -> [b, L] int64, left-aligned, 0-padded."""
        length = self.multi_lengths[name]
        if isinstance(values, np.ndarray) and values.ndim == 2:
            cells = [[v for v in row if not _missing(v) and str(v) != ""] for row in values]
        else:
            cells = [_as_list(v) for v in values]
        flat = [v for cell in cells for v in cell]
        codes = self.vocabs[name].lookup(np.asarray(flat, dtype=object)) if flat else \
            np.zeros(0, dtype=np.int64)
        out = np.zeros((len(cells), length), dtype=np.int64)
        start = 0
        for row, cell in enumerate(cells):
            kept = codes[start:start + len(cell)]
            kept = kept[kept > 0][:length]
            out[row, :len(kept)] = kept
            start += len(cell)
        return out

    # description -------------------------------------------------------------------------
    def specs(self, side: str) -> list[FeatureSpec]:
        """The encoded inputs of one side ('user' or 'item'), id first, in schema order."""
        if side not in SIDES:
            raise ValueError(f"side must be one of {SIDES}, got {side!r}")
        id_name, ids, features = ((USER_ID, self.user_ids, self.user_features) if side == "user"
                                  else (ITEM_ID, self.item_ids, self.item_features))
        out = [FeatureSpec(id_name, "id", "int64", (), len(ids))]
        for f in features:
            if f.kind == "numeric":
                out.append(FeatureSpec(f.name, "numeric", "float32", (), 0))
            elif f.kind == "categorical":
                out.append(FeatureSpec(f.name, "categorical", "int64", (),
                                       len(self.vocabs[f.name])))
            else:
                out.append(FeatureSpec(f.name, "multi", "int64", (self.multi_lengths[f.name],),
                                       len(self.vocabs[f.name])))
        return out

    def tensor_specs(self, side: str) -> dict[str, Any]:
        """`tf.TensorSpec`s with a leading batch dimension, for export signatures."""
        tf = import_tensorflow()

        return {s.name: tf.TensorSpec((None, *s.shape), getattr(tf, s.dtype), name=s.name)
                for s in self.specs(side)}

    # persistence -------------------------------------------------------------------------
    def save(self, directory: Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        np.savez(directory / IDS_FILE, user_ids=self.user_ids.ids, item_ids=self.item_ids.ids)
        doc = {
            "format": 1,
            "user_features": [vars(f) for f in self.user_features],
            "item_features": [vars(f) for f in self.item_features],
            "vocabs": {n: v.values for n, v in self.vocabs.items()},
            "numeric_stats": {n: list(s) for n, s in self.numeric_stats.items()},
            "multi_lengths": self.multi_lengths,
        }
        (directory / ENCODERS_FILE).write_text(json.dumps(doc, indent=1))

    @classmethod
    def load(cls, directory: Path) -> FeatureEncoders:
        directory = Path(directory)
        if not (directory / ENCODERS_FILE).is_file():
            raise InputError(
                f"expected saved encoders at {directory / ENCODERS_FILE}, found nothing; "
                "run `mstage train-retrieval` (or `mstage train-ranking`) first"
            )
        doc = json.loads((directory / ENCODERS_FILE).read_text())
        with np.load(directory / IDS_FILE, allow_pickle=False) as ids:
            user_ids, item_ids = IdVocab(ids["user_ids"]), IdVocab(ids["item_ids"])
        return cls(
            [Feature(**f) for f in doc["user_features"]],
            [Feature(**f) for f in doc["item_features"]],
            user_ids, item_ids,
            {n: StringVocab(v) for n, v in doc["vocabs"].items()},
            {n: (float(s[0]), float(s[1])) for n, s in doc["numeric_stats"].items()},
            {n: int(v) for n, v in doc["multi_lengths"].items()},
        )


def _keys(data: Any) -> list[Any]:
    return list(data.columns) if hasattr(data, "columns") else list(data)


def _column(data: Any, name: str) -> Any:
    """A column as a numpy array (object dtype kept for lists / strings)."""
    value = data[name]
    if hasattr(value, "to_numpy"):
        return value.to_numpy()
    if isinstance(value, Mapping):
        raise InputError(f"expected an array for {name!r}, found a mapping")
    return value if isinstance(value, np.ndarray) else np.asarray(value, dtype=object) \
        if _ragged(value) else np.asarray(value)


def _ragged(value: Any) -> bool:
    return isinstance(value, list | tuple) and any(isinstance(v, list | tuple | np.ndarray)
                                                   for v in value)
