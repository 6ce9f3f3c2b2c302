"""Ordering strategies against hand-computed expectations."""

import numpy as np

from mstage.pipeline.ordering import PAD, blended_score, category_capped, softmax_sample, top_k

IDS = np.array([[10, 11, 12, 13, PAD], [20, 21, PAD, PAD, PAD]], dtype=np.int64)
SCORES = np.array([[0.1, 0.9, 0.5, 0.9, 0.0], [0.3, 0.7, 0.0, 0.0, 0.0]], dtype=np.float32)


def test_top_k_orders_by_score_then_smaller_id():
    ids, scores = top_k(IDS, SCORES, 3)
    # row 0: 11 and 13 tie at 0.9 -> 11 first; then 12 (0.5)
    assert ids.tolist() == [[11, 13, 12], [21, 20, PAD]]
    np.testing.assert_allclose(scores[0], [0.9, 0.9, 0.5])
    assert scores[1, 2] == -np.inf


def test_top_k_wider_than_candidates_pads():
    ids, _ = top_k(IDS[:, :2], SCORES[:, :2], 4)
    assert ids.tolist() == [[11, 10, PAD, PAD], [21, 20, PAD, PAD]]


def test_softmax_with_tiny_temperature_equals_top_k():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(50, 30)).astype(np.float32)
    ids = np.arange(50 * 30, dtype=np.int64).reshape(50, 30)
    sampled, _ = softmax_sample(ids, scores, 10, 1e-6, np.random.default_rng(1))
    best, _ = top_k(ids, scores, 10)
    np.testing.assert_array_equal(sampled, best)


def test_softmax_is_reproducible_with_a_seed_and_varies_without():
    a = softmax_sample(IDS, SCORES, 3, 1.0, np.random.default_rng(7))[0]
    b = softmax_sample(IDS, SCORES, 3, 1.0, np.random.default_rng(7))[0]
    np.testing.assert_array_equal(a, b)
    draws = {tuple(softmax_sample(IDS, SCORES, 3, 1.0, np.random.default_rng(s))[0][0])
             for s in range(30)}
    assert len(draws) > 1


def test_softmax_never_returns_padding_or_duplicates():
    for seed in range(20):
        ids, _ = softmax_sample(IDS, SCORES, 4, 5.0, np.random.default_rng(seed))
        assert PAD not in ids[0] and len(set(ids[0])) == 4
        assert sorted(ids[1][:2]) == [20, 21] and ids[1][2:].tolist() == [PAD, PAD]


def test_softmax_frequencies_follow_exp_score_over_t():
    # Two candidates, scores 1 and 0, T = 1: P(first pick = a) = e / (e + 1) = 0.731
    ids = np.array([[1, 2]] * 20000, dtype=np.int64)
    scores = np.array([[1.0, 0.0]] * 20000, dtype=np.float32)
    picked, _ = softmax_sample(ids, scores, 1, 1.0, np.random.default_rng(3))
    assert abs((picked[:, 0] == 1).mean() - np.e / (np.e + 1)) < 0.015


def test_category_cap():
    ids = np.array([[1, 2, 3, 4, 5]], dtype=np.int64)
    scores = np.array([[0.9, 0.8, 0.7, 0.6, 0.5]], dtype=np.float32)
    cats = np.array([[0, 0, 0, 1, 1]])
    # cap 1: best of cat 0 (1), best of cat 1 (4), then top up with best skipped (2)
    out, _ = category_capped(ids, scores, 3, cats, 1)
    assert out.tolist() == [[1, 4, 2]]
    # cap 2: 1, 2 (cat 0 full), skip 3, then 4
    out, _ = category_capped(ids, scores, 3, cats, 2)
    assert out.tolist() == [[1, 2, 4]]


def test_blended_score_is_click_logit_plus_weighted_retrieval_score():
    p = np.array([[0.5, 0.8, -np.inf]], dtype=np.float32)
    r = np.array([[0.2, 0.1, -np.inf]], dtype=np.float32)
    # logit(0.5) = 0 -> 0 + 10 * 0.2 = 2.0; logit(0.8) = ln 4 = 1.386 -> 1.386 + 1.0 = 2.386
    out = blended_score(p, r, 10.0)
    np.testing.assert_allclose(out[0, :2], [2.0, np.log(4) + 1.0], rtol=1e-5)
    assert out[0, 2] == -np.inf
    np.testing.assert_allclose(blended_score(p, r, 0.0)[0, :2], [0.0, np.log(4)], atol=1e-6)
