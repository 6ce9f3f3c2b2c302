"""`mstage train-retrieval` end to end on a tiny clustered data set, and its error paths."""

import json
import re

import numpy as np
import pytest
from retrieval_data import publish_prepared

from mstage.models.retrieval_artifact import read_validation_candidates
from mstage.workspace import Artifact, Workspace

pytestmark = pytest.mark.slow

FAST = ["--epochs", "3", "--batch-size", "64", "--embedding-dim", "8",
        "--learning-rate", "0.1", "--temperature", "0.1"]


@pytest.fixture
def prepared(isolated_workspace):
    publish_prepared(isolated_workspace)
    return isolated_workspace


def test_trains_reports_and_publishes(cli, prepared):
    result = cli("train-retrieval", *FAST, "--json")
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    two_tower, popularity = out["test"]["two_tower"], out["test"]["popularity"]
    assert two_tower["recall@20"] >= 2 * popularity["recall@20"]
    assert {"recall@10", "recall@100", "ndcg@10"} <= two_tower.keys()
    ws = Workspace(prepared)
    assert ws.state(Artifact.RETRIEVAL)[0] == "ready"
    record = ws.record(Artifact.RETRIEVAL)
    assert record["config"]["embedding_dim"] == 8 and record["config"]["epochs"] == 3
    assert record["metrics"]["recall@20"] == pytest.approx(two_tower["recall@20"], abs=1e-6)
    assert "popularity_recall@20" in record["metrics"]
    # the quality gate's numbers: validation recall@20 of the model and of popularity
    metrics = record["metrics"]
    assert metrics["quality_gate"] == "passed"
    assert metrics["validation_recall@20"] > metrics["validation_popularity_recall@20"] > 0
    assert out["validation_popularity"]["recall@20"] == pytest.approx(
        metrics["validation_popularity_recall@20"], abs=1e-6)
    names = {p.name for p in ws.path(Artifact.RETRIEVAL).iterdir()}
    assert names == {"query_tower", "item_tower", "item_embeddings.parquet", "encoders",
                     "params.json", "validation_candidates.npz", "query_tower.tflite"}
    # the validation model's candidates, for train-ranking's choice of the ordering blend
    candidates = read_validation_candidates(ws.path(Artifact.RETRIEVAL))
    assert len(candidates.user_ids) == metrics["validation_users"]
    assert candidates.item_ids.shape == (len(candidates.user_ids), 200)
    padded = candidates.item_ids == -1  # a catalog smaller than 200 + the user's items
    assert (padded == ~np.isfinite(candidates.scores)).all()
    assert (np.diff(np.where(padded, -9.0, candidates.scores), axis=1) <= 0).all()  # best first


def test_renders_a_table_without_json(cli, prepared):
    result = cli("train-retrieval", *FAST)
    assert result.exit_code == 0, result.stderr
    assert "two-tower" in result.stdout and "popularity" in result.stdout
    assert "recall@20" in result.stdout


def test_reads_retrieval_section_of_mstage_toml(cli, prepared):
    (prepared / "mstage.toml").write_text("[retrieval]\nembedding_dim = 4\nepochs = 1\n")
    result = cli("train-retrieval", "--batch-size", "64", "--json")
    assert result.exit_code == 0, result.stderr
    assert Workspace(prepared).record(Artifact.RETRIEVAL)["config"]["embedding_dim"] == 4


def test_without_prepared_data_names_prepare_data(cli):
    result = cli("train-retrieval", *FAST)
    assert result.exit_code == 2
    assert "run `mstage prepare-data` first" in result.stderr


@pytest.mark.parametrize("option,value", [("--epochs", "0"), ("--batch-size", "-5"),
                                          ("--learning-rate", "0"), ("--temperature", "-1"),
                                          ("--embedding-dim", "0")])
def test_non_positive_options_are_usage_errors(cli, prepared, option, value):
    result = cli("train-retrieval", option, value)
    assert result.exit_code == 2
    assert f"expected {option} > 0, found {value}" in result.stderr


def test_seed_outside_numpy_range_is_a_usage_error(cli, prepared):
    result = cli("train-retrieval", "--seed", "-1")
    assert result.exit_code == 2
    assert "expected --seed in 0..4294967295, found -1" in result.stderr


def test_batch_larger_than_data_is_shrunk_and_said(cli, isolated_workspace):
    publish_prepared(isolated_workspace, n_users=20, n_items=25, per_user=5)
    result = cli("train-retrieval", "--epochs", "1", "--batch-size", "100000")
    assert result.exit_code == 0, result.stderr
    assert "--batch-size 100000 exceeds the 80 training positives; using 64" in result.stderr


def test_nan_loss_fails_and_keeps_previous_artifact(cli, prepared):
    assert cli("train-retrieval", *FAST).exit_code == 0
    ws = Workspace(prepared)
    before = ws.record(Artifact.RETRIEVAL)["fingerprint"]
    result = cli("train-retrieval", "--epochs", "2", "--learning-rate", "1e30",
                 "--batch-size", "64")
    assert result.exit_code == 1
    assert "expected a finite training loss" in result.stderr
    assert "lower --learning-rate" in result.stderr and "raise --temperature" in result.stderr
    assert ws.record(Artifact.RETRIEVAL)["fingerprint"] == before
    assert (ws.path(Artifact.RETRIEVAL) / "query_tower").is_dir()


def test_interrupt_mid_training_keeps_previous_artifact(cli, prepared, monkeypatch):
    assert cli("train-retrieval", *FAST).exit_code == 0
    ws = Workspace(prepared)
    before = ws.record(Artifact.RETRIEVAL)["fingerprint"]
    from mstage.models import two_tower

    original = two_tower.TowerTrainer.epoch
    epochs = []

    def interrupted(self):
        if epochs:  # one real epoch, then Ctrl-C
            raise KeyboardInterrupt
        epochs.append(original(self))
        return epochs[0]

    monkeypatch.setattr(two_tower.TowerTrainer, "epoch", interrupted)
    result = cli("train-retrieval", *FAST)
    assert result.exit_code == 130
    assert "interrupted" in result.stderr
    assert ws.record(Artifact.RETRIEVAL)["fingerprint"] == before
    assert (ws.path(Artifact.RETRIEVAL) / "item_embeddings.parquet").is_file()
    assert not list((prepared / ".staging").iterdir())


def test_bad_optimizer_in_mstage_toml_is_a_config_error(cli, prepared):
    (prepared / "mstage.toml").write_text('[retrieval]\noptimizer = "rmsprop"\n')
    result = cli("train-retrieval", *FAST)
    assert result.exit_code == 2
    assert "expected retrieval.optimizer in adagrad, sgd, adam, found 'rmsprop'" in result.stderr


# A learning rate this small leaves the towers at their random start: on the fixture data its
# validation recall@20 (0.16) stays below popularity's (0.20).
RANDOM = ["--epochs", "1", "--learning-rate", "1e-9", "--batch-size", "64"]
GATE = re.compile(r"expected validation recall@20 above popularity's (\d\.\d{4}), "
                  r"found (\d\.\d{4}); the previous retrieval artifact is kept; "
                  r"check --learning-rate/--temperature, or publish anyway with --force")


def _published(ws: Workspace):
    directory = ws.path(Artifact.RETRIEVAL)
    return ws.record(Artifact.RETRIEVAL), (directory / "params.json").read_bytes(), \
        (directory / "item_embeddings.parquet").read_bytes()


def test_model_below_popularity_on_validation_is_not_published(cli, prepared):
    assert cli("train-retrieval", *FAST).exit_code == 0
    ws = Workspace(prepared)
    before = _published(ws)
    result = cli("train-retrieval", *RANDOM)
    assert result.exit_code == 1, result.stderr
    found = GATE.search(result.stderr)
    assert found, result.stderr
    popularity, model = map(float, found.groups())
    assert model < popularity
    assert popularity == pytest.approx(
        before[0]["metrics"]["validation_popularity_recall@20"], abs=1e-4)
    assert _published(ws) == before  # the artifact and its manifest record, unchanged
    assert not list((prepared / ".staging").iterdir())


def test_force_publishes_a_model_below_popularity_with_a_warning(cli, prepared):
    result = cli("train-retrieval", *RANDOM, "--force", "--json")
    assert result.exit_code == 0, result.stderr
    assert "published anyway (--force)" in result.stderr
    assert json.loads(result.stdout)["quality_gate"] == "forced"
    metrics = Workspace(prepared).record(Artifact.RETRIEVAL)["metrics"]
    assert metrics["quality_gate"] == "forced"
    assert metrics["validation_recall@20"] < metrics["validation_popularity_recall@20"]


def test_too_few_validation_users_skip_the_gate_with_a_note(cli, isolated_workspace):
    publish_prepared(isolated_workspace, n_users=20, n_items=25, per_user=5)
    result = cli("train-retrieval", *RANDOM)
    assert result.exit_code == 0, result.stderr
    assert "quality gate skipped" in result.stderr
    metrics = Workspace(isolated_workspace).record(Artifact.RETRIEVAL)["metrics"]
    assert metrics["quality_gate"] == "skipped"


EPOCH_LINE = re.compile(r"^train-retrieval: validation epoch \d+/3 loss \d+(\.\d+)? "
                        r"val_recall@20 \d(\.\d+)?(: done)? \(\d+\.\d s\)$", re.MULTILINE)


def test_progress_without_a_terminal_is_plain_lines_per_epoch(cli, prepared):
    result = cli("train-retrieval", *FAST)  # the cli fixture's stderr is not a terminal
    assert result.exit_code == 0, result.stderr
    assert EPOCH_LINE.search(result.stderr), result.stderr
    assert "train-retrieval: validation epoch 3/3 loss" in result.stderr
    assert re.search(r"^train-retrieval: refit epoch \d+/\d+ loss \S+: done \(\d+\.\d s\)$",
                     result.stderr, re.MULTILINE), result.stderr


def test_quiet_prints_no_progress(cli, prepared):
    result = cli("train-retrieval", *FAST, "--quiet")
    assert result.exit_code == 0, result.stderr
    assert "epoch" not in result.stderr
