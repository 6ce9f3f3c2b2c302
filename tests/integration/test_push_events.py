"""`mstage push-events`: new interactions reach the online store's `recent_items` and move the
query tower at once, in-process and through a running tritonserver, without retraining.

Fast tests use the tiny feature data (tests/feature_data.py: recent items 1 -> [10, 11],
2 -> [13, 10], 3 -> [11], 4 -> []; catalog items 10..13) exported with width 3; the slow ones
a copy of the shared trained workspace.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from cli_runner import run_cli
from feature_data import ITEM_FEATURES, USER_FEATURES, publish_prepared, tables
from pipeline_workspace import copy_workspace, known_and_unknown_users, serving

from mstage.features.online import OnlineFeatures

PUSHED = 5


def _export(root: Path) -> Path:
    result = run_cli("-w", root, "-q", "export-features", "--json", "--recent-items", "3")
    assert result.exit_code == 0, result.stderr
    return root


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("push") / "ws"
    publish_prepared(root)
    return _export(root)


@pytest.fixture(scope="module")
def text_id_store(tmp_path_factory) -> Path:
    """The tiny data with text user ids u1..u4 (internal 1..4)."""
    import pandas as pd

    from mstage.data.schema import Feature, Schema, write_prepared
    from mstage.workspace import Artifact, Workspace

    root = tmp_path_factory.mktemp("push-text") / "ws"
    interactions, users, items = tables()
    ids = pd.DataFrame({"raw_id": [f"u{i}" for i in range(1, 5)],
                        "id": np.arange(1, 5, dtype=np.int64)})
    with Workspace(root).build(Artifact.DATA) as b:
        write_prepared(b.dir, interactions, users, items, Schema(
            user_features=[Feature(n, k) for n, k in USER_FEATURES],
            item_features=[Feature(n, k) for n, k in ITEM_FEATURES],
            has_label=True, counts={"users": 4, "items": 4, "interactions": 7},
        ), id_maps={"users": ids})
    return _export(root)


@pytest.fixture
def store(tiny_store, tmp_path) -> Path:
    return copy_workspace(tiny_store, tmp_path / "copy")


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _push(ws: Path, *args, input: str | None = None):
    return run_cli("-w", ws, "push-events", *args, input=input)


def _users(ws: Path, ids: list[int]) -> dict:
    return OnlineFeatures.open(ws / "features").users(np.array(ids))


# fast ---------------------------------------------------------------------------------------

def test_new_items_go_first_deduplicated_and_cut_to_the_width(store, tmp_path):
    # user 1 holds [10, 11]: 13@500 and 12@600 come first (latest first), 10 stays once;
    # user 99 is new to the store (integer ids need no map); user 2 is untouched.
    events = _write(tmp_path / "e.csv", "user_id,item_id,timestamp\n1,13,500\n1,12,600\n"
                    "1,10,550\n99,11,700\n")
    result = _push(store, events, "--json")
    assert result.exit_code == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["users_updated"] == 2 and payload["events_used"] == 4
    assert payload["features_state"] == "ready"
    users = _users(store, [1, 2, 99])
    assert users["recent_items"].tolist() == [[12, 10, 13], [13, 10, -1], [11, -1, -1]]
    assert users["found"].tolist() == [True, True, True]
    assert users["age_group"].tolist() == ["18-24", None, None]  # kept; missing when new
    assert users["region"].tolist() == ["north", "south", None]
    assert _states(store)["features"] == "ready"


def test_csv_on_stdin_and_label_zero_rows_ignored(store):
    (store / "mstage.toml").write_text('[data]\nlabel_col = "click"\n')
    result = _push(store, "-", "--json",
                   input="user_id,item_id,timestamp,click\n3,13,900,1\n3,12,950,0\n")
    assert result.exit_code == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["events_used"] == 1 and payload["skipped"]["negative_label"] == 1
    assert _users(store, [3])["recent_items"].tolist() == [[13, 11, -1]]


def test_items_not_in_the_catalog_are_skipped_with_one_warning(store, tmp_path):
    events = _write(tmp_path / "e.csv", "user_id,item_id,timestamp\n2,11,500\n2,77,510\n"
                    "2,78,520\n")
    result = _push(store, events)
    assert result.exit_code == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "2 event(s)" in warnings[0] and "catalog" in warnings[0]
    assert _users(store, [2])["recent_items"].tolist() == [[11, 13, 10]]


def test_missing_columns_are_a_one_line_usage_error(store, tmp_path):
    events = _write(tmp_path / "e.csv", "user_id,movie_id,timestamp\n1,10,500\n")
    result = _push(store, events)
    assert result.exit_code == 2
    assert result.stderr.startswith("error:") and len(result.stderr.strip().splitlines()) == 1
    assert "missing ['item_id']" in result.stderr and "movie_id" in result.stderr


def test_a_missing_file_is_a_usage_error(store, tmp_path):
    result = _push(store, tmp_path / "absent.csv")
    assert result.exit_code == 2 and "found nothing" in result.stderr


def test_an_unknown_text_user_is_refused_naming_the_id(text_id_store, tmp_path):
    ws = copy_workspace(text_id_store, tmp_path / "copy")
    events = _write(tmp_path / "e.csv", "user_id,item_id,timestamp\nu2,11,500\nu-new,12,510\n")
    result = _push(ws, events)
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "'u-new'" in result.stderr
    assert _users(ws, [2])["recent_items"].tolist() == [[13, 10, -1]]  # nothing written
    ok = _write(tmp_path / "ok.csv", "user_id,item_id,timestamp\nu2,11,500\n")
    assert _push(ws, ok).exit_code == 0
    assert _users(ws, [2])["recent_items"].tolist() == [[11, 13, 10]]


def test_a_text_id_in_an_integer_workspace_is_refused(store, tmp_path):
    events = _write(tmp_path / "e.csv", "user_id,item_id,timestamp\nabc,11,500\n")
    result = _push(store, events)
    assert result.exit_code == 2 and "'abc'" in result.stderr


# slow: the trained workspace ----------------------------------------------------------------

def _events_for(ws: Path, user: int) -> tuple[Path, list[int]]:
    """PUSHED events of `user` on the catalog's least popular items (far from a fallback)."""
    import pandas as pd

    items = pd.read_parquet(ws / "features" / "data" / "items.parquet")
    chosen = items.sort_values(["popularity", "item_id"])["item_id"].head(PUSHED).tolist()
    lines = ["user_id,item_id,timestamp,click"]
    lines += [f"{user},{item},{2_000_000_000 + i},1" for i, item in enumerate(chosen)]
    path = ws.parent / "events.csv"
    path.write_text("\n".join(lines) + "\n")
    return path, chosen


def _answer(result) -> dict:
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout.splitlines()[0])


@pytest.mark.slow
def test_a_user_the_models_never_saw_gets_personalised_answers(pipeline_workspace, tmp_path):
    ws = copy_workspace(pipeline_workspace, tmp_path / "ws")
    _, unknown = known_and_unknown_users(ws)
    before = _answer(run_cli("-w", ws, "recommend", "--user-id", unknown, "--json",
                             "--in-process"))
    assert before["fallback"] is True
    events, pushed = _events_for(ws, unknown)
    result = run_cli("-w", ws, "push-events", events, "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["events_used"] == PUSHED
    after = _answer(run_cli("-w", ws, "recommend", "--user-id", unknown, "--json",
                            "--in-process"))
    assert after["fallback"] is False and after["item_ids"]
    assert not set(after["item_ids"]) & set(pushed)
    assert after["item_ids"] != before["item_ids"]
    explained = _answer(run_cli("-w", ws, "recommend", "--user-id", unknown, "--json",
                                "--explain"))
    assert explained["history_only"] is True and explained["fallback"] is False
    known = _answer(run_cli("-w", ws, "recommend", "--user-id",
                            known_and_unknown_users(ws)[0][0], "--json", "--explain"))
    assert "history_only" not in known
    assert _states(ws)["features"] == "ready"


def _states(ws: Path) -> dict[str, str]:
    status = run_cli("-w", ws, "status", "--json")
    assert status.exit_code == 0, status.stderr
    return {a["artifact"]: a["state"] for a in json.loads(status.stdout)["artifacts"]}


@pytest.mark.slow
def test_a_running_server_answers_from_the_pushed_history(tritonserver_binary,
                                                           pipeline_workspace, tmp_path):
    ws = copy_workspace(pipeline_workspace, tmp_path / "ws")
    _, unknown = known_and_unknown_users(ws)
    with serving(ws) as served:
        server = served["grpc"]
        before = _answer(run_cli("-w", ws, "recommend", "--user-id", unknown, "--json",
                                 "--server", server))
        assert before["fallback"] is True
        events, pushed = _events_for(ws, unknown)
        result = run_cli("-w", ws, "push-events", events, "--json")
        assert result.exit_code == 0, result.stderr
        assert len(json.loads(result.stdout)["stores"]) == 2
        after = _answer(run_cli("-w", ws, "recommend", "--user-id", unknown, "--json",
                                "--server", server))
        assert after["fallback"] is False and after["item_ids"]
        assert not set(after["item_ids"]) & set(pushed)
        states = _states(ws)
        assert states["features"] == "ready" and states["ensemble"] == "ready"
