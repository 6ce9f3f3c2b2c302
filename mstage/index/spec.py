"""Which faiss index to build: metric names, `--index` kinds and the factory strings they mean.

`auto` is exact (flat) below `exact_below` items, where brute force is still fast enough per
query, and IVF above it; IVF trains in seconds where HNSW takes minutes to build at 1M items
on a small CPU (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from mstage.errors import ConfigError, InputError

KINDS = ("auto", "flat", "ivf", "hnsw")
HNSW_M = 32
MIN_POINTS_PER_CENTROID = 39  # faiss's own k-means warning threshold

METRIC_ALIASES = {
    "inner_product": "inner_product", "ip": "inner_product", "dot": "inner_product",
    "cosine": "inner_product", "l2": "l2", "euclidean": "l2",
}
DEFAULT_METRIC = "inner_product"


def canonical_metric(name: str, where: str = "params.json") -> str:
    """'dot' / 'cosine' / 'ip' -> 'inner_product'; 'euclidean' -> 'l2'; else InputError."""
    metric = METRIC_ALIASES.get(str(name).strip().lower())
    if metric is None:
        raise InputError(
            f"expected metric inner_product or l2 in {where}, found {name!r}; "
            "retrain with `mstage train-retrieval`"
        )
    return metric


def faiss_metric(metric: str) -> int:
    import faiss

    return faiss.METRIC_INNER_PRODUCT if metric == "inner_product" else faiss.METRIC_L2


def ivf_nlist(n_items: int) -> int:
    """About 4 * sqrt(n) lists, but at least 39 training points per list (faiss's k-means floor)."""
    return max(1, min(round(4 * math.sqrt(n_items)), n_items // MIN_POINTS_PER_CENTROID))


@dataclass(frozen=True)
class IndexSpec:
    """A resolved `--index`: what was asked, the kind built (flat/ivf/hnsw/factory), the string."""

    requested: str
    kind: str
    factory: str


def resolve(kind: str, n_items: int, exact_below: int) -> IndexSpec:
    """Turn `--index` into a factory string for a catalog of n_items.

    Factory strings pass through unchanged; they are checked when built (`check_factory`).
    """
    kind = kind.strip()
    lowered = kind.lower()
    if lowered == "auto":
        lowered = "flat" if n_items < exact_below else "ivf"
    if lowered == "flat":
        return IndexSpec(kind, "flat", "Flat")
    if lowered == "ivf":
        return IndexSpec(kind, "ivf", f"IVF{ivf_nlist(n_items)},Flat")
    if lowered == "hnsw":
        return IndexSpec(kind, "hnsw", f"HNSW{HNSW_M},Flat")
    if not kind:
        raise invalid_index_error(kind, "empty")
    return IndexSpec(kind, "factory", kind)


def faiss_message(error: Exception) -> str:
    """The reason in a faiss RuntimeError, without its C++ file/line prefix."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return re.sub(r"^Error in .*? at \S+:\d+: (Error: )?", "", text)


def invalid_index_error(kind: str, reason: str) -> ConfigError:
    return ConfigError(
        f"expected --index auto, flat, ivf, hnsw or a faiss factory string "
        f"(e.g. IVF1024,Flat; HNSW32,Flat; IVF256,PQ16), found {kind!r} ({reason}); "
        "set --index or `index` in the index section of mstage.toml"
    )


def make_index(spec: IndexSpec, dim: int, metric: str):
    """An empty faiss index for `spec` (CPU), or ConfigError when faiss rejects the string."""
    import faiss

    try:
        return faiss.index_factory(dim, spec.factory, faiss_metric(metric))
    except RuntimeError as e:
        raise invalid_index_error(spec.requested, faiss_message(e)) from None
