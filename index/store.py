"""FAISS vector store: inner product on L2-normalised vectors, int64 ids, atomic files.

Index types come from a FAISS factory string, or ``"auto"``:

* fewer than ``AUTO_FLAT_MAX`` (1,000,000) vectors: ``IDMap2,Flat``, exact search;
* more: ``IVF{nlist},Flat`` with ``nlist`` the power of two nearest ``4 * sqrt(n)``,
  trained on (a sample of) the library's own vectors, searched with
  ``nprobe = clamp(nlist // 32, 16, 256)`` (at most ``nlist``) unless the caller asks for another.

Flat codes are kept (no PQ) because video vectors are searched with text queries,
where quantisation hurts most. Index types without their own id support
(``Flat``, ``HNSW``...) are wrapped in ``IDMap2`` so ids survive; removal works for
Flat and IVF; HNSW cannot remove, so :meth:`VectorStore.remove` returns False and
the library rebuilds it from its catalog.

Search options are per call (``SearchParameters``), never written into the shared
index, so concurrent searches with different ``nprobe`` or filters cannot interfere.

>>> import numpy as np
>>> vectors = np.eye(4, dtype=np.float32)
>>> store = VectorStore.create(4)
>>> store.add(vectors, np.array([10, 11, 12, 13]))
>>> scores, ids = store.search(vectors[:1], k=2)
>>> ids.tolist(), scores.tolist()
([[10, 11]], [[1.0, 0.0]])
"""
from __future__ import annotations

import errno
import math
import os
import re
import threading
from dataclasses import dataclass

import faiss
import numpy as np

# atomic_write_bytes: index.library and index.distributed import it from here
from vmm.atomic import atomic_write_bytes, atomic_write_file  # noqa: F401

AUTO_FLAT_MAX = 1_000_000
_EXACT_SUBSET_MAX = 20_000  # filtered searches over at most this many ids are scored exactly
_EXACT_SCORES_MAX = 1 << 22  # scores (query, vector) an exact search holds at once: 32 MB, and its sort's indices


def resolve_factory(factory: str, n: int, *, flat_max: int = AUTO_FLAT_MAX) -> str:
    """The concrete factory string for ``factory`` holding ``n`` vectors.

    >>> resolve_factory("auto", 5_000)
    'IDMap2,Flat'
    >>> resolve_factory("auto", 4_000_000)
    'IVF8192,Flat'
    >>> resolve_factory("HNSW32,Flat", 10)
    'IDMap2,HNSW32,Flat'
    """
    if factory == "auto":
        if n < flat_max:
            return "IDMap2,Flat"
        return f"IVF{auto_nlist(n)},Flat"
    if factory.startswith("IDMap") or "IVF" in factory.split(",")[0]:
        return factory
    return "IDMap2," + factory


SUPPORTED_FACTORIES = "'auto', 'Flat', 'HNSW<M>,Flat' (e.g. 'HNSW32,Flat') or 'IVF<nlist>,Flat' (e.g. 'IVF1024,Flat')"

# What a library keeps: the types its store searches, removes from and rebuilds correctly (an optional IDMap
# wrapper, as resolve_factory writes it; an IVF may use an HNSW coarse quantizer for many lists).
_KEPT = re.compile(r"(IDMap2?,)?(Flat|HNSW\d+(,Flat)?)|IVF\d+(_HNSW\d+)?,Flat")
HNSW_M_RANGE = (2, 512)  # M=1 segfaults and M=0 aborts inside FAISS; beyond 512 links a vector costs more than its codes
IVF_NLIST_MAX = 1 << 20  # auto picks 4*sqrt(n): a million lists serve 6e10 vectors; FAISS allocates every list up front
_NUMBER_MAX = 1 << 20  # any other count in a factory string: FAISS allocates some of them before checking


def _parameter_problem(factory: str) -> str | None:
    # FAISS does not check these numbers: HNSW1 segfaults when vectors are added, HNSW0 aborts the process,
    # IVF0 fails every search and a huge count allocates memory before anything else is looked at.
    for m in re.findall(r"HNSW(\d+)", factory):
        if not HNSW_M_RANGE[0] <= int(m) <= HNSW_M_RANGE[1]:
            return (f"has HNSW M={int(m)}, and HNSW needs M from {HNSW_M_RANGE[0]} to {HNSW_M_RANGE[1]} links per "
                    "vector (16-64 is usual)")
    for nlist in re.findall(r"IVF(\d+)", factory):
        if not 1 <= int(nlist) <= IVF_NLIST_MAX:
            return f"has nlist={int(nlist)}, and an IVF needs 1 to {IVF_NLIST_MAX} lists (auto picks about 4*sqrt(clips))"
    for number in re.findall(r"\d+", factory):
        if int(number) > _NUMBER_MAX:
            return f"holds the number {int(number)}, far larger than any index a library builds"
    return None


_NOT_KEPT = "is not an index type a vmm library keeps (Flat, HNSW, or IVF with Flat codes)"


def factory_problem(factory: str) -> str | None:
    """Why a library cannot use ``factory`` (a setting or a resolved string), from its text alone; or None.

    >>> factory_problem("IDMap2,HNSW32,Flat") is None
    True
    >>> factory_problem("HNSW1,Flat")
    'has HNSW M=1, and HNSW needs M from 2 to 512 links per vector (16-64 is usual)'
    >>> factory_problem("IVF0,Flat")
    'has nlist=0, and an IVF needs 1 to 1048576 lists (auto picks about 4*sqrt(clips))'
    """
    return _parameter_problem(factory) or (None if _KEPT.fullmatch(factory) else _NOT_KEPT)


_FACTORY_WORDS = {"idmap": "IDMap", "hnsw": "HNSW", "ivf": "IVF", "flat": "Flat"}


def factory_spelling(factory: str) -> str:
    """``factory`` in FAISS's case when it is, in any case, 'auto' or a type a library keeps: `--factory flat` failed
    with FAISS's C++ parse error. Any other string is returned as written, since case tells FAISS's words apart.

    >>> factory_spelling("hnsw32,flat"), factory_spelling("AUTO"), factory_spelling("pq4")
    ('HNSW32,Flat', 'auto', 'pq4')
    """
    if factory.lower() == "auto":
        return "auto"
    if not re.fullmatch(_KEPT.pattern, factory, re.IGNORECASE):
        return factory
    return re.sub("|".join(_FACTORY_WORDS), lambda word: _FACTORY_WORDS[word.group().lower()], factory,
                  flags=re.IGNORECASE)


def check_factory(dim: int, factory: str) -> None:
    """Raise VmmError unless a library can hold ``factory``.

    A library trains nothing but the coarse lists of an IVF with flat codes (on its own
    vectors, once it has enough); any other trained part (PQ, SQ, OPQ, PCA) would never be trained.

    >>> check_factory(8, "IVF16,Flat")
    >>> check_factory(8, "PQ4")
    Traceback (most recent call last):
    ...
    vmm.errors.VmmError: index factory 'PQ4' needs training that a vmm library does not do (only IVF lists with Flat codes are trained); use 'auto', 'Flat', 'HNSW<M>,Flat' (e.g. 'HNSW32,Flat') or 'IVF<nlist>,Flat' (e.g. 'IVF1024,Flat')
    >>> check_factory(8, "HNSW1,Flat")
    Traceback (most recent call last):
    ...
    vmm.errors.VmmError: index factory 'HNSW1,Flat' has HNSW M=1, and HNSW needs M from 2 to 512 links per vector ...
    """
    if factory == "auto":
        return
    from vmm.errors import VmmError

    if not isinstance(factory, str) or not factory.strip():
        raise VmmError(f"index factory {factory!r} is empty or not text; use {SUPPORTED_FACTORIES}")
    problem = _parameter_problem(factory)
    if problem is None and _KEPT.fullmatch(factory):
        return
    if problem is None:
        # FAISS names the more specific fault, if any: not a factory string at all, or one that needs training.
        index = VectorStore.create(dim, factory).index
        if not (index.is_trained or type(index) is faiss.IndexIVFFlat):
            raise VmmError(f"index factory {factory!r} needs training that a vmm library does not do (only IVF "
                           f"lists with Flat codes are trained); use {SUPPORTED_FACTORIES}")
        problem = _NOT_KEPT
    raise VmmError(f"index factory {factory!r} {problem}; use {SUPPORTED_FACTORIES}")


def auto_nlist(n: int) -> int:
    """Number of IVF lists for ``n`` vectors: the power of two nearest 4 * sqrt(n) (at least 16).

    >>> auto_nlist(1_000_000), auto_nlist(10_000)
    (4096, 512)
    """
    return 2 ** max(4, round(math.log2(4 * math.sqrt(max(n, 1)))))


def default_nprobe(nlist: int) -> int:
    """Lists visited per query unless the caller says otherwise: about 3% of them, from 16 to 256, and never more
    than there are. A library's search and the ``index`` row of an evaluation both probe this many.

    >>> default_nprobe(4096), default_nprobe(256), default_nprobe(8)
    (128, 16, 8)
    """
    return int(min(nlist, 256, max(16, nlist // 32)))


_ERRNO_BY_TEXT = {os.strerror(code): code for code in errno.errorcode}


@dataclass
class SearchOptions:
    """Per-call search settings; None means the index's default."""

    nprobe: int | None = None  # IVF lists to visit
    ef_search: int | None = None  # HNSW candidate list size


class VectorStore:
    """One FAISS index of unit vectors with int64 ids (``factory`` is the resolved string)."""

    def __init__(self, index: faiss.Index, factory: str, *, read_only: bool = False):
        self.index = index
        self.factory = factory
        self.read_only = read_only
        self._gpu_index = None
        self._id_cache: np.ndarray | None = None
        self._id_lock = threading.Lock()

    # -- construction ------------------------------------------------------------------
    @classmethod
    def create(cls, dim: int, factory: str = "auto", *, expected: int = 0) -> "VectorStore":
        """An empty store; ``auto`` resolves for ``expected`` vectors. IVF must be :meth:`train`-ed."""
        resolved = resolve_factory(factory, expected)
        problem = _parameter_problem(resolved)
        if problem is not None:
            from vmm.errors import VmmError

            raise VmmError(f"index factory {factory!r} {problem}; use {SUPPORTED_FACTORIES}")
        try:
            index = faiss.index_factory(dim, resolved, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as error:
            from vmm.errors import VmmError, error_text

            # FAISS's text starts with the C++ function and source line that raised it: only its reason is ours.
            message = error_text(re.sub(r"^Error in .*? at \S+:\d+: (Error: '.*?' failed: )?", "", str(error)))
            raise VmmError(f"index factory {factory!r} is not a valid FAISS factory string ({message}); "
                           f"use {SUPPORTED_FACTORIES}") from None
        return cls(index, resolved)

    @classmethod
    def build(cls, vectors: np.ndarray, ids: np.ndarray, factory: str = "auto", *,
              flat_max: int = AUTO_FLAT_MAX, seed: int = 0) -> "VectorStore":
        """A store holding ``vectors`` under ``ids``, trained on them when the type needs it.

        >>> rng = np.random.default_rng(0)
        >>> x = rng.standard_normal((6000, 8)).astype(np.float32)
        >>> x /= np.linalg.norm(x, axis=1, keepdims=True)
        >>> store = VectorStore.build(x, np.arange(6000), "auto", flat_max=1000)
        >>> store.factory, store.ntotal
        ('IVF256,Flat', 6000)
        """
        vectors = _as_vectors(vectors)
        resolved = resolve_factory(factory, len(vectors), flat_max=flat_max)
        store = cls.create(vectors.shape[1], resolved)
        if not store.index.is_trained:
            store.train(vectors, seed=seed)
        store.add(vectors, ids)
        return store

    def train(self, vectors: np.ndarray, *, seed: int = 0) -> None:
        """Train (IVF centroids...) on ``vectors`` or a fixed-seed sample of 64 per list."""
        vectors = _as_vectors(vectors)
        ivf = _ivf(self.index)
        limit = 64 * ivf.nlist if ivf is not None else len(vectors)
        if len(vectors) > limit:
            pick = np.sort(np.random.default_rng(seed).choice(len(vectors), limit, replace=False))
            vectors = vectors[pick]
        if ivf is not None and len(vectors) < ivf.nlist:
            from vmm.errors import VmmError

            raise VmmError(f"index factory {self.factory!r} needs at least {ivf.nlist} vectors to train, "
                           f"the library has {len(vectors)}; use a smaller nlist or 'auto'")
        if ivf is not None:
            # A library trains its IVF as soon as it holds nlist vectors, on purpose; FAISS would print a raw
            # "WARNING clustering N points to K centroids" on stderr whenever that is under 39 per list.
            ivf.cp.min_points_per_centroid = 1
        self.index.train(vectors)

    # -- contents ------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return self.index.d

    @property
    def ntotal(self) -> int:
        return self.index.ntotal

    @property
    def supports_remove(self) -> bool:
        # An HNSW graph cannot drop a vector, but an IVF whose coarse quantizer is one (IVF65536_HNSW32,Flat, for
        # many lists) drops it from its lists: it was rebuilt and retrained whenever a single file was removed.
        return "HNSW" not in self.factory or _ivf(self.index) is not None

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        """Add unit vectors (N, dim) under int64 ``ids``."""
        self._writable()
        vectors = _as_vectors(vectors, self.dim)
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if len(ids) != len(vectors):
            raise ValueError(f"{len(vectors)} vectors but {len(ids)} ids")
        if len(ids):
            self.index.add_with_ids(vectors, ids)
            self._gpu_index = self._id_cache = None

    def remove(self, ids: np.ndarray) -> bool:
        """Remove ``ids`` (absent ids are ignored). False if this index type cannot remove."""
        self._writable()
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if not len(ids):
            return True
        if not self.supports_remove:
            return False
        self.index.remove_ids(faiss.IDSelectorBatch(ids))
        self._gpu_index = self._id_cache = None
        return True

    def _writable(self) -> None:
        if self.read_only:
            raise RuntimeError("this store was loaded read-only (memory-mapped); load it with mmap=False to change it")

    # -- search --------------------------------------------------------------------------
    def search(self, queries: np.ndarray, k: int, *, allowed: np.ndarray | None = None,
               excluded: np.ndarray | None = None, options: SearchOptions | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (scores, ids) per query, both (Q, k); missing slots have id -1 and score -inf.

        ``allowed`` restricts the search to those ids (metadata filters), ``excluded``
        removes ids; both act before ranking, so k hits come back when k exist.
        """
        queries = _as_vectors(queries, self.dim)
        options = options or SearchOptions()
        k = int(k)
        if k <= 0 or self.ntotal == 0 or not len(queries):
            return _empty(len(queries), max(k, 0))
        excluded = None if excluded is None or not len(excluded) else np.ascontiguousarray(excluded, np.int64)
        if allowed is not None:
            allowed = np.ascontiguousarray(allowed, dtype=np.int64)
            if excluded is not None:
                allowed = np.setdiff1d(allowed, excluded)
            if not len(allowed):
                return _empty(len(queries), k)
            if len(allowed) <= _EXACT_SUBSET_MAX and self._can_reconstruct():
                return self._exact(queries, k, allowed)
            selector = faiss.IDSelectorBatch(allowed)
            expected = min(k, len(allowed))
            # A writer's IVF has no map of its ids (it would be saved into the file), but visiting every list scores
            # each selected vector: exact, where the default nprobe ranked only those in the lists nearest the query.
            exhaustive = len(allowed) <= _EXACT_SUBSET_MAX
        elif excluded is not None:
            selector = faiss.IDSelectorNot(faiss.IDSelectorBatch(excluded))
            expected, exhaustive = min(k, self.ntotal - len(excluded)), False
        else:
            selector, expected, exhaustive = None, min(k, self.ntotal), False
        scores, ids = self._search(queries, k, selector, options, exhaustive=exhaustive)
        short = (ids[:, :expected] < 0).any(axis=1)
        if short.any():
            # An approximate index missed ids (k beyond what the visited IVF lists hold, an HNSW
            # graph cut by the filter): redo it exhaustively so k hits come back when k exist. An IVF visits
            # all of its lists, as scoring them all would copy every vector out of its file. Only the queries cut
            # short: in a batch, the others would get another ranking than each gets alone, and the batch's time.
            if self.factory.startswith("IDMap2"):
                candidates = self._ids() if allowed is None else allowed
                if excluded is not None:
                    candidates = np.setdiff1d(candidates, excluded)
                scores[short], ids[short] = self._exact(queries[short], k, candidates)
            else:
                scores[short], ids[short] = self._search(queries[short], k, selector, options, exhaustive=True)
        return _clean(scores, ids)

    def _search(self, queries, k, selector, options: SearchOptions, exhaustive: bool = False):
        ivf = _ivf(self.index)
        extra = {} if selector is None else {"sel": selector}
        if ivf is not None:
            nprobe = ivf.nlist if exhaustive else (options.nprobe or default_nprobe(ivf.nlist))
            params = faiss.SearchParametersIVF(nprobe=int(min(nprobe, ivf.nlist)), **extra)
        elif "HNSW" in self.factory:
            params = faiss.SearchParametersHNSW(efSearch=int(max(k, options.ef_search or max(64, 2 * k))), **extra)
        else:
            params = faiss.SearchParameters(**extra) if extra else None
        if selector is None and self._gpu_index is not None:
            try:
                return self._gpu_index.search(queries, k, params=params)
            except (RuntimeError, TypeError):  # a GPU type without per-call parameters
                pass
        return self.index.search(queries, k, params=params)

    def _can_reconstruct(self) -> bool:
        # A reader's (read-only) IVF hands out vectors through a map of its ids, built in memory by _ids().
        return self.factory.startswith("IDMap2") or (self.read_only and _ivf(self.index) is not None)

    def _ids(self) -> np.ndarray:
        with self._id_lock:  # concurrent searches: the IVF's map must be built once, before any reconstruct
            if self._id_cache is None:
                ivf = None if self.factory.startswith("IDMap2") else _ivf(self.index)
                if ivf is None:
                    self._id_cache = faiss.vector_to_array(faiss.downcast_index(self.index).id_map).astype(np.int64)
                else:
                    # 0.03 s and tens of bytes an id, once: scoring 5,000 selected vectors of a 300k IVF then took
                    # 2 ms, where visiting all of its lists took 28 ms a query.
                    ivf.set_direct_map_type(faiss.DirectMap.Hashtable)
                    lists = ivf.invlists
                    self._id_cache = np.concatenate(
                        [np.zeros(0, np.int64)] + [faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i)).copy()
                                                   for i in range(lists.nlist) if lists.list_size(i)])
        return self._id_cache

    def _exact(self, queries: np.ndarray, k: int, candidates: np.ndarray):
        present = candidates[np.isin(candidates, self._ids())]  # _ids() first: it builds an IVF's map
        if not len(present):
            return _empty(len(queries), k)
        # Summed in float64 and rounded to float32: BLAS's float32 sums depend on a vector's place in its block and
        # on how many queries share the call, so the same clip indexed twice scored unequal (its tie no longer went
        # by id) and a query searched in a batch got other scores, and another order, than alone.
        vectors = self.index.reconstruct_batch(present)
        rows = max(1, _EXACT_SCORES_MAX // len(present))
        parts = [_top_k(_float64_scores(queries[i:i + rows], vectors), present, k)
                 for i in range(0, len(queries), rows)]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    # -- GPU -----------------------------------------------------------------------------
    def to_gpu(self) -> bool:
        """Use all GPUs (faiss-gpu) for unfiltered searches; False when there are none or the type can't."""
        if not hasattr(faiss, "index_cpu_to_all_gpus") or faiss.get_num_gpus() == 0:
            return False
        try:
            self._gpu_index = faiss.index_cpu_to_all_gpus(self.index)
        except (RuntimeError, AttributeError):  # e.g. HNSW has no GPU version
            self._gpu_index = None
        return self._gpu_index is not None

    @property
    def on_gpu(self) -> bool:
        return self._gpu_index is not None

    # -- files ---------------------------------------------------------------------------
    def save(self, path: str) -> None:
        """Write atomically (vmm.atomic: temp file, fsync, rename, fsync of the folder)."""
        try:
            atomic_write_file(path, lambda tmp: faiss.write_index(self.index, tmp))
        except RuntimeError as error:
            # FAISS says "Error in ... at index_write.cpp:362: Error: 'ret == (size)' failed: write error in PATH:
            # 49728 != 77824 (No space left on device)", or "... could not open PATH for writing: No space left on
            # device" where the file cannot be made (no free inode, a quota on files): the reason ends the text.
            # Only the first was read, and the second became the message whole, C++ function and source line.
            reason = re.search(r"\(([^()]+)\)\s*$|for writing: ([^:]+)$", str(error))
            text = next(filter(None, reason.groups())) if reason else str(error)
            raise OSError(_ERRNO_BY_TEXT.get(text, errno.EIO), text, path) from None

    @classmethod
    def load(cls, path: str, factory: str, *, mmap: bool = True) -> "VectorStore":
        """Open an index file; with ``mmap`` it is read-only and memory-mapped (IVF lists, flat codes)."""
        if not mmap:
            return cls(faiss.read_index(path), factory)
        # Flat codes can be mapped since faiss 1.10 (IO_FLAG_MMAP_IFC); older versions read them.
        mapping = faiss.IO_FLAG_MMAP if "IVF" in factory else getattr(faiss, "IO_FLAG_MMAP_IFC", 0)
        return cls(faiss.read_index(path, faiss.IO_FLAG_READ_ONLY | mapping), factory, read_only=True)


def _ivf(index: faiss.Index):
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def _as_vectors(vectors: np.ndarray, dim: int | None = None) -> np.ndarray:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or (dim is not None and vectors.shape[1] != dim):
        raise ValueError(f"expected vectors of shape (N, {dim or 'dim'}), got {vectors.shape}")
    return vectors


def _float64_scores(queries: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """``queries @ vectors.T`` summed in float64, as float32. The vectors are widened a block at a time: the exact
    fallback of an HNSW search cut short scores every allowed clip, and a float64 copy of them all (4 GB for a million
    clips of 512 dimensions) came on top of the float32 ones."""
    scores = np.empty((len(queries), len(vectors)), np.float32)
    wide = queries.astype(np.float64)
    step = max(1, _EXACT_SCORES_MAX // vectors.shape[1])
    for start in range(0, len(vectors), step):
        scores[:, start:start + step] = wide @ vectors[start:start + step].astype(np.float64).T
    return scores


def _top_k(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Rank columns of ``scores`` (Q, N) by score, ties by id; pad to k with (-inf, -1)."""
    q, n = scores.shape
    take = min(k, n)
    order = np.lexsort((np.broadcast_to(ids, scores.shape), -scores), axis=1)[:, :take]
    out_scores = np.full((q, k), -np.inf, np.float32)
    out_ids = np.full((q, k), -1, np.int64)
    out_scores[:, :take] = np.take_along_axis(scores, order, axis=1)
    out_ids[:, :take] = ids[order]
    return out_scores, out_ids


def _empty(q: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    return np.full((q, k), -np.inf, np.float32), np.full((q, k), -1, np.int64)


def _clean(scores: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.where(ids < 0, -np.inf, scores).astype(np.float32)
    return scores, ids.astype(np.int64)


def merge_results(parts: list[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge per-query top-k lists from several stores into one top-k."""
    scores = np.concatenate([p[0] for p in parts], axis=1)
    ids = np.concatenate([p[1] for p in parts], axis=1)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return _clean(np.take_along_axis(scores, order, axis=1), np.take_along_axis(ids, order, axis=1))
