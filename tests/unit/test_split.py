"""Fold assignment of docs/evaluation.md: hand-computed folds and a per-user reference oracle."""

import math

import numpy as np
import pandas as pd
import pytest

from mstage.data.schema import FIT, TEST, VALID
from mstage.data.split import assign_folds, global_cutoffs, user_time_item_order
from mstage.errors import InputError

F, V, T = FIT, VALID, TEST


def frame(rows):
    """rows: (user_id, item_id, timestamp, label)."""
    df = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "label"])
    dtypes = {"user_id": "int64", "item_id": "int64", "timestamp": "int64", "label": "int8"}
    return df.astype(dtypes)


def user_rows(user, n, label=1, start=1):
    return [(user, 100 + t, t, label) for t in range(start, start + n)]


def test_user_with_ten_positives_gets_two_test_and_one_validation():
    # n=10: test = ceil(2.0) = 2 -> ts 9, 10; train 8 >= 5: valid = ceil(0.8) = 1 -> ts 8.
    out = assign_folds(frame(user_rows(1, 10)))
    assert out["fold_user_temporal"].tolist() == [F] * 7 + [V, T, T]


def test_small_users_stay_in_train():
    # n=4 < 5: all FIT. n=5: test = 1, train 4 < 5 -> no validation.
    out = assign_folds(frame(user_rows(1, 4) + user_rows(2, 5)))
    assert out["fold_user_temporal"].tolist() == [F] * 4 + [F] * 4 + [T]


def test_fifteen_positives_use_exact_ceiling_not_float():
    # 0.2 * 15 == 3.0000000000000004 in floats; the rule means ceil(3) = 3 test rows.
    # train 12 -> valid ceil(1.2) = 2.
    out = assign_folds(frame(user_rows(1, 15)))
    assert out["fold_user_temporal"].tolist() == [F] * 10 + [V] * 2 + [T] * 3


def test_equal_timestamps_are_ordered_by_item_id():
    # Five positives at the same second; order by item id: the largest item (5) is last -> test.
    rows = [(1, item, 50, 1) for item in (5, 3, 1, 4, 2)]
    out = assign_folds(frame(rows))
    assert out["fold_user_temporal"].tolist() == [T, F, F, F, F]


def test_negatives_follow_the_users_first_validation_and_test_positive():
    # User 1 positives ts 1..10: first valid positive at ts 8, first test at ts 9.
    # Negatives at 7 -> FIT, 8 -> VALID, 9 -> TEST, 50 -> TEST.
    # User 2 has 4 positives (no test): its negative at ts 99 stays FIT.
    # User 3 has only a negative: FIT.
    rows = user_rows(1, 10) + [(1, 7, 7, 0), (1, 8, 8, 0), (1, 9, 9, 0), (1, 50, 50, 0)]
    rows += user_rows(2, 4) + [(2, 1, 99, 0), (3, 1, 5, 0)]
    out = assign_folds(frame(rows))
    folds = out["fold_user_temporal"].tolist()
    assert folds[10:14] == [F, V, T, T]
    assert folds[14:] == [F] * 4 + [F, F]


def test_negatives_do_not_change_positive_folds():
    positives = frame(user_rows(1, 10))
    with_negatives = frame(user_rows(1, 10) + [(1, 5, t, 0) for t in range(1, 12)])
    a = assign_folds(positives)["fold_user_temporal"].tolist()
    b = assign_folds(with_negatives)["fold_user_temporal"].tolist()[:10]
    assert a == b


def test_global_split_cutoffs_and_validation():
    # N=20 positives at ts 1..20: m = ceil(16) = 16 -> cutoff 16; train 16 rows,
    # validation m = ceil(14.4) = 15 -> cutoff 15: VALID = ts 16, TEST = 17..20.
    # Negatives at ts 15 / 16 / 17 follow the same cutoffs: FIT / VALID / TEST.
    rows = [(t % 3, t, t, 1) for t in range(1, 21)] + [(9, 1, 15, 0), (9, 1, 16, 0), (9, 1, 17, 0)]
    out = assign_folds(frame(rows))
    assert out["fold_global"].tolist() == [F] * 15 + [V] + [T] * 4 + [F, V, T]


def test_global_ties_at_the_cutoff_go_to_train():
    # ts [1, 2, 3, 3, 3]: m = 4, cutoff = 3 -> everything is train; validation: ceil(4.5) = 5
    # -> cutoff 3, nothing is VALID.
    out = assign_folds(frame([(1, i, t, 1) for i, t in enumerate([1, 2, 3, 3, 3])]))
    assert out["fold_global"].tolist() == [F] * 5
    assert global_cutoffs(np.array([1, 2, 3, 3, 3])) == (3, 3)


def test_only_negatives_means_everything_fit():
    out = assign_folds(frame([(1, 1, 1, 0), (2, 2, 2, 0)]))
    assert out["fold_user_temporal"].tolist() == [F, F]
    assert out["fold_global"].tolist() == [F, F]


def test_returns_a_copy_with_int8_columns_and_original_order():
    df = frame(user_rows(1, 6)).iloc[::-1]
    df.index = [10, 11, 12, 13, 14, 15]
    out = assign_folds(df)
    assert "fold_user_temporal" not in df.columns
    assert list(out.index) == [10, 11, 12, 13, 14, 15]
    assert out["fold_user_temporal"].dtype == np.int8 and out["fold_global"].dtype == np.int8
    # Reversed order: n=6 -> ceil(1.2) = 2 test rows, the latest (ts 6, 5) which come first.
    assert out["fold_user_temporal"].tolist() == [T, T] + [F] * 4


def test_missing_columns_raise_input_error():
    with pytest.raises(InputError) as err:
        assign_folds(pd.DataFrame({"user_id": [1], "item_id": [2]}))
    message = str(err.value)
    assert "missing ['timestamp', 'label']" in message and "mstage prepare-data" in message
    assert err.value.exit_code == 2


def reference_user_temporal(df):
    """Per-user loop written straight from the protocol text, for the vectorised version."""
    folds = {}
    for _user, group in df.groupby("user_id"):
        pos = group[group.label == 1].sort_values(["timestamp", "item_id"], kind="stable")
        n = len(pos)
        n_test = math.ceil(n / 5) if n >= 5 else 0
        train = pos.iloc[: n - n_test]
        n_valid = math.ceil(len(train) / 10) if len(train) >= 5 else 0
        for i, idx in enumerate(pos.index):
            folds[idx] = T if i >= n - n_test else (V if i >= len(train) - n_valid else F)
        test_from = pos.timestamp.iloc[n - n_test] if n_test else None
        valid_from = train.timestamp.iloc[len(train) - n_valid] if n_valid else None
        for idx, ts in group[group.label == 0].timestamp.items():
            if test_from is not None and ts >= test_from:
                folds[idx] = T
            elif valid_from is not None and ts >= valid_from:
                folds[idx] = V
            else:
                folds[idx] = F
    return [folds[i] for i in df.index]


def test_vectorised_folds_match_a_per_user_reference():
    rng = np.random.default_rng(7)
    n = 600
    df = frame(list(zip(rng.integers(0, 40, n), rng.integers(0, 30, n), rng.integers(0, 200, n),
                        (rng.random(n) < 0.7).astype(int), strict=True)))
    out = assign_folds(df)
    assert out["fold_user_temporal"].tolist() == reference_user_temporal(df)
    # Global oracle: sorted positive timestamps, cutoffs by position.
    ts = np.sort(df.timestamp[df.label == 1].to_numpy())
    cut = ts[math.ceil(0.8 * len(ts)) - 1]
    train_ts = ts[ts <= cut]
    vcut = train_ts[math.ceil(0.9 * len(train_ts)) - 1]
    expected = np.where(df.timestamp > cut, T, np.where(df.timestamp > vcut, V, F))
    assert out["fold_global"].tolist() == expected.tolist()
    assert set(out["fold_user_temporal"]) == {F, V, T}


@pytest.mark.parametrize("scale", [1, 2**40])  # 2**40: packed keys would overflow -> ranks
def test_sort_order_equals_lexsort(scale):
    rng = np.random.default_rng(2)
    user = rng.integers(-5, 5, 500) * scale
    ts = rng.integers(0, 20, 500) * scale
    item = rng.integers(0, 10, 500)
    assert user_time_item_order(user, ts, item).tolist() == np.lexsort((item, ts, user)).tolist()
