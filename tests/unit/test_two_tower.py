"""Two-tower model: loss against a numpy oracle, learning on clustered data, export parity."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from cli_runner import run_python
from retrieval_data import write_prepared

from mstage.config import RetrievalConfig
from mstage.data.schema import PreparedData
from mstage.errors import TrainingDiverged
from mstage.models.retrieval_artifact import ITEM_EMBEDDINGS
from mstage.models.two_tower import load_query_tower
from mstage.training.retrieval import fit_retrieval

pytestmark = pytest.mark.slow

SMALL = RetrievalConfig(epochs=6, batch_size=64, embedding_dim=16, learning_rate=0.1,
                        temperature=0.1, patience=2)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return PreparedData(write_prepared(tmp_path_factory.mktemp("prepared") / "data"))


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("retrieval")
    return fit_retrieval(data, SMALL, out), out


def _softmax_oracle(q, c, ids, log_q, t):
    logits = q @ c.T / t - log_q[None, :]
    same = (ids[:, None] == ids[None, :]) & ~np.eye(len(ids), dtype=bool)
    logits = np.where(same, -1e9, logits)
    logits -= logits.max(axis=1, keepdims=True)
    log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return -np.mean(np.diag(log_p))


def test_in_batch_loss_matches_numpy_oracle():
    import tensorflow as tf

    from mstage.models.two_tower import in_batch_softmax_loss

    rng = np.random.default_rng(0)
    q = rng.normal(size=(4, 3)).astype(np.float32)
    c = rng.normal(size=(4, 3)).astype(np.float32)
    ids = np.array([7, 8, 7, 9])  # rows 0 and 2 share an item: masked for each other
    log_q = np.log(np.array([0.5, 0.25, 0.5, 0.25], dtype=np.float32))
    got = float(in_batch_softmax_loss(tf.constant(q), tf.constant(c), tf.constant(ids),
                                      tf.constant(log_q), 0.5))
    assert got == pytest.approx(_softmax_oracle(q, c, ids, log_q, 0.5), rel=1e-5)


def test_in_batch_loss_hand_computed_two_rows():
    import tensorflow as tf

    from mstage.models.two_tower import in_batch_softmax_loss

    # q = c = I (2x2), T = 1, no logQ: row logits [1, 0] and [0, 1];
    # loss = -log(e / (e + 1)) = log(1 + e^-1) = 0.31326
    eye = tf.eye(2)
    loss = in_batch_softmax_loss(eye, eye, tf.constant([1, 2]), tf.zeros(2), 1.0)
    assert float(loss) == pytest.approx(np.log1p(np.exp(-1.0)), rel=1e-6)


def test_learns_clusters_well_beyond_popularity(trained):
    run, _ = trained
    # clustered data: popularity recall@20 is ~0.16; a model that learns clusters is near 1
    assert run.test["recall@20"] >= 2 * run.popularity["recall@20"]
    assert run.test["ndcg@10"] > run.popularity["ndcg@10"]
    assert 1 <= run.best_epoch <= SMALL.epochs
    assert run.validation and all("recall@20" in v for v in run.validation)


def test_export_writes_every_item_and_params(trained, data):
    _, out = trained
    emb = pd.read_parquet(out / ITEM_EMBEDDINGS)
    assert sorted(emb["item_id"]) == sorted(data.items["item_id"])
    vectors = np.stack(emb["embedding"].to_numpy())
    assert vectors.shape == (len(data.items), 16)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    params = json.loads((out / "params.json").read_text())
    assert params["similarity"] == "inner_product" and params["embedding_dim"] == 16
    assert [i["name"] for i in params["query_inputs"]] == ["user_id", "region", "age"]


def test_query_tower_reloaded_in_fresh_process_matches(trained, data, tmp_path):
    _, out = trained
    users = data.users.head(5)
    tower = load_query_tower(out)
    expected = tower({"user_id": users["user_id"].to_numpy(),
                      "region": users["region"].to_numpy(), "age": users["age"].to_numpy()})
    encoded = tower.encode({c: users[c].to_numpy() for c in users.columns})
    np.savez(tmp_path / "encoded.npz", **encoded)
    script = (
        "import sys, numpy as np, tensorflow as tf\n"
        "m = tf.saved_model.load(sys.argv[1])\n"
        "x = dict(np.load(sys.argv[2], allow_pickle=False))\n"
        "e = m.signatures['serving_default'](**{k: tf.constant(v) for k, v in x.items()})\n"
        "np.save(sys.argv[3], e['embedding'].numpy())\n"
    )
    run_python("-c", script, out / "query_tower", tmp_path / "encoded.npz", tmp_path / "got.npy")
    got = np.load(tmp_path / "got.npy")
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert expected.shape == (5, 16)


def test_item_tower_export_matches_item_embeddings(trained, data):
    import tensorflow as tf

    from mstage.models.encoders import FeatureEncoders

    _, out = trained
    enc = FeatureEncoders.load(out / "encoders")
    items = data.items.head(4)
    model = tf.saved_model.load(str(out / "item_tower"))
    got = model.serving_default({k: tf.constant(v) for k, v in enc.encode_items(items).items()})
    table = pd.read_parquet(out / ITEM_EMBEDDINGS).set_index("item_id")
    want = np.stack(table.loc[items["item_id"], "embedding"].to_numpy())
    np.testing.assert_allclose(got["embedding"].numpy(), want, atol=1e-6)


def test_history_moves_the_query_and_unknown_items_are_ignored(trained, data):
    _, out = trained
    tower = load_query_tower(out)
    assert tower.history == SMALL.history > 0
    user = data.users.head(1)
    features = {c: user[c].to_numpy() for c in user.columns}
    items = data.items["item_id"].to_numpy()
    none = tower(features, np.full((1, 3), -1))
    some = tower(features, items[None, :3])
    assert not np.allclose(none, some)
    # ids the model never saw (and -1 padding) encode to 0: the same as no history at all
    np.testing.assert_allclose(tower(features, np.array([[10**12, -1, -1]])), none, atol=1e-6)
    np.testing.assert_allclose(tower(features), none, atol=1e-6)


def test_cold_user_gets_an_embedding(trained):
    _, out = trained
    tower = load_query_tower(out)
    emb = tower({"user_id": np.array([999_999]), "region": np.array(["nowhere"]),
                 "age": np.array([np.nan])})
    assert emb.shape == (1, 16) and np.isfinite(emb).all()


def test_same_seed_same_embeddings(data):
    from dataclasses import replace

    from mstage.training.retrieval import _Phase, tower_params

    phase = _Phase(data, np.arange(len(data.positives())), SMALL.history)
    config = replace(SMALL, learning_rate=0.1, seed=3)
    results = []
    for _ in range(2):
        model = phase.model(tower_params(SMALL), seed=3)
        phase.trainer(model, 64, config).epoch()
        results.append(model.user_embeddings(np.arange(10), phase.latest[:10]))
    np.testing.assert_array_equal(results[0], results[1])


def test_absurd_learning_rate_diverges_with_advice(data):
    from dataclasses import replace

    with pytest.raises(TrainingDiverged, match="lower --learning-rate .* raise --temperature"):
        fit_retrieval(data, replace(SMALL, learning_rate=1e30, epochs=2))


def test_batch_larger_than_data_is_shrunk_with_a_note(tmp_path):
    from dataclasses import replace

    small = PreparedData(write_prepared(tmp_path / "data", n_users=20, n_items=25, per_user=5))
    # 20 users x 5 positives; 4 train each (ceil(0.2*5) = 1 test) -> 80 train -> batch 64
    run = fit_retrieval(small, replace(SMALL, batch_size=4096, epochs=1))
    assert run.batch_size == 64
    assert any("--batch-size 4096 exceeds the 80 training positives; using 64" in n
               for n in run.notes)


def test_importing_the_module_does_not_import_tensorflow():
    code = ("import sys, mstage.models.two_tower, mstage.training.retrieval, "
            "mstage.training.ranking, mstage.models.encoders; print('tensorflow' in sys.modules)")
    out = run_python("-c", code, cwd=Path(__file__).parents[2])
    assert out.stdout.strip() == "False"


def test_early_stopping_scores_a_seeded_sample_of_validation_users(data):
    from dataclasses import replace

    sampled = fit_retrieval(data, replace(SMALL, epochs=2, validation_users=7),
                            validation_only=True)
    again = fit_retrieval(data, replace(SMALL, epochs=2, validation_users=7),
                          validation_only=True)
    assert sampled.validation_users == 7
    assert [v["recall@20"] for v in sampled.validation] == \
        [v["recall@20"] for v in again.validation]  # the same users, the same curve


def test_the_test_report_scores_a_seeded_sample_of_test_users(data):
    from dataclasses import replace

    config = replace(SMALL, epochs=1, test_users=5)
    sampled = fit_retrieval(data, config)
    assert sampled.test["users"] == 5 and sampled.metrics()["evaluated_users"] == 5
    assert fit_retrieval(data, config).test == sampled.test  # the same users, the same numbers
    everyone = fit_retrieval(data, replace(config, test_users=10_000))
    assert everyone.test["users"] > 5
