"""The Feast repository mstage generates: derived features, relative paths, definitions."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest
from feature_data import publish_prepared

from mstage.config import FeaturesConfig, load_config
from mstage.data.schema import Feature, PreparedData
from mstage.errors import ConfigError, InputError
from mstage.features.online import _pad
from mstage.features.repo import (
    OnlineStore,
    definitions_py,
    load_definitions,
    store_yaml,
    write_repo,
)
from mstage.features.tables import build_tables, recent_items, write_tables
from mstage.workspace import Artifact, Workspace


def _interactions(rows):
    return pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "label"])


def test_recent_items_are_distinct_positives_latest_first():
    df = _interactions([
        (1, 10, 100, 1), (1, 11, 200, 1), (1, 12, 300, 0), (1, 10, 350, 1),
        (2, 20, 5, 1), (2, 21, 5, 1),  # a tie in time: larger item id counts as more recent
        (3, 30, 7, 0),                  # only a negative: user 3 is absent
    ])
    out = recent_items(df, n=50)
    # user 1: 10@350 (repeat keeps its latest time), 11@200; 12 is a negative
    assert out["user_id"].tolist() == [1, 2]
    assert [r.tolist() for r in out["recent_items"]] == [[10, 11], [21, 20]]
    assert out["recent_items"][0].dtype == np.int64


def test_recent_items_keeps_only_the_n_latest():
    df = _interactions([(7, i, i, 1) for i in range(10)])
    assert recent_items(df, n=3)["recent_items"][0].tolist() == [9, 8, 7]


def test_recent_items_of_no_interactions_is_empty():
    assert len(recent_items(_interactions([]), n=5)) == 0


def test_build_tables_adds_recent_items_popularity_and_snapshot_time(tmp_path):
    publish_prepared(tmp_path / "ws")
    data = PreparedData(Workspace(tmp_path / "ws").require(Artifact.DATA))
    tables = build_tables(data, n_recent=1)
    # latest interaction is at t=400 (tests/feature_data.py)
    assert tables.as_of == dt.datetime.fromtimestamp(400, dt.UTC)
    assert (tables.users["event_timestamp"] == pd.Timestamp(tables.as_of)).all()
    # n_recent=1: the latest positive only; user 4 never interacted -> []
    assert [r.tolist() for r in tables.users["recent_items"]] == [[10], [13], [11], []]
    # positives per item: 10 -> 3 (user 1 twice, user 2), 11 -> 2, 12 -> 0 (negative), 13 -> 1
    assert tables.items["popularity"].tolist() == [3.0, 2.0, 0.0, 1.0]
    assert [f.name for f in tables.user_features][-1] == "recent_items"
    assert [f.name for f in tables.item_features][-1] == "popularity"

    write_tables(tables, tmp_path / "out")
    users = pd.read_parquet(tmp_path / "out" / "users.parquet")
    assert str(users["event_timestamp"].dtype) == "datetime64[us, UTC]"
    assert users["recent_items"][3].tolist() == []


def test_build_tables_rejects_a_feature_named_like_a_derived_one(tmp_path):
    publish_prepared(tmp_path / "ws")
    data = PreparedData(Workspace(tmp_path / "ws").require(Artifact.DATA))
    data.schema.user_features.append(Feature("recent_items", "multi"))
    with pytest.raises(InputError, match=r"names other than .*found \['recent_items'\]"):
        build_tables(data, n_recent=5)


@pytest.mark.parametrize("value", ["mysql", "redis://", "redis://host", "redis://h:port",
                                   "redis://h:6379/0"])
def test_config_rejects_an_unknown_online_store(value):
    with pytest.raises(ConfigError, match=r"'sqlite' or 'redis://HOST:PORT', found"):
        FeaturesConfig(online_store=value)


def test_config_rejects_non_positive_recent_items(tmp_path):
    path = tmp_path / "mstage.toml"
    path.write_text("[features]\nrecent_items = 0\n")
    with pytest.raises(ConfigError, match=r"features.recent_items > 0, found 0"):
        load_config(path)


def test_online_store_yaml_and_redis_address():
    redis = OnlineStore("redis://10.0.0.5:6380")
    assert redis.is_redis and redis.host_port == ("10.0.0.5", 6380)
    assert 'connection_string: "10.0.0.5:6380"' in redis.yaml()
    assert not OnlineStore("sqlite").is_redis


def test_store_yaml_uses_only_paths_relative_to_the_repository():
    text = store_yaml("mstage_abc", OnlineStore("sqlite"))
    assert "project: mstage_abc" in text
    assert "  path: registry.db" in text and "  path: online.db" in text
    assert "/" not in text  # no absolute (or any directory) path: the repo can move


def test_generated_definitions_declare_entities_views_and_types(tmp_path):
    from feast import Entity, FeatureView
    from feast.types import Array, Float64, Int64, String

    users = [Feature("age_group", "categorical"), Feature("recent_items", "item_ids")]
    items = [Feature("price", "numeric"), Feature("tags", "multi")]
    write_repo(tmp_path, "mstage_abc", OnlineStore("sqlite"), users, items)
    objects = {o.name: o for o in load_definitions(tmp_path)}
    assert isinstance(objects["user"], Entity) and objects["user"].join_key == "user_id"
    assert isinstance(objects["item"], Entity) and objects["item"].join_key == "item_id"
    user_view, item_view = objects["user_features"], objects["item_features"]
    assert isinstance(user_view, FeatureView)
    assert {f.name: f.dtype for f in user_view.features} == {
        "age_group": String, "recent_items": Array(Int64)}
    assert {f.name: f.dtype for f in item_view.features} == {
        "price": Float64, "tags": Array(String)}
    assert user_view.batch_source.path == "data/users.parquet"  # relative to the repo
    assert user_view.ttl == dt.timedelta(0)


def test_definitions_quote_feature_names_safely():
    text = definitions_py([Feature("it's", "categorical")], [Feature("a b", "numeric")])
    compile(text, "definitions.py", "exec")
    assert "name=\"it's\"" in text and "name='a b'" in text


def test_pad_fills_short_and_missing_rows_with_minus_one():
    # width 3: [5, 6] -> [5, 6, -1]; None (unknown user) -> all -1; too long -> truncated
    out = _pad([[5, 6], None, [1, 2, 3, 4]], width=3)
    assert out.dtype == np.int64
    assert out.tolist() == [[5, 6, -1], [-1, -1, -1], [1, 2, 3]]
