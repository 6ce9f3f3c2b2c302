"""`mstage prepare-data` end to end: tiny tables in tmp_path, the real CLI, the files it writes."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mstage.data.schema import PreparedData
from mstage.workspace import Artifact, Workspace

MOVIELENS = next((p for p in (Path(__file__).parents[3] / "shared/datasets/movielens-100k",
                              Path("/work/shared/datasets/movielens-100k")) if p.exists()),
                 Path("/work/shared/datasets/movielens-100k"))


def _interactions(n_users: int = 3, per_user: int = 6) -> pd.DataFrame:
    """String user ids u1..uN, numeric item ids, one event per day, every third a click."""
    rows = [(f"u{u}", 100 + (u + k) % 5, 1_700_000_000 + 86_400 * k, int(k % 3 == 0))
            for u in range(1, n_users + 1) for k in range(per_user)]
    return pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "click"])


def _users() -> pd.DataFrame:
    return pd.DataFrame({"user_id": ["u1", "u2", "u3", "u9"], "age_group": ["18-24"] * 4,
                         "region": ["north", "south", "east", "west"]})


def _items() -> pd.DataFrame:
    return pd.DataFrame({
        "item_id": [100, 101, 102, 103, 104, 105], "category": list("aabbcc"),
        "price": [1.0, 2.5, 3.0, 4.0, 5.0, 6.0], "in_stock": np.array([1, 0, 1, 1, 1, 1], np.int8),
        "tags": ["sale|new", "new", "", "gift|sale", "eco", "new"],
    })


@pytest.fixture
def tables(tmp_path):
    """Paths of interactions/users/items parquet files (string user ids, a click label)."""
    paths = {name: tmp_path / f"{name}.parquet" for name in ("interactions", "users", "items")}
    _interactions().to_parquet(paths["interactions"], index=False)
    _users().to_parquet(paths["users"], index=False)
    _items().to_parquet(paths["items"], index=False)
    return paths


def _prepare(cli, tables, *extra):
    return cli("prepare-data", "--interactions", tables["interactions"], "--users",
               tables["users"], "--items", tables["items"], "--label-col", "click", *extra)


def test_prepare_writes_the_prepared_data_contract(cli, tables, isolated_workspace):
    result = _prepare(cli, tables, "--json")
    assert result.exit_code == 0, result.stderr
    payload = json.loads(result.stdout)
    m = payload["metrics"]
    # 3 users x 6 events; clicks at k = 0 and 3 -> 6 positives; u9 only in the users table.
    assert (m["interactions"], m["positives"], m["users"], m["items"]) == (18, 6, 4, 6)
    assert (m["users_with_interactions"], m["uncovered_users"]) == (3, 0)
    assert m["duplicates_dropped"] == 0
    assert {f["name"]: f["kind"] for f in payload["item_features"]} == {
        "category": "categorical", "price": "numeric", "in_stock": "numeric", "tags": "multi"}

    data = PreparedData(Workspace(isolated_workspace).require(Artifact.DATA))
    assert data.schema.has_label and data.schema.string_ids == {"users": True, "items": False}
    inter = data.interactions
    assert inter.dtypes.astype(str).to_dict() == {
        "user_id": "int64", "item_id": "int64", "timestamp": "int64", "label": "int8",
        "fold_user_temporal": "int8", "fold_global": "int8"}
    # u1..u3 and u9 sorted as strings -> ids 1..4; rows sorted by user then time.
    assert inter["user_id"].tolist() == [1] * 6 + [2] * 6 + [3] * 6
    assert inter.groupby("user_id")["timestamp"].apply(lambda t: t.is_monotonic_increasing).all()
    assert data.id_map("users").to_dict("list") == {"raw_id": ["u1", "u2", "u3", "u9"],
                                                    "id": [1, 2, 3, 4]}
    assert data.id_map("items") is None
    items = data.items.set_index("item_id")
    assert list(items.loc[100, "tags"]) == ["sale", "new"] and list(items.loc[102, "tags"]) == []
    assert items["in_stock"].dtype == np.float64 and items.loc[101, "in_stock"] == 0.0
    assert data.users["user_id"].tolist() == [1, 2, 3, 4]


def test_mapping_is_saved_in_mstage_toml_and_reused_with_cli_overrides(cli, tables,
                                                                       isolated_workspace):
    assert _prepare(cli, tables, "--categorical", "price").exit_code == 0
    toml = (isolated_workspace / "mstage.toml").read_text()
    assert 'label_col = "click"' in toml and 'categorical = ["price"]' in toml
    assert f'interactions = "{tables["interactions"].resolve()}"' in toml

    again = cli("prepare-data", "--label-col", "", "--json")  # files and kinds from the toml
    assert again.exit_code == 0, again.stderr
    payload = json.loads(again.stdout)
    assert payload["metrics"]["positives"] == 18  # no label column: every row a positive
    assert {f["name"]: f["kind"] for f in payload["item_features"]}["price"] == "categorical"
    assert 'label_col = ""' in (isolated_workspace / "mstage.toml").read_text()


def test_status_marks_data_stale_when_an_input_file_changes(cli, tables):
    assert _prepare(cli, tables).exit_code == 0
    assert json.loads(cli("status", "--json").stdout)["artifacts"][0]["state"] == "ready"
    _interactions(per_user=7).to_parquet(tables["interactions"], index=False)
    data = json.loads(cli("status", "--json").stdout)["artifacts"][0]
    assert data["state"] == "stale" and "interactions.parquet changed" in data["reason"]


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz"])
def test_csv_with_mapped_columns_and_iso_timestamps(cli, tmp_path, suffix):
    df = pd.DataFrame({"who": [5, 5, 6, 6, 6], "what": ["a", "b", "a", "a", "c"],
                       "when": ["2024-05-01T00:00:00Z", "2024-05-02", "2024-05-01",
                                "2024-05-01", "2024-05-03T10:00:00+02:00"]})
    path = tmp_path / f"events{suffix}"
    df.to_csv(path, index=False)
    result = cli("prepare-data", "--interactions", path, "--user-col", "who",
                 "--item-col", "what", "--time-col", "when", "--json")
    assert result.exit_code == 0, result.stderr
    m = json.loads(result.stdout)["metrics"]
    # (6, a, 2024-05-01) appears twice -> one dropped; no users/items tables -> ids only.
    assert (m["interactions"], m["duplicates_dropped"], m["users"], m["items"]) == (4, 1, 2, 3)
    assert m["first_timestamp"] == 1_714_521_600  # 2024-05-01T00:00:00Z
    assert m["last_timestamp"] == 1_714_521_600 + 2 * 86_400 + 8 * 3_600


def test_csv_ids_with_leading_zeros_stay_distinct(cli, tmp_path, isolated_workspace):
    path = tmp_path / "events.csv"
    path.write_text("user_id,item_id,timestamp\n007,1,5\n7,1,6\n42,2,7\n")
    result = cli("prepare-data", "--interactions", path, "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["metrics"]["users"] == 3
    id_map = PreparedData(isolated_workspace / "data").id_map("users")
    # sorted text: "007" -> 1, "42" -> 2, "7" -> 3; item ids stay numeric.
    assert id_map.to_dict("list") == {"raw_id": ["007", "42", "7"], "id": [1, 2, 3]}


def test_summary_table_without_json(cli, tables):
    result = _prepare(cli, tables)
    assert result.exit_code == 0
    assert "interactions" in result.stdout and "user-temporal" in result.stdout
    assert "tags (multi)" in result.stdout


# bad input ------------------------------------------------------------------------------


def _error(result, *fragments):
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    line = result.stderr.strip()
    assert line.startswith("error:") and "\n" not in line and "Traceback" not in line
    for fragment in fragments:
        assert fragment in line, line


def test_missing_interactions_file(cli, tmp_path):
    _error(cli("prepare-data", "--interactions", tmp_path / "nope.parquet"),
           "expected the interactions file at", "nope.parquet, found nothing")


def test_no_interactions_option_and_nothing_saved(cli):
    _error(cli("prepare-data"), "expected an interactions file", "pass --interactions FILE")


def test_unsupported_extension(cli, tmp_path):
    path = tmp_path / "events.json"
    path.write_text("{}")
    _error(cli("prepare-data", "--interactions", path), "expected a .parquet, .pq, .csv")


def test_corrupt_parquet(cli, tmp_path):
    path = tmp_path / "events.parquet"
    path.write_bytes(b"PAR1 this is not really parquet")
    _error(cli("prepare-data", "--interactions", path),
           "expected a readable parquet file at", "found an error:")


def test_csv_missing_a_mapped_column_lists_what_it_found(cli, tmp_path):
    path = tmp_path / "events.csv"
    path.write_text("uid,item_id,timestamp\n1,2,3\n")
    _error(cli("prepare-data", "--interactions", path),
           "expected column 'user_id' (--user-col) in interactions file events.csv",
           "found columns 'uid', 'item_id', 'timestamp'", "--user-col")


def test_items_table_without_the_item_id_column(cli, tables):
    _items().rename(columns={"item_id": "sku"}).to_parquet(tables["items"], index=False)
    _error(_prepare(cli, tables), "expected column 'item_id' (--item-col) in items file "
           "items.parquet", "'sku'")


def test_empty_column_name_option(cli, tables):
    _error(_prepare(cli, tables, "--user-col", ""), "expected a column name for user_col",
           "--user-col NAME")


def test_null_ids_give_count_and_rows(cli, tmp_path):
    path = tmp_path / "events.csv"
    path.write_text("user_id,item_id,timestamp\n1,2,3\n,2,4\n1,2,5\n,3,6\n")
    _error(cli("prepare-data", "--interactions", path),
           "column 'user_id' of events.csv, found 2 missing (data rows 2, 4")


def test_timestamps_that_do_not_parse(cli, tmp_path):
    path = tmp_path / "events.csv"
    path.write_text("user_id,item_id,timestamp\n1,2,2024-01-01\n1,3,last tuesday\n")
    _error(cli("prepare-data", "--interactions", path),
           "found 1 values that do not parse, like 'last tuesday'", "--time-col")


def test_empty_interactions(cli, tmp_path):
    path = tmp_path / "events.csv"
    path.write_text("user_id,item_id,timestamp\n")
    _error(cli("prepare-data", "--interactions", path),
           "expected at least one interaction", "found an empty table")


def test_labels_not_zero_one(cli, tmp_path):
    path = tmp_path / "events.csv"
    path.write_text("user_id,item_id,timestamp,rating\n1,2,3,1\n1,3,4,5\n")
    _error(cli("prepare-data", "--interactions", path, "--label-col", "rating"),
           "expected labels 0 or 1", "like 5", "leave out --label-col")


def test_declared_column_that_no_table_has(cli, tables):
    _error(_prepare(cli, tables, "--numeric", "prise"),
           "expected declared feature column 'prise'", "'price'")


def test_feature_name_shared_by_users_and_items(cli, tables):
    _users().assign(category="x").to_parquet(tables["users"], index=False)
    _error(_prepare(cli, tables), "found category in both", "--ignore category")


def test_uncovered_ids_warn_and_get_missing_features(cli, tables, isolated_workspace):
    _users()[lambda d: d.user_id != "u2"].to_parquet(tables["users"], index=False)
    result = _prepare(cli, tables, "--json")
    assert result.exit_code == 0
    assert "users.parquet lacks 1 user ids found in the interactions" in result.stderr
    assert json.loads(result.stdout)["metrics"]["uncovered_users"] == 1
    users = pd.read_parquet(isolated_workspace / "data" / "users.parquet").set_index("user_id")
    assert users.loc[2, "region"] is None and users.loc[1, "region"] == "north"


def test_duplicate_rows_are_dropped_and_counted(cli, tables):
    df = _interactions()
    pd.concat([df, df.iloc[:4]]).to_parquet(tables["interactions"], index=False)
    result = _prepare(cli, tables, "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["metrics"]["duplicates_dropped"] == 4


def test_ctrl_c_keeps_the_previous_artifact(cli, tables, isolated_workspace, monkeypatch):
    assert _prepare(cli, tables).exit_code == 0
    before = (isolated_workspace / "data" / "interactions.parquet").read_bytes()
    manifest_before = json.loads((isolated_workspace / "manifest.json").read_text())

    from mstage.data import ingest

    def interrupted(directory, prepared):
        (directory / "interactions.parquet").write_bytes(b"half written")
        raise KeyboardInterrupt

    monkeypatch.setattr(ingest, "_write", interrupted)
    _interactions(per_user=8).to_parquet(tables["interactions"], index=False)
    result = _prepare(cli, tables)
    assert result.exit_code == 130 and "interrupted" in result.stderr
    assert (isolated_workspace / "data" / "interactions.parquet").read_bytes() == before
    manifest_after = json.loads((isolated_workspace / "manifest.json").read_text())
    assert manifest_after == manifest_before
    assert not any((isolated_workspace / ".staging").iterdir())


# real data ------------------------------------------------------------------------------

SAMPLE = Path(__file__).resolve().parents[2] / "sample_data"


def test_sample_data_infers_the_kinds_business_rules_rely_on(cli):
    if not (SAMPLE / "items.parquet").exists():
        pytest.skip("sample_data/ has not been generated")
    result = cli("prepare-data", "--interactions", SAMPLE / "interactions.parquet",
                 "--users", SAMPLE / "users.parquet", "--items", SAMPLE / "items.parquet",
                 "--label-col", "click", "--json")
    assert result.exit_code == 0, result.stderr
    payload = json.loads(result.stdout)
    kinds = {f["name"]: f["kind"] for f in payload["user_features"] + payload["item_features"]}
    assert kinds == {"age_group": "categorical", "gender": "categorical",
                     "region": "categorical", "category": "categorical", "brand": "categorical",
                     "price": "numeric", "in_stock": "numeric", "tags": "multi"}
    m = payload["metrics"]
    assert 0 < m["positives"] < m["interactions"] and m["uncovered_items"] == 0



@pytest.mark.slow
def test_movielens_100k_with_the_documented_flags(cli, tmp_path):
    if not MOVIELENS.exists():
        pytest.skip("the MovieLens-100K extractor is not on this machine")
    out = tmp_path / "ml100k"
    done = subprocess.run([sys.executable, str(MOVIELENS), str(out)], capture_output=True)
    if done.returncode != 0:
        pytest.skip("MovieLens-100K could not be downloaded here")
    result = cli("prepare-data", "--interactions", out / "ratings.parquet",
                 "--users", out / "users.parquet", "--items", out / "movies.parquet",
                 "--item-col", "movie_id",
                 "--ignore", "movie_title,release_date,video_release_date,IMDb_URL,zip_code",
                 "--json")
    shutil.rmtree(out)  # the license forbids keeping copies around
    assert result.exit_code == 0, result.stderr
    payload = json.loads(result.stdout)
    m = payload["metrics"]
    assert (m["interactions"], m["users"], m["items"], m["duplicates_dropped"]) == (
        100_000, 943, 1682, 0)
    kinds = {f["name"]: f["kind"] for f in payload["user_features"] + payload["item_features"]}
    assert kinds["age"] == "numeric" and kinds["occupation"] == "categorical"
    assert kinds["Children_s"] == "numeric" and len(kinds) == 3 + 19
    assert payload["warnings"] == [
        "ignored columns of ratings.parquet (not used by mstage): rating"]


def test_unused_label_like_columns_are_named_with_the_flag_to_use(cli, tmp_path):
    interactions = tmp_path / "events.csv"
    interactions.write_text("user_id,item_id,timestamp,clicked,score,session\n"
                            "1,10,100,1,0,s1\n1,11,101,0,1,s1\n2,10,102,0,0,s2\n"
                            "2,12,103,1,1,s2\n3,11,104,0,0,s3\n3,12,105,1,0,s3\n")
    result = cli("prepare-data", "--interactions", interactions, "--json")
    assert result.exit_code == 0, result.stderr
    warnings = json.loads(result.stdout)["warnings"]
    assert "ignored columns of events.csv (not used by mstage): clicked, score, session" in \
        warnings
    assert "column 'clicked' of events.csv holds only 0/1, but no --label-col was given, so " \
           "every row counts as a positive interaction; pass --label-col clicked to learn " \
           "from it" in warnings
    assert any("column 'score' of events.csv holds only 0/1" in w for w in warnings)
    assert not any("'session'" in w and "label" in w for w in warnings)
    labelled = cli("prepare-data", "--interactions", interactions, "--label-col", "clicked",
                   "--json")
    assert json.loads(labelled.stdout)["warnings"] == [
        "ignored columns of events.csv (not used by mstage): score, session"]


@pytest.mark.parametrize("item_ids, message", [
    ("101.0\n102.5", "expected integer or text item ids in column 'item_id' of events.csv, "
                     "found '102.5' in data row 2 (first data row = 1)"),
    ("101\n-1", "expected item ids other than -1 in column 'item_id' of events.csv (-1 pads "
                "candidate lists), found -1 in data row 2 (first data row = 1)"),
    ('101\n""', "expected a value in every row of column 'item_id' of events.csv, found 1 "
                "missing (data rows 2; first data row = 1)"),
])
def test_ids_that_cannot_be_kept_exactly_are_refused_and_nothing_is_written(
        cli, tmp_path, isolated_workspace, item_ids, message):
    first, second = item_ids.split("\n")
    events = tmp_path / "events.csv"
    events.write_text(f"user_id,item_id,timestamp\n1,{first},100\n2,{second},101\n")
    result = cli("prepare-data", "--interactions", events)
    assert result.exit_code == 2
    assert message in " ".join(result.stderr.split())
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert not (isolated_workspace / "data").exists()
    assert not (isolated_workspace / "mstage.toml").exists()


def test_unsigned_ids_beyond_int64_are_refused(cli, tmp_path, isolated_workspace):
    events = tmp_path / "events.parquet"
    pd.DataFrame({"user_id": np.array([1, 2**63], dtype=np.uint64), "item_id": [5, 6],
                  "timestamp": [100, 101]}).to_parquet(events)
    result = cli("prepare-data", "--interactions", events)
    assert result.exit_code == 2
    assert "expected integer (int64) user ids in column 'user_id' of events.parquet, found " \
           "9223372036854775808 in data row 2" in " ".join(result.stderr.split())
    assert not (isolated_workspace / "data").exists()


def test_a_directory_of_parquet_files_reads_as_one_table(cli, tables, tmp_path,
                                                         isolated_workspace):
    single = _prepare(cli, tables, "--json")
    assert single.exit_code == 0, single.stderr
    expected = pd.read_parquet(isolated_workspace / "data" / "interactions.parquet")

    parts = tmp_path / "events"  # a partitioned data set: one file per day range
    parts.mkdir()
    frame = _interactions()
    half = len(frame) // 2
    frame.iloc[:half].to_parquet(parts / "part-0.parquet", index=False)
    frame.iloc[half:].to_parquet(parts / "part-1.parquet", index=False)
    split = _prepare(cli, {**tables, "interactions": parts}, "--json")
    assert split.exit_code == 0, split.stderr
    got = pd.read_parquet(isolated_workspace / "data" / "interactions.parquet")
    pd.testing.assert_frame_equal(got, expected)

    frame.iloc[half:].head(2).to_parquet(parts / "part-1.parquet", index=False)
    status = json.loads(cli("status", "--json").stdout)
    data = next(a for a in status["artifacts"] if a["artifact"] == "data")
    assert data["state"] == "stale" and "changed" in data["reason"]
