"""`mstage bench`: in-process with a fake recommender, through a real tritonserver serving the toy
ensemble (skipped without the binary), and its error paths."""

from __future__ import annotations

import json

import numpy as np
import pytest
from retrieval_data import publish_prepared

from mstage.serving.server import free_port


@pytest.fixture
def prepared(isolated_workspace):
    publish_prepared(isolated_workspace, n_users=30, n_items=20, per_user=6)
    return isolated_workspace


class FakeRecommender:
    """Answers instantly; records the users it was asked about."""

    def __init__(self):
        self.calls = []

    def recommend(self, user_ids, top_k, *, seen=None):
        self.calls.append((user_ids.tolist(), top_k))
        return np.zeros((len(user_ids), top_k), dtype=np.int64)

    def close(self):
        pass


@pytest.fixture
def fake_recommender(monkeypatch):
    from mstage.pipeline.recommender import Recommender

    fake = FakeRecommender()
    monkeypatch.setattr(Recommender, "from_workspace",
                        classmethod(lambda cls, ws, config, **kw: fake))
    return fake


def test_in_process_levels_counts_report_and_plot(cli, prepared, fake_recommender, tmp_path):
    import matplotlib.image

    plot = tmp_path / "bench.png"
    result = cli("bench", "--requests", "25", "--concurrency", "1,3", "--warmup", "2",
                 "--top-k", "7", "--plot", plot, "--json")
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["mode"] == "in-process" and out["top_k"] == 7
    assert [lv["concurrency"] for lv in out["levels"]] == [1, 3]
    assert [lv["requests"] for lv in out["levels"]] == [25, 25]
    for level in out["levels"]:
        assert 0 < level["p50_ms"] <= level["p90_ms"] <= level["p99_ms"] <= level["max_ms"]
        assert level["throughput_rps"] > 0 and level["stopped_by"] == "requests"
    # 1 probe + warm-up (1 x 2 + 3 x 2) + 2 x 25 timed, one user per request, top_k 7
    assert len(fake_recommender.calls) == 1 + 8 + 50
    assert {len(users) for users, _ in fake_recommender.calls} == {1}
    assert {k for _, k in fake_recommender.calls} == {7}
    assert json.loads((prepared / "reports" / "bench-in-process.json").read_text())["levels"]
    assert matplotlib.image.imread(plot).shape[:2] == (400, 1100)


def test_rendered_table(cli, prepared, fake_recommender):
    result = cli("bench", "--requests", "5", "--concurrency", "2")
    assert result.exit_code == 0, result.stderr
    for text in ("bench in-process", "p50 ms", "p99 ms", "req/s"):
        assert text in result.stdout


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_unreachable_server_names_the_address(cli, prepared, protocol):
    port = free_port()
    result = cli("bench", "--server", f"127.0.0.1:{port}", "--protocol", protocol,
                 "--requests", "5")
    assert result.exit_code == 1
    assert f"expected a Triton server at {protocol}://127.0.0.1:{port}, found none" in \
        result.stderr
    assert "start one with `mstage serve`" in result.stderr


def test_without_prepared_data_names_prepare_data(cli):
    result = cli("bench", "--requests", "5")
    assert result.exit_code == 2
    assert "run `mstage prepare-data` first" in result.stderr


@pytest.mark.parametrize("args,message", [
    (["--concurrency", "0"], "expected positive integers"),
    (["--protocol", "udp"], "expected --protocol grpc or http, found 'udp'"),
    (["--duration-limit", "0"], "expected --duration-limit > 0, found 0.0"),
    (["--plot", "bench.svg"], "expected a .png file for the plot, found 'bench.svg'"),
    (["--requests", "0"], "Invalid value for '--requests'"),
])
def test_bad_options_are_usage_errors(cli, args, message):
    result = cli("bench", *args)
    assert result.exit_code == 2
    assert message in " ".join(result.stderr.split())


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_through_triton_on_the_toy_ensemble(cli, prepared, toy_server, protocol, tmp_path):
    endpoints = toy_server.endpoints
    url = endpoints.grpc_url if protocol == "grpc" else endpoints.http_url
    result = cli("bench", "--server", url, "--protocol", protocol, "--requests", "40",
                 "--concurrency", "1,4", "--plot", tmp_path / "triton.png", "--json")
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["mode"] == f"{protocol}://{url}"
    assert [lv["requests"] for lv in out["levels"]] == [40, 40]
    assert all(lv["p50_ms"] > 0 for lv in out["levels"])
    assert (prepared / "reports" / f"bench-triton-{protocol}.json").is_file()
    assert (tmp_path / "triton.png").stat().st_size > 1000
