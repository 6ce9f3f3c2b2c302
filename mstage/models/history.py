"""Users' item histories as fixed-width matrices, the query tower's view of what a user did.

Rows are one user's interactions in time order (the prepared interactions are sorted by
user, then time). A history is the user's items before a point, most recent first, padded
with 0 (the encoders' "unknown" index) to a fixed length L. Training uses `prior_items`:
for each interaction, only what came before it, so no example sees its own target or the
future. Queries use `latest_items`: everything the user did (in the data given), as the
online store's `recent_items` holds it at serving time.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from mstage.columns import PAD
from mstage.data.lookup import IdLookup


def _group_positions(users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For rows grouped by user: each row's position in its group, and each group's start."""
    users = np.asarray(users)
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]]) if len(users) else \
        np.zeros(0, dtype=np.int64)
    sizes = np.diff(np.r_[starts, len(users)])
    return np.arange(len(users)) - np.repeat(starts, sizes), starts


class Timeline:
    """Users' positive items, flat in (user, time) order; a row's history is the slice
    `items[start:end]` read backwards, so [n, L] history matrices need never be stored."""

    def __init__(self, users: np.ndarray, items: np.ndarray, positive: np.ndarray | None = None):
        """`users`/`items` [n] grouped by user in time order; `positive` [n] marks the rows
        whose items enter histories (all when None). `start`/`end` [n]: each row's prior
        positives; `group_start`/`group_end` [u]: the whole timeline of user `group_users`."""
        items = np.asarray(items)
        keep = np.ones(len(items), bool) if positive is None else np.asarray(positive, bool)
        self.items = items[keep]
        self.end = np.cumsum(keep) - keep  # positives before each row, over all users
        position, starts = _group_positions(users)
        self.start = self.end[np.arange(len(items)) - position]
        self.group_users = np.asarray(users)[starts]
        self.group_start = self.start[starts] if len(starts) else self.end[:0]
        last = np.r_[starts[1:], len(items)] - 1 if len(starts) else starts
        self.group_end = self.end[last] + keep[last]

    def window(self, start: np.ndarray, end: np.ndarray, length: int) -> np.ndarray:
        """[b, length]: items[end-1], items[end-2], ... down to items[start], 0-padded: the
        latest `length` items of each slice, most recent first."""
        at = np.asarray(end)[:, None] - np.arange(1, length + 1)
        valid = at >= np.asarray(start)[:, None]
        if not self.items.size:
            return np.zeros(at.shape, dtype=np.int32)
        return np.where(valid, self.items[np.maximum(at, 0)], 0).astype(np.int32)


def prior_items(users: np.ndarray, items: np.ndarray, length: int) -> np.ndarray:
    """int32 [n, length]: for row j, the items of rows j-1, j-2, ... of the same user (the
    interactions before it), most recent first, 0-padded. `users`/`items` [n], grouped by
    user in time order; `items` are encoded indices (> 0)."""
    timeline = Timeline(users, items)
    return timeline.window(timeline.start, timeline.end, length)


def latest_items(users: np.ndarray, items: np.ndarray, length: int, pad: int = 0
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(user ids [u], [u, length]): each user's last `length` items, most recent first,
    padded with `pad` (0 for encoded indices, -1 for item ids). `users`/`items` [n], grouped
    by user in time order."""
    users, items = np.asarray(users), np.asarray(items)
    _, starts = _group_positions(users)
    ends = np.r_[starts[1:], len(users)]
    out = np.full((len(starts), length), pad, dtype=items.dtype if pad else np.int32)
    for back in range(1, length + 1):
        valid = ends - back >= starts
        out[valid, back - 1] = items[ends[valid] - back]
    return users[starts], out


def history_of(users: np.ndarray, items: np.ndarray, length: int
               ) -> Callable[[np.ndarray], np.ndarray]:
    """user ids [b] -> each one's last `length` item ids of (`users`, `items`) [b, length],
    most recent first, PAD-padded (all PAD for a user without any): the history a query
    tower reads offline. `users`/`items` [n] item ids, grouped by user in time order."""
    ids, latest = latest_items(np.asarray(users, dtype=np.int64),
                               np.asarray(items, dtype=np.int64), max(length, 1), pad=PAD)
    lookup = IdLookup(ids)

    def of(user_ids: np.ndarray) -> np.ndarray:
        rows, known = lookup.find(np.asarray(user_ids, dtype=np.int64))
        return np.where(known[:, None], latest[rows], PAD)

    return of
