"""The pipeline row of `evaluate`: metrics computed from returned ids, against a fake recommender.

A fake that returns popularity's exact top-k must score exactly what `evaluate_scores` gives
popularity: the two paths of the evaluator agree.
"""

from dataclasses import dataclass, field

import numpy as np
import pytest
from retrieval_data import prepared_tables

from mstage.errors import InputError, UsageError
from mstage.evaluation.baselines import popularity
from mstage.evaluation.evaluate import (
    evaluate_recommendations,
    parse_ks,
    sample_users,
    seen_items,
)
from mstage.evaluation.metrics import PAD, top_k_columns
from mstage.evaluation.protocol import build_eval_set, evaluate_scores


@dataclass
class Timing:
    name: str
    seconds: float


@dataclass
class FakeRecommendations:
    item_ids: np.ndarray
    fallback: np.ndarray
    timings: list = field(default_factory=list)


@pytest.fixture(scope="module")
def eval_set():
    interactions, *_ = prepared_tables(n_users=60, n_items=40, per_user=10)
    return build_eval_set(interactions, "user-temporal", "test")


def popularity_fake(eval_set, calls):
    """Recommends by train count (ties to smaller id), excluding exactly the given seen ids."""
    counts = eval_set.item_counts.astype(np.float64)

    def recommend(user_ids, top_k, seen):
        calls.append((user_ids.copy(), top_k, seen))
        rows = np.repeat(np.arange(len(user_ids)), [len(s) for s in seen])
        cols = eval_set.columns_of(np.concatenate(seen))
        top = top_k_columns(np.tile(counts, (len(user_ids), 1)), top_k, rows, cols)
        ids = np.where(top == PAD, PAD, eval_set.catalog[np.maximum(top, 0)])
        return FakeRecommendations(ids, np.zeros(len(user_ids), bool),
                                   [Timing("retrieval", 0.5), Timing("scoring", 0.25)])

    return recommend


def test_ids_path_equals_score_path_for_popularity(eval_set):
    calls = []
    metrics, extras = evaluate_recommendations(eval_set, popularity_fake(eval_set, calls),
                                               [10, 20], batch_size=16)
    expected = evaluate_scores(eval_set, popularity(eval_set), [10, 20])
    assert metrics.keys() == expected.keys()
    for name, value in expected.items():
        assert metrics[name] == pytest.approx(value, abs=1e-12), name
    assert [len(u) for u, _, _ in calls] == [16, 16, 16, len(eval_set.users) - 48]
    assert {k for _, k, _ in calls} == {20}  # asked once for the largest k
    assert extras["stage_seconds"] == {"retrieval": 2.0, "scoring": 1.0}  # 4 batches
    assert extras["fallback_share"] == 0.0
    assert extras["outside_catalog"] == 0 and extras["duplicate_rows"] == 0


def test_seen_items_are_each_users_train_items(eval_set):
    users = eval_set.users[:3]
    seen = seen_items(eval_set, users)
    for user, items, relevant in zip(users, seen, eval_set.relevant[:3], strict=True):
        row = eval_set.train_rows(np.array([user]))[0]
        cols = eval_set.train_cols[eval_set.train_indptr[row]:eval_set.train_indptr[row + 1]]
        assert len(items) > 0 and np.array_equal(items, eval_set.catalog[cols])
        assert len(np.intersect1d(items, relevant)) == 0  # relevant = unseen test items


def test_short_lists_duplicates_outside_ids_and_fallback_are_counted(eval_set):
    relevant = eval_set.relevant
    outside = int(eval_set.catalog.max()) + 1000

    def recommend(user_ids, top_k, seen):
        ids = np.full((len(user_ids), 2), PAD, dtype=np.int64)  # short lists, padded to k
        ids[:, 0] = [relevant[list(eval_set.users).index(u)][0] for u in user_ids]
        ids[0, 1] = ids[0, 0]  # a duplicate in the first row of each batch
        ids[1, 1] = outside
        return FakeRecommendations(ids, np.arange(len(user_ids)) % 2 == 0)

    metrics, extras = evaluate_recommendations(eval_set, recommend, [1, 5], batch_size=1000)
    n = len(eval_set.users)
    sizes = eval_set.relevant_sets.sizes
    # Every user's first item is relevant: hit rate 1, recall@1 = mean(1 / |R|), NDCG@1 = 1.
    assert metrics["hitrate@1"] == 1.0 and metrics["ndcg@1"] == pytest.approx(1.0)
    assert metrics["recall@1"] == pytest.approx(np.mean(1.0 / sizes))
    assert extras["duplicate_rows"] == 1 and extras["outside_catalog"] == 1
    assert extras["fallback_share"] == pytest.approx(np.mean(np.arange(n) % 2 == 0))


def test_wrong_shape_from_the_recommender_is_an_input_error(eval_set):
    def recommend(user_ids, top_k, seen):
        return FakeRecommendations(np.zeros(5, dtype=np.int64), np.zeros(1, bool))

    with pytest.raises(InputError, match="expected recommended item ids of shape"):
        evaluate_recommendations(eval_set, recommend, [10])


def test_sampling_users_is_seeded_and_keeps_relevant_sets_aligned(eval_set):
    a, b = sample_users(eval_set, 10, seed=3), sample_users(eval_set, 10, seed=3)
    assert np.array_equal(a.users, b.users) and len(a.users) == 10
    full = dict(zip(eval_set.users.tolist(), eval_set.relevant, strict=True))
    for user, items in zip(a.users.tolist(), a.relevant, strict=True):
        assert np.array_equal(items, full[user])
    assert sample_users(eval_set, 10_000) is eval_set
    assert a.stats["sampled_users"] == 10


def test_cut_offs_must_be_positive():
    assert parse_ks([100, 10, 10]) == [10, 100]
    with pytest.raises(UsageError, match="expected cut-offs k >= 1, found \\[0\\]"):
        parse_ks([0])


def test_ease_matches_its_closed_form_on_a_tiny_catalog():
    import pandas as pd

    from mstage.evaluation.baselines import ease
    from mstage.evaluation.protocol import build_eval_set

    # 3 train users over items 10, 11, 12; user 4 is evaluated with item 12 held out.
    rows = [(1, 10, 1), (1, 11, 2), (2, 11, 1), (2, 12, 2), (3, 10, 1), (3, 12, 2),
            (4, 10, 1), (4, 12, 9)]
    df = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    df["label"] = 1
    df["fold_user_temporal"] = np.where(df["timestamp"] == 9, 2, 0)
    eval_set = build_eval_set(df, "user-temporal", "test")
    x = np.array([[1, 1, 0], [0, 1, 1], [1, 0, 1], [1, 0, 0]], dtype=float)  # users 1..4
    p = np.linalg.inv(x.T @ x + 2.0 * np.eye(3))
    b = -p / np.diag(p)
    np.fill_diagonal(b, 0.0)
    scores = ease(eval_set, 2.0)(np.array([4, 1]))
    np.testing.assert_allclose(scores, x[[3, 0]] @ b)


def test_paired_differences_are_narrower_than_the_models_own_errors():
    from mstage.evaluation.intervals import paired_differences, standard_errors

    rng = np.random.default_rng(0)
    base = rng.random(400)
    a, b = {"ndcg@10": base + 0.01}, {"ndcg@10": base + rng.normal(0, 0.001, 400)}
    diff = paired_differences(a, b)["ndcg@10"]
    # the same users move both: the difference (0.01) is sure, the models' errors overlap
    assert diff["low"] > 0 and diff["difference"] == pytest.approx(0.01, abs=1e-3)
    assert standard_errors(a)["ndcg@10"] > 10 * (diff["high"] - diff["low"]) / 4
