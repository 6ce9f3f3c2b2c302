"""Stage 3, scoring: item features for the candidates + the user's features -> DLRM clicks.

Item features come from the feature store once, at load, and are held encoded in memory
as arrays indexed by catalog position; the user's features arrive already encoded
(`user__<feature>` columns from retrieval). Every real (user, candidate) pair of the batch
is scored in one call of the ranker; padding gets -inf.
"""

from __future__ import annotations

import numpy as np

from mstage.pipeline.base import Catalog, StageOperator, item_table
from mstage.pipeline.operator import ColumnSpec
from mstage.pipeline.ordering import PAD
from mstage.pipeline.retrieval import USER_PREFIX


class ScoreCandidates(StageOperator):
    """sources: `ranking` (DLRM SavedModel + encoders), `features` (item features).
    params: `width` (candidate list width)."""

    def _open(self) -> None:
        from mstage.models.dlrm import RankingScorer

        self.scorer = RankingScorer.load(self.sources["ranking"])
        items = item_table(str(self.sources["features"]), self.params["item_source"])
        self.catalog = Catalog(items["item_id"].to_numpy(dtype=np.int64))
        self.item_features = self.scorer.encoders.encode_items(items)
        width = int(self.params["width"])
        self.user_specs = self.scorer.encoders.specs("user")
        self.inputs = [ColumnSpec("filtered_ids", "int64", (-1, width))] + [
            ColumnSpec(USER_PREFIX + s.name, s.dtype, (-1, *s.shape)) for s in self.user_specs]
        self.outputs = [ColumnSpec("ranking_scores", "float32", (-1, width))]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids = batch["filtered_ids"]
        pos, known = self.catalog.positions(ids)
        real = (ids != PAD) & known
        rows, cols = np.nonzero(real)
        features = {name: values[pos[rows, cols]] for name, values in self.item_features.items()}
        for spec in self.user_specs:
            features[spec.name] = batch[USER_PREFIX + spec.name][rows]
        scores = np.full(ids.shape, -np.inf, dtype=np.float32)
        scores[rows, cols] = self.scorer.score_encoded(features)
        return {"ranking_scores": scores}
