"""`IdLookup`: the row of each id in an id table, for whole arrays of ids at once.

Every table keyed by id (catalog positions in the stages, encoded user and item tables in
training, evaluation's catalog and users, encoder vocabularies) finds rows through this one
class. Compact ids (non-negative, spanning at most `DENSE_SPAN` times the table) get a dense
id -> row array (50x faster than binary search on a 256 x 200 candidate batch); others a
binary search over the sorted ids.
"""

from __future__ import annotations

import numpy as np

DENSE_SPAN = 8


class IdLookup:
    """Rows of ids in `table_ids` (int64 [n], distinct, in any order)."""

    def __init__(self, table_ids: np.ndarray):
        self.ids = np.asarray(table_ids, dtype=np.int64).reshape(-1)
        self._order = np.argsort(self.ids, kind="stable")
        self._sorted = self.ids[self._order]
        self._dense = None
        n = len(self.ids)
        if n and self._sorted[0] >= 0 and self._sorted[-1] < DENSE_SPAN * n:
            self._dense = np.full(int(self._sorted[-1]) + 1, -1, dtype=np.int64)
            self._dense[self.ids] = np.arange(n)

    def __len__(self) -> int:
        return len(self.ids)

    def find(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(rows, known), both shaped like `ids`; rows are 0 where known is False."""
        ids = np.asarray(ids, dtype=np.int64)
        if not len(self.ids):
            return np.zeros(ids.shape, dtype=np.int64), np.zeros(ids.shape, dtype=bool)
        if self._dense is not None:
            inside = (ids >= 0) & (ids < len(self._dense))
            rows = self._dense[np.where(inside, ids, 0)]
            known = inside & (rows >= 0)
            return np.where(known, rows, 0), known
        slot = np.minimum(np.searchsorted(self._sorted, ids), len(self.ids) - 1)  # >= 0 already
        known = self._sorted[slot] == ids
        return np.where(known, self._order[slot], 0), known

    def rows(self, ids: np.ndarray, missing: int) -> np.ndarray:
        """Row of each id, `missing` where the table lacks it."""
        rows, known = self.find(ids)
        return np.where(known, rows, missing).astype(np.int64, copy=False)
