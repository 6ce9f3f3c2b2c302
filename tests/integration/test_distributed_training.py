"""Training on two workers with tf.distribute (MultiWorkerMirroredStrategy over loopback):
each worker runs the same `mstage` training command on its own copy of the workspace, as on
two machines; both end with the same model, which learns as well as one trained in one
process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from retrieval_data import publish_prepared

from mstage.serving.server import free_ports
from mstage.workspace import Artifact, Workspace

pytestmark = pytest.mark.slow

RETRIEVAL = ["train-retrieval", "--epochs", "4", "--batch-size", "128", "--embedding-dim", "8",
             "--learning-rate", "0.1", "--temperature", "0.1"]
RANKING = ["train-ranking", "--epochs", "3", "--batch-size", "256"]
# How far the two-worker model may trail the one-process model: each worker's in-batch
# negatives (retrieval) are its half of the batch, and the two runs' float sums differ in
# order, so they are two trainings of one model, not one.
RECALL_TOLERANCE = 0.05
AUC_TOLERANCE = 0.02


def _start(workspace, args, env=None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "mstage", "--workspace", str(workspace), *args, "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, **(env or {})})


def _finish(process: subprocess.Popen) -> dict:
    try:
        stdout, stderr = process.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    assert process.returncode == 0, stderr[-3000:]
    return json.loads(stdout)


def _train(tmp_path, args) -> tuple[list[dict], dict, list, object]:
    """(the two workers' results, the one-process result, the workers' workspaces, the
    one-process workspace) of `mstage ARGS` on copies of one prepared workspace."""
    single = tmp_path / "single"
    publish_prepared(single)
    workers = [tmp_path / f"worker{i}" for i in range(2)]
    for w in workers:
        shutil.copytree(single, w)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in free_ports(2)]}
    processes = [_start(w, args, {"TF_CONFIG": json.dumps(
                     {"cluster": cluster, "task": {"type": "worker", "index": i}})})
                 for i, w in enumerate(workers)]
    distributed = [_finish(p) for p in processes]
    return distributed, _finish(_start(single, args)), workers, single


def _embeddings(workspace) -> np.ndarray:
    frame = pd.read_parquet(Workspace(workspace).path(Artifact.RETRIEVAL)
                            / "item_embeddings.parquet")
    return np.stack(frame.sort_values("item_id")["embedding"].to_numpy())


def test_two_tower_on_two_workers_learns_like_one_process(tmp_path):
    distributed, alone, workers, single = _train(tmp_path, RETRIEVAL)

    # the workers averaged every step's gradients: one model, bit for bit
    np.testing.assert_array_equal(_embeddings(workers[0]), _embeddings(workers[1]))
    # ... and not the one-process model: the workers did split the batches
    assert not np.allclose(_embeddings(workers[0]), _embeddings(single), atol=1e-3)
    recall = [run["test"]["two_tower"]["recall@20"] for run in distributed]
    assert recall[0] == recall[1]
    popularity = alone["test"]["popularity"]["recall@20"]
    one_process = alone["test"]["two_tower"]["recall@20"]
    assert one_process >= 2 * popularity
    assert recall[0] >= one_process - RECALL_TOLERANCE, (recall[0], one_process)


def test_dlrm_on_two_workers_learns_like_one_process(tmp_path):
    distributed, alone, _, _ = _train(tmp_path, RANKING)

    auc = [run["test_auc"] for run in distributed]
    assert auc[0] == auc[1]
    assert alone["test_auc"] > alone["baseline_auc"] + 0.05
    # The mean of the two halves' mean gradients is the whole batch's: the same model up to
    # the order of float sums (here the AUC came out equal).
    assert auc[0] == pytest.approx(alone["test_auc"], abs=AUC_TOLERANCE)


@pytest.mark.parametrize("value", ['{"cluster": {}}', "workers=2"])
def test_a_malformed_tf_config_is_a_usage_error(tmp_path, value):
    publish_prepared(tmp_path / "ws")
    done = subprocess.run([sys.executable, "-m", "mstage", "--workspace", str(tmp_path / "ws"),
                           *RANKING], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TF_CONFIG": value})
    assert done.returncode == 2, done.stderr
    assert "expected TF_CONFIG as JSON with cluster.worker" in done.stderr
    assert "Traceback" not in done.stderr
