"""Benchmark `build_index`: build time, size, recall@100 and single-query latency vs exact search.

Synthetic clustered unit vectors (dimension 64) stand in for item embeddings; held-out points
from the same clusters stand in for user queries. The index `auto` picks is tuned on one
held-out set and measured on another, beside exact (flat) search on the same items.

    .venv/bin/python benchmarks/index_bench.py                      # 10k, 100k, 1M
    .venv/bin/python benchmarks/index_bench.py --sizes 10000 --hnsw-sizes ""

Prints a markdown table (paste into benchmarks/RESULTS.md) and a JSON line per row.
"""

from __future__ import annotations

import argparse
import json
import time

import faiss
import numpy as np

from mstage.index.faiss_index import FaissIndex, build_index
from mstage.index.tune import exact_neighbours, latency_ms, recall_at_k

DIM = 64
K = 100


def clustered(n: int, n_queries: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(items [n, 64], queries [n_queries, 64]): unit vectors around n / 1000 (>= 50) centres."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(max(50, n // 1000), DIM)).astype(np.float32)
    total = n + n_queries
    points = np.empty((total, DIM), dtype=np.float32)
    for start in range(0, total, 200_000):
        stop = min(start + 200_000, total)
        block = centres[rng.integers(0, len(centres), stop - start)]
        block += 0.35 * rng.normal(size=block.shape).astype(np.float32)
        points[start:stop] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return points[:n], points[n:]


def index_bytes(index: FaissIndex) -> int:
    return int(faiss.serialize_index(index.index).nbytes)


def measure(name: str, kind: str, options: dict, items, ids, held_out, latency_queries) -> dict:
    started = time.perf_counter()
    index = build_index(items, ids, kind, **options)
    seconds = time.perf_counter() - started
    truth = ids[exact_neighbours(items, held_out, K, "inner_product")]
    recall = recall_at_k(index.search(held_out, K)[0], truth)
    latency = latency_ms(lambda q: index.search(q, K), held_out[:latency_queries])
    return {
        "n_items": len(ids), "index": name, "factory": index.metadata["factory"],
        "search_params": index.search_params, "build_s": round(seconds, 2),
        "size_mb": round(index_bytes(index) / 2**20, 1),
        "recall_at_100": round(recall, 4),
        "tuned_recall_at_100": index.metadata["recall_at_100"], **latency,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--hnsw-sizes", default="100000",
                        help="sizes at which HNSW is also measured, for the auto choice")
    parser.add_argument("--queries", type=int, default=1000)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    hnsw_sizes = {int(s) for s in args.hnsw_sizes.split(",") if s}
    print(f"faiss {faiss.__version__}, omp threads {faiss.omp_get_max_threads()}", flush=True)
    rows = []
    for n in sizes:
        items, queries = clustered(n, 2 * args.queries)
        tune_set, held_out = queries[: args.queries], queries[args.queries :]
        ids = np.arange(n, dtype=np.int64)
        lat_q = 200 if n >= 1_000_000 else 1000
        runs = {
            "exact": ("flat", {"tune_queries": 200, "latency_queries": 1}),
            "auto": ("auto", {"queries": tune_set, "latency_queries": 200}),
        }
        if n in hnsw_sizes:
            runs["hnsw"] = ("hnsw", {"queries": tune_set, "latency_queries": 200})
        for name, (kind, options) in runs.items():
            row = measure(name, kind, options, items, ids, held_out, lat_q)
            rows.append(row)
            print(json.dumps(row), flush=True)
    print("\n| items | index | factory | search params | build s | size MB | recall@100 "
          "(held-out) | p50 ms | p99 ms |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        params = ", ".join(f"{k}={v}" for k, v in r["search_params"].items()) or "-"
        print(f"| {r['n_items']:,} | {r['index']} | {r['factory']} | {params} | {r['build_s']} "
              f"| {r['size_mb']} | {r['recall_at_100']:.4f} | {r['latency_p50_ms']:.3f} "
              f"| {r['latency_p99_ms']:.3f} |")


if __name__ == "__main__":
    main()
