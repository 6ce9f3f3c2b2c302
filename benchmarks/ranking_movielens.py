"""DLRM ranking on MovieLens-100K: test AUC and log loss beside the popularity baseline.

Every rating is a positive; negatives are sampled (`--negatives` per positive, the test
split's with a fixed seed), so AUC compares across runs and seeds. Runs `prepare-data` and
`train-ranking` through the library on a workspace in benchmarks/.work/ (never committed).

usage: .venv/bin/python benchmarks/ranking_movielens.py [--seeds 3] [--epochs 10] ...
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from measure import percentiles_ms
from movielens_protocol import GENRES, extract_movielens

HERE = Path(__file__).resolve().parent
DATA = HERE / ".data" / "movielens-100k"
WORK = HERE / ".work" / "ranking-movielens"


def raw_tables() -> dict[str, Path]:
    """Extract MovieLens-100K if needed and write mstage-shaped raw tables."""
    import numpy as np
    import pandas as pd

    extract_movielens(DATA)
    raw = WORK / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    ratings = pd.read_parquet(DATA / "ratings.parquet")
    ratings.rename(columns={"movie_id": "item_id"})[["user_id", "item_id", "timestamp"]] \
        .to_parquet(raw / "interactions.parquet")
    users = pd.read_parquet(DATA / "users.parquet")
    users[["user_id", "age", "gender", "occupation"]].to_parquet(raw / "users.parquet")
    movies = pd.read_parquet(DATA / "movies.parquet")
    flags = movies[GENRES].to_numpy().astype(bool)
    year = pd.to_datetime(movies["release_date"], format="%d-%b-%Y", errors="coerce").dt.year
    pd.DataFrame({
        "item_id": movies["movie_id"],
        "genres": ["|".join(np.array(GENRES)[row]) for row in flags],
        "year": year.astype("float64"),
    }).to_parquet(raw / "items.parquet")
    return {name: raw / f"{name}.parquet" for name in ("interactions", "users", "items")}


def prepare(workspace):
    from mstage.config import DataConfig
    from mstage.data.ingest import prepare_data

    paths = raw_tables()
    config = DataConfig(interactions=str(paths["interactions"]), users=str(paths["users"]),
                        items=str(paths["items"]), categorical=["gender", "occupation"],
                        numeric=["age", "year"], multi_valued=["genres"])
    prepare_data(workspace, config)


def scorer_latency(model_dir: Path, data, repeats: int = 50) -> list[str]:
    """Median ms of RankingScorer for one user against n candidates: raw item features
    (encoded per call) and items encoded once (how the scoring stage holds the catalog)."""
    from mstage.models.dlrm import RankingScorer

    scorer = RankingScorer.load(model_dir)
    user = {c: data.users[c].to_numpy()[:1] for c in data.users.columns}
    lines = []
    for n in (200, 1000):
        items = {c: data.items[c].to_numpy()[:n] for c in data.items.columns}
        encoded = scorer.encode_items(items)
        timings = {"raw": [], "encoded": []}
        for _ in range(repeats):
            started = time.perf_counter()
            scorer.score(user, items)
            timings["raw"].append(time.perf_counter() - started)
            started = time.perf_counter()
            scorer.score_with_encoded_items(user, encoded)
            timings["encoded"].append(time.perf_counter() - started)
        p50 = {k: percentiles_ms(v[5:], qs=(50,))["p50_ms"] for k, v in timings.items()}
        lines.append(f"| {n} | {p50['raw']:.2f} | {p50['encoded']:.2f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--embedding-dim", type=int)
    parser.add_argument("--learning-rate", type=float)
    parser.add_argument("--negatives", type=int)
    parser.add_argument("--optimizer")
    args = parser.parse_args()

    from mstage.config import RankingConfig, override
    from mstage.data.schema import PreparedData
    from mstage.training.ranking import fit_ranking
    from mstage.workspace import Artifact, Workspace

    workspace = Workspace(WORK / "ws")
    if not workspace.exists(Artifact.DATA):
        prepare(workspace)
    data = PreparedData(workspace.path(Artifact.DATA))
    runs = []
    for seed in range(args.seeds):
        config = override(RankingConfig(), seed=seed, epochs=args.epochs,
                          batch_size=args.batch_size, embedding_dim=args.embedding_dim,
                          learning_rate=args.learning_rate, negatives=args.negatives,
                          optimizer=args.optimizer)
        started = time.perf_counter()
        metrics = fit_ranking(data, config, WORK / f"model-seed{seed}").metrics()
        metrics["seconds"] = time.perf_counter() - started
        metrics.pop("history")
        runs.append(metrics)
        print(json.dumps({"seed": seed, **metrics}), flush=True)

    def summary(key: str) -> str:
        values = [r[key] for r in runs]
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.mean(values):.4f} ± {sd:.4f}"

    first = runs[0]
    base = override(RankingConfig(), epochs=args.epochs, batch_size=args.batch_size,
                    embedding_dim=args.embedding_dim, learning_rate=args.learning_rate,
                    negatives=args.negatives, optimizer=args.optimizer)
    print(f"\nconfig: {base} with seeds 0..{args.seeds - 1}")
    print(f"test rows {first['test_rows']} ({first['test_positives']} positives), "
          f"train rows per epoch {first['train_rows']}")
    print("| model | test AUC | test log loss | epochs | seconds per fit |")
    print("|---|---|---|---|---|")
    print(f"| DLRM ({len(runs)} seeds) | {summary('test_auc')} | {summary('test_log_loss')} | "
          f"{', '.join(str(r['epochs_trained']) for r in runs)} | {summary('seconds')} |")
    print(f"| {first['baseline']} | {first['baseline_auc']:.4f} | "
          f"{first['baseline_log_loss']:.4f} | - | - |")
    print("\nRankingScorer, one user against n candidates (median ms)")
    print("| candidates | raw item features | items pre-encoded |")
    print("|---|---|---|")
    print("\n".join(scorer_latency(WORK / "model-seed0", data)))


if __name__ == "__main__":
    main()
