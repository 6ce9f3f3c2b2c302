"""Filtering: seen and excluded items never pass; short lists are refilled from popularity."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from mstage.columns import PAD
from mstage.data.lookup import IdLookup
from mstage.pipeline.filtering import allowed_mask, excluded_items, pack_left, refill_from_popular

CATALOG = np.array([10, 11, 12, 13, 14], dtype=np.int64)


def test_excluded_items_by_stock_and_category():
    excluded = excluded_items(5, np.array([1, 0, 1, 1, 0]), np.array(["a", "b", "c", "a", "b"]),
                              exclude_out_of_stock=True, exclude_categories=["c"])
    # 11 and 14 out of stock, 12 in category c
    assert excluded.tolist() == [False, True, True, False, True]
    none = excluded_items(2, np.array([1, 0]), None, exclude_out_of_stock=False,
                          exclude_categories=[])
    assert none.tolist() == [False, False]
    # a catalog without stock or category columns (MovieLens): the rules exclude nothing
    bare = excluded_items(3, None, None, exclude_out_of_stock=True, exclude_categories=["x"])
    assert bare.tolist() == [False, False, False]


def test_allowed_and_packed():
    excluded = np.array([False, True, False, False, False])  # 11 excluded
    ids = np.array([[13, 11, 99, 10, PAD]], dtype=np.int64)    # 99 unknown to the catalog
    scores = np.array([[0.9, 0.8, 0.7, 0.6, -np.inf]], dtype=np.float32)
    seen = np.array([[10, PAD]], dtype=np.int64)
    keep = allowed_mask(ids, IdLookup(CATALOG), excluded, seen)
    assert keep.tolist() == [[True, False, False, False, False]]
    packed_ids, packed_scores = pack_left(ids, scores, keep)
    assert packed_ids.tolist() == [[13, PAD, PAD, PAD, PAD]]
    assert packed_scores[0, 0] == np.float32(0.9) and np.isinf(packed_scores[0, 1:]).all()


def test_refill_tops_up_from_popular_without_duplicates_or_seen():
    ids = np.array([[13, PAD, PAD], [10, 12, 13]], dtype=np.int64)
    scores = np.array([[0.5, -np.inf, -np.inf], [0.3, 0.2, 0.1]], dtype=np.float32)
    seen = np.array([[14], [PAD]], dtype=np.int64)
    popular = np.array([13, 14, 10, 12], dtype=np.int64)   # allowed items, most popular first
    out_ids, out_scores, refilled = refill_from_popular(ids, scores, popular, seen, 3)
    # row 0 keeps 13, skips 13 (held) and 14 (seen), adds 10 and 12; row 1 is full
    assert out_ids.tolist() == [[13, 10, 12], [10, 12, 13]]
    assert refilled.tolist() == [True, False]
    assert out_scores[0, 1] < out_scores[0, 0] and out_scores[0, 2] < out_scores[0, 1]


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10_000))
def test_no_seen_or_excluded_item_ever_passes(seed):
    rng = np.random.default_rng(seed)
    catalog = np.sort(rng.choice(10_000, 300, replace=False)).astype(np.int64)
    excluded = rng.random(300) < 0.2
    ids = np.stack([rng.choice(catalog, 40, replace=False) for _ in range(8)])
    ids[rng.random(ids.shape) < 0.1] = PAD
    seen = rng.choice(catalog, (8, 15))
    seen[rng.random(seen.shape) < 0.2] = PAD
    keep = allowed_mask(ids, IdLookup(catalog), excluded, seen)
    popular = catalog[~excluded]
    out, _, _ = refill_from_popular(*pack_left(ids, np.zeros(ids.shape, np.float32), keep),
                                    popular, seen, 10)
    for r in range(8):
        real = out[r][out[r] != PAD]
        assert not np.isin(real, seen[r]).any()
        assert not np.isin(real, catalog[excluded]).any()
        assert len(real) >= 10 and len(set(real.tolist())) == len(real)


def test_id_lookup_dense_and_sparse_agree_in_any_table_order():
    compact = np.array([9, 3, 8, 5], dtype=np.int64)      # span 10 < 8 x 4: dense table
    sparse = compact * 1_000_003                           # huge span: binary search
    for ids_ in (compact, sparse):
        lookup = IdLookup(ids_)
        query = np.array([[ids_[2], -1, ids_[1] + 1, ids_[0]]], dtype=np.int64)
        rows, known = lookup.find(query)
        assert known.tolist() == [[True, False, False, True]]
        assert rows[known].tolist() == [2, 0]  # rows in table order, not sorted order
        assert lookup.rows(query, missing=-7).tolist() == [[2, -7, -7, 0]]
    assert IdLookup(compact)._dense is not None and IdLookup(sparse)._dense is None
