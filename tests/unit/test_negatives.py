"""Negative sampling: never a user's own positive, the uniform / popularity mix, edge users."""

import numpy as np

from mstage.models.negatives import NegativeSampler, PositiveSet


def test_positive_set_contains_hand_computed():
    # 4 items: keys 0*4+1=1, 1*4+3=7, 2*4+0=8 (the duplicate (0, 1) collapses).
    known = PositiveSet.from_pairs(np.array([0, 1, 2, 0]), np.array([1, 3, 0, 1]), n_items=4)
    assert known.keys.tolist() == [1, 7, 8]
    got = known.contains(np.array([0, 0, 1, 2, 2, 3]), np.array([1, 2, 3, 0, 3, 3]))
    assert got.tolist() == [True, False, True, True, False, False]


def test_empty_positive_set_contains_nothing():
    known = PositiveSet.from_pairs(np.array([], int), np.array([], int), n_items=3)
    assert not known.contains(np.array([0, 1]), np.array([0, 2])).any()


def test_samples_never_hit_a_users_positives():
    rng = np.random.default_rng(0)
    n_users, n_items = 50, 20
    users = rng.integers(0, n_users, 2000)
    items = rng.integers(0, n_items, 2000)  # ~86% of each user's 20 items are positives
    items = np.where(items == users % n_items, (items + 1) % n_items, items)  # one stays free
    known = PositiveSet.from_pairs(users, items, n_items)
    sampler = NegativeSampler(np.bincount(items, minlength=n_items).astype(float))
    origin, neg_items = sampler.sample(users[:300], 3, known, np.random.default_rng(1))
    neg_users = users[:300][origin]
    assert not known.contains(neg_users, neg_items).any()
    # Every user keeps item u % 20 free, so nothing is dropped and order is kept.
    assert neg_users.tolist() == np.repeat(users[:300], 3).tolist()


def test_a_user_with_one_free_item_always_gets_it_and_a_full_user_gets_none():
    # user 0 has items 0, 1, 2 of 4 -> only item 3 is a negative; user 1 has all 4 items.
    users = np.array([0, 0, 0, 1, 1, 1, 1])
    items = np.array([0, 1, 2, 0, 1, 2, 3])
    known = PositiveSet.from_pairs(users, items, 4)
    sampler = NegativeSampler(np.ones(4), max_rounds=200)
    origin, neg_items = sampler.sample(np.array([0, 1]), 5, known, np.random.default_rng(2))
    assert origin.tolist() == [0] * 5  # all drawn for the first entry, user 0
    assert neg_items.tolist() == [3] * 5


def test_popularity_share_one_follows_the_weights_and_zero_is_uniform():
    popularity = np.array([0.0, 1.0, 3.0, 0.0])
    rng = np.random.default_rng(3)
    weighted = NegativeSampler(popularity, popularity_share=1.0).draw(40_000, rng)
    share = np.bincount(weighted, minlength=4) / 40_000
    # Expected [0, 0.25, 0.75, 0]; binomial sd ~0.002, so 0.01 is a loose bound.
    np.testing.assert_allclose(share, [0, 0.25, 0.75, 0], atol=0.01)
    uniform = NegativeSampler(popularity, popularity_share=0.0).draw(40_000, rng)
    np.testing.assert_allclose(np.bincount(uniform, minlength=4) / 40_000, 0.25, atol=0.01)


def test_default_mix_is_half_uniform_half_popularity():
    popularity = np.array([1.0, 0.0])
    draws = NegativeSampler(popularity).draw(40_000, np.random.default_rng(4))
    # item 1 only comes from the uniform half: P = 0.5 * 0.5 = 0.25.
    assert abs(np.mean(draws == 1) - 0.25) < 0.01


def test_items_map_positions_to_item_indices():
    sampler = NegativeSampler(np.array([1.0, 1.0]), items=np.array([7, 9]))
    known = PositiveSet.from_pairs(np.array([0]), np.array([7]), n_items=10)
    origin, neg_items = sampler.sample(np.array([0, 0]), 4, known, np.random.default_rng(5))
    assert set(neg_items.tolist()) == {9}
    assert origin.tolist() == [0] * 4 + [1] * 4
