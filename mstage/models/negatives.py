"""Negative sampling for implicit data: items a user did not interact with, drawn in bulk.

When every interaction is a positive (ratings, purchases), a click model needs negatives.
Half of the draws are uniform over the catalog (easy negatives that teach what a user never
looks at) and half are popularity-weighted (hard negatives: a popular item is then about as
often a negative as a positive, so the model cannot win on popularity alone and must learn
who likes what). A draw that hits one of the user's own positives is rejected and drawn
again, vectorised over all rejected rows at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PositiveSet:
    """The (user, item) pairs that are positives, as sorted int64 keys for vectorised lookup.

    Users and items are dense indices: key = user * n_items + item.
    """

    keys: np.ndarray  # (P,) int64, sorted, unique
    n_items: int

    @classmethod
    def from_pairs(cls, users: np.ndarray, items: np.ndarray, n_items: int) -> PositiveSet:
        keys = np.unique(users.astype(np.int64) * n_items + items.astype(np.int64))
        return cls(keys, n_items)

    def contains(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """(N,) bool: whether each (users[i], items[i]) is a positive."""
        query = users.astype(np.int64) * self.n_items + items.astype(np.int64)
        if self.keys.size == 0:
            return np.zeros(query.shape, dtype=bool)
        at = np.minimum(np.searchsorted(self.keys, query), self.keys.size - 1)
        return self.keys[at] == query


@dataclass(frozen=True)
class NegativeSampler:
    """Draws item indices mixing uniform and popularity-weighted choices.

    `popularity` holds one non-negative weight per candidate (its count of positives);
    `popularity_share` is the fraction of draws that follow it (the rest are uniform).
    `items` maps candidate positions to the item indices returned and looked up in the
    PositiveSet (default: the positions themselves).
    """

    popularity: np.ndarray  # (n_candidates,) float64
    items: np.ndarray | None = None  # (n_candidates,) int64
    popularity_share: float = 0.5
    max_rounds: int = 50

    @property
    def n_items(self) -> int:
        return int(self.popularity.shape[0])

    def draw(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """(n,) int64 item indices, without looking at any user."""
        picks = self._draw_positions(n, rng)
        return picks if self.items is None else self.items[picks].astype(np.int64)

    def _draw_positions(self, n: int, rng: np.random.Generator) -> np.ndarray:
        items = rng.integers(0, self.n_items, size=n, dtype=np.int64)
        total = float(self.popularity.sum())
        if total <= 0 or self.popularity_share <= 0:
            return items
        weighted = rng.random(n) < self.popularity_share
        cumulative = np.cumsum(self.popularity, dtype=np.float64)
        picks = np.searchsorted(cumulative, rng.random(int(weighted.sum())) * total, side="right")
        items[weighted] = np.minimum(picks, self.n_items - 1)
        return items

    def sample(self, users: np.ndarray, per_user_row: int, positives: PositiveSet,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """`per_user_row` negatives for each entry of `users` (dense indices), never a positive.

        Returns (origin, neg_items), both (M,) int64 with M <= len(users) * per_user_row:
        negative m was drawn for `users[origin[m]]`. Draws still rejected after `max_rounds`
        (a user who interacted with nearly the whole catalog) are dropped rather than
        returned as false negatives.
        """
        origin = np.repeat(np.arange(len(users), dtype=np.int64), per_user_row)
        neg_users = np.asarray(users, dtype=np.int64)[origin]
        neg_items = self.draw(neg_users.size, rng)
        rejected = positives.contains(neg_users, neg_items)
        for _ in range(self.max_rounds):
            if not rejected.any():
                break
            where = np.flatnonzero(rejected)
            neg_items[where] = self.draw(where.size, rng)
            rejected[where] = positives.contains(neg_users[where], neg_items[where])
        keep = ~rejected
        return origin[keep], neg_items[keep]
