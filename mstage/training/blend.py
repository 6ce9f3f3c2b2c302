"""The ordering blend, chosen on validation: how much the retrieval score counts beside the
ranker's click logit (`mstage.pipeline.ordering.blended_score`).

Both models of the validation phase were trained on FIT only. Retrieval's candidates for the
VALID users (`ValidationCandidates`, written by train-retrieval) are scored by the ranker,
ordered under each weight of `WEIGHTS`, and the weight whose top 10 has the best NDCG@10 on
the users' VALID items is kept. The choice prices exactly what ordering does online.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mstage.columns import PAD
from mstage.evaluation.metrics import ndcg_at_k
from mstage.models.retrieval_artifact import ValidationCandidates
from mstage.pipeline.ordering import blended_score, top_k

WEIGHTS = (0.0, 0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 50.0, 100.0)
BLEND_K = 10


@dataclass
class BlendChoice:
    """The weight chosen, the validation NDCG@10 of every weight tried and of retrieval's own
    order, and how many users they were measured on."""

    weight: float
    ndcg: dict[str, float]
    retrieval_ndcg: float
    users: int

    def metrics(self) -> dict[str, object]:
        return {"retrieval_weight": self.weight, "blend_users": self.users,
                "blend_ndcg@10": self.ndcg, "blend_retrieval_ndcg@10": self.retrieval_ndcg}


def choose_blend(candidates: ValidationCandidates, click_probability: np.ndarray,
                 relevant: list[np.ndarray]) -> BlendChoice:
    """The best weight for `candidates` ([u, n] ids and retrieval scores) given the ranker's
    click probabilities [u, n] for them and each user's relevant VALID items. Ties go to the
    smaller weight (the ranker trusted more)."""
    ids = candidates.item_ids
    probability = np.where(ids == PAD, -np.inf, click_probability)
    ndcg = {}
    for weight in WEIGHTS:
        ranked, _ = top_k(ids, blended_score(probability, candidates.scores, weight), BLEND_K)
        ndcg[f"{weight:g}"] = round(ndcg_at_k(ranked, relevant, BLEND_K), 6)
    best = max(ndcg, key=lambda w: (ndcg[w], -float(w)))
    retrieval, _ = top_k(ids, candidates.scores, BLEND_K)
    return BlendChoice(float(best), ndcg, round(ndcg_at_k(retrieval, relevant, BLEND_K), 6),
                       len(ids))
