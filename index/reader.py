"""Read-only access to a library: a consistent snapshot and filtered vector search.

:func:`open_library` reads, inside one SQLite read transaction, the catalog's
metadata and whatever vectors the saved FAISS file does not reflect yet. The FAISS
file is memory-mapped read-only and never modified; clips added since it was saved
are searched in a small in-memory index and clips deleted since are excluded by id.
So a reader opened while ``build_library`` runs sees exactly the files committed at
that instant, each with all of its clips, and keeps seeing them until it is closed.

>>> import tempfile
>>> from index.encoder import ColorHistogramEncoder
>>> from index.ingest import build_library
>>> folder = tempfile.mkdtemp()
>>> _ = build_library([folder], folder + "/lib", ColorHistogramEncoder(), workers=0, progress=False)
>>> with open_library(folder + "/lib") as library:
...     len(library), library.search_vectors(np.zeros((1, library.manifest.dim), np.float32), k=3)
(0, [[]])
"""
from __future__ import annotations

import dataclasses
import fnmatch
import functools
import os
import re
import threading
import time
import unicodedata
from dataclasses import dataclass
from typing import Callable, TypeVar

import numpy as np

from index.catalog import Catalog, FileRecord, LibraryManifest, _opened_by_a_writer
from index.library import _open_catalog, library_folder, matches_state, read_state
from index.store import SearchOptions, VectorStore, factory_problem, merge_results
from vmm.errors import VmmError, is_whole_number

T = TypeVar("T")


@dataclass(frozen=True)
class Hit:
    """One search result: a clip of a video, its time window and its cosine score."""

    clip_id: int
    path: str
    start: float
    end: float
    score: float
    file_id: int


@dataclass(frozen=True)
class ClipFilter:
    r"""Metadata conditions applied before ranking (all given conditions must hold).

    ``path_glob`` is matched (fnmatch, ``*`` also crosses ``/``) against the absolute
    path; a list means any of them. ``**/`` also matches no folder, as in the shell, and a
    name matches in either Unicode form (macOS writes "café" as "cafe" and an accent).
    Durations are the video's, in seconds.

    >>> from types import SimpleNamespace as File
    >>> where = ClipFilter(path_glob="/videos/**/caf\u00e9*", max_duration=60)
    >>> [where.accepts(File(path=path, duration=10.0))
    ...  for path in ("/videos/cafe\u0301.mp4", "/videos/2019/caf\u00e9.mp4", "/videos/tea.mp4")]
    [True, True, False]
    """

    path_glob: str | list[str] | None = None
    min_duration: float | None = None
    max_duration: float | None = None

    def __post_init__(self):
        # Checked here, not at search time: a wrong type failed deep inside fnmatch or a comparison.
        globs = [self.path_glob] if isinstance(self.path_glob, str) else self.path_glob
        if globs is not None and not (isinstance(globs, (list, tuple)) and all(isinstance(g, str) for g in globs)):
            raise VmmError(f"where path_glob must be a glob string or a list of them, got {self.path_glob!r}")
        for name in ("min_duration", "max_duration"):
            value = getattr(self, name)
            number = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
            if value is not None and not (number and value >= 0):  # NaN fails >= 0
                raise VmmError(f"where {name} must be a number of seconds >= 0, got {value!r}")
        if self.min_duration is not None and self.max_duration is not None and self.min_duration > self.max_duration:
            raise VmmError(f"where min_duration {self.min_duration} is above max_duration {self.max_duration}; "
                           "no video can match")

    def accepts(self, record: FileRecord) -> bool:
        if self.path_glob is not None:
            globs = [self.path_glob] if isinstance(self.path_glob, str) else list(self.path_glob)
            path = unicodedata.normalize("NFC", record.path)
            if not any(_glob_regex(g).match(path) for g in globs):
                return False
        duration = record.duration or 0.0
        if self.min_duration is not None and duration < self.min_duration:
            return False
        if self.max_duration is not None and duration > self.max_duration:
            return False
        return True


_FILTER_FIELDS = {field.name for field in dataclasses.fields(ClipFilter)}


@functools.lru_cache(maxsize=1024)
def _glob_regex(glob: str) -> re.Pattern:
    """``glob`` as fnmatch reads it, except that a ``**/`` starting the glob or a folder name also matches no
    folder: "/videos/**/*.mp4" left out the videos directly in /videos, which the shell, pathlib and .gitignore all
    match. Both sides are NFC: a name typed "café" (one code point) matched nothing written by macOS ("cafe" and a
    combining accent), and the same name looks identical in both forms."""
    parts = re.split(r"(?:^|(?<=/))\*\*/", unicodedata.normalize("NFC", glob))
    # fnmatch.translate gives "(?s:BODY)\Z" in every Python this supports; the bodies join with "any folders".
    bodies = [fnmatch.translate(part)[len("(?s:"):-len(r")\Z")] for part in parts]
    return re.compile("(?s:" + "(?:.*/)?".join(bodies) + r")\Z")


def as_clip_filter(where):
    """``where`` of a search as a :class:`ClipFilter` (a dict of its fields makes one), a function of a
    :class:`FileRecord`, or None."""
    if dataclasses.is_dataclass(where) and not isinstance(where, (type, ClipFilter)) and \
            {field.name for field in dataclasses.fields(where)} == _FILTER_FIELDS:
        # retrieval's Where (not imported: the index does not depend on retrieval); the message below asks for
        # one, and search_vectors refused it.
        where = dataclasses.asdict(where)
    if isinstance(where, dict):
        unknown = set(where) - _FILTER_FIELDS
        if unknown:
            raise VmmError(f"where has unknown keys {sorted(map(str, unknown))}; use path_glob, min_duration, "
                           "max_duration")
        return ClipFilter(**where)
    if where is None or isinstance(where, ClipFilter) or callable(where):
        return where
    raise VmmError(f"where must be a Where (or ClipFilter), a dict of path_glob/min_duration/max_duration or a "
                   f"function of the file record, got {type(where).__name__}")


class _StaleIndex(RuntimeError):
    """The FAISS file does not hold the snapshot's clip ids; search_vectors falls back to the catalog."""


class LibraryReader:
    """A consistent, read-only snapshot of a library. Create it with :func:`open_library`."""

    def __init__(self, library: str, manifest: LibraryManifest, generation: int, files: list[FileRecord],
                 clips: tuple, base: VectorStore | None, base_generation: int, excluded: np.ndarray,
                 delta: VectorStore | None):
        self.library = library
        self.manifest = manifest
        self.generation = generation
        self.files = {record.id: record for record in files}
        self._clip_ids, self._clip_files, self._starts, self._ends, self._clip_generations = clips
        # One tuple, swapped whole when the FAISS file proves stale, so a concurrent search never mixes the two.
        self._stores = (base, base_generation, excluded, delta)
        self._stale_lock = threading.Lock()
        self._closed = False

    @property
    def _base(self) -> VectorStore | None:
        return self._stores[0]

    def __len__(self) -> int:
        """Number of clips in the snapshot."""
        return len(self._clip_ids)

    @property
    def on_gpu(self) -> bool:
        return self._base is not None and self._base.on_gpu

    def clips_of(self, path: str) -> list[tuple[int, float, float]]:
        """(clip_id, start, end) of one file's clips, in time order; ``path`` as the library stores it (absolute,
        "~" the home folder, as build_library takes it)."""
        if not isinstance(path, (str, os.PathLike)):  # None failed inside posixpath
            raise VmmError(f"clips_of takes a video's path (str or pathlib.Path), got {type(path).__name__}")
        path = os.path.abspath(os.path.expanduser(os.fspath(path)))
        ids = [record.id for record in self.files.values() if record.path == path]
        mask = np.isin(self._clip_files, ids)
        order = np.argsort(self._starts[mask], kind="stable")
        return [(int(i), float(s), float(e)) for i, s, e in
                zip(self._clip_ids[mask][order], self._starts[mask][order], self._ends[mask][order])]

    def search_vectors(self, queries: np.ndarray, k: int = 10, *, where: ClipFilter | Callable | None = None,
                       nprobe: int | None = None, ef_search: int | None = None) -> list[list[Hit]]:
        """The ``k`` best clips per query vector, best first; one list per row of ``queries``.

        ``queries`` is (Q, dim) or (dim,) float32, L2-normalised like the library's
        vectors (scores are cosines); a torch tensor is taken too. ``where`` is a
        :class:`ClipFilter`, a dict of its fields or a function of a :class:`FileRecord`;
        it selects clips before ranking, so k hits come back whenever k clips match. ``nprobe`` (IVF) and
        ``ef_search`` (HNSW) trade speed for recall on those index types (whole numbers >= 1; None: the default).
        """
        stores = self._stores  # read before the check: close() marks the reader closed first
        if self._closed:
            raise VmmError(f"this reader of library {self.library} is closed; open the library again with "
                           "open_library")
        if not is_whole_number(k) or k < 1:
            raise VmmError(f"k must be a whole number >= 1, got {k!r}")
        for name, value in (("nprobe", nprobe), ("ef_search", ef_search)):
            # FAISS casts these to size_t or int: -1 overflowed, while 0 and 1.5 were silently replaced or truncated.
            if value is not None and not (is_whole_number(value) and value >= 1):
                raise VmmError(f"{name} must be a whole number >= 1 (or None for the default), got {value!r}")
        queries = self._as_queries(queries)
        where = as_clip_filter(where)
        # No more hits than clips can exist; a larger k only allocated (Q, k) result arrays, up to all memory.
        total = len(self._clip_ids)
        k = min(int(k), total)
        if not k:
            return [[] for _ in queries]
        # A candidate list longer than the library changes nothing, and FAISS overflowed above 2**31 - 1.
        options = SearchOptions(nprobe=nprobe, ef_search=None if ef_search is None else min(int(ef_search), total))
        mask = None
        if where is not None:
            accepts = where.accepts if isinstance(where, ClipFilter) else where
            files = np.array([i for i, record in self.files.items() if record.status == "ok" and accepts(record)],
                             np.int64)
            mask = np.isin(self._clip_files, files)
        try:
            return self._search(stores, queries, k, mask, options)
        except _StaleIndex:
            return self._search(self._without_stale_file(stores), queries, k, mask, options)

    def _search(self, stores, queries: np.ndarray, k: int, mask, options: SearchOptions) -> list[list[Hit]]:
        base, base_generation, excluded, delta = stores
        allowed_base = allowed_delta = None
        if mask is not None:
            in_base = self._clip_generations <= base_generation
            allowed_base = self._clip_ids[mask & in_base]
            allowed_delta = self._clip_ids[mask & ~in_base]
        parts = []
        if base is not None and (allowed_base is None or len(allowed_base)):
            parts.append(base.search(queries, k, allowed=allowed_base, excluded=excluded, options=options))
            if allowed_base is not None and (parts[-1][1][:, :min(k, len(allowed_base))] < 0).any():
                # A filtered search returns every allowed clip up to k; these ones are missing from the file.
                raise _StaleIndex(f"library {self.library}: the vector index lacks clips of its generation")
        if delta is not None and (allowed_delta is None or len(allowed_delta)):
            parts.append(delta.search(queries, k, allowed=allowed_delta))
        if not parts:
            return [[] for _ in queries]
        scores, ids = merge_results(parts, k) if len(parts) > 1 else parts[0]
        return [self._hits(row_scores, row_ids) for row_scores, row_ids in zip(scores, ids)]

    def _without_stale_file(self, stale: tuple) -> tuple:
        """The snapshot's vectors read from the catalog, used from now on instead of a FAISS file that returned a
        clip id the catalog does not hold or missed one it should. Clip ids are never reused, so such a file is an
        older index copied over this one (a restored backup); its size and dimension matched, so nothing cheaper
        noticed it. Readers write nothing: the next writer (any vmm index run) checks the file's ids and rebuilds
        it."""
        def read(catalog: Catalog) -> VectorStore:
            with catalog.snapshot():
                delta = VectorStore.create(self.manifest.dim, "Flat")
                for ids, vectors in catalog.iter_vectors():
                    keep = np.isin(ids, self._clip_ids)  # not the clips added since the snapshot
                    delta.add(vectors[keep], ids[keep])
            return delta

        with self._stale_lock:
            if self._stores is stale:  # else another thread's search has replaced it already
                self._stores = (None, 0, np.zeros(0, np.int64), _read_whole(self.library, read))
            return self._stores

    def _as_queries(self, queries) -> np.ndarray:
        if hasattr(queries, "detach"):  # a torch tensor: one that needs grad, is on a GPU or is bf16 has no numpy view
            queries = queries.detach().float().cpu().numpy()
        fix = f"embed the queries with model {self.manifest.model_name} (dim {self.manifest.dim})"
        try:
            queries = np.asarray(queries, dtype=np.float32)
        except (TypeError, ValueError):
            raise VmmError(f"queries must be float vectors, got {type(queries).__name__}; {fix}") from None
        if queries.ndim == 1:
            queries = queries[None]
        if queries.ndim != 2 or queries.shape[1] != self.manifest.dim:
            raise VmmError(f"query vectors have shape {queries.shape} but library {self.library} holds "
                           f"dim-{self.manifest.dim} vectors; {fix}")
        if not np.isfinite(queries).all():  # FAISS ranks NaN below everything: the search returned nothing
            raise VmmError(f"query vectors hold NaN or infinite values; {fix}, and check its output")
        return queries

    def _hits(self, scores: np.ndarray, ids: np.ndarray) -> list[Hit]:
        hits = []
        for score, clip_id in zip(scores.tolist(), ids.tolist()):
            if clip_id < 0:
                continue
            row = int(np.searchsorted(self._clip_ids, clip_id))
            if row >= len(self._clip_ids) or self._clip_ids[row] != clip_id:
                raise _StaleIndex(f"library {self.library}: the vector index returned clip {clip_id}, which the "
                                   "catalog snapshot does not hold; run sync_index (this is a bug)")
            file_id = int(self._clip_files[row])
            hits.append(Hit(int(clip_id), self.files[file_id].path, float(self._starts[row]), float(self._ends[row]),
                            float(score), file_id))
        return hits

    def close(self) -> None:
        self._closed = True
        self._stores = (None, 0, np.zeros(0, np.int64), None)

    def __enter__(self) -> "LibraryReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _check_model(library: str, manifest: LibraryManifest, model) -> None:
    if model is None:
        return
    mine = (manifest.model_name, manifest.weights_hash, manifest.dim)
    try:
        theirs = (str(model.name), str(model.weights_hash), int(model.dim))
    except (AttributeError, TypeError, ValueError):
        raise VmmError(f"model must be the encoder that library {library} was built with (an object with name, "
                       f"weights_hash and dim), got {type(model).__name__}; or pass model=None") from None
    if mine != theirs:
        raise VmmError(f"library {library} was built with model {mine[0]} (weights {mine[1]}, dim {mine[2]}) but "
                       f"this model is {theirs[0]} (weights {theirs[1]}, dim {theirs[2]}); search it with the "
                       "model it was built with, or re-index into a new library")


def open_library(library_dir: str, *, model=None, device: str = "auto", mmap: bool = True) -> LibraryReader:
    """Open a library read-only as a consistent snapshot.

    ``model`` (anything with ``name``, ``weights_hash``, ``dim``) is checked against
    the manifest: another model is refused. ``device`` "auto" (or None) searches on all GPUs
    when faiss-gpu sees any, "cpu" never, "gpu" requires them. ``mmap`` maps the
    FAISS file instead of reading it into memory.

    >>> import tempfile
    >>> from index.encoder import ColorHistogramEncoder
    >>> from index.ingest import build_library
    >>> folder = tempfile.mkdtemp()
    >>> _ = build_library([folder], folder + "/lib", ColorHistogramEncoder(), workers=0, progress=False)
    >>> open_library(folder + "/lib", model=ColorHistogramEncoder(bins=5))
    Traceback (most recent call last):
    ...
    vmm.errors.VmmError: library ... was built with model color-histogram (weights cfg-..., dim 86) but ...
    """
    device = "auto" if device is None else device  # None means "auto", as VideoLibrary and the encoders take it
    if device not in ("auto", "cpu", "gpu"):
        raise VmmError(f"device must be 'auto', 'cpu' or 'gpu', got {device!r}")
    if not isinstance(library_dir, (str, os.PathLike)) or not isinstance(os.fspath(library_dir), str):
        raise VmmError(f"library_dir must be the library folder as a str or pathlib.Path, got "
                       f"{type(library_dir).__name__}" + ("; decode it with os.fsdecode" if isinstance(
                           library_dir, bytes) else ""))
    library = library_folder(library_dir)
    if os.path.isfile(library):
        raise VmmError(f"{library} is a file, not a library folder; pass the folder the library was built in")
    reader = _read_snapshot(library, mmap)
    _check_model(library, reader.manifest, model)
    if device != "cpu" and reader._base is not None:
        if not reader._base.to_gpu() and device == "gpu":
            raise VmmError("device='gpu' but FAISS sees no GPU (is faiss-gpu installed?); use device='cpu'")
    elif device == "gpu":
        import faiss

        if not hasattr(faiss, "index_cpu_to_all_gpus") or faiss.get_num_gpus() == 0:
            raise VmmError("device='gpu' but FAISS sees no GPU (is faiss-gpu installed?); use device='cpu'")
    return reader


def _read_snapshot(library: str, mmap: bool) -> LibraryReader:
    return _read_whole(library, lambda catalog: _snapshot(library, catalog, mmap), discard=LibraryReader.close)


def _read_whole(library: str, read: Callable[[Catalog], T], discard: Callable[[T], None] = lambda _: None,
                attempts: int = 20) -> T:
    """read(catalog), again while a writer changed a catalog that had to be read without SQLite's locks (in a
    folder this user cannot write: Catalog.changed_since_open); such a catalog read while written gave "database disk
    image is malformed" (a traceback) or a torn result (a file with some of its clips). A writer that keeps it
    open makes its -shm file, through which the next attempt reads it with locks. ``discard`` releases a torn result
    (a reader's FAISS file stays mapped until closed)."""
    for attempt in range(attempts):
        catalog = _open_catalog(library, read_only=True)
        try:
            try:
                result = read(catalog)
            except Exception:  # "malformed", or a torn table (a clip of a file the snapshot lacks...)
                if not catalog.changed_since_open():
                    raise
            else:
                if not catalog.changed_since_open():
                    return result
                discard(result)
        finally:
            catalog.close()
        _await_writer(catalog.path, 0.05 + 0.01 * attempt)
    raise VmmError(f"library {library} changed each time it was read ({attempts} times): it is being written, and "
                   "this user cannot write its folder, where SQLite keeps the files that let readers run beside a "
                   "writer; search again when the writer has finished")


def _await_writer(catalog_path: str, seconds: float) -> None:
    """Wait up to ``seconds`` for a writer to have the catalog open. A read without locks was torn because a writer
    ran meanwhile; while one has the catalog open, its -shm file lets the next attempt read with SQLite's locks,
    which no writer tears. Pausing a fixed time instead, the attempts of a reader slower than a busy writer's short
    runs (open, commit, close, again) fell between them, each torn, and the search gave up after 20."""
    end = time.monotonic() + seconds
    while not _opened_by_a_writer(catalog_path) and time.monotonic() < end:
        time.sleep(0.002)


def _snapshot(library: str, catalog: Catalog, mmap: bool, attempts: int = 5) -> LibraryReader:
    for attempt in range(attempts + 1):
        use_file = attempt < attempts  # last resort: ignore the FAISS file, read every vector
        with catalog.snapshot():
            generation = catalog.generation()
            state = read_state(library) if use_file else None
            if state is not None and state.generation > generation:
                continue  # a writer committed and saved after our snapshot began: take a newer snapshot
            manifest = catalog.manifest()
            base, base_generation = None, 0
            if state is not None and factory_problem(state.factory) is None:  # else an older version's IVF0...
                try:
                    base = VectorStore.load(os.path.join(library, state.file), state.factory, mmap=mmap)
                    base_generation = state.generation
                except RuntimeError:  # replaced by a writer between reading the state and opening it
                    continue
            excluded = catalog.tombstones_newer_than(base_generation) if base is not None else np.zeros(0, np.int64)
            if base is not None and not _base_fits(base, state, manifest, catalog, excluded):
                # A valid FAISS file of another library or generation copied over this one would hide clips
                # or return ids the catalog lacks: search the catalog's own vectors instead.
                base, base_generation, excluded = None, 0, np.zeros(0, np.int64)
            delta = None
            for ids, vectors in catalog.iter_vectors(newer_than=base_generation):
                if delta is None:
                    delta = VectorStore.create(manifest.dim, "Flat")
                delta.add(vectors, ids)
            return LibraryReader(library, manifest, generation, catalog.files(), catalog.clip_table(), base,
                                 base_generation, excluded, delta)
    raise AssertionError("unreachable")


def _base_fits(base: VectorStore, state, manifest: LibraryManifest, catalog: Catalog, excluded: np.ndarray) -> bool:
    """Whether the FAISS file holds what its state says: the catalog's clips up to its generation, plus at most
    the ones deleted since (tombstones), at the library's dimension."""
    if not matches_state(base, state, manifest.dim):
        return False
    kept = catalog.clip_count(up_to=state.generation)
    return kept <= base.ntotal <= kept + len(excluded)
