"""The served ensemble against the in-process pipeline, on a real tritonserver.

One server for the whole module, started and stopped through the CLI (`mstage build-ensemble`,
`mstage serve --detach`, `mstage stop`) on a copy of the shared pipeline workspace. The last
test stops it in the middle of a batch.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from cli_runner import run_cli, run_mstage_process, run_python
from pipeline_workspace import copy_workspace, known_and_unknown_users, serving
from raw_triton import raw_infer

from mstage.serving.server import (
    http_ready,
    is_tritonserver,
)

pytestmark = pytest.mark.slow
DOC = Path(__file__).parents[2] / "docs" / "deploy-triton.md"
TOP_K = 10


@dataclass
class Served:
    ws: Path
    pid: int
    grpc: str
    http: str
    max_batch_size: int

    def url(self, protocol: str) -> str:
        return self.grpc if protocol == "grpc" else self.http


@pytest.fixture(scope="module")
def served(tritonserver_binary, pipeline_workspace, tmp_path_factory):
    ws = copy_workspace(pipeline_workspace, tmp_path_factory.mktemp("parity") / "ws")
    with serving(ws) as server:
        yield Served(ws, server["pid"], server["grpc"], server["http"],
                     server["max_batch_size"])


@pytest.fixture(scope="module")
def users(pipeline_workspace) -> list[int]:
    """29 known users and one unknown (its answer must be the popularity fallback)."""
    known, unknown = known_and_unknown_users(pipeline_workspace)
    return known[::7][:29] + [unknown]


def _answers(result) -> dict[int, dict]:
    assert result.exit_code == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    return {a["user_id"]: a for a in lines}


@pytest.fixture(scope="module")
def in_process(served, users, tmp_path_factory) -> dict[int, dict]:
    ids = tmp_path_factory.mktemp("ids") / "users.txt"
    ids.write_text("\n".join(map(str, users)) + "\n")
    return _answers(run_cli("-w", served.ws, "recommend", "--user-ids-file", ids,
                            "--top-k", TOP_K, "--json"))


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_server_gives_the_in_process_items_and_scores(cli, served, users, in_process, protocol,
                                                      tmp_path):
    ids = tmp_path / "users.txt"
    ids.write_text("\n".join(map(str, users)) + "\n")
    remote = _answers(cli("-w", served.ws, "recommend", "--user-ids-file", ids, "--top-k", TOP_K,
                          "--server", served.url(protocol), "--protocol", protocol, "--json"))
    assert list(remote) == users
    for user in users:
        local, served_answer = in_process[user], remote[user]
        assert served_answer["item_ids"] == local["item_ids"], user
        np.testing.assert_allclose(served_answer["scores"], local["scores"], atol=1e-4)
        assert served_answer["fallback"] == local["fallback"]
        assert len(local["item_ids"]) == TOP_K
    assert remote[users[-1]]["fallback"] is True
    assert sum(a["fallback"] for a in remote.values()) >= 1


def test_doc_snippet_runs_as_written(cli, served, in_process, users):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    [snippet] = [b for b in blocks if "tritonclient" in b]
    assert not re.search(r"^\s*(import|from)\s+mstage", snippet, re.M)  # plain tritonclient
    done = run_python("-c", snippet, timeout=120,
                      env={"TRITON_GRPC_URL": served.grpc, "PATH": ""})
    printed = dict(re.findall(r"user (\d+): items (\[[^\]]*\])", done.stdout))
    assert sorted(printed) == ["42", "7"]
    expected = _answers(cli("-w", served.ws, "recommend", "--user-ids-file", "-", "--top-k", "5",
                            "--json", input="42\n7\n"))
    for user, items in printed.items():
        assert json.loads(items) == expected[int(user)]["item_ids"]


def test_unknown_user_gets_the_fallback_from_a_raw_request(served, in_process, users):
    unknown = users[-1]
    result = raw_infer(served.grpc, "mstage_recommender",
                       {"user_id": (np.array([[unknown]], dtype=np.int64), "INT64")})
    items = result.as_numpy("item_ids")[0]
    assert result.as_numpy("fallback").reshape(-1).tolist() == [1]
    assert items[items != -1].tolist() == in_process[unknown]["item_ids"]  # default top_k = 10


@pytest.mark.parametrize("arrays, message", [
    ({"user_id": (np.array([[1.0]], dtype=np.float32), "FP32")}, r"user_id.*FP32.*INT64"),
    ({"user_id": (np.array([[1, 2]], dtype=np.int64), "INT64")},
     r"unexpected shape for input 'user_id'"),
    ({"user_id": (np.array([[1]], dtype=np.int64), "INT64"),
      "user": (np.array([[1]], dtype=np.int64), "INT64")}, r"unexpected inference input 'user'"),
])
def test_malformed_request_names_the_input_and_server_stays_up(served, arrays, message):
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException, match=message):
        raw_infer(served.grpc, "mstage_recommender", arrays)
    assert http_ready(f"http://{served.http}/v2/health/ready")
    ok = raw_infer(served.grpc, "mstage_recommender",
                   {"user_id": (np.array([[1]], dtype=np.int64), "INT64")})
    assert ok.as_numpy("item_ids").shape == (1, TOP_K)


def test_recommend_server_human_output(cli, served, users):
    result = cli("-w", served.ws, "recommend", "--user-id", users[-1], "--top-k", "3",
                 "--server", served.grpc)
    assert result.exit_code == 0, result.stderr
    assert f"user {users[-1]}  fallback (popular items)" in result.stdout
    assert "category" in result.stdout  # attributes from the workspace's feature store


def test_plain_recommend_answers_from_the_current_server_and_in_process_on_request(
        cli, served, users, in_process):
    user = users[0]
    auto = cli("-w", served.ws, "recommend", "--user-id", user, "--json")
    assert auto.exit_code == 0, auto.stderr
    assert f"answering from the server running for this workspace (grpc://{served.grpc})" in \
        " ".join(auto.stderr.split())
    assert json.loads(auto.stdout)["item_ids"] == in_process[user]["item_ids"]
    local = cli("-w", served.ws, "recommend", "--user-id", user, "--json", "--in-process")
    assert local.exit_code == 0 and "answering from the server" not in local.stderr
    too_many = cli("-w", served.ws, "recommend", "--user-id", user, "--top-k", "500",
                   "--server", served.grpc)
    assert too_many.exit_code == 2
    assert "expected --top-k <= the 200 candidates the served ensemble retrieves, found 500; " \
           "rebuild it with `mstage build-ensemble --candidates 500`" in \
        " ".join(too_many.stderr.split())


def test_status_shows_the_server_and_whether_it_serves_the_current_ensemble(cli, served):
    status = json.loads(cli("-w", served.ws, "status", "--json").stdout)
    assert status["server"] == {"pid": served.pid, "grpc": served.grpc, "http": served.http,
                                "repository": str(served.ws / "ensemble" / "model_repository"),
                                "current": True}
    assert cli("-w", served.ws, "build-ensemble").exit_code == 0  # the server keeps the old
    rebuilt = cli("-w", served.ws, "status")
    assert "serving an older or another repository; `mstage stop` then `mstage serve`" in \
        " ".join(rebuilt.stdout.split())
    # the server no longer serves the current ensemble: plain recommend runs in-process
    local = cli("-w", served.ws, "recommend", "--user-id", "1", "--json")
    assert local.exit_code == 0 and "answering from the server" not in local.stderr


def test_server_stopped_mid_batch_keeps_the_answers_and_lists_the_rest(cli, served, monkeypatch,
                                                                       pipeline_workspace,
                                                                       tmp_path):
    """Runs last: `mstage stop` (a separate process) ends the server after the first chunk."""
    from mstage.serving.client import RecommenderClient

    known, _ = known_and_unknown_users(pipeline_workspace)
    batch = known[: served.max_batch_size + 36]
    ids = tmp_path / "users.txt"
    ids.write_text("\n".join(map(str, batch)) + "\n")
    original = RecommenderClient.recommend
    stops = []

    def answer_then_stop(self, users, top_k=None):
        answers = original(self, users, top_k)
        if not stops:
            stops.append(run_mstage_process("--workspace", served.ws, "stop", "--json",
                                            check=False, timeout=120))
        return answers

    monkeypatch.setattr(RecommenderClient, "recommend", answer_then_stop)
    result = cli("-w", served.ws, "recommend", "--user-ids-file", ids, "--server", served.grpc,
                 "--json")
    monkeypatch.undo()

    [stopped] = stops
    assert stopped.returncode == 0, stopped.stderr
    assert json.loads(stopped.stdout)["stopped"] == served.pid
    assert not is_tritonserver(served.pid)
    assert not (served.ws / "logs" / "tritonserver.pid").exists()

    assert result.exit_code == 1
    answered = [json.loads(line)["user_id"] for line in result.stdout.splitlines()]
    assert answered == batch[: served.max_batch_size]
    rest = batch[served.max_batch_size:]
    stderr = " ".join(result.stderr.split())
    assert f"expected answers for all {len(batch)} users, found {len(rest)} unanswered when " \
           f"{served.grpc} stopped answering (user ids: {', '.join(map(str, rest))})" in stderr
    assert "Traceback" not in result.stderr

    again = cli("-w", served.ws, "recommend", "--user-id", batch[0], "--server", served.grpc)
    assert again.exit_code == 1
    assert f"expected a Triton server at grpc://{served.grpc}, found none answering" in \
        " ".join(again.stderr.split())
