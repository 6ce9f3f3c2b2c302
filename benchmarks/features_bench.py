"""Feature-store benchmark: export time (mstage's online write beside `feast materialize` of
the same rows) and online-read latency.

For SQLite and for a real Redis (a local `redis-server` started here), on synthetic prepared
data of --users users and --items items (5 positives per user): runs `export_features`, then
has Feast materialize the exported repository again (the baseline, same store, same rows),
times `OnlineFeatures.users` for 1 user and `.items` for 100 and 1000 items, and one
`all_items()` load from the online store and from the offline parquet. Usage:

    .venv/bin/python benchmarks/features_bench.py --users 100000 --items 100000
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from measure import percentiles_ms, timed

ROOT = Path(__file__).resolve().parents[1]


def publish_synthetic(root: Path, n_users: int, n_items: int, per_user: int, seed: int) -> None:
    """A prepared-data artifact with the sample data's columns, at the requested size."""
    import pandas as pd

    from mstage.data.schema import Feature, Schema, write_prepared
    from mstage.workspace import Artifact, Workspace

    rng = np.random.default_rng(seed)
    n = n_users * per_user
    interactions = pd.DataFrame({
        "user_id": np.repeat(np.arange(n_users, dtype=np.int64), per_user),
        "item_id": (rng.zipf(1.3, n) % n_items).astype(np.int64),
        "timestamp": rng.integers(1_600_000_000, 1_700_000_000, n, dtype=np.int64),
        "label": np.ones(n, dtype=np.int8),
        "fold_user_temporal": np.zeros(n, dtype=np.int8),
        "fold_global": np.zeros(n, dtype=np.int8),
    }).sort_values(["user_id", "timestamp"], kind="stable")
    pick = lambda values, size: np.array(values, dtype=object)[rng.integers(0, len(values), size)]  # noqa: E731
    users = pd.DataFrame({
        "user_id": np.arange(n_users, dtype=np.int64),
        "age_group": pick(["18-24", "25-34", "35-44", "45+"], n_users),
        "gender": pick(["f", "m", "x"], n_users),
        "region": pick([f"r{i}" for i in range(20)], n_users),
    })
    tags = [f"t{i}" for i in range(30)]
    items = pd.DataFrame({
        "item_id": np.arange(n_items, dtype=np.int64),
        "category": pick([f"c{i}" for i in range(50)], n_items),
        "brand": pick([f"b{i}" for i in range(500)], n_items),
        "price": rng.gamma(2.0, 20.0, n_items).round(2),
        "in_stock": (rng.random(n_items) < 0.9).astype(np.float64),
        "tags": [list(rng.choice(tags, rng.integers(0, 4), replace=False)) for _ in range(n_items)],
    })
    with Workspace(root).build(Artifact.DATA) as b:
        write_prepared(b.dir, interactions, users, items, Schema(
            user_features=[Feature(c, "categorical") for c in ("age_group", "gender", "region")],
            item_features=[Feature("category", "categorical"), Feature("brand", "categorical"),
                           Feature("price", "numeric"), Feature("in_stock", "numeric"),
                           Feature("tags", "multi")],
            has_label=False,
        ))


def latency_ms(fn, repeats: int) -> dict[str, float]:
    """p50 and p95 ms of `repeats` calls of `fn` after one warm-up call."""
    return percentiles_ms(timed(fn, repeats), qs=(50, 95))


def feast_materialize(repo: Path) -> None:
    """`feast materialize` over the export's snapshot window: the rows mstage wrote, again."""
    import datetime as dt

    import pandas as pd
    from feast import FeatureStore

    from mstage.features.feast_io import feast_output_to
    from mstage.features.repo import SOURCES_DIR
    from mstage.features.tables import EVENT_TIMESTAMP

    as_of = pd.read_parquet(repo / SOURCES_DIR / "users.parquet", columns=[EVENT_TIMESTAMP])[
        EVENT_TIMESTAMP].max().to_pydatetime()
    second = dt.timedelta(seconds=1)
    with feast_output_to(repo.parent / "materialize.log"):
        FeatureStore(repo_path=str(repo)).materialize(start_date=as_of - second,
                                                      end_date=as_of + second)


def bench_store(root: Path, online_store: str, n_users: int, n_items: int, seed: int) -> dict:
    from mstage.config import FeaturesConfig
    from mstage.features.online import OnlineFeatures
    from mstage.features.repo import ONLINE_DB
    from mstage.features.store import export_features
    from mstage.workspace import Workspace

    ws = Workspace(root)
    started = time.perf_counter()
    result = export_features(ws, FeaturesConfig(online_store=online_store), sample=200)
    total = time.perf_counter() - started
    started = time.perf_counter()
    feast_materialize(result.directory)
    baseline = time.perf_counter() - started
    online = OnlineFeatures.open(result.directory)
    rng = np.random.default_rng(seed)
    row = {
        "store": "redis" if online_store.startswith("redis") else "sqlite",
        "export_s": round(total, 1),
        "materialize_s": result.seconds["materialize"],
        "feast_materialize_s": round(baseline, 1),
        "read_back": f"{result.checks['users_matched']}/{result.checks['users_checked']} users, "
                     f"{result.checks['items_matched']}/{result.checks['items_checked']} items",
        "user_1": latency_ms(lambda: online.users(rng.integers(0, n_users, 1)), 300),
        "items_100": latency_ms(lambda: online.items(rng.integers(0, n_items, 100)), 50),
        "items_1000": latency_ms(lambda: online.items(rng.integers(0, n_items, 1000)), 20),
    }
    started = time.perf_counter()
    all_items = online.all_items()
    row["all_items_s"] = round(time.perf_counter() - started, 1)
    assert len(all_items) == n_items
    started = time.perf_counter()
    assert len(online.all_items(source="offline")) == n_items
    row["all_items_offline_s"] = round(time.perf_counter() - started, 2)
    if row["store"] == "sqlite":
        row["sqlite_mb"] = round((result.directory / ONLINE_DB).stat().st_size / 2**20)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--per-user", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stores", default="sqlite,redis")
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT / "tests" / "integration"))
    from redis_server import run_redis_server

    tmp = Path(tempfile.mkdtemp(prefix="mstage-features-bench-"))
    try:
        started = time.perf_counter()
        publish_synthetic(tmp / "ws", args.users, args.items, args.per_user, args.seed)
        print(f"data: {args.users} users, {args.items} items, "
              f"{args.users * args.per_user} interactions "
              f"({time.perf_counter() - started:.1f} s)", file=sys.stderr)
        rows = []
        for store in args.stores.split(","):
            if store == "redis":
                with run_redis_server(shutil.which("redis-server") or "redis-server") as url:
                    rows.append(bench_store(tmp / "ws", url, args.users, args.items, args.seed))
            else:
                rows.append(bench_store(tmp / "ws", "sqlite", args.users, args.items, args.seed))
            print(json.dumps(rows[-1]), file=sys.stderr)
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"peak RSS of the whole run: {peak_mb:.0f} MB", file=sys.stderr)
        print("| store | export s | online write s | feast materialize s | read-back | "
              "1 user ms (p50 / p95) | 100 items ms | 1000 items ms | "
              "all_items() s online / offline |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            fmt = lambda d: f"{d['p50_ms']} / {d['p95_ms']}"  # noqa: E731
            print(f"| {r['store']} | {r['export_s']} | {r['materialize_s']} | "
                  f"{r['feast_materialize_s']} | {r['read_back']} | "
                  f"{fmt(r['user_1'])} | {fmt(r['items_100'])} | {fmt(r['items_1000'])} | "
                  f"{r['all_items_s']} / {r['all_items_offline_s']} |")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
