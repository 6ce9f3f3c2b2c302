"""`mstage build-ensemble` on a real workspace: a self-contained repository, options, errors.

That the repository actually serves is checked in test_parity.py (a real tritonserver).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from cli_runner import imports_after_commands
from pipeline_workspace import (
    copy_workspace,
    known_and_unknown_users,
    stale_by_rebuild,
)

STAGES = ["mstage_retrieval", "mstage_filtering", "mstage_scoring", "mstage_ordering"]


@pytest.mark.slow
def test_repository_is_complete_and_self_contained(cli, pipeline_workspace, tmp_path):
    ws = copy_workspace(pipeline_workspace, tmp_path / "ws")
    result = cli("-w", ws, "build-ensemble", "--json")
    assert result.exit_code == 0, result.stderr
    built = json.loads(result.stdout)
    repo = ws / "ensemble" / "model_repository"
    assert built["repository"] == str(repo)
    assert built["models"] == [*STAGES, "mstage_recommender"]
    for stage in STAGES:
        assert (repo / stage / "1" / "model.py").is_file()
        assert (repo / stage / "1" / "artifacts" / "stage.json").is_file()
        assert "kind: KIND_CPU" in (repo / stage / "config.pbtxt").read_text()
    ensemble = (repo / "mstage_recommender" / "config.pbtxt").read_text()
    assert 'platform: "ensemble"' in ensemble
    for output in ("item_ids", "scores", "fallback"):
        assert f'name: "{output}"' in ensemble

    # No file, text or binary, names the workspace (nor the directory holding it).
    needles = [str(ws.resolve()).encode(), str(tmp_path.resolve()).encode(),
               str(pipeline_workspace.resolve()).encode()]
    leaking = [p for p in repo.rglob("*") if p.is_file()
               and any(n in p.read_bytes() for n in needles)]
    assert leaking == []

    status = json.loads(cli("-w", ws, "status", "--json").stdout)
    assert {a["artifact"]: a["state"] for a in status["artifacts"]}["ensemble"] == "ready"


@pytest.mark.slow
def test_builds_without_tensorflow_or_feast_and_copies_only_what_stages_read(
        pipeline_workspace, tmp_path):
    """Stages declare their columns from params: writing the repository loads no model."""
    ws = copy_workspace(pipeline_workspace, tmp_path / "ws")
    imported, _ = imports_after_commands([["-w", ws, "-q", "build-ensemble"]],
                                         ("tensorflow", "keras", "feast", "faiss"))
    assert imported == []

    repo = ws / "ensemble" / "model_repository"
    copied = {stage: sorted(p.name for p in (repo / stage / "1" / "artifacts").iterdir())
              for stage in STAGES}
    assert copied == {
        "mstage_retrieval": ["arrays.npz", "features", "index", "ranking", "retrieval",
                             "stage.json"],
        "mstage_filtering": ["arrays.npz", "stage.json"],
        "mstage_scoring": ["arrays.npz", "ranking", "stage.json"],
        "mstage_ordering": ["stage.json"],
    }
    artifacts = repo / "mstage_retrieval" / "1" / "artifacts"
    assert sorted(p.name for p in (artifacts / "retrieval").iterdir()) == \
        ["encoders", "params.json", "query_tower.tflite"]  # the LiteRT export, nothing else
    assert sorted(p.name for p in (artifacts / "features").iterdir()) == \
        ["feature_store.yaml", "features.json", "online.db", "registry.db"]
    assert [p.name for p in (repo / "mstage_scoring/1/artifacts/ranking").iterdir()] == \
        ["ranker.tflite"]


@pytest.mark.slow
def test_moved_repository_answers_like_the_in_process_recommender(
        cli, pipeline_workspace, tmp_path):
    """The operators saved in a copy of the repository, with the workspace deleted, give the
    same recommendations as the Recommender built from the workspace."""
    from mstage.config import load_config
    from mstage.pipeline.pipeline import Pipeline
    from mstage.pipeline.plan import Plan
    from mstage.pipeline.recommender import Recommender
    from mstage.pipeline.stage import Stage
    from mstage.workspace import Workspace

    ws = copy_workspace(pipeline_workspace, tmp_path / "ws")
    assert cli("-w", ws, "build-ensemble", "--top-k", "5").exit_code == 0
    moved = shutil.copytree(ws / "ensemble" / "model_repository", tmp_path / "elsewhere")
    shutil.rmtree(ws)

    stages = [(name, Stage.restore(moved / name / "1" / "artifacts")) for name in STAGES]
    users, unknown = known_and_unknown_users(pipeline_workspace)
    batch = np.array([*users[:5], unknown], dtype=np.int64)
    served, _ = Pipeline(Plan(stages)).run({"user_id": batch})
    workspace = Workspace(pipeline_workspace)
    expected = Recommender.from_workspace(workspace, load_config(workspace.config_path),
                                          top_k=5).recommend(batch, 5)
    assert served["item_ids"].tolist() == expected.item_ids.tolist()
    np.testing.assert_allclose(served["scores"], expected.scores, atol=1e-5)
    assert served["fallback"].astype(bool).tolist() == [False] * 5 + [True]


@pytest.mark.slow
def test_options_reach_the_configs_and_manifest(cli, pipeline_workspace, tmp_path):
    ws = copy_workspace(pipeline_workspace, tmp_path / "ws")
    result = cli("-w", ws, "build-ensemble", "--device", "gpu", "--instances", "2",
                 "--top-k", "7", "--candidates", "40")
    assert result.exit_code == 0, result.stderr
    assert "mstage_recommender" in result.stdout and "model_repository" in result.stdout
    repo = ws / "ensemble" / "model_repository"
    for stage in STAGES:
        config = (repo / stage / "config.pbtxt").read_text()
        assert "kind: KIND_GPU" in config and "count: 2" in config
    retrieval = json.loads((repo / "mstage_retrieval/1/artifacts/stage.json").read_text())
    candidates = next(c for c in retrieval["outputs"] if c["name"] == "candidate_ids")
    assert candidates["shape"] == [-1, 40]
    ordering = json.loads((repo / "mstage_ordering/1/artifacts/stage.json").read_text())
    assert ordering["params"]["top_k"] == 7
    record = json.loads((ws / "manifest.json").read_text())["artifacts"]["ensemble"]
    assert record["config"]["serving"]["device"] == "gpu"
    assert record["config"]["serving"]["candidates"] == 40
    assert record["metrics"]["models"][-1] == "mstage_recommender"


@pytest.mark.slow
def test_stale_input_warns_but_builds(cli, pipeline_workspace, tmp_path):
    ws = copy_workspace(pipeline_workspace, tmp_path / "ws")
    stale_by_rebuild(ws, "retrieval")  # the index was built from the previous retrieval
    result = cli("-w", ws, "build-ensemble")
    assert result.exit_code == 0, result.stderr
    assert "warning: index is stale (retrieval changed since this was built); run `mstage " \
           "build-index`" in " ".join(result.stderr.split())


@pytest.mark.slow
def test_missing_artifact_names_the_command(cli, pipeline_workspace, tmp_path):
    ws = copy_workspace(pipeline_workspace, tmp_path / "ws")
    shutil.rmtree(ws / "features")
    result = cli("-w", ws, "build-ensemble")
    assert result.exit_code == 2
    assert "run `mstage export-features` first" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (ws / "ensemble").exists()


def test_empty_workspace_names_the_first_missing_step(cli):
    result = cli("build-ensemble")
    assert result.exit_code == 2
    assert "expected the retrieval artifact" in result.stderr
    assert "run `mstage prepare-data` first" in result.stderr  # train-retrieval needs data


@pytest.mark.parametrize("args, message", [
    (["--device", "tpu"], "expected --device in cpu, gpu, found 'tpu'"),
    (["--instances", "0"], "expected --instances > 0, found 0"),
    (["--top-k", "0"], "expected --top-k > 0, found 0"),
    (["--candidates", "0"], "expected --candidates > 0, found 0"),
    (["--top-k", "20", "--candidates", "10"], "expected --candidates >= --top-k, found 10 < 20"),
])
def test_bad_options_are_usage_errors(cli, args, message):
    result = cli("build-ensemble", *args)
    assert result.exit_code == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
