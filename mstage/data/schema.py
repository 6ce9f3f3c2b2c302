"""The prepared-data contract: what `mstage prepare-data` writes and every later stage reads.

Layout of `workspace/data/`:

- `interactions.parquet`: one row per (user, item, timestamp) event, sorted by user then time.
  `user_id` int64, `item_id` int64, `timestamp` int64 (unix seconds), `label` int8 (1 for a
  positive; every row is 1 when the input had no label column), and one fold column per
  split of ../evaluation.md: `fold_user_temporal`, `fold_global` int8 with
  FIT=0 (train minus validation), VALID=1 (validation, part of train), TEST=2.
- `users.parquet`: `user_id` int64 plus user feature columns (one row per user).
- `items.parquet`: `item_id` int64 plus item feature columns (one row per item).
- `schema.json`: the feature columns and their kinds, label presence and counts.
- `id_maps/{users,items}.parquet` (only when input ids were strings): `raw_id` string,
  `id` int64.

Multi-valued features are stored as lists of strings; categorical as strings; numeric as
float64; a missing value is null, NaN or an empty list. Ids are the user's own ids (int64),
never dense indices.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

SCHEMA_FILE = "schema.json"
ID_MAPS = "id_maps"
FIT, VALID, TEST = 0, 1, 2
SPLITS = ("user-temporal", "global")
KINDS = ("categorical", "numeric", "multi")


def fold_column(split: str) -> str:
    """'user-temporal' -> 'fold_user_temporal'."""
    return "fold_" + split.replace("-", "_")


@dataclass(frozen=True)
class Feature:
    name: str
    kind: str  # one of KINDS


@dataclass
class Schema:
    user_features: list[Feature] = field(default_factory=list)
    item_features: list[Feature] = field(default_factory=list)
    has_label: bool = False
    counts: dict[str, int] = field(default_factory=dict)
    string_ids: dict[str, bool] = field(default_factory=dict)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: Path) -> Schema:
        raw = json.loads(path.read_text())
        raw["user_features"] = [Feature(**f) for f in raw["user_features"]]
        raw["item_features"] = [Feature(**f) for f in raw["item_features"]]
        return cls(**raw)


def write_prepared(directory: Path, interactions, users, items, schema: Schema,
                   id_maps: dict | None = None) -> Path:
    """Write the tables (pandas DataFrames or pyarrow Tables), their schema and, for string
    ids, the `id_maps` ({"users"|"items": DataFrame raw_id, id}) in this layout. The one
    writer: `mstage prepare-data`, tests and benchmarks all go through it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    directory.mkdir(parents=True, exist_ok=True)
    for name, table in (("interactions", interactions), ("users", users), ("items", items)):
        if not isinstance(table, pa.Table):
            table = pa.Table.from_pandas(table, preserve_index=False)
        pq.write_table(table, directory / f"{name}.parquet")
    if id_maps:
        (directory / ID_MAPS).mkdir()
        for name, table in id_maps.items():
            table.to_parquet(directory / ID_MAPS / f"{name}.parquet", index=False)
    schema.save(directory / SCHEMA_FILE)
    return directory


class PreparedData:
    """Read access to `workspace/data/`; tables load lazily and are cached."""

    def __init__(self, root: Path):
        self.root = root
        self.schema = Schema.load(root / SCHEMA_FILE)
        self._cache: dict[str, object] = {}

    def _read(self, name: str):
        import pandas as pd

        if name not in self._cache:
            self._cache[name] = pd.read_parquet(self.root / f"{name}.parquet")
        return self._cache[name]

    @property
    def interactions(self):
        return self._read("interactions")

    @property
    def users(self):
        return self._read("users")

    @property
    def items(self):
        return self._read("items")

    def id_map(self, kind: str):
        """`raw_id` -> `id` DataFrame for 'users' or 'items'; None when those ids were numeric."""
        import pandas as pd

        path = self.root / ID_MAPS / f"{kind}.parquet"
        return pd.read_parquet(path) if path.exists() else None

    def positives(self):
        """Rows that count as interactions for the evaluation protocol (label == 1)."""
        df = self.interactions
        return df[df["label"] == 1]

    def fold(self, split: str) -> np.ndarray:
        return self.interactions[fold_column(split)].to_numpy()
