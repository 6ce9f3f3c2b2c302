"""Histories: what the query tower reads, built without ever looking at the future."""

import numpy as np

from mstage.models.history import latest_items, prior_items


def test_prior_items_see_only_earlier_rows_of_the_same_user():
    users = np.array([1, 1, 1, 2, 2])
    items = np.array([10, 11, 12, 20, 21])  # in time order within each user
    # row 2 (user 1's third item) sees 11 then 10; user 2's first row sees nothing of user 1
    assert prior_items(users, items, 2).tolist() == [[0, 0], [10, 0], [11, 10], [0, 0],
                                                     [20, 0]]


def test_latest_items_are_each_users_last_most_recent_first():
    users = np.array([1, 1, 1, 2])
    items = np.array([10, 11, 12, 20])
    ids, latest = latest_items(users, items, 2)
    assert ids.tolist() == [1, 2] and latest.tolist() == [[12, 11], [20, 0]]
    _, raw = latest_items(users, items, 3, pad=-1)
    assert raw.tolist() == [[12, 11, 10], [20, -1, -1]] and raw.dtype == np.int64


def test_history_of_answers_any_user_and_pads_the_unknown():
    from mstage.models.history import history_of

    of = history_of(np.array([1, 1, 2]), np.array([10, 11, 20]), 2)
    # user 1: 11 then 10; user 7 never interacted: all padding
    assert of(np.array([7, 1, 2])).tolist() == [[-1, -1], [11, 10], [20, -1]]


def test_timeline_histories_hold_earlier_positives_only():
    from mstage.models.history import Timeline

    users = np.array([1, 1, 1, 1, 2, 2])
    items = np.array([10, 11, 12, 13, 20, 21])
    clicked = np.array([1, 0, 1, 1, 0, 1], bool)  # impressions: only clicks enter histories
    timeline = Timeline(users, items, clicked)
    # row 3 sees the clicks before it (12, then 10), not the unclicked 11 nor itself
    assert timeline.window(timeline.start, timeline.end, 2).tolist() == [
        [0, 0], [10, 0], [10, 0], [12, 10], [0, 0], [0, 0]]
    # each user's whole timeline, latest first: what an evaluation row of theirs sees
    assert timeline.group_users.tolist() == [1, 2]
    assert timeline.window(timeline.group_start, timeline.group_end, 3).tolist() == [
        [13, 12, 10], [21, 0, 0]]
