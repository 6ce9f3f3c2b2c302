"""Stage 1, retrieval: user id -> user features and recent items (Feast) -> query tower ->
Faiss top-N.

The one online-store read per request happens here; the query tower reads the user's
features and recent items (what they just did moves the query); the features travel on to
scoring encoded with the ranker's encoders (packed by dtype: `user_codes`, `user_numbers`),
and the recent items travel on to filtering. A user the model never saw but whose history the store
holds (`mstage push-events`) is embedded from that history and their features (their unknown
id maps to index 0), flagged in `history_only`. Users with neither get the most popular items
instead, flagged in `cold_start`.
"""

from __future__ import annotations

import contextlib

import numpy as np

from mstage.columns import (
    CANDIDATE_IDS,
    COLD_START,
    HISTORY,
    HISTORY_ONLY,
    PAD,
    QUERY_HISTORY,
    RECENT_ITEMS,
    RETRIEVAL_SCORES,
    USER_CODES,
    USER_ID,
    USER_NUMBERS,
    ColumnSpec,
    in_rows,
)
from mstage.data.lookup import IdLookup
from mstage.features.online import ONLINE_FILES
from mstage.models import dlrm, retrieval_artifact
from mstage.pipeline.stage import Stage

THREADED_BATCH = 32  # below this many queries, OpenMP start-up costs more than it saves


@contextlib.contextmanager
def _faiss_threads(n: int | None):
    """Search single-threaded for small batches: a one-user query is ~100x faster that way
    on a busy machine, where Faiss's OpenMP threads otherwise wait for free cores."""
    import faiss

    before = faiss.omp_get_max_threads()
    if n is not None:
        faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def _packed(specs: list[dict]) -> dict[str, list[tuple[str, int]]]:
    """Packed column -> its (feature, width) parts in order; `specs` as JSON (name, dtype,
    shape without the batch): int64 inputs go to `user_codes`, float32 to `user_numbers`."""
    parts: dict[str, list[tuple[str, int]]] = {USER_CODES: [], USER_NUMBERS: []}
    for s in specs:
        column = USER_CODES if s["dtype"] == "int64" else USER_NUMBERS
        parts[column].append((s["name"], int(np.prod(s["shape"], dtype=np.int64))))
    return {column: p for column, p in parts.items() if p}


def user_columns(specs: list[dict]) -> list[ColumnSpec]:
    """The packed columns of the ranker's encoded user inputs (see `USER_CODES`)."""
    return [ColumnSpec(column, "int64" if column == USER_CODES else "float32",
                       (-1, sum(w for _, w in parts)))
            for column, parts in _packed(specs).items()]


def history_columns(width: int) -> list[ColumnSpec]:
    """The `query_history` column passed to a ranker reading `width` items (none for 0)."""
    return [ColumnSpec(QUERY_HISTORY, "int64", (-1, width))] if width else []


def pack_user(encoded: dict[str, np.ndarray], specs: list[dict]) -> dict[str, np.ndarray]:
    """Encoded user inputs (name -> [b] or [b, L]) -> the packed columns."""
    return {column: np.concatenate([encoded[name].reshape(len(encoded[name]), -1)
                                    for name, _ in parts], axis=1)
            for column, parts in _packed(specs).items()}


def unpack_user(batch: dict[str, np.ndarray], specs: list[dict]) -> dict[str, np.ndarray]:
    """The packed columns of `batch` -> encoded user inputs, each in its own shape."""
    shapes = {s["name"]: tuple(s["shape"]) for s in specs}
    out = {}
    for column, parts in _packed(specs).items():
        start = 0
        for name, width in parts:
            values = batch[column][:, start:start + width]
            out[name] = values.reshape(len(values), *shapes[name])
            start += width
    return out


class RetrieveCandidates(Stage):
    """sources: `retrieval` (query tower), `index` (Faiss), `features` (online store),
    `ranking` (the ranker's encoders, for the user features passed on).
    params: `candidates` (N), `recent_items` (width), `user_features` (the ranker's encoded
    user inputs), `query_history` (width of the history passed on to the ranker; 0: none),
    `exclude_seen` (skip the history's items in the search, as filtering would
    drop them). arrays: `popular` (item ids, most popular first), `excluded` (item ids the
    business rules exclude, skipped in the search)."""

    READS = {"retrieval": retrieval_artifact.QUERY_FILES, "index": (), "features": ONLINE_FILES,
             "ranking": (dlrm.ENCODERS_DIR,)}

    @property
    def inputs(self):
        return [ColumnSpec(USER_ID, "int64"), ColumnSpec(HISTORY, "int64", (-1, -1),
                                                         optional=True)]

    @property
    def outputs(self):
        n = int(self.params["candidates"])
        return [
            ColumnSpec(CANDIDATE_IDS, "int64", (-1, n)),
            ColumnSpec(RETRIEVAL_SCORES, "float32", (-1, n)),
            ColumnSpec(RECENT_ITEMS, "int64", (-1, int(self.params["recent_items"]))),
            ColumnSpec(COLD_START, "int8"),
            ColumnSpec(HISTORY_ONLY, "int8"),
            *history_columns(int(self.params.get("query_history", 0))),
        ] + user_columns(self.params["user_features"])

    def _open(self) -> None:
        from mstage.features.online import OnlineFeatures
        from mstage.index.faiss_index import FaissIndex
        from mstage.models.encoders import FeatureEncoders
        from mstage.models.two_tower import load_query_tower

        self.query_tower = load_query_tower(self.sources["retrieval"])
        self.index = FaissIndex.load(self.sources["index"])
        self.store = OnlineFeatures.open(self.sources["features"])
        self.forward = FeatureEncoders.load(self.sources["ranking"] / dlrm.ENCODERS_DIR)
        # A lookup table, built once: np.isin would sort the whole list on every request.
        self.excluded = IdLookup(self.arrays.get("excluded", np.zeros(0, dtype=np.int64)))
        # Where the index can, its search passes over them itself.
        self.skip = self.index.skipping(self.excluded.ids)

    def _search(self, embeddings: np.ndarray, n: int, seen: np.ndarray | None):
        """Faiss top-n per query ([b, n] ids and scores), skipping what filtering would drop:
        each row's `seen` ids ([b, R], -1 padded) and the items business rules exclude
        (`excluded` array). A history-aware query scores the user's own recent items high,
        and out-of-stock items never trained on can land anywhere (they share their
        features' embedding, so they come in crowds): left in, they would crowd the n slots
        and the list be refilled from popularity. The index passes over the excluded items
        inside its search where it can (`FaissIndex.skipping`); the search fetches R more
        for the seen items (and, without skipping, at most 4n more for excluded ones) and
        keeps the best n others, in order. Rows still short are searched again with 4x as
        many results, until full or the whole catalog was searched."""
        if seen is None:
            seen = np.zeros((len(embeddings), 0), dtype=np.int64)
        over = 0 if self.skip is not None else min(len(self.excluded), 4 * n)
        k = n + seen.shape[1] + over
        if k == n:
            return self.index.search(embeddings, n, self.skip)
        ids, scores, short = self._kept(embeddings, k, n, seen)
        while short.size and k < self.index.n_items:
            k = min(4 * k, self.index.n_items)
            ids[short], scores[short], still = self._kept(embeddings[short], k, n, seen[short])
            short = short[still]
        return ids, scores

    def _kept(self, embeddings: np.ndarray, k: int, n: int, seen: np.ndarray):
        """The best n of the top k that filtering keeps ([b, n] ids and scores, padded), and
        the rows that kept fewer than n while the index had more to give."""
        ids, scores = self.index.search(embeddings, k, self.skip)
        drop = in_rows(ids, seen)
        if self.skip is None:  # else the index passed over the excluded items itself
            drop |= self.excluded.find(ids)[1]
        order = np.argsort(drop, axis=1, kind="stable")[:, :n]
        ids, scores = np.take_along_axis(ids, order, 1), np.take_along_axis(scores, order, 1)
        dropped = np.take_along_axis(drop, order, 1)
        ids, scores = np.where(dropped, PAD, ids), np.where(dropped, -np.inf, scores)
        short = np.flatnonzero((ids == PAD).any(axis=1) & (k < self.index.n_items))
        return ids, scores.astype(np.float32), short

    def run(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = int(self.params["candidates"])
        user_ids = np.asarray(batch[USER_ID], dtype=np.int64)
        features = self.store.users(user_ids)
        found = features.pop("found")
        recent = features.pop(RECENT_ITEMS)
        history = batch.get(HISTORY, recent)
        seen_by_model = self.query_tower.encoders.user_ids.lookup(user_ids) > 0
        # A user the model never saw is still embedded when the store holds their history and
        # the tower reads history: their id maps to index 0, the history moves the query.
        history_only = (found & ~seen_by_model & (history != PAD).any(axis=1)
                        & (self.query_tower.history > 0))
        known = (found & seen_by_model) | history_only
        ids = np.full((len(user_ids), n), PAD, dtype=np.int64)
        scores = np.full((len(user_ids), n), -np.inf, dtype=np.float32)
        rows = np.flatnonzero(known)
        if rows.size:
            embeddings = self.query_tower({k: v[rows] for k, v in features.items()},
                                          history[rows])
            seen = history[rows] if self.params["exclude_seen"] else None
            with _faiss_threads(1 if rows.size < THREADED_BATCH else None):
                ids[rows], scores[rows] = self._search(embeddings, n, seen)
        cold = np.flatnonzero(~known)
        if cold.size:
            popular = self.arrays["popular"][:n]
            ids[cold, : len(popular)] = popular
            scores[cold, : len(popular)] = -np.arange(len(popular), dtype=np.float32)
        encoded = self.forward.encode_users(features)
        passed_on = {}
        if width := int(self.params.get("query_history", 0)):
            passed_on[QUERY_HISTORY] = np.full((len(user_ids), width), PAD, dtype=np.int64)
            passed_on[QUERY_HISTORY][:, :min(width, history.shape[1])] = history[:, :width]
        return passed_on | {
            CANDIDATE_IDS: ids,
            RETRIEVAL_SCORES: scores,
            RECENT_ITEMS: np.ascontiguousarray(recent, dtype=np.int64),
            COLD_START: (~known).astype(np.int8),
            HISTORY_ONLY: history_only.astype(np.int8),
        } | pack_user(encoded, self.params["user_features"])
