"""How well the pipeline orders its candidates: the same candidates ordered several ways.

usage: .venv/bin/python benchmarks/ordering_diagnosis.py WORKSPACE [FACTORS.npz]

Runs retrieval and filtering of the workspace's pipeline for every evaluated test user
(train items as seen), then orders the surviving candidates by (a) the retrieval score,
(b) the ranker's click probability (what the pipeline does), (c) ranker logit + retrieval
score / T, and, given the generator's `factors.npz` (`generate-data --save-factors`), (d) the
true click logit, alone and blended with the retrieval score, and with the generator's
`generator.json` beside the factors (e) the true exposure and expected clicks (exposure x
CTR: a test click is an item the previous recommender showed, then clicked). Prints NDCG@10
and recall@100 of each, and the ranker's AUC of test clicks against random catalog items
(the task ordering needs) next to its impression AUC.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np


def main(workspace: str, factors: str | None = None) -> None:
    from mstage.columns import (
        FILTERED_IDS,
        FILTERED_SCORES,
        HISTORY,
        PAD,
        RANKING_SCORES,
        RECENT_ITEMS,
    )
    from mstage.config import load_config
    from mstage.data.schema import PreparedData
    from mstage.evaluation.evaluate import seen_items, train_histories
    from mstage.evaluation.metrics import auc, ndcg_at_k, recall_at_k
    from mstage.evaluation.protocol import load_eval_set
    from mstage.models.retrieval_artifact import read_params
    from mstage.pipeline.recommender import Recommender, pad_rows
    from mstage.workspace import Artifact, Workspace

    ws = Workspace(workspace)
    data = PreparedData(ws.require(Artifact.DATA))
    eval_set = load_eval_set(data, "user-temporal", "test")
    users, relevant = eval_set.users, eval_set.relevant
    # The store's recent items hold the test clicks too: read train histories instead.
    length = read_params(ws.path(Artifact.RETRIEVAL)).get("history", 0)
    history_of = train_histories(data, "user-temporal", int(length))
    recommender = Recommender.from_workspace(ws, load_config(ws.config_path), candidates=200,
                                             top_k=100, only_items=eval_set.catalog)
    columns, _ = recommender.pipeline.run(
        {"user_id": users, "top_k": np.full(len(users), 100)},
        pinned={RECENT_ITEMS: pad_rows(seen_items(eval_set, users)),
                HISTORY: history_of(users)})
    ids = columns[FILTERED_IDS]
    retrieval, ranker = columns[FILTERED_SCORES], columns[RANKING_SCORES]
    real = ids != PAD
    p = np.clip(ranker, 1e-6, 1 - 1e-6)
    orders = {"retrieval score": retrieval, "ranker probability (pipeline)": ranker,
              "ranker logit + retrieval / 0.1": np.log(p) - np.log1p(-p) + retrieval / 0.1}
    truth = np.load(factors, allow_pickle=False) if factors else None
    if truth is not None:
        u = truth["user_factors"][np.searchsorted(truth["user_id"], users)]
        i = np.searchsorted(truth["item_id"], np.where(real, ids, truth["item_id"][0]))
        logit = (truth["click_scale"] * np.einsum("bd,bnd->bn", u, truth["item_factors"][i])
                 + truth["item_bias"][i] + truth["click_offset"])
        orders["true click logit"] = logit
        for weight in (5.0, 10.0, 20.0):
            orders[f"true click logit + {weight:g} x retrieval"] = logit + weight * retrieval
        exposure = _exposure(Path(factors).parent, users, i)
        if exposure is not None:
            orders["true exposure"] = exposure
            orders["true expected clicks (exposure x CTR)"] = exposure / (1 + np.exp(-logit))
    print(f"{len(users)} users, candidate recall after filtering "
          f"{recall_at_k(ids, relevant, ids.shape[1]):.4f}")
    for name, score in orders.items():
        order = np.argsort(-np.where(real, score, -np.inf), axis=1, kind="stable")
        ranked = np.take_along_axis(ids, order, 1)
        print(f"{name:34s} NDCG@10 {ndcg_at_k(ranked, relevant, 10):.4f}   "
              f"recall@100 {recall_at_k(ranked, relevant, 100):.4f}")

    from mstage.models.dlrm import RankingScorer

    scorer = RankingScorer.load(ws.path(Artifact.RANKING))
    rng = np.random.default_rng(0)
    pos_u = np.repeat(users, [len(r) for r in relevant])
    pos_i = np.concatenate(relevant)
    neg_i = rng.choice(eval_set.catalog, len(pos_i))
    u_rows = data.users.set_index("user_id").loc[np.r_[pos_u, pos_u]].reset_index()
    i_rows = data.items.set_index("item_id").loc[np.r_[pos_i, neg_i]].reset_index()
    probs = scorer.score({c: u_rows[c].to_numpy() for c in u_rows.columns},
                         {c: i_rows[c].to_numpy() for c in i_rows.columns})
    labels = np.r_[np.ones(len(pos_i)), np.zeros(len(neg_i))]
    impression_auc = (ws.record(Artifact.RANKING) or {}).get("metrics", {}).get("test_auc")
    print(f"ranker AUC, test clicks vs random catalog items: {auc(labels, probs):.4f} "
          f"(its test AUC on impressions: {impression_auc})")


def _exposure(generated: Path, users: np.ndarray, items: np.ndarray, draws: int = 4000):
    """How often the generator's previous recommender shows each of `items` [u, n] (dense
    item rows) to each user id of `users`, estimated from `draws` simulated impressions per
    user; None unless `generated` holds the generator.json of the data."""
    import json

    from mstage.data import synthetic

    marker = generated / synthetic.MARKER
    if not marker.is_file():
        return None
    spec = json.loads(marker.read_text())
    world = synthetic.build_world(spec["users"], spec["items"], spec["seed"])
    sampler = synthetic._Sampler(world)
    rng = np.random.default_rng(0)
    dense = np.searchsorted(synthetic.user_ids(world.n_users), users)
    shown = np.stack([np.bincount(sampler.sample(np.full(draws, u), rng), minlength=world.n_items)
                      for u in dense]) / draws
    return np.take_along_axis(shown, items, 1)


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3) or not Path(sys.argv[1]).is_dir():
        sys.exit(__doc__.split("\n\n")[1])
    main(*sys.argv[1:])
