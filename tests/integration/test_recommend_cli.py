"""`mstage recommend` in-process on a real workspace: output formats, batch input, errors.

The `--server` path is checked against a real tritonserver in test_parity.py; here only
its error when nothing listens.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from pipeline_workspace import (
    ITEMS,
    copy_workspace,
    known_and_unknown_users,
    stale_by_rebuild,
)


def _lines(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def _catalog(ws) -> set[int]:
    import pandas as pd

    return set(pd.read_parquet(ws / "data" / "items.parquet")["item_id"].tolist())


def _batch_text(ws) -> tuple[str, list[int]]:
    users, unknown = known_and_unknown_users(ws)
    text = f"{users[0]}\nabc\n-1\n\n# a comment\n{unknown}\n  {users[1]}  \n1.5\n"
    return text, [users[0], unknown, users[1]]


@pytest.mark.slow
def test_batch_file_json_answers_valid_lines_and_reports_the_rest(cli, pipeline_workspace,
                                                                  tmp_path):
    text, expected_users = _batch_text(pipeline_workspace)
    ids_file = tmp_path / "users.txt"
    ids_file.write_text(text)
    result = cli("-w", pipeline_workspace, "recommend", "--user-ids-file", ids_file,
                 "--top-k", "5", "--json")
    assert result.exit_code == 0, result.stderr
    answers = _lines(result.stdout)
    assert [a["user_id"] for a in answers] == expected_users
    assert [a["fallback"] for a in answers] == [False, True, False]  # the unknown user
    catalog = _catalog(pipeline_workspace)
    for a in answers:
        assert set(a) == {"user_id", "item_ids", "scores", "fallback"}
        assert len(a["item_ids"]) == 5 == len(set(a["item_ids"])) == len(a["scores"])
        assert set(a["item_ids"]) <= catalog
        assert a["scores"] == sorted(a["scores"], reverse=True)
    stderr = " ".join(result.stderr.split())
    integer = "expected an integer user id (this workspace's ids are integers), found"
    assert f"{ids_file} line 2: {integer} 'abc'" in stderr
    assert f"{ids_file} line 3: expected a user id within int64 and other than -1, found " \
           "'-1'" in stderr  # -1 pads candidate lists
    assert f"{ids_file} line 8: {integer} '1.5'" in stderr
    assert "line 4" not in stderr and "line 5" not in stderr  # blank line, comment


@pytest.mark.slow
def test_stdin_human_tables_with_attributes_fallback_and_explain(cli, pipeline_workspace):
    text, expected_users = _batch_text(pipeline_workspace)
    result = cli("-w", pipeline_workspace, "recommend", "--user-ids-file", "-", "--top-k", "3",
                 "--explain", input=text)
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    for user in expected_users:
        assert f"user {user}" in out
    assert out.count("fallback (popular items)") == 1
    assert f"user {expected_users[1]}  fallback (popular items)" in out
    for header in ("rank", "item_id", "score", "retrieval score", "ranking score", "category",
                   "price", "stages (3 users in the batch)", "retrieval", "ordering"):
        assert header in out
    assert "stdin line 2: expected an integer user id (this workspace's ids are integers), " \
           "found 'abc'" in " ".join(result.stderr.split())


@pytest.mark.slow
def test_single_user_explain_json_is_consistent(cli, pipeline_workspace):
    users, _ = known_and_unknown_users(pipeline_workspace)
    result = cli("-w", pipeline_workspace, "recommend", "--user-id", users[2], "--top-k", "4",
                 "--candidates", "30", "--explain", "--json")
    assert result.exit_code == 0, result.stderr
    [answer] = _lines(result.stdout)
    assert answer["user_id"] == users[2] and answer["fallback"] is False
    assert [s["name"] for s in answer["stages"]] == ["retrieval", "filtering", "scoring",
                                                      "ordering"]
    by_name = {s["name"]: s for s in answer["stages"]}
    assert by_name["retrieval"]["items_out"] <= 30  # --candidates
    assert by_name["ordering"]["items_out"] == 4
    assert all(s["seconds"] >= 0 for s in answer["stages"])
    explain = answer["explain"]
    assert [e["item_id"] for e in explain] == answer["item_ids"]
    assert [e["rank"] for e in explain] == [1, 2, 3, 4]
    assert [e["score"] for e in explain] == pytest.approx(answer["scores"], abs=1e-6)
    # the ordering score: logit(click probability) + the weight train-ranking chose on
    # validation * retrieval score
    weight = json.loads((pipeline_workspace / "ranking" / "params.json").read_text())[
        "retrieval_weight"]
    blended = [np.log(e["ranking_score"] / (1 - e["ranking_score"]))
               + weight * e["retrieval_score"] for e in explain]
    assert blended == pytest.approx(answer["scores"], rel=1e-4)


@pytest.mark.slow
def test_top_k_above_the_catalog_is_a_usage_error(cli, pipeline_workspace):
    result = cli("-w", pipeline_workspace, "recommend", "--user-id", "1",
                 "--top-k", ITEMS + 1, "--candidates", ITEMS + 50)
    assert result.exit_code == 2
    assert f"expected --top-k <= the catalog size {ITEMS}, found {ITEMS + 1}" in result.stderr


@pytest.mark.slow
def test_stale_artifacts_warn_and_still_answer(cli, pipeline_workspace, tmp_path):
    ws = copy_workspace(pipeline_workspace, tmp_path / "ws")
    stale_by_rebuild(ws, "retrieval")
    users, _ = known_and_unknown_users(ws)
    result = cli("-w", ws, "recommend", "--user-id", users[0], "--json")
    assert result.exit_code == 0, result.stderr
    assert len(_lines(result.stdout)[0]["item_ids"]) == 10  # serving.top_k
    assert "warning: index is stale (retrieval changed since this was built); run `mstage " \
           "build-index`" in " ".join(result.stderr.split())


@pytest.mark.slow
def test_missing_artifact_names_the_command(cli, pipeline_workspace, tmp_path):
    import shutil

    ws = copy_workspace(pipeline_workspace, tmp_path / "ws")
    shutil.rmtree(ws / "index")
    result = cli("-w", ws, "recommend", "--user-id", "1")
    assert result.exit_code == 2
    assert "expected the index artifact" in result.stderr
    assert "run `mstage build-index` first" in result.stderr
    assert "Traceback" not in result.stderr


def test_empty_workspace_names_the_first_missing_step(cli):
    result = cli("recommend", "--user-id", "1")
    assert result.exit_code == 2
    assert "run `mstage prepare-data` first" in result.stderr  # train-retrieval needs data


@pytest.mark.slow
def test_seed_makes_softmax_ordering_repeatable(cli, pipeline_workspace, tmp_path):
    ws = copy_workspace(pipeline_workspace, tmp_path / "ws")
    with open(ws / "mstage.toml", "a") as f:
        f.write('\n[ordering]\nstrategy = "softmax"\ntemperature = 100.0\n')
    users, _ = known_and_unknown_users(ws)

    def items(seed: int) -> list[int]:
        result = cli("-w", ws, "recommend", "--user-id", users[0], "--top-k", "10",
                     "--seed", seed, "--json")
        assert result.exit_code == 0, result.stderr
        return _lines(result.stdout)[0]["item_ids"]

    first = items(1)
    assert items(1) == first
    # Near-uniform sampling of 10 out of ~100 candidates: two seeds agreeing on the whole
    # ordered list would be a ~1e-20 coincidence.
    assert items(2) != first


@pytest.mark.parametrize("args, message", [
    (["--user-id", "abc"], "expected an integer user id (this workspace's ids are integers), "
                           "found 'abc'"),
    (["--user-id", "-1"], "expected a user id within int64 and other than -1, found '-1'"),
    (["--user-id", "99999999999999999999"], "within int64 and other than -1, found "
                                            "'99999999999999999999'"),
    ([], "expected exactly one of --user-id or --user-ids-file, found neither"),
    (["--user-id", "1", "--user-ids-file", "f"],
     "expected exactly one of --user-id or --user-ids-file, found both"),
    (["--user-id", "1", "--top-k", "0"], "expected --top-k > 0, found 0"),
    (["--user-id", "1", "--top-k", "20", "--candidates", "10"],
     "expected --candidates >= --top-k, found 10 < 20"),
    (["--user-id", "1", "--top-k", "300"],
     "expected serving.candidates >= --top-k, found 200 < 300; raise serving.candidates"),
    (["--user-id", "1", "--server", "127.0.0.1:1", "--explain"],
     "expected --explain only in-process, found it with --server"),
    (["--user-id", "1", "--server", "127.0.0.1:1", "--candidates", "50"],
     "expected --candidates only in-process"),
    (["--user-id", "1", "--protocol", "http"], "expected --protocol only with --server"),
    (["--user-id", "1", "--server", "127.0.0.1:1", "--protocol", "udp"],
     "expected --protocol grpc or http, found 'udp'"),
    (["--user-ids-file", "no-such-file.txt"],
     "expected a file of user ids (one per line) at no-such-file.txt, found nothing"),
])
def test_usage_errors_exit_2_with_one_line(cli, args, message):
    result = cli("recommend", *args)
    assert result.exit_code == 2
    assert message in " ".join(result.stderr.split())
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stdout == ""


def test_file_without_a_valid_id_is_exit_2(cli, tmp_path):
    ids_file = tmp_path / "bad.txt"
    ids_file.write_text("x\n\n-1\n")
    result = cli("recommend", "--user-ids-file", ids_file)
    assert result.exit_code == 2
    stderr = " ".join(result.stderr.split())
    assert f"{ids_file} line 1: expected an integer user id (this workspace's ids are " \
           "integers), found 'x'" in stderr
    assert f"error: expected at least one user id in {ids_file}, found none " \
           "(2 malformed line(s))" in stderr


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_server_not_running_names_the_address(cli, protocol):
    from mstage.serving.server import free_port

    port = free_port()
    result = cli("recommend", "--user-id", "1", "--server", f"127.0.0.1:{port}",
                 "--protocol", protocol)
    assert result.exit_code == 1
    stderr = " ".join(result.stderr.split())
    assert f"expected a Triton server at {protocol}://127.0.0.1:{port}, found none answering" \
        in stderr
    assert "start one with `mstage serve`" in stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_a_ranker_from_before_lite_exports_names_the_command(cli, pipeline_workspace, tmp_path):
    # an artifact published without ranker.tflite (as an earlier mstage wrote them)
    ws = copy_workspace(pipeline_workspace, tmp_path / "ws")
    (ws / "ranking" / "ranker.tflite").unlink()
    manifest = json.loads((ws / "manifest.json").read_text())
    del manifest["artifacts"]["ranking"]["files"]["ranker.tflite"]
    (ws / "manifest.json").write_text(json.dumps(manifest))
    users, _ = known_and_unknown_users(ws)
    result = cli("-w", ws, "recommend", "--user-id", users[0], "--in-process")
    assert result.exit_code == 2
    assert "expected the model's LiteRT export at" in result.stderr
    assert "run `mstage train-ranking` again" in result.stderr
    assert "Traceback" not in result.stderr
