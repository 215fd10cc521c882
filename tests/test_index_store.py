"""FAISS vector store: add/remove/search, filters, atomic files, mmap, IVF recall against exact search."""
import errno
import os

import faiss
import numpy as np
import pytest

from index.store import (SearchOptions, VectorStore, auto_nlist, default_nprobe, merge_results,
                         resolve_factory)
from vmm.errors import VmmError





pytestmark = pytest.mark.usefixtures("one_faiss_thread")

def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def clustered(n: int, dim: int, clusters: int, seed: int) -> np.ndarray:
    """Unit vectors around random centres: closer to real embeddings than uniform noise."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    return unit(centres[rng.integers(0, clusters, n)] + 0.35 * rng.standard_normal((n, dim)))


def exact_top_k(data: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    return ids[np.argsort(-(queries @ data.T), axis=1, kind="stable")[:, :k]]


def test_factory_resolution_policy():
    assert resolve_factory("auto", 0) == "IDMap2,Flat"
    assert resolve_factory("auto", 999_999) == "IDMap2,Flat"
    assert resolve_factory("auto", 1_000_000) == "IVF4096,Flat"  # 4 * sqrt(1e6) = 4000 -> 4096
    assert resolve_factory("auto", 10_000_000) == "IVF16384,Flat"
    assert resolve_factory("Flat", 5) == "IDMap2,Flat"
    assert resolve_factory("IVF64,Flat", 5) == "IVF64,Flat"
    assert auto_nlist(1) == 16 and default_nprobe(4096) == 128 and default_nprobe(64) == 16


def test_add_search_remove_flat():
    rng = np.random.default_rng(0)
    data = unit(rng.standard_normal((500, 16)))
    ids = np.arange(1000, 1500, dtype=np.int64)
    store = VectorStore.build(data, ids)
    assert (store.factory, store.ntotal, store.dim) == ("IDMap2,Flat", 500, 16)
    scores, found = store.search(data[:5], k=3)
    assert found[:, 0].tolist() == ids[:5].tolist() and np.allclose(scores[:, 0], 1.0, atol=1e-5)
    assert np.array_equal(found, exact_top_k(data, ids, data[:5], 3))
    assert store.remove(np.array([1000, 1001, 999_999]))  # an absent id is ignored
    assert store.ntotal == 498
    _, found = store.search(data[:2], k=1)
    assert 1000 not in found and 1001 not in found
    with pytest.raises(ValueError):
        store.add(data[:2, :8], np.array([1, 2]))


def test_filters_act_before_ranking():
    rng = np.random.default_rng(1)
    data = unit(rng.standard_normal((3000, 16)))
    ids = np.arange(3000, dtype=np.int64)
    query = data[:1]
    allowed = np.arange(2000, 2010)  # ten ids far down the ranking
    for factory in ("Flat", "IVF32,Flat", "HNSW16,Flat"):
        store = VectorStore.build(data, ids, factory)
        scores, found = store.search(query, k=5, allowed=allowed, options=SearchOptions(nprobe=1))
        assert set(found[0]) <= set(allowed) and (found[0] >= 0).all(), factory  # k hits even with nprobe=1
        assert np.array_equal(found[0], exact_top_k(data[2000:2010], allowed, query, 5)[0]), factory
        _, found = store.search(query, k=3, excluded=np.array([0]))
        assert 0 not in found[0] and (found[0] >= 0).all(), factory
        _, found = store.search(query, k=4, allowed=np.array([5, 6]))
        assert sorted(found[0][:2]) == [5, 6] and found[0][2:].tolist() == [-1, -1], factory


def test_search_options_are_per_call():
    data = clustered(4000, 16, 20, seed=2)
    store = VectorStore.build(data, np.arange(4000), "IVF64,Flat")
    ivf = faiss.extract_index_ivf(store.index)
    before = ivf.nprobe
    narrow = store.search(data[:50], 10, options=SearchOptions(nprobe=1))[1]
    wide = store.search(data[:50], 10, options=SearchOptions(nprobe=64))[1]
    assert ivf.nprobe == before  # nothing was written into the shared index
    assert np.array_equal(wide, exact_top_k(data, np.arange(4000), data[:50], 10))
    assert not np.array_equal(narrow, wide)


def test_ivf_recall_against_exact_search():
    data = clustered(20_000, 32, 100, seed=3)
    ids = np.arange(20_000, dtype=np.int64) * 7  # non-contiguous ids
    queries = clustered(200, 32, 100, seed=4)
    truth = exact_top_k(data, ids, queries, 10)
    exact = VectorStore.build(data, ids, "auto")
    assert exact.factory == "IDMap2,Flat"
    assert np.array_equal(exact.search(queries, 10)[1], truth)
    ivf = VectorStore.build(data, ids, "auto", flat_max=10_000)  # auto switches to IVF above flat_max
    assert ivf.factory == f"IVF{auto_nlist(20_000)},Flat"
    found = ivf.search(queries, 10)[1]  # default nprobe
    recall = np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth)])
    assert recall >= 0.9, recall
    all_lists = ivf.search(queries, 10, options=SearchOptions(nprobe=auto_nlist(20_000)))[1]
    assert np.array_equal(all_lists, truth)  # IVF-Flat visiting every list is exact


def test_atomic_save_and_memory_mapped_load(tmp_path):
    data = clustered(3000, 16, 10, seed=5)
    ids = np.arange(3000, dtype=np.int64) + 10
    queries = data[:20]
    for factory in ("IVF32,Flat", "Flat"):
        store = VectorStore.build(data, ids, factory)
        path = str(tmp_path / f"{factory.replace(',', '_')}.faiss")
        store.save(path)
        assert not [f for f in os.listdir(tmp_path) if ".tmp." in f]  # temp file renamed away
        expected = store.search(queries, 5, options=SearchOptions(nprobe=32))
        mapped = VectorStore.load(path, store.factory, mmap=True)
        assert mapped.read_only and mapped.ntotal == 3000
        got = mapped.search(queries, 5, options=SearchOptions(nprobe=32))
        assert np.array_equal(got[1], expected[1]) and np.allclose(got[0], expected[0])
        with pytest.raises(RuntimeError, match="read-only"):
            mapped.remove(ids[:1])
        loaded = VectorStore.load(path, store.factory, mmap=False)
        assert loaded.remove(ids[:1]) and loaded.ntotal == 2999
    mapped = VectorStore.load(str(tmp_path / "IVF32_Flat.faiss"), "IVF32,Flat")
    ivf = faiss.extract_index_ivf(mapped.index)
    assert "OnDisk" in type(faiss.downcast_InvertedLists(ivf.invlists)).__name__  # lists are mmapped


def test_a_file_faiss_cannot_make_is_an_os_error_with_its_reason_and_errno(tmp_path):
    """FAISS reports a file it cannot open with its C++ function and source line; that whole text was the
    reason of the OSError (and of the library's one-line message), with errno EIO whatever the cause."""
    with pytest.raises(OSError) as raised:
        VectorStore.create(4).save(str(tmp_path / "gone" / "vectors.faiss"))
    assert (raised.value.errno, raised.value.strerror) == (errno.ENOENT, "No such file or directory")
    assert raised.value.filename == str(tmp_path / "gone" / "vectors.faiss")


def test_hnsw_cannot_remove_and_says_so():
    data = clustered(500, 8, 5, seed=6)
    store = VectorStore.build(data, np.arange(500), "HNSW16,Flat")
    assert store.factory == "IDMap2,HNSW16,Flat" and not store.supports_remove
    assert store.remove(np.array([1])) is False and store.ntotal == 500


def test_an_ivf_with_an_hnsw_quantizer_removes_from_its_lists():
    """Only the coarse quantizer is a graph; the library rebuilt and retrained the whole index on every removal."""
    data = clustered(2000, 8, 20, seed=8)
    store = VectorStore.build(data, np.arange(2000), "IVF16_HNSW8,Flat")
    assert store.supports_remove and store.remove(np.arange(0, 2000, 2)) is True and store.ntotal == 1000
    _, ids = store.search(data[:4], k=3, options=SearchOptions(nprobe=16))
    assert (ids % 2 == 1).all() and ids[[1, 3], 0].tolist() == [1, 3]  # removed ones gone, the others still found


def test_bad_factory_is_a_clear_error():
    with pytest.raises(VmmError, match="not a valid FAISS factory string"):
        VectorStore.create(8, "Bogus42")
    with pytest.raises(VmmError, match="needs at least 64 vectors to train"):
        VectorStore.build(clustered(10, 8, 2, seed=7), np.arange(10), "IVF64,Flat")


def test_merge_results_keeps_best_scores():
    a = (np.array([[0.9, 0.5]], np.float32), np.array([[1, 2]]))
    b = (np.array([[0.7, -np.inf]], np.float32), np.array([[3, -1]]))
    scores, ids = merge_results([a, b], 3)
    assert ids.tolist() == [[1, 3, 2]] and scores.tolist()[0] == pytest.approx([0.9, 0.7, 0.5])


def test_an_ivf_returns_k_hits_beyond_the_lists_it_probes():
    """k above what the nprobe lists hold: an unfiltered IVF search returned only those (one k=3000 search over
    3000 vectors gave 99 hits), while a filter accepting every id gave all of them."""
    data = clustered(3000, 16, 30, seed=8)
    ids = np.arange(3000, dtype=np.int64) + 5
    store = VectorStore.build(data, ids, "IVF64,Flat")
    scores, found = store.search(data[:3], k=3000, options=SearchOptions(nprobe=1))
    assert (found >= 0).all() and all(sorted(row) == ids.tolist() for row in found)
    assert np.array_equal(found[:, :10], exact_top_k(data, ids, data[:3], 10))
    assert (np.diff(scores, axis=1) <= 1e-6).all()  # best first


def test_a_selective_filter_on_an_ivf_scores_every_selected_vector():
    """At most 20,000 selected ids are scored exactly, IVF included: with the default nprobe the IVF ranked only the
    selected vectors in the lists nearest the query (recall@10 0.76 at 5% of a 50k library of 512-d vectors)."""
    data = clustered(6000, 16, 60, seed=9)
    ids = np.arange(6000, dtype=np.int64) * 3
    queries = clustered(30, 16, 60, seed=10)
    allowed = ids[::20]  # 300 ids spread over every list
    store = VectorStore.build(data, ids, "IVF128,Flat")
    found = store.search(queries, k=10, allowed=allowed)[1]
    assert np.array_equal(found, exact_top_k(data[::20], allowed, queries, 10))


def test_a_memory_mapped_ivf_scores_selected_vectors_and_returns_k_hits(tmp_path):
    """A reader's IVF (read-only, memory-mapped) scores the selected vectors exactly through a map of its ids, and
    still returns k hits beyond the lists it probes."""
    data = clustered(6000, 16, 60, seed=9)
    ids = np.arange(6000, dtype=np.int64) * 3
    queries = clustered(30, 16, 60, seed=10)
    allowed = ids[::20]
    VectorStore.build(data, ids, "IVF128,Flat").save(str(tmp_path / "ivf.faiss"))
    store = VectorStore.load(str(tmp_path / "ivf.faiss"), "IVF128,Flat", mmap=True)
    found = store.search(queries, k=10, allowed=allowed)[1]
    assert np.array_equal(found, exact_top_k(data[::20], allowed, queries, 10))
    found = store.search(queries[:2], k=6000, options=SearchOptions(nprobe=1))[1]
    assert all(sorted(row) == ids.tolist() for row in found)
    found = store.search(queries[:2], k=6000, excluded=ids[:10], options=SearchOptions(nprobe=1))[1]
    assert all(sorted(row[row >= 0]) == ids[10:].tolist() for row in found)


def test_tied_scores_rank_by_ascending_id_in_an_exact_subset_search():
    """Equal scores (the same clip indexed twice, a still video) come back in clip-id order from the exact scoring
    of a filter's subset, as from FAISS's flat search; a merge of parts keeps the parts' order among ties."""
    vector = np.ones((1, 8), np.float32) / np.sqrt(8)
    ids = np.array([5, 3, 9, 1, 7, 2])
    store = VectorStore.build(np.repeat(vector, len(ids), axis=0), ids, "Flat")
    _, found = store.search(vector, k=3, allowed=np.array([9, 1, 7, 3]))
    assert found[0].tolist() == [1, 3, 7]
    scores = np.full((1, 3), 0.5, np.float32)
    _, merged = merge_results([(scores, np.array([[4, 6, 9]])), (scores, np.array([[2, 5, 8]]))], k=4)
    assert merged[0].tolist() == [4, 6, 9, 2]


def test_a_query_gets_the_same_hits_alone_or_in_a_batch_where_others_fall_short():
    """A batch with one query cut short by its probed IVF lists was redone whole, exhaustively: the other queries got
    other hits than each gets alone (and the batch the time of a scan of every list)."""
    rng = np.random.default_rng(0)
    store = VectorStore.build(unit(rng.standard_normal((3000, 16))), np.arange(3000), "IVF64,Flat")
    queries = unit(rng.standard_normal((50, 16)))
    options = SearchOptions(nprobe=1)
    scores, ids = store.search(queries, k=60, options=options)
    for query, row_scores, row_ids in zip(queries, scores, ids):
        alone = store.search(query[None], k=60, options=options)
        assert np.array_equal(alone[1][0], row_ids) and np.array_equal(alone[0][0], row_scores)
    assert (ids >= 0).all()  # the short ones still have all 60


def test_an_exact_subset_search_scores_each_query_as_alone_and_ties_twins_by_id():
    """BLAS's float32 sums depend on a vector's place in its block and on the number of queries: the same clip
    indexed twice scored unequal, so its tie was not decided by id, and a query in a batch got other scores (and,
    among near-equal ones, another order) than alone."""
    rng = np.random.default_rng(0)
    data = unit(rng.standard_normal((3000, 512)))
    data[1500:] = data[:1500]  # clip i and clip i + 1500 are one vector
    store = VectorStore.build(data, np.arange(3000), "Flat")
    queries = unit(rng.standard_normal((8, 512)))
    allowed = np.arange(3000)  # a filter that keeps every clip: exact scoring of the subset
    scores, ids = store.search(queries, k=3000, allowed=allowed)
    for query, row_scores, row_ids in zip(queries, scores, ids):
        alone = store.search(query[None], k=3000, allowed=allowed)
        assert np.array_equal(alone[1][0], row_ids) and np.array_equal(alone[0][0], row_scores)
        assert (row_ids[1::2] == row_ids[::2] + 1500).all() and (row_scores[1::2] == row_scores[::2]).all()


def test_an_exact_search_widens_its_vectors_to_float64_a_block_at_a_time(monkeypatch):
    """The exact fallback of an HNSW search cut short scores every allowed clip: a float64 copy of them all (4 GB for
    a million clips of 512 dimensions) came on top of the float32 ones."""
    import tracemalloc

    import index.store as store_module
    monkeypatch.setattr(store_module, "_EXACT_SCORES_MAX", 1 << 16)  # blocks of 512 vectors, as 8192 at 512 dims
    rng = np.random.default_rng(0)
    data = unit(rng.standard_normal((20000, 128)))
    store = VectorStore.build(data, np.arange(20000), "Flat")
    queries = unit(rng.standard_normal((3, 128)))
    tracemalloc.start()
    try:
        scores, ids = store.search(queries, k=5, allowed=np.arange(20000))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1.5 * data.nbytes  # the float32 copy FAISS hands out, and one block at a time beside it
    expected = queries.astype(np.float64) @ data.astype(np.float64).T
    assert (ids == np.argsort(-expected, axis=1)[:, :5]).all()
    assert np.array_equal(scores, np.take_along_axis(expected, ids, axis=1).astype(np.float32))
