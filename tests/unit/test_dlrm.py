"""DLRM ranking: forward pass against a numpy oracle, learning planted structure, export
round trip in a fresh process, raw-feature scoring, and the errors users can hit."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
from cli_runner import run_python

from mstage.config import RankingConfig
from mstage.data.schema import Feature, PreparedData, Schema, write_prepared
from mstage.data.split import assign_folds
from mstage.errors import ConfigError, InputError, TrainingDiverged
from mstage.models.dlrm import RankingScorer, build_dlrm
from mstage.models.encoders import FeatureSpec
from mstage.training.ranking import ItemRateBaseline, Rows, fit_ranking

FAST = RankingConfig(epochs=6, batch_size=256, embedding_dim=8, seed=1)


def write_planted(root, labelled=True, n_users=300, n_items=120, per_user=40, seed=0,
                  clicks=None):
    """Prepared data where a click depends on whether the user's age group matches the item's
    category (logit -3 + 3 * match + 0.5 * quality): an item's CTR alone ranks poorly, the
    user x item interaction ranks well. `clicks` overrides every label (degenerate data)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    preference = rng.integers(0, 3, n_users)
    category = rng.integers(0, 3, n_items)
    quality = rng.normal(0, 1, n_items)
    users = pd.DataFrame({"user_id": np.arange(1, n_users + 1, dtype=np.int64) * 10,
                          "age_group": np.array(["young", "mid", "old"])[preference],
                          "region": rng.choice(["north", "south"], n_users)})
    items = pd.DataFrame({"item_id": np.arange(1, n_items + 1, dtype=np.int64) + 1000,
                          "category": np.array(["c0", "c1", "c2"])[category],
                          "price": rng.uniform(1, 100, n_items),
                          "tags": [[f"t{c}", f"q{int(q > 0)}"]
                                   for c, q in zip(category, quality, strict=True)]})
    u = np.repeat(np.arange(n_users), per_user)
    i = rng.integers(0, n_items, len(u))
    logit = -3.0 + 3.0 * (preference[u] == category[i]) + 0.5 * quality[i]
    label = (rng.random(len(u)) < 1 / (1 + np.exp(-logit))).astype(np.int8)
    if clicks is not None:
        label[:] = clicks
    interactions = pd.DataFrame({
        "user_id": users["user_id"].to_numpy()[u], "item_id": items["item_id"].to_numpy()[i],
        "timestamp": 1_700_000_000 + np.tile(np.arange(per_user, dtype=np.int64), n_users) * 60,
        "label": label})
    if not labelled:
        interactions = interactions[interactions["label"] == 1]
    return write_prepared(
        root, assign_folds(interactions.reset_index(drop=True)), users, items,
        Schema([Feature("age_group", "categorical"), Feature("region", "categorical")],
               [Feature("category", "categorical"), Feature("price", "numeric"),
                Feature("tags", "multi")], has_label=labelled))


def write_drifting(root, n_users=300, n_items=120, clusters=6, block=10, blocks=4, seed=0):
    """Implicit data where taste drifts: each user's positives come in blocks of `block`
    items from one cluster (item id mod `clusters`), a fresh random cluster per block. The
    user's id and features say little about the current block; their latest items say it."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    users = pd.DataFrame({"user_id": np.arange(1, n_users + 1, dtype=np.int64)})
    items = pd.DataFrame({"item_id": np.arange(n_items, dtype=np.int64) + 1000,
                          "price": rng.uniform(1, 100, n_items)})
    per_user = block * blocks
    cluster = np.repeat(rng.integers(0, clusters, (n_users, blocks)), block, axis=1).ravel()
    item = cluster + clusters * rng.integers(0, n_items // clusters, len(cluster))
    interactions = pd.DataFrame({
        "user_id": np.repeat(users["user_id"].to_numpy(), per_user), "item_id": item + 1000,
        "timestamp": 1_700_000_000 + np.tile(np.arange(per_user, dtype=np.int64), n_users),
        "label": np.ones(len(item), np.int8)}).drop_duplicates(["user_id", "item_id"])
    return write_prepared(root, assign_folds(interactions.reset_index(drop=True)), users, items,
                          Schema([], [Feature("price", "numeric")], has_label=False))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One model trained on labelled planted data, exported; shared by several tests."""
    root = tmp_path_factory.mktemp("ranking")
    data = PreparedData(write_planted(root / "data"))
    metrics = fit_ranking(data, FAST, root / "model").metrics()
    return data, metrics, root / "model"


# network ----------------------------------------------------------------------------------
def _oracle_logits(model, specs, x):
    """The DLRM forward pass in numpy from the model's own weights."""
    weights = {w.path: np.asarray(w.numpy()) for w in model.weights}

    def dense(h, layer):
        return h @ weights[f"{layer}/kernel"] + weights[f"{layer}/bias"]

    denses = sorted({p.split("/")[0] for p in weights if p.startswith("dense")},
                    key=lambda n: int(n.split("_")[-1]) if n != "dense" else 0)
    numeric = [x[s.name][:, None] for s in specs if s.kind == "numeric"]
    h = np.concatenate(numeric + [np.ones((len(x["user_id"]), 1), np.float32)], axis=1)
    h = np.maximum(dense(h, denses[0]), 0)  # bottom hidden (64, relu)
    bottom = dense(h, "bottom_out")
    vectors, extra = [bottom], []
    for s in specs:
        if s.kind in ("numeric", "history"):
            continue
        table = weights[f"emb_{s.name}/embeddings"]
        if s.kind == "multi":
            mask = (x[s.name] > 0)[..., None]
            vectors.append((table[x[s.name]] * mask).sum(1) / np.maximum(mask.sum(1), 1))
        else:
            vectors.append(table[x[s.name]])
    if "history" in x:  # target attention, mean and the closest history item
        table = weights["emb_item_id/embeddings"]
        h, target, mask = table[x["history"]], table[x["item_id"]], x["history"] > 0
        affinity = np.einsum("bld,bd->bl", h, target) / np.sqrt(target.shape[1])
        e = np.where(mask, np.exp(affinity - affinity.max(1, keepdims=True)), 0)
        weight = e / np.maximum(e.sum(1, keepdims=True), 1e-30)
        vectors += [np.einsum("bl,bld->bd", weight, h),
                    (h * mask[..., None]).sum(1) / np.maximum(mask.sum(1), 1)[:, None]]
        extra.append(np.where(mask.any(1), np.where(mask, affinity, -np.inf).max(1), 0)[:, None])
    v = np.stack(vectors, axis=1)
    gram = np.einsum("bfd,bgd->bfg", v, v)
    i, j = np.triu_indices(len(vectors), k=1)
    top = np.concatenate([bottom, gram[:, i, j], *extra], axis=1)
    for layer in denses[1:-1]:
        top = np.maximum(dense(top, layer), 0)
    return dense(top, denses[-1])[:, 0]


@pytest.mark.slow
def test_forward_pass_matches_numpy_oracle():
    specs = [FeatureSpec("user_id", "id", "int64", (), 5),
             FeatureSpec("price", "numeric", "float32", (), 0),
             FeatureSpec("item_id", "id", "int64", (), 7),
             FeatureSpec("tags", "multi", "int64", (3,), 4)]
    model = build_dlrm(specs, embedding_dim=4)
    x = {"user_id": np.array([1, 4, 0]), "price": np.array([0.5, -1.0, 2.0], np.float32),
         "item_id": np.array([6, 2, 0]),
         "tags": np.array([[1, 3, 0], [0, 0, 0], [2, 2, 1]])}  # row 2: no tags -> zero vector
    got = np.asarray(model(x))
    # 4 vectors (bottom, user, item, tags) -> 6 pairwise dots; top input 4 + 6 = 10 wide.
    assert (10, 128) in [tuple(w.shape) for w in model.weights]
    np.testing.assert_allclose(got, _oracle_logits(model, specs, x), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_forward_pass_with_history_matches_numpy_oracle():
    specs = [FeatureSpec("user_id", "id", "int64", (), 5),
             FeatureSpec("item_id", "id", "int64", (), 7),
             FeatureSpec("history", "history", "int64", (3,), 7)]
    model = build_dlrm(specs, embedding_dim=4)
    x = {"user_id": np.array([1, 4, 0]), "item_id": np.array([6, 2, 0]),
         "history": np.array([[3, 5, 0], [0, 0, 0], [2, 2, 1]])}  # row 1: empty history
    # 5 vectors (bottom, user, item, attended, mean) -> 10 dots; top input 4 + 10 + 1 = 15.
    assert (15, 128) in [tuple(w.shape) for w in model.weights]
    np.testing.assert_allclose(np.asarray(model(x)), _oracle_logits(model, specs, x),
                               rtol=1e-4, atol=1e-5)


def test_item_rate_baseline_hand_computed():
    rows = Rows(np.zeros(5, int), np.array([0, 0, 0, 1, 1]),
                np.array([1, 1, 0, 0, 0], np.float32))
    baseline = ItemRateBaseline(rows, n_item_rows=3, prior_weight=10.0)
    # prior = 2/5 = 0.4; item 0: (2 + 4) / (3 + 10); item 1: (0 + 4) / 12; item 2: 4/10.
    np.testing.assert_allclose(baseline.rate, [6 / 13, 4 / 12, 0.4])
    assert baseline.popularity.tolist() == [2, 0, 0]


# training ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_learns_planted_interaction_beyond_item_ctr(trained):
    _, metrics, _ = trained
    # Item CTR only sees quality (~0.6 AUC); user x category match gives ~0.8.
    assert metrics["test_auc"] > 0.72
    assert metrics["test_auc"] > metrics["baseline_auc"] + 0.08
    assert metrics["test_log_loss"] < metrics["baseline_log_loss"]
    assert metrics["baseline"] == "item CTR (smoothed)"
    assert 1 <= metrics["epochs_trained"] <= FAST.epochs
    assert [h["epoch"] for h in metrics["history"]][0] == 1


@pytest.mark.slow
def test_implicit_data_samples_negatives_and_beats_popularity(tmp_path):
    data = PreparedData(write_planted(tmp_path / "data", labelled=False))
    metrics = fit_ranking(data, FAST, tmp_path / "model").metrics()
    # 4 negatives per positive, some dropped only for saturated users: ~1/5 positives.
    assert 0.19 < metrics["test_positives"] / metrics["test_rows"] <= 0.2
    assert metrics["labels"] == "4 sampled negatives"
    assert metrics["test_auc"] > 0.7
    assert metrics["test_auc"] > metrics["baseline_auc"] + 0.1


@pytest.mark.slow
def test_history_tells_the_ranker_what_the_user_is_into_now(tmp_path):
    data = PreparedData(write_drifting(tmp_path / "data"))
    with_history = fit_ranking(data, dataclasses.replace(FAST, history=10),
                               tmp_path / "with").metrics()
    without = fit_ranking(data, FAST, tmp_path / "without")
    # Measured 0.81 with the history, 0.68 without (popularity 0.48); a sixth of the sampled
    # negatives share the current cluster, so even a perfect reading of it stays below 1.
    assert with_history["test_auc"] > without.test_auc + 0.08
    assert with_history["test_auc"] > 0.75
    params = json.loads((tmp_path / "with" / "params.json").read_text())
    assert params["history"] == 10 and params["inputs"][-1] == {
        "name": "history", "kind": "history", "dtype": "int64", "shape": ["b", 10],
        "cardinality": params["inputs"][1]["cardinality"]}  # the item_id vocabulary


@pytest.mark.slow
def test_export_layout_and_params(trained):
    _, metrics, model_dir = trained
    params = json.loads((model_dir / "params.json").read_text())
    assert (model_dir / "saved_model" / "saved_model.pb").is_file()
    assert (model_dir / "encoders" / "encoders.json").is_file()
    names = [i["name"] for i in params["inputs"]]
    assert names == ["user_id", "age_group", "region", "item_id", "category", "price", "tags"]
    assert params["inputs"][-1]["shape"] == ["b", 2] and params["history"] == 0
    assert params["epochs_trained"] == metrics["epochs_trained"]
    assert not list(model_dir.rglob("*.pkl")) and not list(model_dir.rglob("*.pickle"))


def _raw_rows(data, n=50):
    frame = data.interactions.head(n)
    users = data.users.set_index("user_id").loc[frame["user_id"]].reset_index()
    items = data.items.set_index("item_id").loc[frame["item_id"]].reset_index()
    return ({c: users[c].to_numpy() for c in users.columns},
            {c: items[c].to_numpy() for c in items.columns})


@pytest.mark.slow
def test_reloaded_in_a_fresh_process_gives_the_same_scores(trained, tmp_path):
    data, _, model_dir = trained
    user_features, item_features = _raw_rows(data)
    scores = RankingScorer.load(model_dir).score(user_features, item_features)
    np.savez(tmp_path / "rows.npz", user_id=user_features["user_id"],
             item_id=item_features["item_id"])
    code = (
        "import sys, numpy as np, pandas as pd\n"
        "from mstage.models.dlrm import RankingScorer\n"
        f"rows = np.load({str(tmp_path / 'rows.npz')!r})\n"
        f"data = {str(model_dir.parent / 'data')!r}\n"
        "u = pd.read_parquet(data + '/users.parquet').set_index('user_id').loc[rows['user_id']]\n"
        "i = pd.read_parquet(data + '/items.parquet').set_index('item_id').loc[rows['item_id']]\n"
        f"s = RankingScorer.load({str(model_dir)!r}).score(u.reset_index(), i.reset_index())\n"
        f"np.save({str(tmp_path / 'scores.npy')!r}, s)\n"
    )
    run_python("-c", code)
    fresh = np.load(tmp_path / "scores.npy")
    assert fresh.shape == (50,) and fresh.dtype == np.float32
    np.testing.assert_allclose(fresh, scores, rtol=1e-6)
    assert ((scores > 0) & (scores < 1)).all()


@pytest.mark.slow
def test_lite_export_scores_like_the_saved_model(trained):
    import tensorflow as tf

    data, _, model_dir = trained
    scorer = RankingScorer.load(model_dir)  # runs ranker.tflite, without TensorFlow
    user_features, item_features = _raw_rows(data, n=300)
    encoded = {**scorer.encoders.encode_users(user_features),
               **scorer.encoders.encode_items(item_features)}
    saved = tf.saved_model.load(str(model_dir / "saved_model")).signatures["serving_default"]
    want = saved(**{k: tf.constant(v) for k, v in encoded.items()})["probability"].numpy()
    np.testing.assert_allclose(scorer.score_encoded(encoded), want, atol=1e-6)


@pytest.mark.slow
def test_concurrent_calls_score_like_sequential_ones(trained):
    from concurrent.futures import ThreadPoolExecutor

    data, _, model_dir = trained
    scorer = RankingScorer.load(model_dir)
    user_features, item_features = _raw_rows(data, n=300)
    encoded = {**scorer.encoders.encode_users(user_features),
               **scorer.encoders.encode_items(item_features)}
    parts = [{k: v[i::7] for k, v in encoded.items()} for i in range(7)]  # 7 batch sizes
    expected = [scorer.score_encoded(p) for p in parts]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(scorer.score_encoded, parts * 20))
    for i, scores in enumerate(got):
        np.testing.assert_array_equal(scores, expected[i % 7])


@pytest.mark.slow
def test_scorer_raw_features_one_user_and_unknown_values(trained):
    data, _, model_dir = trained
    scorer = RankingScorer.load(model_dir)
    user_features, item_features = _raw_rows(data, n=5)
    one_user = {k: v[:1] for k, v in user_features.items()}
    broadcast = scorer.score(one_user, item_features)
    repeated = scorer.score({k: np.repeat(v[:1], 5) for k, v in user_features.items()},
                            item_features)
    np.testing.assert_allclose(broadcast, repeated, rtol=1e-6)
    catalog = scorer.encode_items(item_features)
    subset = scorer.score_with_encoded_items(one_user, {k: v[[4, 1]] for k, v in catalog.items()})
    np.testing.assert_allclose(subset, broadcast[[4, 1]], rtol=1e-6)
    # "a|b" strings and lists encode the same multi-valued cell.
    as_strings = dict(item_features, tags=np.array(["|".join(t) for t in item_features["tags"]]))
    np.testing.assert_allclose(scorer.score(one_user, as_strings), broadcast, rtol=1e-6)
    # Unseen user id and category still score (index 0 = unknown), never crash.
    cold = {"user_id": np.array([999_999]), "age_group": np.array(["martian"]),
            "region": np.array([None], dtype=object)}
    assert np.isfinite(scorer.score(cold, item_features)).all()


@pytest.mark.slow
def test_scorer_rejects_mismatched_rows_and_missing_columns(trained):
    data, _, model_dir = trained
    scorer = RankingScorer.load(model_dir)
    user_features, item_features = _raw_rows(data, n=5)
    with pytest.raises(InputError, match=r"expected user features for 1 or 5 rows .* found 3"):
        scorer.score({k: v[:3] for k, v in user_features.items()}, item_features)
    with pytest.raises(InputError, match="expected columns price"):
        scorer.score(user_features, {k: v for k, v in item_features.items() if k != "price"})


def test_load_without_model_names_the_command(tmp_path):
    with pytest.raises(InputError, match=r"run `mstage train-ranking` first"):
        RankingScorer.load(tmp_path)


# errors -----------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [0, 1])
def test_one_class_labels_stop_with_an_explanation(tmp_path, value):
    data = PreparedData(write_planted(tmp_path / "data", n_users=30, per_user=10, clicks=value))
    with pytest.raises(InputError, match=rf"found all \d+ rows labelled {value}; a click model"):
        fit_ranking(data, FAST, tmp_path / "model")
    assert not (tmp_path / "model").exists()


@pytest.mark.slow
def test_nan_loss_advises_a_lower_learning_rate(tmp_path):
    data = PreparedData(write_planted(tmp_path / "data", n_users=60, per_user=20))
    config = RankingConfig(epochs=3, batch_size=64, learning_rate=1e30, optimizer="sgd")
    with pytest.raises(TrainingDiverged, match=r"finite training loss.*lower --learning-rate"):
        fit_ranking(data, config, tmp_path / "model")


@pytest.mark.parametrize(("field", "value", "message"), [
    ("optimizer", "rmsprop", "expected ranking.optimizer in adagrad, adam, sgd"),
    ("split", "random", "expected ranking.split in user-temporal, global"),
])
def test_bad_config_values(tmp_path, field, value, message):
    data = PreparedData(write_planted(tmp_path / "data", n_users=30, per_user=10))
    with pytest.raises(ConfigError, match=message):
        fit_ranking(data, RankingConfig(**{field: value}), tmp_path / "model")


def write_exposed(root, n_users=300, n_items=120, per_user=40, seed=0):
    """Labelled data where being shown and being clicked pull apart: 80 % of a user's
    impressions come from their preferred category (the rest uniform), but a shown item of
    that category is clicked less often (logit -1 - 2 * match + 0.5 * quality)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    preference = rng.integers(0, 3, n_users)
    category = np.arange(n_items) % 3
    quality = rng.normal(0, 1, n_items)
    users = pd.DataFrame({"user_id": np.arange(1, n_users + 1, dtype=np.int64),
                          "age_group": np.array(["young", "mid", "old"])[preference]})
    items = pd.DataFrame({"item_id": np.arange(n_items, dtype=np.int64) + 1000,
                          "category": np.array(["c0", "c1", "c2"])[category]})
    u = np.repeat(np.arange(n_users), per_user)
    preferred = preference[u] + 3 * rng.integers(0, n_items // 3, len(u))
    i = np.where(rng.random(len(u)) < 0.8, preferred, rng.integers(0, n_items, len(u)))
    logit = -1.0 - 2.0 * (preference[u] == category[i]) + 0.5 * quality[i]
    interactions = pd.DataFrame({
        "user_id": users["user_id"].to_numpy()[u], "item_id": items["item_id"].to_numpy()[i],
        "timestamp": 1_700_000_000 + np.tile(np.arange(per_user, dtype=np.int64), n_users) * 60,
        "label": (rng.random(len(u)) < 1 / (1 + np.exp(-logit))).astype(np.int8)})
    return write_prepared(
        root, assign_folds(interactions), users, items,
        Schema([Feature("age_group", "categorical")], [Feature("category", "categorical")],
               has_label=True)), preference


@pytest.mark.slow
def test_the_served_score_is_shown_and_clicked_not_the_click_rate(tmp_path):
    """The click head learns P(click | shown): low for the category a user is mostly shown.
    The served score also learns what the user is shown, and puts that category first."""
    from mstage.evaluation.metrics import auc

    root, preference = write_exposed(tmp_path / "data")
    data = PreparedData(root)
    metrics = fit_ranking(data, FAST, tmp_path / "model").metrics()
    scorer = RankingScorer.load(tmp_path / "model")
    users, items = data.users.set_index("user_id"), data.items.set_index("item_id")

    def served(user_ids, item_ids):
        u, i = users.loc[user_ids].reset_index(), items.loc[item_ids].reset_index()
        return scorer.score({c: u[c].to_numpy() for c in u.columns},
                            {c: i[c].to_numpy() for c in i.columns})

    # Measured: the click head 0.73 on test impressions, the served score 0.37.
    test = data.interactions[data.fold("user-temporal") == 2]
    assert metrics["test_auc"] > 0.68
    on_impressions = auc(test["label"].to_numpy(),
                         served(test["user_id"].to_numpy(), test["item_id"].to_numpy()))
    assert on_impressions < metrics["test_auc"] - 0.2
    # Every user against the whole catalog: the preferred category scores higher.
    user_ids, item_ids = users.index.to_numpy(), items.index.to_numpy()
    scores = served(np.repeat(user_ids, len(item_ids)), np.tile(item_ids, len(user_ids)))
    scores = scores.reshape(len(user_ids), len(item_ids))
    match = preference[:, None] == (np.arange(len(item_ids)) % 3)[None, :]
    preferred = np.nanmean(np.where(match, scores, np.nan), axis=1)
    other = np.nanmean(np.where(match, np.nan, scores), axis=1)
    assert np.mean(preferred > other) > 0.95
    assert json.loads((tmp_path / "model" / "params.json").read_text())["heads"] == [
        "exposure", "click"]
