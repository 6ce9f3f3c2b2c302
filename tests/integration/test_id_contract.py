"""The id contract end to end: text ids and ids written as floats come back as the user's own.

Two small real workspaces trained with the real commands: one whose users and items carry
text ids (`u-00042`, `sku-100123`), one whose interactions CSV writes item ids as floats
(`101387.0`). Text-id answers are checked in-process and through a real tritonserver.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from cli_runner import run_cli
from pipeline_workspace import build_pipeline_workspace, serving

pytestmark = pytest.mark.slow


def text_ids(tables, root):
    """Users `u-00042`, items `sku-100123` (the generated integer ids, written as text)."""
    user = {"user_id": lambda ids: ids.map(lambda i: f"u-{i:05d}")}
    item = {"item_id": lambda ids: ids.map(lambda i: f"sku-{100000 + i}")}
    paths = {}
    for name, table in tables.items():
        for column, to_text in (user | item).items():
            if column in table:
                table[column] = to_text(table[column])
        paths[name] = root / f"{name}.parquet"
        table.to_parquet(paths[name], index=False)
    return paths


def float_item_ids_csv(tables, root):
    """The interactions as CSV with item ids as floats, as pandas writes them after a NaN."""
    paths = {name: root / "data" / f"{name}.parquet" for name in ("users", "items")}
    interactions = tables["interactions"]
    interactions["item_id"] = interactions["item_id"].astype(float)
    paths["interactions"] = root / "interactions.csv"
    interactions.to_csv(paths["interactions"], index=False)
    assert ".0," in paths["interactions"].read_text()  # e.g. 1,101.0,1700000000,1
    return paths


@pytest.fixture(scope="module")
def text_workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("text-ids")
    return build_pipeline_workspace(root, rewrite=text_ids), root


def _answers(result) -> dict:
    assert result.exit_code == 0, result.stderr
    return {a["user_id"]: a for a in map(json.loads, result.stdout.splitlines())}


def _seen(root, user: str) -> set[str]:
    import pandas as pd

    interactions = pd.read_parquet(root / "interactions.parquet")
    mine = interactions[(interactions["user_id"] == user) & (interactions["click"] == 1)]
    return set(mine["item_id"])


def test_text_ids_in_process_and_through_triton(text_workspace, tritonserver_binary, tmp_path):
    import pandas as pd

    ws, root = text_workspace
    catalog = set(pd.read_parquet(root / "items.parquet")["item_id"])
    users = sorted(pd.read_parquet(root / "users.parquet")["user_id"])[:12] + ["u-nobody"]
    ids = tmp_path / "users.txt"
    ids.write_text("\n".join(users) + "\n")
    local = _answers(run_cli("-w", ws, "recommend", "--user-ids-file", ids, "--json"))
    assert list(local) == users
    for user, answer in local.items():
        assert answer["item_ids"] and set(answer["item_ids"]) <= catalog
        assert not set(answer["item_ids"]) & _seen(root, user)
    assert local["u-nobody"]["fallback"] and not local[users[0]]["fallback"]
    explained = _answers(run_cli("-w", ws, "recommend", "--user-id", users[0], "--explain",
                                 "--json"))[users[0]]
    assert [e["item_id"] for e in explained["explain"]] == explained["item_ids"]

    with serving(ws) as server:
        served = _answers(run_cli("-w", ws, "recommend", "--user-ids-file", ids, "--json",
                                  "--server", server["grpc"]))
    assert {u: a["item_ids"] for u, a in served.items()} == \
        {u: a["item_ids"] for u, a in local.items()}
    for user in users:
        np.testing.assert_allclose(served[user]["scores"], local[user]["scores"], atol=1e-4)


def test_item_ids_written_as_floats_are_the_integers(tmp_path_factory):
    import pandas as pd

    root = tmp_path_factory.mktemp("float-ids")
    ws = build_pipeline_workspace(root, rewrite=float_item_ids_csv)
    catalog = set(pd.read_parquet(root / "data" / "items.parquet")["item_id"].tolist())
    prepared = pd.read_parquet(ws / "data" / "items.parquet")["item_id"]
    assert set(prepared.tolist()) == catalog and not (ws / "data" / "id_maps").exists()
    users = sorted(pd.read_parquet(ws / "data" / "users.parquet")["user_id"])[:10]
    ids = tmp_path_factory.mktemp("ids") / "users.txt"
    ids.write_text("\n".join(map(str, users)) + "\n")
    answers = _answers(run_cli("-w", ws, "recommend", "--user-ids-file", ids, "--json"))
    assert list(answers) == users
    for answer in answers.values():
        assert answer["item_ids"] and set(answer["item_ids"]) <= catalog
        assert all(isinstance(i, int) for i in answer["item_ids"])
