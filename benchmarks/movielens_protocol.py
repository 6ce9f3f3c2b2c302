"""Calibrate the evaluation protocol on MovieLens-100K: popularity and ItemKNN on both splits.

usage: .venv/bin/python benchmarks/movielens_protocol.py [--data DIR] [--folds-rows N]
                                                          [--eval-size USERSxITEMS]

Extracts MovieLens-100K with ../shared/datasets/movielens-100k into DIR (default
benchmarks/.data/ml100k, git-ignored; the license forbids committing it), builds interactions
(every rating is a positive), assigns folds and prints the table of docs/evaluation.md next to
the reference rows. `--folds-rows N` also times `assign_folds` on N synthetic rows and
`--eval-size 20000x20000` times `evaluate_scores` of a 32-dim dot-product model (float32)
with that many users and catalog items.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT / "benchmarks" / ".data" / "ml100k"
# ../shared beside the checkout, else the workplace's copy (a clone may live elsewhere).
EXTRACTOR = next((p for p in (ROOT.parent / "shared" / "datasets" / "movielens-100k",
                              Path("/work/shared/datasets/movielens-100k")) if p.exists()),
                 ROOT.parent / "shared" / "datasets" / "movielens-100k")

# (split, model) -> recall@10, recall@20, recall@100, NDCG@10, HitRate@10, users evaluated.
REFERENCE = {
    ("user-temporal", "popularity"): (0.0601, 0.0974, 0.3195, 0.1162, 0.5376, 943),
    ("user-temporal", "itemknn"): (0.1133, 0.1861, 0.4642, 0.1892, 0.7031, 943),
    ("global", "popularity"): (0.0665, 0.1328, 0.3502, 0.1486, 0.5140, 107),
    ("global", "itemknn"): (0.0449, 0.0742, 0.2252, 0.1444, 0.4019, 107),
}
COLUMNS = ("recall@10", "recall@20", "recall@100", "ndcg@10", "hitrate@10", "users")
# The genre flag columns of movies.parquet (MovieLens-100K's u.item).
GENRES = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
          "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
          "Romance", "Sci-Fi", "Thriller", "War", "Western"]


def extract_movielens(data_dir: Path = DEFAULT_DATA, timeout: float = 300) -> Path:
    """Make sure DIR/ratings.parquet (and users, movies) exists, extracting it on first use;
    returns DIR. Every MovieLens benchmark extracts through here."""
    if not (data_dir / "ratings.parquet").exists():
        done = subprocess.run([sys.executable, str(EXTRACTOR), str(data_dir)],
                              capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise RuntimeError(f"{EXTRACTOR} exited with {done.returncode}: {last}")
    return data_dir


def movielens_interactions(data_dir: Path):
    """ratings.parquet -> user_id, item_id (= movie_id), timestamp, label = 1 (all ratings)."""
    import pandas as pd

    ratings = pd.read_parquet(data_dir / "ratings.parquet")
    return pd.DataFrame({
        "user_id": ratings["user_id"].astype("int64"),
        "item_id": ratings["movie_id"].astype("int64"),
        "timestamp": ratings["timestamp"].astype("int64"),
        "label": np.ones(len(ratings), dtype=np.int8),
    })


def calibrate(interactions) -> list[dict]:
    """One row per (split, model): metrics, EvalSet counts and wall time of the evaluation."""
    from mstage.data.split import assign_folds
    from mstage.evaluation.baselines import BASELINES
    from mstage.evaluation.protocol import build_eval_set, evaluate_scores

    folded = assign_folds(interactions)
    rows = []
    for split in ("user-temporal", "global"):
        eval_set = build_eval_set(folded, split, "test")
        for model, make_score_fn in BASELINES.items():
            started = time.perf_counter()
            metrics = evaluate_scores(eval_set, make_score_fn(eval_set))
            rows.append({"split": split, "model": model, **metrics, **eval_set.stats,
                         "seconds": time.perf_counter() - started})
    return rows


def time_assign_folds(n_rows: int, seed: int = 0) -> float:
    """Seconds for assign_folds on n_rows synthetic rows (n_rows / 50 users, 30% negatives)."""
    import pandas as pd

    from mstage.data.split import assign_folds

    rng = np.random.default_rng(seed)
    df = pd.DataFrame({
        "user_id": rng.integers(0, max(n_rows // 50, 1), n_rows),
        "item_id": rng.integers(0, 100_000, n_rows),
        "timestamp": rng.integers(1_500_000_000, 1_600_000_000, n_rows),
        "label": (rng.random(n_rows) < 0.7).astype(np.int8),
    })
    started = time.perf_counter()
    assign_folds(df)
    return time.perf_counter() - started


def time_evaluate(n_users: int, n_items: int, seed: int = 0) -> tuple[float, int, int]:
    """(seconds, evaluated users, catalog size) for evaluate_scores at ks (10, 20, 100) on
    synthetic interactions (~30 per user) scored by random 32-dim user/item vectors."""
    import pandas as pd

    from mstage.data.split import assign_folds
    from mstage.evaluation.protocol import build_eval_set, evaluate_scores

    rng = np.random.default_rng(seed)
    n = n_users * 30
    folded = assign_folds(pd.DataFrame({
        "user_id": rng.integers(0, n_users, n), "item_id": rng.integers(0, n_items, n),
        "timestamp": rng.integers(0, 10**9, n), "label": np.ones(n, dtype=np.int8)}))
    eval_set = build_eval_set(folded, "user-temporal", "test")
    user_vectors = rng.standard_normal((n_users, 32), dtype=np.float32)
    item_vectors = rng.standard_normal((32, eval_set.n_catalog), dtype=np.float32)
    started = time.perf_counter()
    evaluate_scores(eval_set, lambda users: user_vectors[users] @ item_vectors)
    return time.perf_counter() - started, len(eval_set.users), eval_set.n_catalog


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--folds-rows", type=int, default=0)
    parser.add_argument("--eval-size", default="", help="USERSxITEMS, e.g. 20000x20000")
    args = parser.parse_args()

    interactions = movielens_interactions(extract_movielens(args.data))
    started = time.perf_counter()
    rows = calibrate(interactions)
    total = time.perf_counter() - started
    header = ["split", "model", "users", *COLUMNS[:-1], "coverage@10", "eval s", "ref ok"]
    print("| " + " | ".join(header) + " |")
    print("|---" * 10 + "|")
    for row in rows:
        ref = REFERENCE[(row["split"], row["model"])]
        ok = all(round(row[c], 4) == r for c, r in zip(COLUMNS[:-1], ref, strict=False))
        ok = ok and row["users"] == ref[-1]
        values = " | ".join(f"{row[c]:.4f}" for c in COLUMNS[:-1])
        print(f"| {row['split']} | {row['model']} | {row['users']} | {values} | "
              f"{row['coverage@10']:.4f} | {row['seconds']:.2f} | {'yes' if ok else 'NO'} |")
    for row in rows[::2]:
        print(f"{row['split']}: train {row['train_users']} users / {row['train_items']} items / "
              f"{row['train_interactions']} interactions; test {row['test_users']} users / "
              f"{row['test_items']} items / {row['test_interactions']} interactions")
    print(f"folds + eval sets + 4 evaluations: {total:.2f} s")
    if args.folds_rows:
        seconds = time_assign_folds(args.folds_rows)
        print(f"assign_folds on {args.folds_rows:,} rows: {seconds:.1f} s")
    if args.eval_size:
        n_users, n_items = (int(v) for v in args.eval_size.lower().split("x"))
        seconds, users, catalog = time_evaluate(n_users, n_items)
        print(f"evaluate_scores, {users:,} users x {catalog:,} items, k up to 100: "
              f"{seconds:.1f} s ({users * catalog / seconds / 1e6:.0f}M scores/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
