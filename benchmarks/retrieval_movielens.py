"""Two-tower retrieval on MovieLens-100K under the evaluation protocol, beside the baselines.

Extracts the data set into benchmarks/.data/ (never committed), builds the prepared-data
layout (every rating is a positive; folds from mstage.data.split), trains with
`mstage.training.retrieval.fit_retrieval` over several seeds and prints a markdown table of
test metrics (mean ± sd) with popularity and ItemKNN, training throughput and peak RSS.

    .venv/bin/python benchmarks/retrieval_movielens.py                 # the recorded run
    .venv/bin/python benchmarks/retrieval_movielens.py --phase validation --seeds 1 \\
        --set temperature=0.1 --set embedding_dim=32                   # tuning
    .venv/bin/python benchmarks/retrieval_movielens.py --synthetic 1000000  # throughput only
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
from movielens_protocol import GENRES, extract_movielens

ROOT = Path(__file__).resolve().parent
DATA = ROOT / ".data"


def movielens_prepared() -> Path:
    """benchmarks/.data/ml-100k-prepared/ in the workspace/data/ layout."""
    import pandas as pd

    from mstage.data.schema import Feature, Schema, write_prepared
    from mstage.data.split import assign_folds

    raw, out = DATA / "ml-100k", DATA / "ml-100k-prepared"
    if (out / "schema.json").exists():
        return out
    extract_movielens(raw)
    ratings = pd.read_parquet(raw / "ratings.parquet")
    users = pd.read_parquet(raw / "users.parquet")
    movies = pd.read_parquet(raw / "movies.parquet")
    interactions = pd.DataFrame({
        "user_id": ratings["user_id"].astype("int64"),
        "item_id": ratings["movie_id"].astype("int64"),
        "timestamp": ratings["timestamp"].astype("int64"),
        "label": np.int8(1),
    })
    interactions = assign_folds(interactions).sort_values(["user_id", "timestamp"])
    user_table = pd.DataFrame({
        "user_id": users["user_id"].astype("int64"),
        "age_group": (users["age"] // 10 * 10).astype(str),
        "age": users["age"].astype("float64"),
        "gender": users["gender"].astype(str),
        "occupation": users["occupation"].astype(str),
    })
    item_table = pd.DataFrame({
        "item_id": movies["movie_id"].astype("int64"),
        "genres": [[g for g in GENRES if row[g] == 1] for _, row in movies.iterrows()],
        "year": pd.to_datetime(movies["release_date"], errors="coerce").dt.year.astype("float64"),
    })
    schema = Schema(
        user_features=[Feature("age_group", "categorical"), Feature("age", "numeric"),
                       Feature("gender", "categorical"), Feature("occupation", "categorical")],
        item_features=[Feature("genres", "multi"), Feature("year", "numeric")],
        counts={"users": len(user_table), "items": len(item_table),
                "interactions": len(interactions)},
    )
    return write_prepared(out, interactions, user_table, item_table, schema)


def synthetic_prepared(n_interactions: int) -> Path:
    """A prepared data set of random interactions (throughput and memory only)."""
    import pandas as pd

    from mstage.data.schema import Feature, Schema, write_prepared
    from mstage.data.split import assign_folds

    out = DATA / f"synthetic-{n_interactions}"
    if (out / "schema.json").exists():
        return out
    rng = np.random.default_rng(0)
    n_users, n_items = n_interactions // 20, max(1000, n_interactions // 50)
    popularity = 1.0 / (1.0 + np.arange(n_items)) ** 0.8
    interactions = pd.DataFrame({
        "user_id": rng.integers(0, n_users, n_interactions).astype("int64"),
        "item_id": rng.choice(n_items, n_interactions, p=popularity / popularity.sum()),
        "timestamp": rng.integers(1_600_000_000, 1_700_000_000, n_interactions),
        "label": np.int8(1),
    })
    interactions = assign_folds(interactions)
    users = pd.DataFrame({"user_id": np.arange(n_users, dtype="int64"),
                          "region": [f"r{i % 50}" for i in range(n_users)]})
    items = pd.DataFrame({"item_id": np.arange(n_items, dtype="int64"),
                          "category": [f"c{i % 200}" for i in range(n_items)],
                          "price": rng.lognormal(2, 1, n_items)})
    schema = Schema([Feature("region", "categorical")],
                    [Feature("category", "categorical"), Feature("price", "numeric")])
    return write_prepared(out, interactions, users, items, schema)


def _value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--phase", choices=["test", "validation"], default="test",
                        help="validation: report the early-stopping curve only (tuning)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a [retrieval] setting, e.g. temperature=0.1")
    parser.add_argument("--synthetic", type=int, default=0,
                        help="train on N random interactions instead (throughput, peak RSS)")
    parser.add_argument("--no-baselines", action="store_true")
    parser.add_argument("--ids-only", action="store_true",
                        help="ablation: drop every user and item feature, keep the ids")
    args = parser.parse_args()

    from mstage.config import RetrievalConfig
    from mstage.data.schema import PreparedData
    from mstage.evaluation.baselines import item_knn, popularity
    from mstage.evaluation.protocol import build_eval_set, evaluate_scores
    from mstage.training.retrieval import fit_retrieval

    data = PreparedData(synthetic_prepared(args.synthetic) if args.synthetic
                        else movielens_prepared())
    if args.ids_only:
        data.schema.user_features, data.schema.item_features = [], []
    overrides = dict(item.split("=", 1) for item in args.set)
    base = RetrievalConfig(**{k: _value(v) for k, v in overrides.items()})
    print(f"config: {dataclasses.asdict(base)}", file=sys.stderr)
    runs, wall_times = [], []
    for seed in range(args.seeds):
        config = dataclasses.replace(base, seed=base.seed + seed)
        started = time.perf_counter()
        run = fit_retrieval(data, config, validation_only=args.phase == "validation")
        wall = time.perf_counter() - started
        runs.append(run)
        wall_times.append(wall)
        curve = " ".join(f"{v['recall@20']:.4f}" for v in run.validation)
        print(f"seed {config.seed}: best epoch {run.best_epoch}, validation recall@20 [{curve}], "
              f"test {json.dumps({k: round(v, 4) for k, v in run.test.items()})}, "
              f"{run.examples_per_second:.0f} examples/s, wall {wall:.1f} s", file=sys.stderr)
    names = ["recall@10", "recall@20", "recall@100", "ndcg@10", "hitrate@10"]
    rows = []
    if args.phase == "test" and not args.synthetic:
        test_set = build_eval_set(data.interactions, base.split, "test")
        for metric in names:
            values = np.array([r.test[metric] for r in runs])
            rows.append(f"{values.mean():.4f} ± {values.std(ddof=1) if len(values) > 1 else 0:.4f}")
        print(f"| {base.split} | two-tower ({args.seeds} seeds) | {len(test_set.users)} | "
              + " | ".join(rows) + " |")
        if not args.no_baselines:
            for name, make in (("popularity", popularity), ("ItemKNN", item_knn)):
                m = evaluate_scores(test_set, make(test_set), (10, 20, 100))
                print(f"| {base.split} | {name} | {m['users']} | "
                      + " | ".join(f"{m[n]:.4f}" for n in names) + " |")
    best_val = [max(v["recall@20"] for v in r.validation) for r in runs if r.validation]
    if best_val:
        print(f"validation recall@20 (best epoch): {np.mean(best_val):.4f} ± "
              f"{np.std(best_val):.4f}; epochs {[r.best_epoch for r in runs]}")
    rate = np.mean([r.examples_per_second for r in runs])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    refit = np.mean([r.train_seconds for r in runs])
    walls = np.mean(wall_times)
    if runs[0].stats:
        print(f"data: {json.dumps(runs[0].stats)}")
    print(f"refit throughput {rate:.0f} examples/s, refit {refit:.1f} s per fit, "
          f"{walls:.1f} s per full run (validation + refit + test), peak RSS {peak:.0f} MiB")


if __name__ == "__main__":
    main()
