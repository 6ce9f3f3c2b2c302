"""The ordering blend, chosen on validation: how much the retrieval score counts beside the
ranker's click logit (`mstage.pipeline.ordering.blended_score`).

Both models of the validation phase were trained on FIT only. Retrieval's candidates for the
VALID users (`ValidationCandidates`, written by train-retrieval) are scored by the ranker and
ordered under each weight of `WEIGHTS`; each weight's top 10 is scored by NDCG@10 on the
users' VALID items. The choice prices exactly what ordering does online.

Which weight: the largest whose NDCG@10 is within one standard error of the best weight's
(the error of their per-user paired difference), the one-standard-error rule. On a few
hundred validation users the best weight is partly noise; among weights the data cannot
tell apart, the one that leans most on retrieval changes retrieval's order least. On the
sample data the plain best weight was often the smallest of a flat plateau, where the
served pipeline lost part of its gain over retrieval (benchmarks/RESULTS.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mstage.columns import PAD
from mstage.evaluation.metrics import ndcg_at_k, ndcg_at_k_per_user
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
    """The weight for `candidates` ([u, n] ids and retrieval scores) given the ranker's
    probabilities [u, n] for them and each user's relevant VALID items (module docstring)."""
    ids = candidates.item_ids
    probability = np.where(ids == PAD, -np.inf, click_probability)
    per_user = {}
    for weight in WEIGHTS:
        ranked, _ = top_k(ids, blended_score(probability, candidates.scores, weight), BLEND_K)
        per_user[weight] = ndcg_at_k_per_user(ranked, relevant, BLEND_K)
    ndcg = {f"{w:g}": round(float(v.mean()), 6) for w, v in per_user.items()}
    retrieval, _ = top_k(ids, candidates.scores, BLEND_K)
    return BlendChoice(within_one_standard_error(per_user), ndcg,
                       round(ndcg_at_k(retrieval, relevant, BLEND_K), 6), len(ids))


def within_one_standard_error(per_user: dict[float, np.ndarray]) -> float:
    """The largest weight whose mean is at least the best mean minus the standard error of
    the paired per-user difference from the best weight (values: per-user NDCG, same users)."""
    best = max(per_user, key=lambda w: (per_user[w].mean(), -w))
    chosen = best
    for weight, values in per_user.items():
        diff = per_user[best] - values
        error = diff.std(ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else 0.0
        if weight > chosen and diff.mean() <= error:
            chosen = weight
    return float(chosen)
