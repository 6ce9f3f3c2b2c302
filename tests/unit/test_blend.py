"""The ordering blend chosen on validation: the weight follows whichever model orders the
held-out items better."""

import numpy as np

from mstage.models.retrieval_artifact import ValidationCandidates
from mstage.training.blend import WEIGHTS, choose_blend, within_one_standard_error

IDS = np.array([[10, 11, 12], [20, 21, -1]])
RETRIEVAL = np.array([[0.9, 0.5, 0.1], [0.8, 0.2, -np.inf]], np.float32)
RELEVANT = [np.array([12]), np.array([21])]  # what each user went on to take: retrieval's last


def _candidates(ids=IDS):
    return ValidationCandidates("user-temporal", np.array([1, 2]), ids, RETRIEVAL)


def test_a_ranker_that_knows_better_gets_the_order():
    knows = np.array([[0.1, 0.2, 0.9], [0.1, 0.9, 0.5]])  # the relevant items first
    three = ValidationCandidates("user-temporal", np.arange(6), np.tile(IDS, (3, 1)),
                                 np.tile(RETRIEVAL, (3, 1)))
    choice = choose_blend(three, np.tile(knows, (3, 1)), RELEVANT * 3)
    # The ranker's order holds up to weight 5 (the best); from 7.5 retrieval's reorders the
    # second user of each pair: worse by more than the paired error.
    assert choice.ndcg["0"] == choice.ndcg["5"] == 1.0 and choice.ndcg["7.5"] < 0.7
    assert choice.weight == 5.0
    # retrieval's own order puts the relevant item last: NDCG 1/log2(4) and 1/log2(3)
    np.testing.assert_allclose(choice.retrieval_ndcg, (0.5 + 1 / np.log2(3)) / 2, atol=1e-6)
    assert choice.users == 6 and set(choice.ndcg) == {f"{w:g}" for w in WEIGHTS}


def test_a_ranker_that_knows_nothing_leaves_the_order_to_retrieval():
    flat = np.full(IDS.shape, 0.5)
    ids = np.array([[12, 11, 10], [21, 20, -1]])  # retrieval's first is now right
    choice = choose_blend(_candidates(ids), flat, [np.array([12]), np.array([21])])
    # weight 0 orders the ties by smaller id (wrong); every positive weight by retrieval
    assert choice.ndcg["0"] < 1.0 and choice.ndcg["0.5"] == 1.0
    assert choice.weight == max(WEIGHTS) == choice.metrics()["retrieval_weight"]


def test_the_largest_weight_within_one_standard_error_of_the_best():
    rng = np.random.default_rng(0)
    base = rng.random(400)
    noise = rng.normal(0, 0.05, 400)
    per_user = {1.0: base + 0.02,  # the best mean
                5.0: base + 0.02 + noise,  # as good, up to noise: within one error
                10.0: base - 0.01,  # 0.03 worse on every user: the error is 0
                20.0: base - 0.01 + noise}
    assert within_one_standard_error(per_user) == 5.0
    assert within_one_standard_error({1.0: base, 2.0: base}) == 2.0  # ties: the larger
    assert within_one_standard_error({3.0: base}) == 3.0
