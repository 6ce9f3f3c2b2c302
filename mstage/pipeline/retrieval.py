"""Stage 1, retrieval: user id -> user features (Feast) -> query tower -> Faiss top-N.

The one online-store read per request happens here; the user's features travel on to
scoring as tensors encoded with the ranker's encoders (`user__<feature>` columns), and the
user's recent items travel on to filtering. Users unknown to the feature store or to the
model get the most popular items instead, flagged in `cold_start`.
"""

from __future__ import annotations

import contextlib

import numpy as np

from mstage.pipeline.base import StageOperator
from mstage.pipeline.operator import ColumnSpec
from mstage.pipeline.ordering import PAD

USER_PREFIX = "user__"
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


class RetrieveCandidates(StageOperator):
    """sources: `retrieval` (query tower), `index` (Faiss), `features` (Feast repository),
    `ranking` (the ranker's encoders, for the user features passed on).
    params: `candidates` (N). arrays: `popular` (item ids, most popular first)."""

    def _open(self) -> None:
        from mstage.features.online import OnlineFeatures
        from mstage.index.faiss_index import FaissIndex
        from mstage.models.encoders import FeatureEncoders
        from mstage.models.two_tower import load_query_tower

        self.query_tower = load_query_tower(self.sources["retrieval"])
        self.index = FaissIndex.load(self.sources["index"])
        self.store = OnlineFeatures.open(self.sources["features"])
        self.forward = FeatureEncoders.load(self.sources["ranking"] / "encoders")
        self.n = int(self.params["candidates"])
        self.inputs = [ColumnSpec("user_id", "int64")]
        recent = self.store.spec.recent_items
        self.outputs = [
            ColumnSpec("candidate_ids", "int64", (-1, self.n)),
            ColumnSpec("retrieval_scores", "float32", (-1, self.n)),
            ColumnSpec("recent_items", "int64", (-1, recent)),
            ColumnSpec("cold_start", "int8"),
        ] + [ColumnSpec(USER_PREFIX + s.name, s.dtype, (-1, *s.shape))
             for s in self.forward.specs("user")]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        user_ids = np.asarray(batch["user_id"], dtype=np.int64)
        features = self.store.users(user_ids)
        found = features.pop("found")
        recent = features.pop("recent_items")
        known = found & (self.query_tower.encoders.user_ids.lookup(user_ids) > 0)
        ids = np.full((len(user_ids), self.n), PAD, dtype=np.int64)
        scores = np.full((len(user_ids), self.n), -np.inf, dtype=np.float32)
        rows = np.flatnonzero(known)
        if rows.size:
            known_features = {k: v[rows] for k, v in features.items()}
            embeddings = self.query_tower(known_features)
            with _faiss_threads(1 if rows.size < THREADED_BATCH else None):
                ids[rows], scores[rows] = self.index.search(embeddings, self.n)
        cold = np.flatnonzero(~known)
        if cold.size:
            popular = self.arrays["popular"][: self.n]
            ids[cold, : len(popular)] = popular
            scores[cold, : len(popular)] = -np.arange(len(popular), dtype=np.float32)
        encoded = self.forward.encode_users(features)
        return {
            "candidate_ids": ids,
            "retrieval_scores": scores,
            "recent_items": np.ascontiguousarray(recent, dtype=np.int64),
            "cold_start": (~known).astype(np.int8),
        } | {USER_PREFIX + k: v for k, v in encoded.items()}
