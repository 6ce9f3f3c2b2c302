"""Ranking and classification metrics against hand-computed values and brute-force oracles."""

import math

import numpy as np
import pytest

from mstage.errors import InputError
from mstage.evaluation.metrics import (
    auc,
    coverage_at_k,
    hit_rate_at_k,
    log_loss,
    ndcg_at_k,
    recall_at_k,
    top_k_excluding,
)

REC = np.array([[1, 2, 3, 7], [4, 5, 6, 7]])
REL = [np.array([2, 9]), np.array([7])]


def test_recall_hand_computed():
    # k=3: user 0 finds 2 of {2, 9} -> 1/2; user 1 finds nothing of {7} -> 0; mean 0.25.
    assert recall_at_k(REC, REL, 3) == pytest.approx(0.25)
    # k=4: user 1 now finds 7 at rank 4 -> 1; mean (0.5 + 1) / 2 = 0.75.
    assert recall_at_k(REC, REL, 4) == pytest.approx(0.75)


def test_ndcg_hand_computed():
    # k=3, user 0: hit at rank 2 -> DCG 1/log2(3) = 0.63093; ideal over min(3, 2) = 2 items:
    # 1 + 0.63093 = 1.63093 -> 0.38685. User 1: 0. Mean 0.193426.
    assert ndcg_at_k(REC, REL, 3) == pytest.approx(0.63093 / 1.63093 / 2, abs=1e-5)
    # k=4, user 1: hit at rank 4 -> 1/log2(5) = 0.43068, ideal 1 -> 0.43068; mean 0.408767.
    assert ndcg_at_k(REC, REL, 4) == pytest.approx((0.63093 / 1.63093 + 0.43068) / 2, abs=1e-5)


def test_ndcg_is_one_for_a_perfect_list():
    assert ndcg_at_k(np.array([[3, 1, 2]]), [np.array([1, 3])], 3) == pytest.approx(1.0)


def test_hit_rate_hand_computed():
    # k=3: only user 0 has a hit -> 0.5; k=4: both -> 1.0.
    assert hit_rate_at_k(REC, REL, 3) == pytest.approx(0.5)
    assert hit_rate_at_k(REC, REL, 4) == pytest.approx(1.0)


def test_padding_never_counts_and_duplicate_relevant_ids_are_ignored():
    # Relevant [5, 5] is the set {5}; -1 padding is not a hit even if -1 were "relevant".
    rec = np.array([[5, -1, -1]])
    assert recall_at_k(rec, [np.array([5, 5])], 3) == pytest.approx(1.0)
    assert recall_at_k(rec, [np.array([-1, 8])], 3) == pytest.approx(0.0)


def test_large_item_ids_do_not_overflow_keys():
    big = 2**62
    rec = np.array([[big, 1], [1, big]])
    # user 0 hits at rank 1, user 1 misses at k=1 -> 0.5
    assert recall_at_k(rec, [np.array([big]), np.array([big])], 1) == pytest.approx(0.5)


def test_coverage_hand_computed():
    # top-2 lists {1, 2} and {2, 3} -> 3 distinct of 10 train items; padding excluded.
    assert coverage_at_k(np.array([[1, 2, 9], [2, 3, 8]]), 10, 2) == pytest.approx(0.3)
    assert coverage_at_k(np.array([[1, -1], [-1, -1]]), 4, 2) == pytest.approx(0.25)


def test_metric_errors_say_what_was_expected():
    with pytest.raises(InputError, match=r"shape \[n_users, >= k=5\]"):
        recall_at_k(REC, REL, 5)
    with pytest.raises(InputError, match="one relevant set per recommended row"):
        recall_at_k(REC, REL[:1], 3)
    with pytest.raises(InputError, match="non-empty relevant set.*found 1 empty"):
        ndcg_at_k(REC, [np.array([1]), np.array([], dtype=np.int64)], 3)
    with pytest.raises(InputError, match="n_train_items >= 1"):
        coverage_at_k(REC, 0, 2)


def test_auc_hand_computed_with_ties():
    # positives 0.9, 0.5; negatives 0.1, 0.5. Pairs: (0.9>0.1)=1, (0.9>0.5)=1, (0.5>0.1)=1,
    # (0.5=0.5)=0.5 -> 3.5 / 4 = 0.875.
    assert auc([1, 0, 1, 0], [0.9, 0.1, 0.5, 0.5]) == pytest.approx(0.875)
    assert auc([0, 1], [0.2, 0.8]) == pytest.approx(1.0)
    assert auc([1, 0], [0.2, 0.8]) == pytest.approx(0.0)


def test_auc_matches_pairwise_oracle():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 300)
    s = rng.integers(0, 10, 300).astype(float)  # many ties
    pos, neg = s[y == 1], s[y == 0]
    diff = pos[:, None] - neg[None, :]
    expected = ((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size
    assert auc(y, s) == pytest.approx(expected, abs=1e-12)


def test_auc_needs_both_classes():
    with pytest.raises(InputError) as err:
        auc([1, 1], [0.3, 0.4])
    assert "found 2 positives and 0 negatives" in str(err.value)
    assert err.value.exit_code == 2


def test_log_loss_hand_computed_and_clipped():
    # -(ln 0.8 + ln 0.6) / 2 = (0.223144 + 0.510826) / 2 = 0.366985
    assert log_loss([1, 0], [0.8, 0.4]) == pytest.approx(0.366985, abs=1e-6)
    # p = 0 for a positive is clipped to 1e-7 -> -ln(1e-7) = 16.118
    assert log_loss([1], [0.0]) == pytest.approx(-math.log(1e-7))


def test_label_errors():
    with pytest.raises(InputError, match=r"labels in \{0, 1\}, found \[2\]"):
        log_loss([1, 2], [0.5, 0.5])
    with pytest.raises(InputError, match="as many labels as predictions"):
        auc([1, 0, 1], [0.5, 0.5])


ITEMS = np.array([10, 20, 30, 40])


def test_top_k_excludes_train_items_and_breaks_ties_by_item_id():
    scores = np.array([[0.5, 0.9, 0.5, 0.1], [1.0, 1.0, 1.0, 1.0]])
    # User 0: item 20 excluded; 10 and 30 tie at 0.5 -> 10 first. User 1: all tied -> 10, 20.
    top = top_k_excluding(scores, np.array([0]), np.array([1]), 2, ITEMS)
    assert top.tolist() == [[10, 30], [10, 20]]


def test_top_k_pads_when_too_few_items_remain():
    scores = np.array([[0.1, 0.2, 0.3, 0.4]])
    # Excluding 30 and 40 leaves 20 (0.2), 10 (0.1); k=5 > 4 items -> padded with -1.
    top = top_k_excluding(scores, np.array([0, 0]), np.array([2, 3]), 5, ITEMS)
    assert top.tolist() == [[20, 10, -1, -1, -1]]


def test_top_k_tie_break_uses_item_ids_not_column_order():
    # Columns hold items 40, 30, 20, 10 with equal scores -> ascending ids 10, 20, 30.
    top = top_k_excluding(np.ones((1, 4)), np.array([], dtype=int), np.array([], dtype=int), 3,
                          ITEMS[::-1])
    assert top.tolist() == [[10, 20, 30]]


def test_top_k_matches_full_sort_oracle_across_batches():
    rng = np.random.default_rng(11)
    scores = rng.integers(0, 5, (23, 17)).astype(float)  # heavy ties
    item_ids = rng.permutation(np.arange(100, 117))
    mask = rng.random((23, 17)) < 0.3
    rows, cols = np.nonzero(mask)
    expected = []
    for u in range(23):
        ok = ~mask[u]
        order = np.lexsort((item_ids[ok], -scores[u, ok]))  # by score desc, then id asc
        expected.append(list(item_ids[ok][order][:6]) + [-1] * max(0, 6 - ok.sum()))
    for batch_size in (1, 4, 100):
        top = top_k_excluding(scores, rows, cols, 6, item_ids, batch_size=batch_size)
        assert top.tolist() == expected


def test_top_k_rejects_bad_scores():
    with pytest.raises(InputError, match=r"shape \[n_users, 4\]"):
        top_k_excluding(np.ones((2, 3)), [], [], 2, ITEMS)
    with pytest.raises(InputError, match="found NaN"):
        top_k_excluding(np.array([[np.nan, 1, 2, 3]]), [], [], 2, ITEMS)
