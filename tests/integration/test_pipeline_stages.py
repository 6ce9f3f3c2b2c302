"""The four stage operators on a real small workspace, each against an independent oracle."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from pipeline_workspace import known_and_unknown_users

from mstage.columns import PAD
from mstage.config import Config, FilteringConfig, OrderingConfig
from mstage.pipeline.ordering import blended_score, top_k
from mstage.pipeline.recommender import Recommender
from mstage.pipeline.stage import Stage
from mstage.workspace import Artifact, Workspace

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def recommender(pipeline_workspace):
    return Recommender.from_workspace(Workspace(pipeline_workspace), Config(), candidates=60)


@pytest.fixture(scope="module")
def users(pipeline_workspace):
    known, unknown = known_and_unknown_users(pipeline_workspace)
    return np.array(known[:20] + [unknown], dtype=np.int64)


def stage(recommender, name):
    return recommender.plan.stage(name)


def exact_retrieval(workspace, users):
    """An independent oracle of the retrieval stage: (which users are cold, the query
    tower's inner products with every item [users, items], the item ids, each user's recent
    items)."""
    from mstage.features.online import OnlineFeatures
    from mstage.models.two_tower import load_query_tower

    items = pd.read_parquet(workspace / "retrieval" / "item_embeddings.parquet")
    table = np.stack(items["embedding"].to_numpy()).astype(np.float32)
    tower = load_query_tower(workspace / "retrieval")
    features = OnlineFeatures.open(workspace / "features").users(users)
    # users without a trained id (no train clicks) and users the store lacks are cold
    cold = ~(features.pop("found") & (tower.encoders.user_ids.lookup(users) > 0))
    recent = features.pop("recent_items")  # the query tower reads the user's recent items
    return cold, tower(features, recent) @ table.T, items["item_id"].to_numpy(), recent


def assert_best_allowed(out, row, scores, ids, excluded, n):
    """The row's candidates are the best n items outside `excluded`, with their scores."""
    allowed = ~np.isin(ids, list(excluded))
    best = np.flatnonzero(allowed)[np.argsort(-scores[allowed], kind="stable")][:n]
    np.testing.assert_allclose(out["retrieval_scores"][row], scores[best], atol=1e-4)
    assert set(out["candidate_ids"][row]) == set(ids[best])


def test_retrieval_is_exact_inner_product_top_n(recommender, users, pipeline_workspace):
    out = stage(recommender, "retrieval")({"user_id": users})
    cold, scores, ids, recent = exact_retrieval(pipeline_workspace, users)
    assert out["cold_start"].tolist() == cold.astype(int).tolist()
    assert cold[-1] and (~cold).sum() >= 10
    # the search skips what filtering would drop: the user's recent items, out-of-stock ones
    catalog = pd.read_parquet(pipeline_workspace / "data" / "items.parquet")
    out_of_stock = set(catalog.loc[catalog["in_stock"] == 0, "item_id"])
    for row in np.flatnonzero(~cold):
        assert_best_allowed(out, row, scores[row], ids, out_of_stock | set(recent[row]), 60)
    # cold users get the most popular items, best first
    popular = stage(recommender, "retrieval").arrays["popular"][:60]
    for row in np.flatnonzero(cold):
        assert out["candidate_ids"][row].tolist() == popular.tolist()


def test_retrieval_searches_further_when_the_excluded_items_fill_its_first_results(
        recommender, users, pipeline_workspace):
    """Excluded items can crowd the top of a user's search (items never trained on share
    their features' embedding); the stage must still return the best n allowed items."""
    retrieval = stage(recommender, "retrieval")
    cold, scores, ids, recent = exact_retrieval(pipeline_workspace, users)
    row = int(np.flatnonzero(~cold)[0])
    # 10 candidates: the first search fetches 10 + 50 (recent) + 40 (4n) = 100 of the 150
    # items, of which the 95 best are excluded here
    crowd = ids[np.argsort(-scores[row], kind="stable")[:95]]
    narrow = type(retrieval)({**retrieval.params, "candidates": 10},
                             {**retrieval.arrays, "excluded": np.sort(crowd)}, retrieval.sources)
    out = narrow({"user_id": users[[row]]})
    assert (out["candidate_ids"][0] != PAD).all()
    assert_best_allowed(out, 0, scores[row], ids, set(crowd) | set(recent[row]), 10)


def test_filtering_drops_seen_and_out_of_stock(recommender, users, pipeline_workspace):
    columns, _ = recommender.pipeline.run({"user_id": users})
    items = pd.read_parquet(pipeline_workspace / "data" / "items.parquet")
    out_of_stock = set(items.loc[items["in_stock"] == 0, "item_id"])
    assert out_of_stock, "the generated catalog should have out-of-stock items"
    for row in range(len(users)):
        kept = set(columns["filtered_ids"][row][columns["filtered_ids"][row] != PAD].tolist())
        seen = set(columns["recent_items"][row][columns["recent_items"][row] != PAD].tolist())
        assert kept and not kept & seen and not kept & out_of_stock


def test_scoring_equals_the_ranker_on_raw_features(recommender, users, pipeline_workspace):
    from mstage.features.online import OnlineFeatures
    from mstage.models.dlrm import RankingScorer

    columns, _ = recommender.pipeline.run({"user_id": users[:3]})
    store = OnlineFeatures.open(pipeline_workspace / "features")
    scorer = RankingScorer.load(pipeline_workspace / "ranking")
    for row in range(3):
        ids = columns["filtered_ids"][row]
        ids = ids[ids != PAD]
        user = store.users(users[row : row + 1])
        user.pop("found")
        recent = user.pop("recent_items")  # what the query read, and the ranker beside it
        np.testing.assert_array_equal(columns["query_history"][row : row + 1],
                                      recent[:, : columns["query_history"].shape[1]])
        item = store.items(ids)
        item.pop("found")
        expected = scorer.score(user, item, history=recent)
        np.testing.assert_allclose(columns["ranking_scores"][row][: len(ids)], expected,
                                   rtol=1e-5, atol=1e-6)


def test_ordering_is_top_k_of_ranking_scores(recommender, users, pipeline_workspace):
    # the blend weight is the one train-ranking chose on validation and recorded
    metrics = Workspace(pipeline_workspace).record(Artifact.RANKING)["metrics"]
    weight = stage(recommender, "ordering").params["retrieval_weight"]
    assert weight == metrics["retrieval_weight"]
    ndcg = metrics["blend_ndcg@10"]
    best = min((float(w) for w in ndcg if ndcg[w] == max(ndcg.values())))
    assert weight >= best  # the one-standard-error rule leans on retrieval, never less
    result = recommender.recommend(users, 7, explain=True)
    columns, _ = recommender.pipeline.run({"user_id": users})
    blended = blended_score(columns["ranking_scores"], columns["filtered_scores"], weight)
    ids, scores = top_k(columns["filtered_ids"], blended, 7)
    np.testing.assert_array_equal(result.item_ids, ids)
    np.testing.assert_allclose(result.scores, scores)
    cold_or_refilled = (columns["cold_start"] > 0) | (columns["refilled"] > 0)
    assert result.fallback.tolist() == cold_or_refilled.tolist() and result.fallback[-1]
    first = result.explain[0][0]
    # blended = logit(p) + weight * retrieval score, from the explained components
    p, r = first["ranking_score"], first["retrieval_score"]
    assert first["rank"] == 1
    assert np.log(p / (1 - p)) + weight * r == pytest.approx(scores[0, 0], rel=1e-4)


def test_a_configured_retrieval_weight_overrides_the_chosen_one(pipeline_workspace):
    config = Config(ordering=OrderingConfig(retrieval_weight=0.0))
    plan = Recommender.from_workspace(Workspace(pipeline_workspace), config).plan
    assert plan.stage("ordering").params["retrieval_weight"] == 0.0


def test_saved_stages_load_anywhere_and_answer_alike(recommender, users, tmp_path):
    columns, _ = recommender.pipeline.run({"user_id": users})
    batch = dict(columns)
    for name, op in recommender.plan.stages:
        op.save(tmp_path / name)
        copy = Stage.restore(tmp_path / name)
        fresh = copy({s.name: batch[s.name] for s in copy.inputs if s.name in batch})
        expected = op({s.name: batch[s.name] for s in op.inputs if s.name in batch})
        for key, value in expected.items():
            np.testing.assert_allclose(fresh[key], value, rtol=1e-6, err_msg=f"{name}.{key}")


def test_category_rule_and_seen_override(pipeline_workspace, users):
    items = pd.read_parquet(pipeline_workspace / "data" / "items.parquet")
    banned = items["category"].value_counts().index[0]
    config = Config(filtering=FilteringConfig(exclude_categories=[banned]))
    rec = Recommender.from_workspace(Workspace(pipeline_workspace), config, candidates=60)
    seen = [items["item_id"].to_numpy()[:5]] * len(users)
    result = rec.recommend(users, 10, seen=seen)
    category = items.set_index("item_id")["category"]
    for row in result.item_ids:
        real = row[row != PAD]
        assert len(real) == 10
        assert banned not in set(category[real]) and not set(real) & set(seen[0])


def test_only_items_restricts_what_is_recommended(pipeline_workspace, users):
    """Offline evaluation recommends from the train catalog only, as every other model does:
    the other items are never retrieved, refilled or returned."""
    items = pd.read_parquet(pipeline_workspace / "data" / "items.parquet")["item_id"].to_numpy()
    allowed = items[::3]
    rec = Recommender.from_workspace(Workspace(pipeline_workspace), Config(), candidates=60,
                                     only_items=allowed)
    result = rec.recommend(users, 10)
    assert (result.item_ids != PAD).sum(axis=1).min() == 10
    assert set(result.item_ids[result.item_ids != PAD]) <= set(allowed)
    assert set(rec.plan.stage("filtering").arrays["popular_allowed"]) <= set(allowed)
