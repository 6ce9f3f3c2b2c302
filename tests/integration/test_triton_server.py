"""A real tritonserver: round trips, bad requests, start-up failures, and `mstage serve/stop`.

The toy ensemble (toy_operators.py): user u gets candidates u*100 + 0..4 with scores
[0, .1, .2, 0, .1]; ordering keeps the best top_k (default 3), ties by smaller id, so the
full order for user u is u*100 + [2, 1, 4, 0, 3] with scores [.2, .1, .1, 0, 0].
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from raw_triton import raw_infer
from toy_operators import write_toy_repository

from mstage.errors import ServerError, UsageError
from mstage.serving.client import RecommenderClient, TritonClient
from mstage.serving.server import TritonServer, free_ports, http_ready, is_tritonserver

pytestmark = pytest.mark.slow


def _urls(server: TritonServer) -> dict[str, str]:
    return {"grpc": server.endpoints.grpc_url, "http": server.endpoints.http_url}


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_recommend_round_trip_gives_exact_items_and_scores(toy_server, protocol):
    with RecommenderClient(_urls(toy_server)[protocol], protocol) as client:
        two = client.recommend(np.array([1, 2]), top_k=2)
        default = client.recommend([7])
        wide = client.recommend([3], top_k=10)
    assert two.item_ids.tolist() == [[102, 101], [202, 201]]
    np.testing.assert_allclose(two.scores[0], [0.2, 0.1], rtol=1e-6)
    assert default.item_ids[0].tolist() == [702, 701, 704]  # default_k = 3
    np.testing.assert_allclose(default.scores[0], [0.2, 0.1, 0.1], rtol=1e-6)
    assert wide.item_ids[0].tolist() == [302, 301, 304, 300, 303]  # only 5 candidates exist
    assert two.fallback.tolist() == [False, False]  # the toy ensemble has no fallback output


def test_more_users_than_max_batch_size_are_sent_in_chunks(toy_server):
    with RecommenderClient(toy_server.endpoints.http_url, "http") as client:
        results = client.recommend(np.arange(150), top_k=1)  # max_batch_size is 64
    assert results.item_ids.tolist() == [[u * 100 + 2] for u in range(150)]


def test_mixed_top_k_in_one_request_pads_then_client_trims(toy_server):
    with TritonClient(toy_server.endpoints.grpc_url, "mstage_recommender") as client:
        out = client.infer({"user_id": np.array([1, 2]), "top_k": np.array([1, 2])})
    # Row 0 wants 1 item, row 1 wants 2: the response is [2, 2] with -1 / NaN padding.
    assert out["item_ids"].tolist() == [[102, -1], [202, 201]]
    assert np.isnan(out["scores"][0, 1])


def test_concurrent_requests_are_batched_and_split_back_correctly(toy_server):
    from concurrent.futures import ThreadPoolExecutor

    def ask(user: int) -> list[int]:
        with RecommenderClient(toy_server.endpoints.grpc_url) as client:  # one client per thread
            return client.recommend([user], top_k=1).item_ids[0].tolist()

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, range(1, 33)))
    assert answers == [[u * 100 + 2] for u in range(1, 33)]


def test_answers_leave_no_traceback_in_the_server_log(toy_server):
    # Each output tensor once printed an unraisable DLPack-capsule error into the log.
    with RecommenderClient(toy_server.endpoints.grpc_url) as client:
        for user in range(1, 21):
            client.recommend([user], top_k=2)
    log = toy_server.log_path.read_text(errors="replace")
    assert "Traceback" not in log and "PyCapsule_GetPointer" not in log


def _assert_still_serving(server):
    with RecommenderClient(server.endpoints.grpc_url) as client:
        assert client.recommend([5], top_k=1).item_ids[0].tolist() == [502]


def test_wrong_dtype_from_raw_client_names_the_input_and_server_stays_up(toy_server):
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException, match="user_id.*FP32.*INT64"):
        raw_infer(toy_server.endpoints.grpc_url, "mstage_recommender",
                   {"user_id": (np.array([[1.0]], dtype=np.float32), "FP32")})
    _assert_still_serving(toy_server)


def test_missing_input_from_raw_client_names_the_input_and_server_stays_up(toy_server):
    from tritonclient.utils import InferenceServerException

    # toy_order reads toy_candidates' columns packed (mstage/serving/wire.py)
    expected = "expected input 'packed_toy_candidates' holding item_ids, scores"
    with pytest.raises(InferenceServerException, match=expected):
        raw_infer(toy_server.endpoints.grpc_url, "toy_order",
                   {"top_k": (np.array([[1]], dtype=np.int64), "INT64")})
    _assert_still_serving(toy_server)


def test_client_names_a_missing_required_input_before_sending(toy_server):
    # Triton itself answers an ensemble request lacking user_id with an opaque "deadlock".
    with TritonClient(toy_server.endpoints.grpc_url, "mstage_recommender") as client:
        with pytest.raises(UsageError, match="expected input 'user_id'"):
            client.infer({"top_k": np.array([3])})


def test_operator_failure_is_an_error_response_and_server_stays_up(toy_server):
    with TritonClient(toy_server.endpoints.http_url, "mstage_recommender", "http") as client:
        with pytest.raises(ServerError, match="toy_order: ValueError: top_k must be >= 0"):
            client.infer({"user_id": np.array([1]), "top_k": np.array([-1])})
    _assert_still_serving(toy_server)


def test_a_stage_returning_a_wrong_dtype_fails_alike_in_process_and_in_triton(toy_server):
    from toy_operators import wrong_dtype_plan

    from mstage.errors import InputError
    from mstage.pipeline.pipeline import Pipeline

    expected = "output: expected 'scores' (float32, shape [-1, 5]), found float64 [2, 5]"
    with pytest.raises(InputError) as in_process:
        Pipeline(wrong_dtype_plan()).run({"user_id": np.array([1, 2])})
    assert str(in_process.value) == f"stage toy_wrong_dtype {expected}"
    with TritonClient(toy_server.endpoints.grpc_url, "toy_wrong_dtype_recommender") as client:
        with pytest.raises(ServerError) as served:
            client.infer({"user_id": np.array([1, 2])})
    assert f"model toy_wrong_dtype {expected}" in str(served.value)
    _assert_still_serving(toy_server)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_no_server_listening_is_a_clear_error(protocol):
    (port,) = free_ports(1)
    with RecommenderClient(f"127.0.0.1:{port}", protocol) as client:
        with pytest.raises(ServerError, match=rf"expected a Triton server at {protocol}://"
                           rf"127.0.0.1:{port}, found none answering.*mstage serve"):
            client.recommend([1])


def test_server_reports_a_model_that_fails_to_load(tritonserver_binary, toy_repository, tmp_path):
    import shutil

    broken = tmp_path / "repo"
    shutil.copytree(toy_repository, broken)
    meta = broken / "toy_order" / "1" / "artifacts" / "stage.json"
    meta.write_text(meta.read_text().replace("toy_operators:TopByScore", "toy_operators:Nope"))
    http_port, grpc_port = free_ports(2)
    server = TritonServer(broken, http_port=http_port, grpc_port=grpc_port, log_dir=tmp_path)
    with pytest.raises(ServerError, match="exited with code .*toy_operators:Nope"):
        server.start()
    assert not server.running()


# --- the CLI ------------------------------------------------------------------------------

def test_serve_on_an_empty_workspace_names_the_first_missing_step(cli):
    result = cli("serve")
    assert result.exit_code == 2
    assert "run `mstage prepare-data` first" in result.stderr


def test_serve_with_a_missing_binary_gives_the_install_hint(cli, toy_repository, monkeypatch):
    monkeypatch.setenv("MSTAGE_TRITONSERVER", "/nonexistent/tritonserver")
    result = cli("serve", "--repository", toy_repository)
    assert result.exit_code == 1
    assert "expected an executable tritonserver at /nonexistent/tritonserver" in result.stderr
    assert "pip install --no-deps nvidia-pytriton==0.7.0" in result.stderr


def test_serve_on_a_port_in_use_names_the_port(cli, tritonserver_binary, toy_repository):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        (grpc_port,) = free_ports(1)
        result = cli("serve", "--repository", toy_repository, "--http-port", port,
                     "--grpc-port", grpc_port)
    assert result.exit_code == 1
    assert f"expected port {port} (--http-port) free on 127.0.0.1, found it in use" in result.stderr


def test_serve_detach_then_stop(cli, tritonserver_binary, toy_repository, isolated_workspace):
    http_port, grpc_port = free_ports(2)
    result = cli("serve", "--repository", toy_repository, "--http-port", http_port,
                 "--grpc-port", grpc_port, "--detach", "--json")
    assert result.exit_code == 0, result.stderr
    started = json.loads(result.stdout)
    assert started["grpc"] == f"127.0.0.1:{grpc_port}"
    pid_file = isolated_workspace / "logs" / "tritonserver.pid"
    try:
        assert json.loads(pid_file.read_text())["pid"] == started["pid"]
        with RecommenderClient(started["grpc"]) as client:
            assert client.recommend([4], top_k=1).item_ids[0].tolist() == [402]

        again = cli("serve", "--repository", toy_repository, "--detach")
        assert again.exit_code == 1
        assert f"found pid {started['pid']}" in again.stderr and "mstage stop" in again.stderr

        stopped = cli("stop", "--json")
        assert stopped.exit_code == 0
        assert json.loads(stopped.stdout)["stopped"] == started["pid"]
        assert not is_tritonserver(started["pid"])
        assert not pid_file.exists()
        assert json.loads(cli("stop", "--json").stdout) == {"stopped": None}
    finally:
        if is_tritonserver(started["pid"]):
            os.killpg(started["pid"], signal.SIGKILL)


def test_foreground_serve_stops_server_and_stubs_on_sigterm(tritonserver_binary, tmp_path):
    repo = write_toy_repository(tmp_path / "repo")
    http_port, grpc_port = free_ports(2)
    proc = subprocess.Popen(
        [sys.executable, "-m", "mstage", "-w", tmp_path / "ws", "serve", "--repository", repo,
         "--http-port", str(http_port), "--grpc-port", str(grpc_port), "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        started = json.loads(proc.stdout.readline())  # printed once ready
        group = started["pid"]
        assert http_ready(f"http://127.0.0.1:{http_port}/v2/health/ready")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        assert not is_tritonserver(group)
        deadline = time.monotonic() + 10
        while _group_alive(group) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _group_alive(group)  # python stubs gone too
        assert not (tmp_path / "ws" / "logs" / "tritonserver.pid").exists()
    finally:
        if proc.poll() is None:
            proc.kill()


def _group_alive(pgid: int) -> bool:
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False
