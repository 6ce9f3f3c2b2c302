"""Time and peak memory of `prepare_data` (default 20M interactions, 1M users, 1M items).

Usage:
  .venv/bin/python benchmarks/prepare_data.py [--rows N] [--users U] [--items I]
      [--ids int|str] [--format parquet|csv]
  .venv/bin/python benchmarks/prepare_data.py --tables DIR [prepare-data options as key=value]

The first form writes raw tables (1% repeated events, a click label, users with two
categorical features, items with categorical/numeric/0-1/multi-valued features) into a fresh
temporary directory, then times `prepare_data` into a fresh workspace. The second form times
an existing directory (e.g. sample_data/ or an extracted MovieLens-100K: pass
`interactions=ratings.parquet users=users.parquet items=movies.parquet item_col=movie_id
ignore=movie_title,release_date,video_release_date,IMDb_URL,zip_code`). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def write_raw_tables(out: Path, rows: int, users: int, items: int, ids: str, fmt: str) -> dict:
    """Raw interactions/users/items files like a production log export; returns their paths."""
    import pandas as pd

    rng = np.random.default_rng(0)
    unique_rows = rows - rows // 100
    user = rng.integers(1, users + 1, unique_rows)
    item = np.minimum(rng.zipf(1.3, unique_rows), items)  # popular items dominate
    ts = rng.integers(1_700_000_000, 1_700_000_000 + 90 * 86_400, unique_rows)
    click = (rng.random(unique_rows) < 0.1).astype(np.int8)
    repeat = rng.integers(0, unique_rows, rows - unique_rows)
    frame = {"user_id": np.r_[user, user[repeat]], "item_id": np.r_[item, item[repeat]],
             "timestamp": np.r_[ts, ts[repeat]], "click": np.r_[click, click[repeat]]}
    user_ids = np.arange(1, users + 1)
    users_df = pd.DataFrame({"user_id": user_ids,
                             "age_group": rng.choice(["18-24", "25-34", "35-44", "45+"], users),
                             "region": rng.choice([f"r{i}" for i in range(50)], users)})
    tags = np.array(["sale", "new", "gift", "eco", "sale|new", "gift|eco|sale", ""], dtype=object)
    items_df = pd.DataFrame({"item_id": np.arange(1, items + 1),
                             "category": rng.choice([f"c{i}" for i in range(300)], items),
                             "price": rng.gamma(2.0, 20.0, items).round(2),
                             "in_stock": (rng.random(items) < 0.9).astype(np.int8),
                             "tags": rng.choice(tags, items)})
    interactions = pd.DataFrame(frame)
    if ids == "str":
        interactions["user_id"] = "u" + interactions["user_id"].astype(str)
        users_df["user_id"] = "u" + users_df["user_id"].astype(str)
    suffix = ".parquet" if fmt == "parquet" else ".csv"
    paths = {name: out / f"{name}{suffix}" for name in ("interactions", "users", "items")}
    for name, df in (("interactions", interactions), ("users", users_df), ("items", items_df)):
        if fmt == "parquet":
            df.to_parquet(paths[name], index=False)
        else:
            df.to_csv(paths[name], index=False)
    return {name: str(p) for name, p in paths.items()}


def time_prepare(workspace: Path, **options) -> dict:
    """Seconds and peak RSS of prepare_data (pandas/pyarrow imported before the clock starts)."""
    import pandas  # noqa: F401
    import pyarrow.parquet  # noqa: F401

    from mstage.config import DataConfig
    from mstage.data.ingest import prepare_data
    from mstage.workspace import Workspace

    for key in ("categorical", "numeric", "multi_valued", "ignore"):
        if isinstance(options.get(key), str):
            options[key] = [v for v in options[key].split(",") if v]
    started = time.perf_counter()
    result = prepare_data(Workspace(workspace), DataConfig(**options))
    seconds = time.perf_counter() - started
    m = result.metrics
    return {"seconds": round(seconds, 2),
            "rows_per_second": round(m["input_rows"] / seconds),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            **{k: m[k] for k in ("input_rows", "interactions", "duplicates_dropped", "users",
                                 "items")},
            "features": {f.name: f.kind for f in result.user_features + result.item_features}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000_000)
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--ids", choices=("int", "str"), default="int")
    parser.add_argument("--format", choices=("parquet", "csv"), default="parquet")
    parser.add_argument("--tables", type=Path, help="time an existing directory instead")
    parser.add_argument("options", nargs="*", help="DataConfig fields as key=value")
    args = parser.parse_args()

    parent = Path(tempfile.mkdtemp(prefix="mstage-prepare-"))
    try:
        if args.tables:
            options = dict(o.split("=", 1) for o in args.options)
            for key in ("interactions", "users", "items"):
                if key in options:
                    options[key] = str(args.tables.resolve() / options[key])
            print(json.dumps({"tables": str(args.tables), **time_prepare(parent / "ws",
                                                                         **options)}))
            return
        started = time.perf_counter()
        paths = write_raw_tables(parent, args.rows, args.users, args.items, args.ids, args.format)
        setup = {"rows": args.rows, "raw_users": args.users, "raw_items": args.items,
                 "ids": args.ids, "format": args.format,
                 "write_raw_seconds": round(time.perf_counter() - started)}
        # A fresh process, so peak memory is that of prepare_data alone.
        names = {k: Path(v).name for k, v in paths.items()}
        done = subprocess.run([sys.executable, __file__, "--tables", str(parent), "label_col=click",
                               *(f"{k}={v}" for k, v in names.items()), *args.options],
                              check=True, capture_output=True, text=True)
        print(json.dumps({**setup, **json.loads(done.stdout)}))
    finally:
        shutil.rmtree(parent, ignore_errors=True)


if __name__ == "__main__":
    main()
