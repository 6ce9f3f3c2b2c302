"""A faiss index over item embeddings: build (and tune), save, load, search by item id.

Scores are similarities, larger is better: the inner product for `inner_product` (what the
two-tower model trains with on L2-normalised vectors), minus the squared distance for `l2`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from mstage.columns import PAD
from mstage.errors import ArtifactMissing, ConfigError, InputError, UsageError
from mstage.index import gpu
from mstage.index.catalog import check_catalog, fingerprint_arrays
from mstage.index.spec import (
    canonical_metric,
    faiss_message,
    invalid_index_error,
    make_index,
    resolve,
)
from mstage.index.tune import (
    RECALL_K,
    SearchKnob,
    exact_neighbours,
    knob_of,
    latency_ms,
    recall_at_k,
    tune_knob,
)
from mstage.progress import SILENT, Reporter

INDEX_FILE = "index.faiss"
METADATA_FILE = "metadata.json"
FORMAT_VERSION = 1
TRAIN_POINTS_PER_LIST = 64  # k-means on 64 points per IVF list: enough, and 4x faster than 256
ADD_CHUNK = 100_000
DEFAULT_EXACT_BELOW = 50_000


class Skip:
    """Item ids a search passes over (a Faiss IDSelector): the search then returns the best k
    others, however many of the skipped items rank above them."""

    def __init__(self, item_ids: np.ndarray):
        import faiss

        self._batch = faiss.IDSelectorBatch(item_ids)  # referenced by the selector below
        self.selector = faiss.IDSelectorNot(self._batch)


class FaissIndex:
    """A faiss index whose ids are item ids, with its metric and tuned search parameters.

    `metadata` is what `save` writes to metadata.json beside the index file; `load` restores
    the search parameters from it, so a loaded index answers exactly like the built one.
    """

    def __init__(self, index: Any, metadata: dict[str, Any], on_gpu: bool = False,
                 gpu_resources: Any = None):
        self.index = index
        self.metadata = metadata
        self.on_gpu = on_gpu
        self._ivf = _ivf_or_none(index)  # looked up once: every search's parameters need it
        self._gpu_resources = gpu_resources  # must outlive the GPU index

    @property
    def dimension(self) -> int:
        return int(self.metadata["dimension"])

    @property
    def metric(self) -> str:
        return self.metadata["metric"]

    @property
    def n_items(self) -> int:
        return int(self.index.ntotal)

    @property
    def search_params(self) -> dict[str, int]:
        return dict(self.metadata.get("search_params", {}))

    def set_search_params(self, params: dict[str, int]) -> None:
        """Set e.g. {"nprobe": 16} or {"efSearch": 128} on the index (and in metadata)."""
        space = gpu.parameter_space(self.on_gpu)
        for name, value in params.items():
            try:
                space.set_index_parameter(self.index, name, value)
            except RuntimeError:
                raise ConfigError(
                    f"expected a search parameter this {self.metadata.get('factory')} index "
                    f"accepts, found {name}={value}; rebuild with `mstage build-index`"
                ) from None
        self.metadata["search_params"] = {**self.search_params, **params}

    def search(self, queries: np.ndarray, k: int, skip: Skip | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k items per query: (ids [b, k] int64, scores [b, k] float32), best first;
        with `skip` (from `skipping`), its items are passed over inside the search.

        queries: [b, dimension]. Where fewer than k items are found, ids are -1 (PAD)
        and scores -inf, so padding sorts last and is easy to drop.
        """
        queries = self._check_queries(queries)
        if not isinstance(k, int | np.integer) or k < 1:
            raise UsageError(f"expected k >= 1 results per query, found {k!r}")
        if skip is None:
            distances, ids = self.index.search(queries, int(k))
        else:
            distances, ids = self.index.search(queries, int(k), params=self._params(skip))
        self._probe_further(queries, int(k), distances, ids, skip)
        scores = distances if self.metric == "inner_product" else -distances
        scores = np.where(ids == PAD, -np.inf, scores).astype(np.float32, copy=False)
        return ids.astype(np.int64, copy=False), scores

    def skipping(self, item_ids: np.ndarray) -> Skip | None:
        """What makes `search` pass over `item_ids` (a Faiss IDSelector): exact and IVF
        indexes on the CPU; None elsewhere (the caller then fetches more and drops them)."""
        if self.on_gpu or not len(item_ids):
            return None
        if self._ivf is None and self.metadata.get("kind") != "flat":
            return None  # only the exact and IVF indexes are known to take a selector
        skip = Skip(np.ascontiguousarray(item_ids, dtype=np.int64))
        try:  # a wrapper (e.g. a pre-transform) may take no per-search parameters
            self.index.search(np.zeros((1, self.dimension), np.float32), 1,
                              params=self._params(skip))
        except RuntimeError:
            return None
        return skip

    def _params(self, skip: Skip | None, nprobe: int | None = None) -> Any:
        """Per-search parameters: for IVF `nprobe` (the tuned one by default), and `skip`'s
        selector."""
        import faiss

        selector = {} if skip is None else {"sel": skip.selector}
        if self._ivf is None:
            return faiss.SearchParameters(**selector)
        nprobe = nprobe or int(self.search_params.get("nprobe", 1))
        return faiss.SearchParametersIVF(nprobe=nprobe, **selector)

    def _probe_further(self, queries: np.ndarray, k: int, distances: np.ndarray,
                       ids: np.ndarray, skip: Skip | None) -> None:
        """Complete the rows an IVF search left short, in place. Its `nprobe` is tuned for
        recall of the top RECALL_K, but retrieval asks for more (its candidates plus what
        filtering will drop); where the probed lists hold fewer than k items the row comes
        back padded. Such rows are searched again with twice the lists, until they are full
        or every list is probed."""
        short = np.flatnonzero((ids == PAD).any(axis=1))
        ivf = self._ivf
        if not short.size or self.on_gpu or k > self.n_items or ivf is None:
            return  # without IVF, padding means there are no more items
        nprobe = int(self.search_params.get("nprobe", 1))
        while short.size and nprobe < ivf.nlist:
            nprobe = min(2 * nprobe, ivf.nlist)
            try:
                d, i = self.index.search(queries[short], k, params=self._params(skip, nprobe))
            except RuntimeError:  # a wrapper that takes no per-search parameters
                return
            distances[short], ids[short] = d, i
            short = short[(i == PAD).any(axis=1)]

    def search_one(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k for one query [dimension]: (ids [m], scores [m]) with padding dropped, m <= k."""
        ids, scores = self.search(np.asarray(query).reshape(1, -1), k)
        keep = ids[0] != PAD
        return ids[0][keep], scores[0][keep]

    def _check_queries(self, queries: np.ndarray) -> np.ndarray:
        queries = np.asarray(queries)
        if queries.ndim != 2 or queries.shape[1] != self.dimension:
            raise UsageError(
                f"expected queries of shape (batch, {self.dimension}), "
                f"found {tuple(queries.shape)}"
            )
        return np.ascontiguousarray(queries, dtype=np.float32)

    def save(self, directory: Path) -> None:
        """Write index.faiss (always a CPU index) and metadata.json; nothing pickled."""
        import faiss

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        faiss.write_index(gpu.to_cpu(self.index, self.on_gpu), str(directory / INDEX_FILE))
        (directory / METADATA_FILE).write_text(json.dumps(self.metadata, indent=2))

    @classmethod
    def load(cls, directory: Path, use_gpu: bool | None = False) -> FaissIndex:
        """Read a saved index and set its saved search parameters.

        use_gpu: False (default) CPU; None a GPU when faiss-gpu sees one; True require one.
        """
        import faiss

        directory = Path(directory)
        index_path, meta_path = directory / INDEX_FILE, directory / METADATA_FILE
        for path in (index_path, meta_path):
            if not path.is_file():
                raise ArtifactMissing(
                    f"expected the index file {path}, found nothing; "
                    "run `mstage build-index` first"
                )
        try:
            metadata = json.loads(meta_path.read_text())
            index = faiss.read_index(str(index_path))
        except (RuntimeError, json.JSONDecodeError) as e:
            raise InputError(
                f"expected a readable index in {directory}, found: {faiss_message(e)}; "
                "rebuild it with `mstage build-index`"
            ) from None
        if (index.d, index.ntotal) != (metadata.get("dimension"), metadata.get("n_items")):
            raise InputError(
                f"expected {METADATA_FILE} to describe {INDEX_FILE} in {directory}, found "
                f"dimension/items {metadata.get('dimension')}/{metadata.get('n_items')} against "
                f"{index.d}/{index.ntotal}; rebuild it with `mstage build-index`"
            )
        on_gpu, resources = False, None
        if gpu.want_gpu(use_gpu):
            moved = gpu.to_gpu(index)
            if moved is not None:
                (index, resources), on_gpu = moved, True
        loaded = cls(index, metadata, on_gpu, resources)
        loaded.set_search_params(metadata.get("search_params", {}))
        return loaded


def _with_item_ids(cpu_index: Any) -> Any:
    """Wrap in IndexIDMap unless the index stores ids itself (IVF, possibly pre-transformed)."""
    import faiss

    top = faiss.downcast_index(cpu_index)
    inner = faiss.downcast_index(top.index) if isinstance(top, faiss.IndexPreTransform) else top
    if isinstance(inner, faiss.IndexIVF | faiss.IndexIDMap | faiss.IndexIDMap2):
        return cpu_index
    return faiss.IndexIDMap(cpu_index)


def _sample(rng: np.random.Generator, rows: np.ndarray, size: int) -> np.ndarray:
    if len(rows) <= size:
        return rows
    return rows[np.sort(rng.choice(len(rows), size=size, replace=False))]


def _check_queries_pool(queries: np.ndarray, dim: int, source: str) -> np.ndarray:
    queries = np.asarray(queries)
    if queries.ndim != 2 or queries.shape[1] != dim or len(queries) == 0:
        raise InputError(
            f"expected query embeddings of shape (n, {dim}) in {source}, "
            f"found {tuple(queries.shape)}; pass embeddings from the same retrieval model"
        )
    if not np.isfinite(queries).all():
        raise InputError(
            f"expected finite query embeddings in {source}, found "
            f"{int((~np.isfinite(queries)).sum())} NaN/inf values"
        )
    return np.ascontiguousarray(queries, dtype=np.float32)


def _train_and_add(index: Any, nlist: int, embeddings: np.ndarray, item_ids: np.ndarray,
                   requested: str, rng: np.random.Generator, reporter: Reporter) -> None:
    """Train on a sample (64 points per IVF list, at least 10,000) and add in chunks."""
    try:
        if not index.is_trained:
            size = max(TRAIN_POINTS_PER_LIST * nlist, 10_000)
            with reporter.task("train index", total=1) as task:
                index.train(_sample(rng, embeddings, size))
                task.advance(1)
        with reporter.task("add items", total=len(item_ids)) as task:
            for start in range(0, len(item_ids), ADD_CHUNK):
                stop = start + ADD_CHUNK
                index.add_with_ids(embeddings[start:stop], item_ids[start:stop])
                task.advance(len(item_ids[start:stop]))
    except RuntimeError as e:
        raise invalid_index_error(
            requested, f"faiss could not build it on {len(item_ids)} items: {faiss_message(e)}"
        ) from None


def _ivf_or_none(index: Any) -> Any:
    """The IVF index inside `index`, or None."""
    import faiss

    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def _tune_and_measure(
    built: FaissIndex, knob: SearchKnob | None, embeddings: np.ndarray, item_ids: np.ndarray,
    sample: np.ndarray, target: float, latency_queries: int, reporter: Reporter,
) -> dict[str, Any]:
    """Tune `knob` on `sample` [m, d] against exact search; return recall and latency metadata."""
    k = min(RECALL_K, len(item_ids))
    truth = item_ids[exact_neighbours(embeddings, sample, k, built.metric)]

    def recall_with(value: int | None) -> float:
        if value is not None:
            built.set_search_params({knob.name: value})
        return recall_at_k(built.search(sample, k)[0], truth)

    if knob is None:
        recall, trials = recall_with(None), {}
        met = recall >= target
    else:
        with reporter.task(f"tune {knob.name}", total=None) as task:
            tuned = tune_knob(recall_with, knob, target,
                              on_trial=lambda v, r: task.advance(1, **{knob.name: v, "recall": r}))
        recall, met = tuned.recall, tuned.target_met
        trials = {v: round(r, 4) for v, r in tuned.trials.items()}
        built.set_search_params({knob.name: tuned.value})
        if not met:
            reporter.log(f"{knob.name}={tuned.value} reaches recall@{k} {recall:.4f}, below the "
                         f"target {target}")
    return {
        "recall_k": k, "recall_at_100": round(recall, 6), "target_recall": target,
        "target_met": met,
        **latency_ms(lambda q: built.search(q, k), sample[:latency_queries]),
        "tuning": {"knob": knob.name if knob else None, "trials": trials, "queries": len(sample)},
    }


def build_index(
    embeddings: np.ndarray,
    item_ids: np.ndarray,
    kind: str = "auto",
    *,
    metric: str = "inner_product",
    target_recall: float = 0.95,
    exact_below: int = DEFAULT_EXACT_BELOW,
    queries: np.ndarray | None = None,
    queries_source: str = "query embeddings",
    tune_queries: int = 1000,
    latency_queries: int = 500,
    seed: int = 0,
    use_gpu: bool | None = None,
    source_fingerprint: str | None = None,
    reporter: Reporter = SILENT,
) -> FaissIndex:
    """Build an index over embeddings [n, d] float32 with item_ids [n] int64 as its ids.

    kind: auto | flat | ivf | hnsw | a faiss factory string (`spec.resolve`). Approximate
    indexes get their search knob tuned until recall@100 against exact search reaches
    `target_recall` on a sample of `tune_queries` queries: rows of `queries` [m, d] when given
    (e.g. user embeddings), else of the item embeddings themselves. The measured recall and
    single-query latency go into `metadata`.
    """
    import faiss

    started = time.perf_counter()
    if not 0.0 < target_recall <= 1.0:
        raise ConfigError(f"expected target recall in (0, 1], found {target_recall!r}")
    embeddings, item_ids = check_catalog(embeddings, item_ids)
    metric = canonical_metric(metric, "the metric argument")
    n, dim = embeddings.shape
    pool = embeddings if queries is None else _check_queries_pool(queries, dim, queries_source)
    spec = resolve(kind, n, exact_below)
    cpu_index = _with_item_ids(make_index(spec, dim, metric))
    k = min(RECALL_K, n)
    on_gpu = gpu.want_gpu(use_gpu)
    knob = knob_of(cpu_index, k, on_gpu)
    nlist = getattr(_ivf_or_none(cpu_index), "nlist", 0)
    index, resources = cpu_index, None
    if on_gpu:
        moved = gpu.to_gpu(cpu_index)
        on_gpu = moved is not None
        if moved is not None:
            index, resources = moved
    rng = np.random.default_rng(seed)
    _train_and_add(index, nlist, embeddings, item_ids, spec.requested, rng, reporter)
    filled = time.perf_counter()

    built = FaissIndex(index, {
        "format_version": FORMAT_VERSION, "metric": metric, "dimension": dim,
        "kind": spec.kind, "factory": spec.factory, "n_items": n, "search_params": {},
    }, on_gpu, resources)
    sample = _sample(rng, pool, tune_queries)
    built.metadata.update(_tune_and_measure(
        built, knob, embeddings, item_ids, sample, target_recall, latency_queries, reporter))
    built.metadata["tuning"]["query_source"] = "items" if queries is None else queries_source
    built.metadata.update({
        "built_on": "gpu" if on_gpu else "cpu", "faiss_version": faiss.__version__,
        "embeddings_fingerprint": source_fingerprint or fingerprint_arrays(embeddings, item_ids),
        "train_add_seconds": round(filled - started, 3),
        "build_seconds": round(time.perf_counter() - started, 3),
    })
    return built
