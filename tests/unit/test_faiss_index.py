"""The faiss index against a numpy brute-force oracle: ids, scores, metric, tuning, save/load."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mstage.columns import PAD
from mstage.config import IndexConfig
from mstage.errors import ArtifactMissing, ConfigError, InputError, UsageError
from mstage.index import gpu
from mstage.index.faiss_index import INDEX_FILE, METADATA_FILE, FaissIndex, build_index
from mstage.index.spec import canonical_metric, ivf_nlist, resolve
from mstage.index.tune import SearchKnob, recall_at_k, tune_knob


def normalised(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def clustered(n: int, dim: int, clusters: int = 40, seed: int = 0) -> np.ndarray:
    """Unit vectors around `clusters` random centres: the shape real item embeddings take."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    return normalised(centres[rng.integers(0, clusters, n)] + 0.35 * rng.normal(size=(n, dim)))


def oracle(items: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int):
    """Exact top-k by inner product in numpy: (ids [b, k], scores [b, k])."""
    scores = queries @ items.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return ids[order], np.take_along_axis(scores, order, axis=1)


def test_flat_matches_numpy_oracle_ids_and_scores():
    rng = np.random.default_rng(1)
    items = normalised(rng.normal(size=(300, 8)))
    ids = rng.permutation(300).astype(np.int64) * 10 + 5
    queries = normalised(rng.normal(size=(7, 8)))
    index = build_index(items, ids, "flat")
    found_ids, found_scores = index.search(queries, 10)
    want_ids, want_scores = oracle(items, ids, queries, 10)
    assert found_ids.dtype == np.int64 and found_scores.dtype == np.float32
    np.testing.assert_array_equal(found_ids, want_ids)
    np.testing.assert_allclose(found_scores, want_scores, rtol=1e-5, atol=1e-6)
    assert index.metadata["kind"] == "flat" and index.metadata["recall_at_100"] == 1.0


def test_inner_product_not_l2_on_unnormalised_vectors():
    # query [1, 0]; inner products: item 10 -> 3.0, item 20 -> 0.9, item 30 -> 0.0.
    # L2 would rank 20 first (squared distance 0.02), then 30 (2.0), then 10 (4.0).
    items = np.array([[3.0, 0.0], [0.9, 0.1], [0.0, 1.0]], dtype=np.float32)
    index = build_index(items, np.array([10, 20, 30]), "flat")
    ids, scores = index.search(np.array([[1.0, 0.0]], dtype=np.float32), 3)
    assert index.metric == "inner_product"
    assert ids.tolist() == [[10, 20, 30]]
    np.testing.assert_allclose(scores, [[3.0, 0.9, 0.0]], atol=1e-6)


def test_l2_metric_scores_are_minus_squared_distance():
    items = np.array([[3.0, 0.0], [0.9, 0.1], [0.0, 1.0]], dtype=np.float32)
    index = build_index(items, np.array([10, 20, 30]), "flat", metric="euclidean")
    ids, scores = index.search(np.array([[1.0, 0.0]], dtype=np.float32), 3)
    assert index.metric == "l2"
    assert ids.tolist() == [[20, 30, 10]]
    np.testing.assert_allclose(scores, [[-0.02, -2.0, -4.0]], atol=1e-5)


def test_padding_is_flagged_in_search_and_dropped_in_search_one():
    # query [1, 0] scores the three items 1.0, 0.6 and 0.0; k = 5 leaves two slots empty.
    items = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]], dtype=np.float32)
    index = build_index(items, np.array([7, 8, 9]), "flat")
    ids, scores = index.search(items[:1], 5)
    assert ids.tolist() == [[7, 8, 9, PAD, PAD]]
    np.testing.assert_allclose(scores[0, :3], [1.0, 0.6, 0.0], atol=1e-6)
    assert np.isneginf(scores[0, 3:]).all()
    one_ids, one_scores = index.search_one(items[0], 5)
    assert one_ids.tolist() == [7, 8, 9]
    np.testing.assert_allclose(one_scores, [1.0, 0.6, 0.0], atol=1e-6)


def test_auto_is_exact_below_threshold_and_ivf_above():
    items, ids = clustered(2000, 8), np.arange(2000)
    assert build_index(items, ids, "auto").metadata["factory"] == "Flat"
    # nlist = min(round(4 * sqrt(2000)) = 179, 2000 // 39 = 51) = 51
    assert build_index(items, ids, "auto", exact_below=1000).metadata["factory"] == "IVF51,Flat"


def test_auto_ivf_meets_recall_target_on_clustered_data():
    points = clustered(5300, 16, seed=2)
    items, fresh = points[:5000], points[5000:]
    ids = np.arange(5000, dtype=np.int64) + 1_000_000
    index = build_index(items, ids, "auto", exact_below=1000, target_recall=0.95)
    meta = index.metadata
    assert meta["kind"] == "ivf" and meta["target_met"] is True
    assert meta["recall_at_100"] >= 0.95 and meta["search_params"]["nprobe"] >= 1
    assert meta["latency_p50_ms"] > 0 and meta["latency_p99_ms"] >= meta["latency_p50_ms"]
    # Held-out queries from the same clusters, checked against the numpy oracle.
    want, _ = oracle(items, ids, fresh, 100)
    assert recall_at_k(index.search(fresh, 100)[0], want) >= 0.92


def test_hnsw_tunes_ef_search_to_target():
    items, ids = clustered(3000, 16, seed=4), np.arange(3000)
    index = build_index(items, ids, "hnsw", target_recall=0.97)
    assert index.metadata["factory"] == "HNSW32,Flat"
    assert index.search_params["efSearch"] >= 100
    want, _ = oracle(items, ids, items[:200], 100)
    assert recall_at_k(index.search(items[:200], 100)[0], want) >= 0.95


def test_factory_string_gets_item_ids_and_tuned_nprobe():
    items, ids = clustered(3000, 16, seed=5), np.arange(3000) * 3
    index = build_index(items, ids, "IVF32,Flat")
    assert index.metadata["kind"] == "factory" and "nprobe" in index.search_params
    assert set(index.search(items[:5], 10)[0].ravel()) <= set(ids.tolist())


def test_ivf_rows_the_probed_lists_cannot_fill_are_probed_further():
    """nprobe is tuned for the top 100; asked for more than its lists hold, IVF pads the row.
    The search probes more lists for those rows, so every row is full and exact at nlist."""
    items, ids = clustered(3000, 16, seed=6), np.arange(3000)
    index = build_index(items, ids, "IVF32,Flat")
    index.set_search_params({"nprobe": 1})
    queries = normalised(np.random.default_rng(1).normal(size=(20, 16)))
    raw_ids = index.index.search(queries, 400)[1]
    assert (raw_ids == PAD).any(axis=1).all()  # one list of ~94 items cannot fill 400
    found, scores = index.search(queries, 400)
    assert (found != PAD).all() and np.isfinite(scores).all()
    assert index.search_params == {"nprobe": 1}  # the tuned value stays for other searches
    everything, scores = index.search(queries, 3000)  # every list probed: all items, in order
    assert (np.sort(everything, axis=1) == ids).all()
    np.testing.assert_allclose(scores, oracle(items, ids, queries, 3000)[1], atol=1e-5)


@pytest.mark.parametrize("kind", ["flat", "IVF32,Flat"])
def test_a_search_can_pass_over_items_that_crowd_its_top(kind):
    items, ids = clustered(3000, 16, seed=7), np.arange(3000) * 2
    index = build_index(items, ids, kind, exact_below=10_000)
    queries = normalised(np.random.default_rng(2).normal(size=(10, 16)))
    crowd = np.unique(index.search(queries, 300)[0])  # every query's best 300
    found, scores = index.search(queries, 50, index.skipping(crowd))
    assert (found != PAD).all() and not np.isin(found, crowd).any()
    assert (np.diff(scores, axis=1) <= 1e-6).all()  # best first
    if kind == "flat":  # exact: the best 50 of the others (IVF: of its probed lists)
        allowed = ~np.isin(ids, crowd)
        best_ids, best_scores = oracle(items[allowed], ids[allowed], queries, 50)
        np.testing.assert_array_equal(found, best_ids)
        np.testing.assert_allclose(scores, best_scores, atol=1e-5)


def test_skipping_is_none_without_items_to_skip():
    index = build_index(clustered(100, 8), np.arange(100), "flat")
    assert index.skipping(np.zeros(0, dtype=np.int64)) is None


def test_recall_at_k_hand_computed():
    # row 1: {1,2,3} ∩ {3,2,9} = 2 of 3; row 2: nothing in common -> mean (2/3 + 0) / 2 = 1/3
    found = np.array([[1, 2, 3], [4, 5, 6]])
    truth = np.array([[3, 2, 9], [7, 8, 9]])
    assert recall_at_k(found, truth) == pytest.approx(1 / 3)


def test_tune_knob_doubles_then_bisects():
    # recall = v / 40: the smallest passing value is 38. Doubling: 1..32 miss, 64 hit;
    # bisect: 48 hit, 40 hit, 36 miss; stop when hit - miss <= miss // 8 (40 - 36 <= 4).
    result = tune_knob(lambda v: min(1.0, v / 40), SearchKnob("nprobe", 1, 1000), 0.95)
    assert result.value == 40 and result.target_met
    assert list(result.trials) == [1, 2, 4, 8, 16, 32, 64, 48, 40, 36]


def test_tune_knob_reports_unreachable_target():
    result = tune_knob(lambda v: 0.5, SearchKnob("efSearch", 100, 300), 0.95)
    assert result.value == 300 and not result.target_met and result.recall == 0.5


def test_save_load_round_trip(tmp_path):
    items, ids = clustered(3000, 16, seed=6), np.arange(3000) + 17
    built = build_index(items, ids, "ivf", target_recall=0.9)
    built.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [INDEX_FILE, METADATA_FILE]
    loaded = FaissIndex.load(tmp_path)
    import faiss

    assert faiss.extract_index_ivf(loaded.index).nprobe == built.search_params["nprobe"]
    queries = clustered(20, 16, seed=7)
    for got, want in zip(loaded.search(queries, 50), built.search(queries, 50), strict=True):
        np.testing.assert_array_equal(got, want)
    meta = json.loads((tmp_path / METADATA_FILE).read_text())
    assert meta["metric"] == "inner_product" and meta["dimension"] == 16
    assert meta["n_items"] == 3000 and meta["factory"].startswith("IVF")
    for key in ("recall_at_100", "latency_p50_ms", "latency_p99_ms", "faiss_version",
                "embeddings_fingerprint", "search_params"):
        assert key in meta


def test_load_without_index_names_build_index(tmp_path):
    with pytest.raises(ArtifactMissing, match="run `mstage build-index`"):
        FaissIndex.load(tmp_path)


def test_load_refuses_corrupt_or_mismatched_files(tmp_path):
    build_index(clustered(30, 4), np.arange(30), "flat").save(tmp_path)
    meta = json.loads((tmp_path / METADATA_FILE).read_text())
    (tmp_path / METADATA_FILE).write_text(json.dumps({**meta, "n_items": 31}))
    with pytest.raises(InputError, match="found dimension/items 4/31 against 4/30"):
        FaissIndex.load(tmp_path)
    (tmp_path / INDEX_FILE).write_bytes(b"not an index")
    with pytest.raises(InputError, match="expected a readable index in"):
        FaissIndex.load(tmp_path)


def test_search_rejects_wrong_query_dimension():
    index = build_index(normalised(np.eye(4, dtype=np.float32)), np.arange(4), "flat")
    with pytest.raises(UsageError, match=r"expected queries of shape \(batch, 4\), found \(2, 3\)"):
        index.search(np.zeros((2, 3), dtype=np.float32), 2)


def test_non_finite_embeddings_are_refused_with_counts():
    items = clustered(10, 4)
    items[2, 0] = np.nan
    items[2, 1] = np.inf
    with pytest.raises(InputError, match=r"found 2 NaN/inf values in 1 of 10 items \(item ids 2\)"):
        build_index(items, np.arange(10), "flat")


def test_duplicate_ids_are_refused_with_examples():
    ids = np.array([1, 2, 2, 3, 3, 3, 4])
    with pytest.raises(InputError, match=r"found 2 ids repeated \(3 extra rows; e.g. 2, 3\)"):
        build_index(clustered(7, 4), ids, "flat")


def test_padding_id_is_refused():
    with pytest.raises(InputError, match="other than -1"):
        build_index(clustered(3, 4), np.array([0, -1, 5]), "flat")


@pytest.mark.parametrize("kind", ["foo", "IVFxyz,Flat"])
def test_unknown_index_type_lists_choices(kind):
    with pytest.raises(ConfigError, match=r"expected --index auto, flat, ivf, hnsw or a faiss "):
        build_index(clustered(50, 4), np.arange(50), kind)


def test_untrainable_factory_string_is_a_config_error():
    with pytest.raises(ConfigError, match="faiss could not build it on 100 items"):
        build_index(clustered(100, 4), np.arange(100), "IVF4096,Flat")


def test_query_embeddings_of_other_dimension_are_refused():
    with pytest.raises(InputError, match=r"expected query embeddings of shape \(n, 4\)"):
        build_index(clustered(50, 4), np.arange(50), "flat", queries=np.zeros((5, 3)))


def test_tuning_on_given_query_embeddings_records_their_source():
    items = clustered(2000, 8)
    users = clustered(100, 8, seed=9)
    index = build_index(items, np.arange(2000), "ivf", queries=users, queries_source="users.npy")
    assert index.metadata["tuning"]["query_source"] == "users.npy"
    assert index.metadata["tuning"]["queries"] == 100


def test_metric_names():
    assert canonical_metric("dot") == canonical_metric("cosine") == "inner_product"
    assert canonical_metric("L2") == "l2"
    with pytest.raises(InputError, match="expected metric inner_product or l2"):
        canonical_metric("hamming")


def test_ivf_nlist_and_resolve():
    assert ivf_nlist(1_000_000) == 4000  # 4 * sqrt(1e6)
    assert ivf_nlist(10_000) == 256  # 4 * sqrt(1e4) = 400, capped at 10000 // 39 = 256
    assert ivf_nlist(10) == 1
    assert resolve("HNSW", 10, 5).factory == "HNSW32,Flat"
    assert resolve("IVF64,PQ8", 10, 5).kind == "factory"


def test_index_config_validates_target_recall():
    with pytest.raises(ConfigError, match=r"expected index.target_recall in \(0, 1\]"):
        IndexConfig(target_recall=1.5)


@pytest.mark.skipif(gpu.gpu_count() > 0, reason="checks the CPU-only fallback")
def test_cpu_machine_builds_on_cpu_and_refuses_required_gpu():
    items = clustered(100, 4)
    assert build_index(items, np.arange(100), "flat").metadata["built_on"] == "cpu"
    with pytest.raises(UsageError, match="expected a GPU visible to faiss-gpu, found none"):
        build_index(items, np.arange(100), "flat", use_gpu=True)
