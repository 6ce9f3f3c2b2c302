"""Stage 3, scoring: the candidates' item features + the user's features -> DLRM clicks.

The catalog's item features are encoded for the ranker when the stage is built and held as
arrays indexed by catalog row; the user's features arrive already encoded (packed by dtype
from retrieval), and so does the history the query read (`query_history`), which a
history-aware ranker reads beside each candidate. Every real (user, candidate) pair of the
batch is scored in one call of the ranker (its LiteRT export: no TensorFlow); padding gets
-inf.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mstage.columns import (
    FILTERED_IDS,
    PAD,
    QUERY_HISTORY,
    RANKING_SCORES,
    ColumnSpec,
)
from mstage.data.lookup import IdLookup
from mstage.models import dlrm
from mstage.pipeline.retrieval import history_columns, unpack_user, user_columns
from mstage.pipeline.stage import Stage

ITEM_PREFIX = "item__"


class ScoreCandidates(Stage):
    """sources: `ranking` (the DLRM's LiteRT export). params: `width` (candidate list width),
    `user_features` (the ranker's encoded user inputs), `history` (the ranker's history
    length; 0: it reads none). arrays: `item_ids` (the catalog)
    and `item__<feature>` (its encoded item inputs). Build it with `from_catalog`."""

    READS = {"ranking": (dlrm.LITE_FILE,)}

    @classmethod
    def from_catalog(cls, items: Any, encoders: Any, params: dict[str, Any],
                     ranking_dir: Any) -> ScoreCandidates:
        """The stage for catalog `items` (DataFrame), encoded with the ranker's `encoders`."""
        encoded = encoders.encode_items(items)
        arrays = {"item_ids": items["item_id"].to_numpy(dtype=np.int64)} | {
            ITEM_PREFIX + name: values for name, values in encoded.items()}
        return cls(params, arrays, {"ranking": ranking_dir})

    @property
    def inputs(self):
        width = int(self.params["width"])
        return [ColumnSpec(FILTERED_IDS, "int64", (-1, width)),
                *user_columns(self.params["user_features"]),
                *history_columns(int(self.params.get("history", 0)))]

    @property
    def outputs(self):
        return [ColumnSpec(RANKING_SCORES, "float32", (-1, int(self.params["width"])))]

    def _open(self) -> None:
        self.scorer = dlrm.RankingScorer.from_lite(self.sources["ranking"])
        self.catalog = IdLookup(self.arrays["item_ids"])
        self.item_features = {name.removeprefix(ITEM_PREFIX): values
                              for name, values in self.arrays.items()
                              if name.startswith(ITEM_PREFIX)}

    def run(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids = batch[FILTERED_IDS]
        pos, known = self.catalog.find(ids)
        rows, cols = np.nonzero((ids != PAD) & known)
        features = {name: values[pos[rows, cols]] for name, values in self.item_features.items()}
        for name, values in unpack_user(batch, self.params["user_features"]).items():
            features[name] = values[rows]
        if int(self.params.get("history", 0)):
            features[dlrm.HISTORY] = self._encoded(batch[QUERY_HISTORY])[rows]
        scores = np.full(ids.shape, -np.inf, dtype=np.float32)
        scores[rows, cols] = self.scorer.score_encoded(features)
        return {RANKING_SCORES: scores}

    def _encoded(self, item_ids: np.ndarray) -> np.ndarray:
        """Item ids [b, L] (PAD padded) -> the ranker's item indices, 0 for padding and items
        outside the catalog."""
        pos, known = self.catalog.find(item_ids)
        return np.where(known & (item_ids != PAD), self.item_features["item_id"][pos], 0)
