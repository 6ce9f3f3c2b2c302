"""`mstage status` checks what it reports: damaged files, a corrupt manifest, a running server."""

from __future__ import annotations

import json

import pytest
from pipeline_workspace import copy_workspace, known_and_unknown_users

pytestmark = pytest.mark.slow


def _states(cli, ws) -> dict[str, str]:
    result = cli("-w", ws, "status", "--json")
    assert result.exit_code == 0, result.stderr
    return {a["artifact"]: a["state"] for a in json.loads(result.stdout)["artifacts"]}


def test_reading_artifacts_does_not_damage_them(cli, pipeline_workspace, tmp_path):
    ws = copy_workspace(pipeline_workspace, tmp_path / "ws")
    users, _ = known_and_unknown_users(ws)
    assert cli("-w", ws, "recommend", "--user-id", users[0], "--json").exit_code == 0
    states = _states(cli, ws)
    assert {k: v for k, v in states.items() if k != "ensemble"} == dict.fromkeys(
        ["data", "retrieval", "ranking", "features", "index"], "ready")


@pytest.mark.parametrize("remove, artifact, command", [
    ("ranking/saved_model/saved_model.pb", "ranking", "train-ranking"),
    ("index/index.faiss", "index", "build-index"),
    ("features/online.db", "features", "export-features"),
])
def test_a_deleted_file_is_damaged_in_status_and_recommend_names_the_rebuild(
        cli, pipeline_workspace, tmp_path, remove, artifact, command):
    ws = copy_workspace(pipeline_workspace, tmp_path / "ws")
    (ws / remove).unlink()
    status = json.loads(cli("-w", ws, "status", "--json").stdout)
    row = next(a for a in status["artifacts"] if a["artifact"] == artifact)
    assert (row["state"], row["reason"]) == ("damaged", f"{remove} missing")
    assert status["next"] == f"mstage {command}"
    users, _ = known_and_unknown_users(pipeline_workspace)
    result = cli("-w", ws, "recommend", "--user-id", users[0])
    assert result.exit_code == 1
    assert f"found {remove} missing; rebuild it with `mstage {command}`" in \
        " ".join(result.stderr.split())
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_a_corrupt_manifest_fails_every_command_in_one_line_until_repaired(
        cli, pipeline_workspace, tmp_path):
    ws = copy_workspace(pipeline_workspace, tmp_path / "ws")
    (ws / "manifest.json").write_text('{"artifacts": [')
    for args in (["status"], ["recommend", "--user-id", "1"], ["build-ensemble"]):
        result = cli("-w", ws, *args)
        assert result.exit_code == 1, args
        assert "run `mstage status --repair` to rebuild it from the artifacts on disk" in \
            " ".join(result.stderr.split())
        assert "Traceback" not in result.stderr
    repaired = cli("-w", ws, "status", "--repair", "--json")
    assert repaired.exit_code == 0, repaired.stderr
    assert "unverified" in repaired.stderr
    states = {a["artifact"]: a["state"] for a in json.loads(repaired.stdout)["artifacts"]}
    assert states == {"data": "ready", "retrieval": "ready", "ranking": "ready",
                      "features": "ready", "index": "ready", "ensemble": "missing"}
    users, _ = known_and_unknown_users(pipeline_workspace)
    assert cli("-w", ws, "recommend", "--user-id", users[0], "--json").exit_code == 0
