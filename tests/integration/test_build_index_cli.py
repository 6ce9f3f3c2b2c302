"""`mstage build-index` end to end on a retrieval artifact published by the test itself."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mstage.index import gpu
from mstage.index.faiss_index import FaissIndex
from mstage.workspace import Artifact, Workspace


def unit_rows(n: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(20, dim))
    x = centres[rng.integers(0, 20, n)] + 0.4 * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def write_embeddings(path, ids, embeddings) -> None:
    column = pa.array([row.tolist() for row in embeddings], type=pa.list_(pa.float32()))
    pq.write_table(pa.table({"item_id": pa.array(ids, pa.int64()), "embedding": column}), path)


def publish_retrieval(ws_dir, ids=None, embeddings=None, params=None, write_file=True):
    """Publish data + retrieval artifacts holding item_embeddings.parquet and params.json."""
    ws = Workspace(ws_dir)
    if not ws.exists(Artifact.DATA):
        with ws.build(Artifact.DATA):
            pass
    embeddings = unit_rows(400, 8) if embeddings is None else embeddings
    ids = np.arange(len(embeddings), dtype=np.int64) * 10 + 1 if ids is None else ids
    with ws.build(Artifact.RETRIEVAL) as b:
        if write_file:
            write_embeddings(b.dir / "item_embeddings.parquet", ids, embeddings)
        (b.dir / "params.json").write_text(json.dumps(params or {"similarity": "inner_product"}))
    return ids, embeddings


def test_build_index_publishes_an_exact_index_matching_numpy(cli, isolated_workspace):
    ids, items = publish_retrieval(isolated_workspace)
    result = cli("build-index", "--json")
    assert result.exit_code == 0, result.stderr
    meta = json.loads(result.stdout)
    assert meta["kind"] == "flat" and meta["n_items"] == 400 and meta["metric"] == "inner_product"
    assert meta["recall_at_100"] == 1.0 and meta["tuning"]["query_source"] == "items"
    index = FaissIndex.load(isolated_workspace / "index")
    query = items[3:4]
    found, scores = index.search(query, 5)
    order = np.argsort(-(items @ query[0]))[:5]
    assert found[0].tolist() == ids[order].tolist()
    np.testing.assert_allclose(scores[0], (items @ query[0])[order], rtol=1e-5)
    status = json.loads(cli("status", "--json").stdout)
    assert {a["artifact"]: a["state"] for a in status["artifacts"]}["index"] == "ready"


def test_toml_section_and_cli_options(cli, isolated_workspace):
    publish_retrieval(isolated_workspace, embeddings=unit_rows(3000, 8))
    (isolated_workspace / "mstage.toml").write_text(
        '[index]\nindex = "ivf"\ntarget_recall = 0.9\nqueries = "items"\n')
    meta = json.loads(cli("build-index", "--json").stdout)
    assert meta["kind"] == "ivf" and meta["target_recall"] == 0.9 and meta["recall_at_100"] >= 0.9
    meta = json.loads(cli("build-index", "--json", "--exact-below", "5000",
                          "--index", "auto").stdout)
    assert meta["kind"] == "flat"
    record = Workspace(isolated_workspace).record(Artifact.INDEX)
    assert record["config"]["index"] == "auto" and record["metrics"]["recall_at_100"] == 1.0


def test_human_output_names_the_index(cli, isolated_workspace):
    publish_retrieval(isolated_workspace)
    result = cli("build-index", "--index", "hnsw")
    assert result.exit_code == 0, result.stderr
    assert "HNSW32,Flat" in result.stdout and "efSearch=" in result.stdout


def test_metric_from_params_json(cli, isolated_workspace):
    publish_retrieval(isolated_workspace, params={"metric": "l2"})
    meta = json.loads(cli("build-index", "--json").stdout)
    assert meta["metric"] == "l2"


def test_unknown_metric_in_params_is_refused(cli, isolated_workspace):
    publish_retrieval(isolated_workspace, params={"similarity": "hamming"})
    result = cli("build-index")
    assert result.exit_code == 2
    assert "expected metric inner_product or l2" in result.stderr and "'hamming'" in result.stderr


def test_missing_retrieval_artifact_names_the_first_missing_step(cli):
    result = cli("build-index")
    assert result.exit_code == 2
    assert "expected the retrieval artifact" in result.stderr
    assert "run `mstage prepare-data` first" in result.stderr  # train-retrieval needs data


def test_missing_embeddings_file_names_train_retrieval(cli, isolated_workspace):
    publish_retrieval(isolated_workspace, write_file=False)
    result = cli("build-index")
    assert result.exit_code == 2
    assert "expected item embeddings at" in result.stderr
    assert "run `mstage train-retrieval`" in result.stderr


def test_nan_embeddings_are_refused_with_counts(cli, isolated_workspace):
    items = unit_rows(50, 4)
    items[[5, 9], 0] = np.nan
    publish_retrieval(isolated_workspace, embeddings=items)
    result = cli("build-index")
    assert result.exit_code == 2
    assert "found 2 NaN/inf values in 2 of 50 items (item ids 51, 91)" in result.stderr
    assert not (isolated_workspace / "index").exists()


def test_duplicate_item_ids_are_refused_with_examples(cli, isolated_workspace):
    ids = np.arange(50, dtype=np.int64)
    ids[[10, 11]] = 7
    publish_retrieval(isolated_workspace, ids=ids, embeddings=unit_rows(50, 4))
    result = cli("build-index")
    assert result.exit_code == 2
    assert "expected unique item ids" in result.stderr
    assert "found 1 ids repeated (2 extra rows; e.g. 7)" in result.stderr


@pytest.mark.parametrize("kind", ["annoy", "IVF12,Flatt"])
def test_unknown_index_type_lists_valid_choices(cli, isolated_workspace, kind):
    publish_retrieval(isolated_workspace)
    result = cli("build-index", "--index", kind)
    assert result.exit_code == 2
    assert "expected --index auto, flat, ivf, hnsw or a faiss factory string" in result.stderr
    assert repr(kind) in result.stderr and "Traceback" not in result.stderr


def test_failed_build_keeps_the_previous_index(cli, isolated_workspace):
    publish_retrieval(isolated_workspace)
    assert cli("build-index").exit_code == 0
    before = Workspace(isolated_workspace).record(Artifact.INDEX)
    result = cli("build-index", "--index", "IVF4096,Flat")
    assert result.exit_code == 2
    assert "faiss could not build it on 400 items" in result.stderr
    assert Workspace(isolated_workspace).record(Artifact.INDEX) == before
    assert FaissIndex.load(isolated_workspace / "index").metadata["factory"] == "Flat"
    assert not list((isolated_workspace / ".staging").iterdir())


def test_invalid_target_recall_is_a_usage_error(cli, isolated_workspace):
    publish_retrieval(isolated_workspace)
    result = cli("build-index", "--target-recall", "1.5")
    assert result.exit_code == 2
    assert "expected index.target_recall in (0, 1], found 1.5" in result.stderr


def test_query_file_tunes_the_index(cli, isolated_workspace, tmp_path):
    publish_retrieval(isolated_workspace, embeddings=unit_rows(2000, 8))
    users = tmp_path / "users.npy"
    np.save(users, unit_rows(64, 8, seed=5))
    meta = json.loads(cli("build-index", "--json", "--index", "ivf", "--queries", users).stdout)
    assert meta["tuning"]["query_source"] == str(users) and meta["tuning"]["queries"] == 64
    wrong = tmp_path / "wrong.parquet"
    write_embeddings(wrong, np.arange(3), unit_rows(3, 5))
    result = cli("build-index", "--queries", wrong)
    assert result.exit_code == 2
    assert "expected query embeddings of shape (n, 8)" in result.stderr


def test_missing_query_file_is_a_usage_error(cli, isolated_workspace, tmp_path):
    publish_retrieval(isolated_workspace)
    result = cli("build-index", "--queries", tmp_path / "nope.parquet")
    assert result.exit_code == 2
    assert "expected a query embeddings file at" in result.stderr


def test_unknown_device_is_a_usage_error(cli, isolated_workspace):
    publish_retrieval(isolated_workspace)
    result = cli("build-index", "--device", "tpu")
    assert result.exit_code == 2 and "expected --device auto, cpu or gpu" in result.stderr


@pytest.mark.skipif(gpu.gpu_count() > 0, reason="checks the CPU-only machine")
def test_gpu_required_on_cpu_machine_is_a_usage_error(cli, isolated_workspace):
    publish_retrieval(isolated_workspace)
    result = cli("build-index", "--device", "gpu")
    assert result.exit_code == 2 and "expected a GPU visible to faiss-gpu" in result.stderr


def test_queries_users_without_query_tower_names_train_retrieval(cli, isolated_workspace):
    publish_retrieval(isolated_workspace)
    result = cli("build-index", "--queries", "users")
    assert result.exit_code == 2
    assert "expected a query tower at" in result.stderr
    assert "mstage train-retrieval" in result.stderr


@pytest.mark.slow
def test_auto_tunes_on_users_embedded_by_the_real_query_tower(cli, isolated_workspace, tmp_path):
    raw = tmp_path / "raw"
    assert cli("generate-data", "--out", raw, "--users", 80, "--items", 60,
               "--interactions", 2000).exit_code == 0
    assert cli("prepare-data", "--interactions", raw / "interactions.parquet",
               "--users", raw / "users.parquet", "--items", raw / "items.parquet",
               "--label-col", "click").exit_code == 0
    trained = cli("train-retrieval", "--epochs", "1", "--batch-size", "64",
                  "--embedding-dim", "8")
    assert trained.exit_code == 0, trained.stderr
    result = cli("build-index", "--json", "--index", "ivf")
    assert result.exit_code == 0, result.stderr
    meta = json.loads(result.stdout)
    assert meta["tuning"]["query_source"] == "users" and meta["tuning"]["queries"] == 80
    assert meta["dimension"] == 8 and meta["metric"] == "inner_product"
    exact = json.loads(cli("build-index", "--json").stdout)  # 60 items: auto is exact
    assert exact["kind"] == "flat" and exact["tuning"]["query_source"] == "items"
