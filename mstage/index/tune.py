"""Measure an approximate index against exact search and tune its search knob to a recall target.

Recall@k here is the overlap between the index's top-k and the exact top-k for the same query
(|approx ∩ exact| / k), averaged over a sample of queries: the fraction of the true nearest
items the index still finds.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from mstage.columns import PAD

RECALL_K = 100
MAX_EF_SEARCH = 4096
MAX_GPU_NPROBE = 2048  # faiss's GPU IVF kernels refuse larger nprobe


@dataclass(frozen=True)
class SearchKnob:
    """The parameter that trades speed for recall (`nprobe` for IVF, `efSearch` for HNSW)."""

    name: str
    low: int
    high: int


@dataclass
class TuneResult:
    value: int | None
    recall: float
    target_met: bool
    trials: dict[int, float] = field(default_factory=dict)


def knob_of(cpu_index, k: int, on_gpu: bool = False) -> SearchKnob | None:
    """The search knob of a (CPU) faiss index, or None for indexes without one (flat, LSH, PQ)."""
    import faiss

    try:
        ivf = faiss.extract_index_ivf(cpu_index)
    except RuntimeError:
        ivf = None
    if ivf is not None:
        high = min(ivf.nlist, MAX_GPU_NPROBE) if on_gpu else ivf.nlist
        return SearchKnob("nprobe", 1, max(1, high))
    try:
        faiss.ParameterSpace().set_index_parameter(cpu_index, "efSearch", k)
    except RuntimeError:
        return None
    return SearchKnob("efSearch", max(1, k), max(k, MAX_EF_SEARCH))


def exact_neighbours(
    embeddings: np.ndarray, queries: np.ndarray, k: int, metric: str
) -> np.ndarray:
    """Exact top-k item rows [q, k] int64 by brute force: the ground truth for recall."""
    import faiss

    from mstage.index.spec import faiss_metric

    flat = faiss.IndexFlat(embeddings.shape[1], faiss_metric(metric))
    flat.add(embeddings)
    _, rows = flat.search(queries, k)
    return rows


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean over queries of |found ∩ truth| / |truth|; found, truth [q, k] ids, -1 = padding."""
    valid = truth != PAD
    hits = (found[:, :, None] == truth[:, None, :]).any(axis=1) & valid
    per_query = hits.sum(axis=1) / np.maximum(valid.sum(axis=1), 1)
    return float(per_query.mean())


def tune_knob(
    evaluate: Callable[[int], float], knob: SearchKnob, target: float, on_trial=None
) -> TuneResult:
    """Smallest knob value (within ~12%) whose recall reaches `target`.

    Recall grows with nprobe / efSearch, so: double from `low` until the target is met, then
    bisect between the last miss and the first hit. If even `high` misses, return `high`
    with target_met=False.
    """
    trials: dict[int, float] = {}

    def measure(value: int) -> float:
        trials[value] = evaluate(value)
        if on_trial is not None:
            on_trial(value, trials[value])
        return trials[value]

    miss, value = None, knob.low
    while measure(value) < target:
        if value >= knob.high:
            return TuneResult(value, trials[value], False, trials)
        miss, value = value, min(value * 2, knob.high)
    hit = value
    while miss is not None and hit - miss > max(1, miss // 8):
        mid = (miss + hit) // 2
        if measure(mid) >= target:
            hit = mid
        else:
            miss = mid
    return TuneResult(hit, trials[hit], True, trials)


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run faiss on one OpenMP thread inside the block.

    One query gains little from threads and, on a busy machine, loses a lot to OpenMP's
    spin-waits; one thread per request is also how a serving instance runs it.
    """
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def latency_ms(search_one: Callable[[np.ndarray], object], queries: np.ndarray) -> dict[str, float]:
    """Single-thread, single-query latency p50/p99 (ms) over `queries`, after one warm-up call."""
    times = np.empty(len(queries))
    with single_thread():
        search_one(queries[:1])
        for i in range(len(queries)):
            started = time.perf_counter()
            search_one(queries[i : i + 1])
            times[i] = time.perf_counter() - started
    p50, p99 = np.percentile(times * 1000.0, [50, 99])
    return {"latency_p50_ms": round(float(p50), 4), "latency_p99_ms": round(float(p99), 4)}
