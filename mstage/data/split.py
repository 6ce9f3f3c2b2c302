"""Fold assignment for the two splits of the evaluation protocol (docs/evaluation.md).

Folds are computed on positive rows (label == 1) only, so that adding impressions without a
click never moves a positive between train and test. Negative rows follow the positives'
time cutoffs. Everything is vectorised (two stable sorts + group offsets): 20M rows take
about half a minute on 2 cores.

Fractions are exact integer arithmetic: ceil(0.2 n) == (n + 4) // 5, because the float
product 0.2 * 15 == 3.0000000000000004 would round one row too many into test.
"""

from __future__ import annotations

import numpy as np

from mstage.data.schema import FIT, TEST, VALID
from mstage.errors import InputError

REQUIRED_COLUMNS = ("user_id", "item_id", "timestamp", "label")
MIN_USER_INTERACTIONS = 5
NO_CUTOFF = np.iinfo(np.int64).max


def _ceil_fraction(n: np.ndarray | int, numerator: int, denominator: int):
    """ceil(n * numerator / denominator) in integers (no float rounding)."""
    return (n * numerator + denominator - 1) // denominator


def assign_folds(interactions):
    """Return a copy of `interactions` with int8 columns `fold_user_temporal` and `fold_global`.

    Input columns: user_id, item_id, timestamp (int64 unix s), label (1 = positive). Values are
    FIT=0, VALID=1 (validation, part of train), TEST=2; row order and index are kept.
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in interactions.columns]
    if missing:
        raise InputError(
            f"expected interaction columns {list(REQUIRED_COLUMNS)}, "
            f"found {list(interactions.columns)} (missing {missing}); "
            "run `mstage prepare-data` to build them"
        )
    out = interactions.copy()
    user = out["user_id"].to_numpy(dtype=np.int64)
    item = out["item_id"].to_numpy(dtype=np.int64)
    timestamp = out["timestamp"].to_numpy(dtype=np.int64)
    positive = out["label"].to_numpy() == 1
    out["fold_user_temporal"] = user_temporal_folds(user, item, timestamp, positive)
    out["fold_global"] = global_folds(timestamp, positive)
    return out


def _pair_key(major: np.ndarray, minor: np.ndarray) -> np.ndarray:
    """One int64 per row that sorts like (major, minor): offsets packed into one number, or
    dense ranks when the raw ranges would overflow int64."""
    major_span = int(major.max()) - int(major.min()) + 1
    minor_span = int(minor.max()) - int(minor.min()) + 1
    if major_span * minor_span >= 2**63:
        major = np.unique(major, return_inverse=True)[1].astype(np.int64)
        minor = np.unique(minor, return_inverse=True)[1].astype(np.int64)
        minor_span = int(minor.max()) + 1
    return (major - major.min()) * minor_span + (minor - minor.min())


def user_time_item_order(user: np.ndarray, timestamp: np.ndarray, item: np.ndarray) -> np.ndarray:
    """Indices that sort rows by (user, timestamp, item); the same as np.lexsort of the three
    keys but ~2.5x faster: a stable sort by item, then a stable sort by packed (user, time)."""
    if len(user) == 0:
        return np.empty(0, dtype=np.int64)
    by_item = np.argsort(item, kind="stable")
    key = _pair_key(user[by_item], timestamp[by_item])
    return by_item[np.argsort(key, kind="stable")]


def user_temporal_folds(user: np.ndarray, item: np.ndarray, timestamp: np.ndarray,
                        positive: np.ndarray) -> np.ndarray:
    """Per user, the last ceil(0.2 n) positives by (timestamp, item id) are TEST (n >= 5); the
    last ceil(0.1 m) of the m remaining are VALID (m >= 5). Negatives: TEST from the user's
    first test positive's timestamp on, else VALID from the first validation positive's on.
    Arrays are 1-D of equal length [n_rows]; returns int8 [n_rows]."""
    folds = np.full(len(user), FIT, dtype=np.int8)
    pos_rows = np.flatnonzero(positive)
    if len(pos_rows) == 0:
        return folds
    pos_user, pos_time = user[pos_rows], timestamp[pos_rows]
    order = user_time_item_order(pos_user, pos_time, item[pos_rows])
    sorted_user, sorted_time = pos_user[order], pos_time[order]

    starts = np.flatnonzero(np.r_[True, sorted_user[1:] != sorted_user[:-1]])
    counts = np.diff(np.r_[starts, len(sorted_user)])
    n_test = np.where(counts >= MIN_USER_INTERACTIONS, _ceil_fraction(counts, 1, 5), 0)
    n_train = counts - n_test
    n_valid = np.where(n_train >= MIN_USER_INTERACTIONS, _ceil_fraction(n_train, 1, 10), 0)

    rank = np.arange(len(sorted_user)) - np.repeat(starts, counts)
    train_end = np.repeat(n_train, counts)
    fit_end = train_end - np.repeat(n_valid, counts)
    sorted_folds = np.full(len(sorted_user), FIT, dtype=np.int8)
    sorted_folds[rank >= fit_end] = VALID
    sorted_folds[rank >= train_end] = TEST
    folds[pos_rows[order]] = sorted_folds

    negatives = np.flatnonzero(~positive)
    if len(negatives):
        users = sorted_user[starts]
        # Timestamp of each user's first test / validation positive; NO_CUTOFF when none.
        last = len(sorted_time) - 1
        test_from = np.where(n_test > 0, sorted_time[np.minimum(starts + n_train, last)], NO_CUTOFF)
        first_valid = np.minimum(starts + n_train - n_valid, last)
        valid_from = np.where(n_valid > 0, sorted_time[first_valid], NO_CUTOFF)
        neg_user = user[negatives]
        slot = np.minimum(np.searchsorted(users, neg_user), len(users) - 1)
        known = users[slot] == neg_user
        neg_time = timestamp[negatives]
        neg_folds = np.full(len(negatives), FIT, dtype=np.int8)
        neg_folds[known & (neg_time >= valid_from[slot])] = VALID
        neg_folds[known & (neg_time >= test_from[slot])] = TEST
        folds[negatives] = neg_folds
    return folds


def global_cutoffs(positive_timestamps: np.ndarray) -> tuple[int, int]:
    """(validation cutoff, test cutoff): the ceil(0.9 m)-th and ceil(0.8 N)-th smallest
    timestamps, where m counts positives at or before the test cutoff. Rows at or before a
    cutoff are on its train side (ties go to train)."""
    ts = np.sort(positive_timestamps.astype(np.int64, copy=False))
    test_cutoff = ts[_ceil_fraction(len(ts), 4, 5) - 1]
    n_train = int(np.searchsorted(ts, test_cutoff, side="right"))
    valid_cutoff = ts[_ceil_fraction(n_train, 9, 10) - 1]
    return int(valid_cutoff), int(test_cutoff)


def global_folds(timestamp: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """FIT up to the validation cutoff, VALID up to the test cutoff, TEST after; cutoffs come
    from positives and apply to every row. Returns int8 [n_rows]."""
    folds = np.full(len(timestamp), FIT, dtype=np.int8)
    if not positive.any():
        return folds
    valid_cutoff, test_cutoff = global_cutoffs(timestamp[positive])
    folds[timestamp > valid_cutoff] = VALID
    folds[timestamp > test_cutoff] = TEST
    return folds
