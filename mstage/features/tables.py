"""The offline tables behind the feature views: prepared users/items plus derived features.

Feast reads these parquet files as its offline sources and materializes them into the online
store. Every row carries the same `event_timestamp`, the time of the latest interaction in the
data (at least 1 s after the epoch): the tables are a snapshot "as of" that moment, so one
materialize window covers them.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np

from mstage.data.schema import Feature, PreparedData
from mstage.errors import InputError

EVENT_TIMESTAMP = "event_timestamp"
RECENT_ITEMS = "recent_items"
POPULARITY = "popularity"
USER_ID, ITEM_ID = "user_id", "item_id"
RESERVED = {EVENT_TIMESTAMP, RECENT_ITEMS, POPULARITY, USER_ID, ITEM_ID}


@dataclass
class FeatureTables:
    """The two offline tables (pandas DataFrames) and the features each view serves.

    Beyond the prepared features, users get `recent_items` (for "already seen" filtering) and
    items get `popularity` (positive interactions, for the cold-start path); every view thus
    serves at least one feature.
    """

    users: object
    items: object
    user_features: list[Feature]
    item_features: list[Feature]
    as_of: dt.datetime


def recent_items(interactions, n: int):
    """Each user's `n` most recent distinct positive items, most recent first.

    All positive rows count, whatever their fold: at serving time every known interaction is
    "already seen". Ties in time are broken by the larger item id first, the mirror of the
    evaluation protocol's (timestamp, item id) order. Returns a DataFrame with `user_id` and
    `recent_items` (int64 arrays of length <= n); users without positives are absent.
    """
    positives = interactions.loc[interactions["label"] == 1, [USER_ID, ITEM_ID, "timestamp"]]
    latest_first = positives.sort_values(
        [USER_ID, "timestamp", ITEM_ID], ascending=[True, False, False], kind="stable"
    )
    distinct = latest_first.drop_duplicates([USER_ID, ITEM_ID], keep="first")
    kept = distinct.groupby(USER_ID, sort=True).head(n)
    user_ids = kept[USER_ID].to_numpy(dtype=np.int64)
    items = kept[ITEM_ID].to_numpy(dtype=np.int64)
    starts = np.flatnonzero(np.diff(user_ids, prepend=-1) != 0) if len(user_ids) else user_ids
    import pandas as pd

    chunks = np.split(items, starts[1:]) if len(items) else []
    return pd.DataFrame({USER_ID: user_ids[starts], RECENT_ITEMS: chunks})


def _check_names(features: list[Feature], table: str) -> None:
    clash = sorted(RESERVED & {f.name for f in features})
    if clash:
        raise InputError(
            f"expected {table} feature names other than {sorted(RESERVED)}, found {clash}; "
            "rename them (or list them under [data] ignore) and rerun `mstage prepare-data`"
        )


def build_tables(data: PreparedData, n_recent: int) -> FeatureTables:
    """The user table (features + `recent_items`) and the item table, stamped as of the data."""
    import pandas as pd

    schema = data.schema
    _check_names(schema.user_features, "user")
    _check_names(schema.item_features, "item")
    interactions = data.interactions
    latest = int(interactions["timestamp"].max()) if len(interactions) else 0
    # Never stamp 0: readers take an empty (zero) timestamp to mean "entity not found".
    as_of = dt.datetime.fromtimestamp(max(latest, 1), dt.UTC)

    users = data.users[[USER_ID] + [f.name for f in schema.user_features]].copy()
    recent = recent_items(interactions, n_recent)
    users = users.merge(recent, on=USER_ID, how="left")
    empty = np.array([], dtype=np.int64)
    users[RECENT_ITEMS] = [empty if not isinstance(v, np.ndarray) else v
                           for v in users[RECENT_ITEMS]]
    items = data.items[[ITEM_ID] + [f.name for f in schema.item_features]].copy()
    counts = interactions.loc[interactions["label"] == 1, ITEM_ID].value_counts()
    items[POPULARITY] = items[ITEM_ID].map(counts).fillna(0).astype(np.float64)
    for table in (users, items):
        table[EVENT_TIMESTAMP] = pd.Timestamp(as_of)
    user_features = [*schema.user_features, Feature(RECENT_ITEMS, "item_ids")]
    item_features = [*schema.item_features, Feature(POPULARITY, "numeric")]
    return FeatureTables(users, items, user_features, item_features, as_of)


def write_tables(tables: FeatureTables, directory) -> None:
    """Parquet with explicit types, so Feast infers list<int64> even for empty lists."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    directory.mkdir(parents=True, exist_ok=True)
    for name, df, features in (("users", tables.users, tables.user_features),
                               ("items", tables.items, tables.item_features)):
        key = USER_ID if name == "users" else ITEM_ID
        fields = [pa.field(key, pa.int64())]
        fields += [pa.field(f.name, arrow_type(f.kind)) for f in features]
        fields.append(pa.field(EVENT_TIMESTAMP, pa.timestamp("us", tz="UTC")))
        table = pa.Table.from_pandas(df, schema=pa.schema(fields), preserve_index=False)
        pq.write_table(table, directory / f"{name}.parquet")


def arrow_type(kind: str):
    """The pyarrow type a feature of this kind is stored as (see mstage.data.schema)."""
    import pyarrow as pa

    return {
        "categorical": pa.string(),
        "numeric": pa.float64(),
        "multi": pa.list_(pa.string()),
        "item_ids": pa.list_(pa.int64()),
    }[kind]
