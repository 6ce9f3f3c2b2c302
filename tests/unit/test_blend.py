"""The ordering blend chosen on validation: the weight follows whichever model orders the
held-out items better."""

import numpy as np

from mstage.models.retrieval_artifact import ValidationCandidates
from mstage.training.blend import WEIGHTS, choose_blend

IDS = np.array([[10, 11, 12], [20, 21, -1]])
RETRIEVAL = np.array([[0.9, 0.5, 0.1], [0.8, 0.2, -np.inf]], np.float32)
RELEVANT = [np.array([12]), np.array([21])]  # what each user went on to take: retrieval's last


def _candidates(ids=IDS):
    return ValidationCandidates("user-temporal", np.array([1, 2]), ids, RETRIEVAL)


def test_a_ranker_that_knows_better_gets_the_order_alone():
    knows = np.array([[0.1, 0.2, 0.9], [0.1, 0.9, 0.5]])  # the relevant items first
    choice = choose_blend(_candidates(), knows, RELEVANT)
    assert choice.weight == 0.0
    assert choice.ndcg["0"] == 1.0 and choice.ndcg["100"] < 1.0
    # retrieval's own order puts the relevant item last: NDCG 1/log2(4) and 1/log2(3)
    np.testing.assert_allclose(choice.retrieval_ndcg, (0.5 + 1 / np.log2(3)) / 2, atol=1e-6)
    assert choice.users == 2 and set(choice.ndcg) == {f"{w:g}" for w in WEIGHTS}


def test_a_ranker_that_knows_nothing_leaves_the_order_to_retrieval():
    flat = np.full(IDS.shape, 0.5)
    ids = np.array([[12, 11, 10], [21, 20, -1]])  # retrieval's first is now right
    choice = choose_blend(_candidates(ids), flat, [np.array([12]), np.array([21])])
    # weight 0 orders the ties by smaller id (wrong); every positive weight by retrieval
    assert choice.weight == 0.5 and choice.ndcg["0.5"] == 1.0
    assert choice.metrics()["retrieval_weight"] == 0.5
