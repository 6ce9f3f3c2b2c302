"""`mstage export-features` end to end: SQLite and a real Redis, read back through Feast.

The data are tests/feature_data.py (4 users, 4 items); expected values are written there.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from cli_runner import run_cli, run_python
from feature_data import publish_prepared, tables
from redis_server import free_port

import mstage.features.store as feature_store
from mstage.errors import ArtifactMissing
from mstage.features.online import OnlineFeatures
from mstage.workspace import Artifact, Workspace


def export(workspace: Path, *options: str) -> dict:
    result = run_cli("-w", workspace, "-q", "export-features", "--json", *options)
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)  # pure JSON: Feast's own printing stays off stdout


@pytest.fixture(scope="module")
def sqlite_store(tmp_path_factory):
    """A workspace with the tiny data exported once to a SQLite store: (workspace, payload)."""
    root = tmp_path_factory.mktemp("sqlite") / "ws"
    publish_prepared(root)
    return root, export(root, "--recent-items", "3")


@pytest.fixture(scope="module")
def redis_store(tmp_path_factory, redis_url):
    root = tmp_path_factory.mktemp("redis") / "ws"
    publish_prepared(root)
    return root, export(root, "--online-store", redis_url, "--recent-items", "3")


def redis_keys(url: str, project: str) -> int:
    import redis

    host, port = url.removeprefix("redis://").split(":")
    client = redis.Redis(host=host, port=int(port))
    return sum(1 for _ in client.scan_iter(match=b"*" + project.encode()))


def assert_serves_the_tiny_data(online: OnlineFeatures) -> None:
    users = online.users(np.array([2, 1, 99, 4]))
    assert users["found"].tolist() == [True, True, False, True]
    assert users["age_group"].tolist() == [None, "18-24", None, "25-34"]
    # recent_items width 3, latest first, -1 padding; unknown user 99 and user 4 have none
    assert users["recent_items"].tolist() == [[13, 10, -1], [10, 11, -1], [-1, -1, -1],
                                              [-1, -1, -1]]
    items = online.all_items()
    _, _, source = tables()
    assert items["item_id"].tolist() == [10, 11, 12, 13]
    assert items["category"].tolist() == source["category"].tolist()
    assert items["brand"].tolist() == ["acme", "zeta", None, "acme"]
    np.testing.assert_array_equal(items["price"], [1.5, np.nan, 3.0, 4.25])
    assert items["in_stock"].tolist() == [1.0, 0.0, 1.0, 1.0]
    assert items["tags"].tolist() == [["new", "sale"], [], [], ["sale"]]  # null -> []
    assert items["popularity"].tolist() == [3.0, 2.0, 0.0, 1.0]


# SQLite -------------------------------------------------------------------------------------
def test_sqlite_export_reads_back_every_row_and_records_it(sqlite_store):
    root, payload = sqlite_store
    assert payload["online_store"] == "sqlite"
    assert (payload["users"], payload["items"], payload["recent_items"]) == (4, 4, 3)
    assert payload["read_back"] == {"users_checked": 4, "users_matched": 4,
                                    "items_checked": 4, "items_matched": 4}
    record = Workspace(root).record(Artifact.FEATURES)
    assert record["metrics"]["users_matched"] == 4 and record["metrics"]["items_matched"] == 4
    assert record["config"]["project"] == payload["project"]
    features = root / "features"
    assert {p.name for p in features.iterdir()} >= {
        "feature_store.yaml", "definitions.py", "features.json", "registry.db", "online.db",
        "data"}
    assert str(root) not in (features / "feature_store.yaml").read_text()
    assert not list((root / ".staging").iterdir())


def test_online_features_serve_the_source_rows(sqlite_store):
    root, _ = sqlite_store
    online = OnlineFeatures.open(root / "features")
    assert_serves_the_tiny_data(online)
    pd.testing.assert_frame_equal(online.all_items(source="offline"), online.all_items())
    with pytest.raises(ValueError, match="expected source 'online' or 'offline'"):
        online.all_items(source="cache")


def test_table_output_shows_the_read_back_counts(cli, tmp_path):
    publish_prepared(tmp_path / "ws")
    result = cli("-w", tmp_path / "ws", "export-features")
    assert result.exit_code == 0, result.stderr
    assert "users read back" in result.stdout and "4/4 match" in result.stdout
    assert "Materializing" not in result.stdout


@pytest.mark.slow
def test_a_copied_store_opens_in_another_process_and_in_feast_cli(sqlite_store, tmp_path):
    root, _ = sqlite_store
    copy = tmp_path / "elsewhere" / "features"
    shutil.copytree(root / "features", copy)
    code = ("import json, sys, numpy as np; from mstage.features.online import OnlineFeatures; "
            "u = OnlineFeatures.open(sys.argv[1]).users(np.array([1, 99])); "
            "print(json.dumps({'found': u['found'].tolist(), "
            "'recent': u['recent_items'].tolist()}))")
    out = run_python("-c", code, copy, cwd=tmp_path)
    assert json.loads(out.stdout) == {"found": [True, False], "recent": [[10, 11, -1],
                                                                        [-1, -1, -1]]}
    # Feast's own CLI (the `feast` entry point, run in-process to save a second Feast import)
    from click.testing import CliRunner as ClickRunner
    from feast.cli.cli import cli as feast_cli

    views = ClickRunner().invoke(feast_cli, ["-c", str(copy), "feature-views", "list"])
    assert views.exit_code == 0, views.output
    assert "user_features" in views.stdout and "item_features" in views.stdout


def test_failed_online_write_keeps_the_previous_store_serving(cli, tmp_path, monkeypatch):
    root = tmp_path / "ws"
    publish_prepared(root)
    before = export(root, "--recent-items", "3")

    def broken(store, tables, task):
        raise RuntimeError("disk full [simulated]")

    monkeypatch.setattr(feature_store, "write_online", broken)
    result = cli("-w", root, "export-features", "--recent-items", "3")
    assert result.exit_code == 1
    assert "expected Feast to write the features into the sqlite online store" in (
        result.stderr)
    assert "RuntimeError: disk full [simulated]" in result.stderr
    assert "previous feature store is kept" in result.stderr
    assert "Traceback" not in result.stderr
    assert Workspace(root).record(Artifact.FEATURES)["config"]["project"] == before["project"]
    assert_serves_the_tiny_data(OnlineFeatures.open(root / "features"))


def test_a_store_serving_other_values_fails_the_read_back(cli, tmp_path, monkeypatch):
    root = tmp_path / "ws"
    publish_prepared(root)
    real_write = feature_store.write_online

    def corrupting(store, tables, task):
        real_write(store, tables, task)
        store.write_to_online_store("item_features", pd.DataFrame({
            "item_id": [11], "category": ["wrong"], "brand": ["zeta"], "price": [np.nan],
            "in_stock": [0.0], "tags": [[]], "popularity": [2.0],
            "event_timestamp": [tables.as_of]}))

    monkeypatch.setattr(feature_store, "write_online", corrupting)
    result = cli("-w", root, "export-features")
    assert result.exit_code == 1
    assert "expected the online store to serve the exported rows, found mismatches " \
           "(users 4/4, items 3/4; first: item_id 11: category)" in result.stderr
    assert not (root / "features").exists()


# errors -------------------------------------------------------------------------------------
def test_opening_a_directory_without_a_store_names_export_features(tmp_path):
    with pytest.raises(ArtifactMissing, match=r"found none; run `mstage export-features` first"):
        OnlineFeatures.open(tmp_path)


def test_missing_data_names_prepare_data(cli):
    result = cli("export-features")
    assert result.exit_code == 2
    assert "expected the data artifact" in result.stderr
    assert "run `mstage prepare-data` first" in result.stderr


def test_a_bad_online_store_is_a_usage_error(cli, isolated_workspace):
    publish_prepared(isolated_workspace)
    result = cli("export-features", "--online-store", "memcached://x:1")
    assert result.exit_code == 2
    assert "expected features.online_store to be 'sqlite' or 'redis://HOST:PORT', found " \
           "'memcached://x:1'" in result.stderr


def test_bad_recent_items_in_mstage_toml_is_a_usage_error(cli, isolated_workspace):
    publish_prepared(isolated_workspace)
    (isolated_workspace / "mstage.toml").write_text("[features]\nrecent_items = -2\n")
    result = cli("export-features")
    assert result.exit_code == 2
    assert "expected features.recent_items > 0, found -2" in result.stderr


def test_unreachable_redis_fails_before_writing_anything(cli, isolated_workspace):
    publish_prepared(isolated_workspace)
    url = f"redis://127.0.0.1:{free_port()}"  # nothing listens there
    result = cli("export-features", "--online-store", url)
    assert result.exit_code == 1
    assert f"expected a Redis server answering at {url}" in result.stderr
    assert "Connection refused" in result.stderr or "ConnectionError" in result.stderr
    assert not (isolated_workspace / "features").exists()
    assert Workspace(isolated_workspace).record(Artifact.FEATURES) is None


# Redis --------------------------------------------------------------------------------------
@pytest.mark.slow
def test_redis_export_reads_back_every_row(redis_store, redis_url):
    root, payload = redis_store
    assert payload["online_store"] == redis_url
    assert payload["read_back"] == {"users_checked": 4, "users_matched": 4,
                                    "items_checked": 4, "items_matched": 4}
    assert redis_keys(redis_url, payload["project"]) == 8  # 4 users + 4 items
    assert not (root / "features" / "online.db").exists()
    assert_serves_the_tiny_data(OnlineFeatures.open(root / "features"))


@pytest.mark.slow
def test_redis_failure_deletes_its_own_keys_and_keeps_the_old_ones(
        cli, redis_store, redis_url, monkeypatch):
    root, payload = redis_store
    written = []

    def half_done(store, tables, task):
        written.append(store.config.project)
        real_write(store, tables, task)  # the new project's keys exist now...
        raise RuntimeError("connection reset")  # ...and then the build fails

    real_write = feature_store.write_online
    monkeypatch.setattr(feature_store, "write_online", half_done)
    result = cli("-w", root, "export-features", "--online-store", redis_url)
    assert result.exit_code == 1
    assert "RuntimeError: connection reset" in result.stderr
    assert written and written[0] != payload["project"]
    assert redis_keys(redis_url, written[0]) == 0
    assert redis_keys(redis_url, payload["project"]) == 8
    assert_serves_the_tiny_data(OnlineFeatures.open(root / "features"))


@pytest.mark.slow
def test_redis_rebuild_replaces_the_previous_keys(redis_store, redis_url):
    root, first = redis_store
    second = export(root, "--online-store", redis_url, "--recent-items", "3")
    assert second["project"] != first["project"]
    assert redis_keys(redis_url, first["project"]) == 0
    assert redis_keys(redis_url, second["project"]) == 8
    assert second["warnings"] == []
    assert_serves_the_tiny_data(OnlineFeatures.open(root / "features"))
