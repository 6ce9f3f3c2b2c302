"""`OnlineFeatures`: the serving pipeline's reader of the Feast online store, as numpy arrays.

Opened from the features directory alone (every path in it is relative), so it works the same
in-process, inside a Triton python-backend model, or from a copy of the directory; SQLite and
Redis stores share the API. Users are read per request (one online read); items are read once
with `all_items()` and held in memory by the caller.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mstage.data.schema import Feature
from mstage.errors import ArtifactMissing
from mstage.features.repo import ITEM_VIEW, ONLINE_DB, REGISTRY, SOURCES_DIR, STORE_YAML, USER_VIEW
from mstage.features.tables import ITEM_ID, USER_ID

SPEC = "features.json"
ITEM_BATCH = 5_000
ONLINE_FILES = (STORE_YAML, REGISTRY, ONLINE_DB, SPEC)
"""What online reads need of a features artifact (a Redis-backed one has no ONLINE_DB)."""
EXPORTED_ITEMS = f"{SOURCES_DIR}/items.parquet"


@dataclass(frozen=True)
class StoreSpec:
    """What `features.json` records: the features each view serves and the recent-items width."""

    project: str
    online_store: str
    recent_items: int
    user_features: list[Feature]
    item_features: list[Feature]

    def save(self, directory: Path) -> None:
        raw = {
            "project": self.project,
            "online_store": self.online_store,
            "recent_items": self.recent_items,
            "user_features": [vars(f) for f in self.user_features],
            "item_features": [vars(f) for f in self.item_features],
        }
        (directory / SPEC).write_text(json.dumps(raw, indent=2))

    @classmethod
    def load(cls, directory: Path) -> StoreSpec:
        raw = json.loads((directory / SPEC).read_text())
        raw["user_features"] = [Feature(**f) for f in raw["user_features"]]
        raw["item_features"] = [Feature(**f) for f in raw["item_features"]]
        return cls(**raw)


class OnlineFeatures:
    """Feature lookups by the user's own int64 ids; unknown ids come back with found=False.

    Value conventions (per row): categorical -> str or None, numeric -> float64 (NaN when
    missing), multi-valued -> list of str ([] when missing), `recent_items` -> a row of the
    int64 matrix `[n, recent_items]`, most recent first, padded with -1.
    """

    def __init__(self, store, spec: StoreSpec, directory: Path):
        from feast.infra.online_stores.helpers import get_online_store_from_config

        self._store = store
        self._online = get_online_store_from_config(store.config.online_store)
        self._views: dict = {}  # view name -> FeatureView, read from the registry once
        self.spec = spec
        self.directory = directory

    @classmethod
    def open(cls, features_dir: str | Path) -> OnlineFeatures:
        directory = Path(features_dir).resolve()
        if not (directory / STORE_YAML).is_file() or not (directory / SPEC).is_file():
            raise ArtifactMissing(
                f"expected a feature store ({STORE_YAML}, {SPEC}) in {directory}, found none; "
                "run `mstage export-features` first"
            )
        from feast import FeatureStore

        return cls(FeatureStore(repo_path=str(directory)), StoreSpec.load(directory), directory)

    def users(self, user_ids: np.ndarray) -> dict[str, np.ndarray]:
        """Features of `user_ids` (int64 [n]): each feature [n], `recent_items` int64
        [n, recent_items], `found` bool [n]."""
        return self._read(USER_VIEW, USER_ID, self.spec.user_features, user_ids)

    def items(self, item_ids: np.ndarray) -> dict[str, np.ndarray]:
        """Features of `item_ids` (int64 [n]): each feature [n] and `found` bool [n]."""
        return self._read(ITEM_VIEW, ITEM_ID, self.spec.item_features, item_ids)

    def all_items(self, source: str = "online"):
        """Every exported item's features as a DataFrame (`item_id` + features).

        `online` (default) reads the online store in batches, so values written to it after
        the export (e.g. stock updates) are seen; `offline` reads the view's parquet source,
        the same rows as exported, in a fraction of the time (see benchmarks/RESULTS.md).
        """
        import pandas as pd

        if source not in ("online", "offline"):
            raise ValueError(f"expected source 'online' or 'offline', found {source!r}")
        path = self.directory / EXPORTED_ITEMS
        if source == "offline":
            return exported_items(self.directory)
        ids = pd.read_parquet(path, columns=[ITEM_ID])[ITEM_ID].to_numpy()
        parts = []
        for start in range(0, len(ids), ITEM_BATCH):
            batch = self.items(ids[start:start + ITEM_BATCH])
            found = batch.pop("found")
            parts.append(pd.DataFrame({k: v[found] for k, v in batch.items()}))
        if not parts:
            return _from_offline(pd.read_parquet(path), self.spec.item_features)
        return pd.concat(parts, ignore_index=True)

    def _read(self, view: str, key: str, features: list[Feature],
              ids: np.ndarray) -> dict[str, np.ndarray]:
        """One read of the view's online table through Feast's own online store.

        `online_read` is what `get_online_features` calls underneath; going to it directly
        skips the generic request planning and response building, ~3/4 of a one-user read
        (benchmarks/RESULTS.md). It returns per id a timestamp and the stored values."""
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value

        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        table = self._views.get(view)
        if table is None:
            table = self._views[view] = self._store.get_feature_view(view)
        rows = self._online.online_read(
            self._store.config, table,
            [EntityKey(join_keys=[key], entity_values=[Value(int64_val=int(i))]) for i in ids],
            [f.name for f in features]) if len(ids) else []
        # Redis answers an unknown id with empty values stamped 0; rows are never stamped 0
        # (see tables.build_tables), so no stamp or a zero stamp both mean "not found".
        found = np.array([stamp is not None and stamp.timestamp() > 0 for stamp, _ in rows],
                         dtype=bool)
        out = {key: ids, "found": found}
        for f in features:
            out[f.name] = self._column(
                f, [_value(values[f.name]) if values and f.name in values else None
                    for _, values in rows])
        return out

    def _column(self, feature: Feature, values: list) -> np.ndarray:
        if feature.kind == "numeric":
            return np.array([np.nan if v is None else v for v in values], dtype=np.float64)
        if feature.kind == "item_ids":
            return _pad(values, self.spec.recent_items)
        column = np.empty(len(values), dtype=object)
        if feature.kind == "multi":
            column[:] = [list(v) if v is not None else [] for v in values]
        else:
            column[:] = values
        return column


def exported_items(features_dir: Path):
    """Every item as exported (`item_id` + features, in `items()` conventions), read from the
    artifact's parquet without Feast: the rows export-features materialized online."""
    import pandas as pd

    directory = Path(features_dir)
    if not (directory / SPEC).is_file():
        raise ArtifactMissing(f"expected a feature store ({SPEC}) in {directory}, found none; "
                              "run `mstage export-features` first")
    spec = StoreSpec.load(directory)
    return _from_offline(pd.read_parquet(directory / EXPORTED_ITEMS), spec.item_features)


def catalog_size(features_dir: Path) -> int | None:
    """How many items the artifact exported (the catalog the pipeline serves), from the
    parquet footer alone: no table, no Feast. None when the table is not there."""
    import pyarrow.parquet as pq

    path = Path(features_dir) / EXPORTED_ITEMS
    return pq.ParquetFile(path).metadata.num_rows if path.is_file() else None


class ItemAttributes:
    """item ids [n] -> DataFrame of `item_id` + item features in that order (NaN rows for
    unknown ids), from the exported table, read at the first call: what answers display."""

    def __init__(self, features_dir: Path):
        self.features_dir = features_dir
        self._items = None

    def __call__(self, item_ids):
        if self._items is None:
            self._items = exported_items(self.features_dir).set_index(ITEM_ID)
        return self._items.reindex(np.asarray(item_ids, dtype=np.int64)).reset_index()


def _from_offline(table, features: list[Feature]):
    """The offline item table in `items()` conventions (null lists -> [], NaN for numeric)."""
    out = table[[ITEM_ID] + [f.name for f in features]].reset_index(drop=True)
    for f in features:
        if f.kind == "multi":
            out[f.name] = [list(v) if v is not None else [] for v in out[f.name]]
        elif f.kind == "numeric":
            out[f.name] = out[f.name].astype(np.float64)
        else:
            out[f.name] = out[f.name].astype(object).where(out[f.name].notna(), None)
    return out


def _value(proto):
    """A stored Feast value as Python: a scalar, a list for list types, None when unset."""
    kind = proto.WhichOneof("val")
    if kind is None or kind == "null_val":
        return None
    value = getattr(proto, kind)
    return list(value.val) if kind.endswith("_list_val") else value


def _pad(rows: list, width: int) -> np.ndarray:
    """Lists of ids -> int64 [len(rows), width], -1 where a row is shorter (or missing)."""
    matrix = np.full((len(rows), width), -1, dtype=np.int64)
    for i, row in enumerate(rows):
        if row:
            matrix[i, :len(row)] = row[:width]
    return matrix
