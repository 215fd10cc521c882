"""Build and update a video library: discover, decode, embed, commit, refresh the FAISS file.

On-disk layout of a library folder::

    manifest.json              the manifest, human-readable copy (the catalog holds the master)
    catalog.sqlite (+ -wal)    files, clips with their float32 vectors, tombstones, manifest
    index-state.json           {"generation": G, "file": "vectors.g...faiss", "factory": ...}
    vectors.g000000000042.<random>.faiss   FAISS index of all clips as of generation G
    lock                       held (flock) by the one process writing the library
    .staging/<run>/            a distributed run's staged work, merged by rank 0 (index.distributed)

Crash safety: the catalog is the only source of truth. A file's row and all its clip
vectors go in with one SQLite transaction (WAL, synchronous=FULL), together with the
deletion of that file's previous clips, so after a SIGKILL every file is either
entirely in the library (old or new version) or not at all, and a re-run redoes
exactly the files that are missing or stale. The FAISS file is a cache: it is written
under a new name (temp file, fsync, rename), then ``index-state.json`` is replaced
the same way to point at it. Whatever moment a crash hits, the state names a
complete index of a committed generation, and the catalog's generation numbers tell
which clips to add and which to remove to bring it up to date (readers do this in
memory, writers on disk). No step can duplicate a vector or lose one.

>>> import tempfile
>>> from index.encoder import ColorHistogramEncoder
>>> folder = tempfile.mkdtemp()           # an empty folder: nothing to index
>>> summary = build_library([folder], folder + "/lib", ColorHistogramEncoder(), progress=False)
>>> summary.line().startswith("indexed 0 files (0 clips), 0 unchanged, 0 failed, 0 removed, no videos found under ")
True
"""
from __future__ import annotations

import bisect
import fcntl
import glob
import json
import numbers
import os
import re
import reprlib
import sqlite3
import stat
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Callable

import faiss
import numpy as np

from index.catalog import Catalog, FileRecord, FileResult, LibraryManifest, damaged, is_access_error
from index.decode import DEFAULT_MAX_PIXELS, DEFAULT_STRIDE, DEFAULT_WINDOW, DecodeOptions
from index.discovery import Candidate, Discovery, check_root, discover, fingerprint_file
from index.pool import DecodePool
from index.progress import IngestProgress, ProgressUpdate
from index.store import (AUTO_FLAT_MAX, VectorStore, atomic_write_bytes, check_factory, factory_problem,
                         resolve_factory)
from vmm.errors import VmmError

CATALOG_FILE = "catalog.sqlite"
MANIFEST_FILE = "manifest.json"
STATE_FILE = "index-state.json"
LOCK_FILE = "lock"


# -- summary ---------------------------------------------------------------------------------
@dataclass
class IngestSummary:
    """What one :func:`build_library` run did; ``line()`` is the final summary line."""

    library: str
    indexed: int = 0  # files embedded by this run
    unchanged: int = 0  # files already in the library with the same content
    failed: int = 0  # files that failed in this run (recorded with their error)
    removed: int = 0  # files gone from disk whose clips were dropped
    moved: int = 0  # files found under a new path with the same content (vectors kept)
    skipped_failed: int = 0  # files that failed before and were not retried
    clips: int = 0  # clips embedded by this run
    seconds: float = 0.0
    failures: list[tuple[str, str]] = field(default_factory=list)  # (path, error) of this run's failures
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # folders/files that could not be listed
    duplicates: list[tuple[str, str]] = field(default_factory=list)  # (path, path the same file is indexed under)
    empty: list[str] = field(default_factory=list)  # paths given to the run under which no video was found

    @property
    def clips_per_second(self) -> float:
        return self.clips / self.seconds if self.seconds > 0 else 0.0

    def line(self, retry_hint: str = "retry_failed=True") -> str:
        """The summary in one line; ``retry_hint`` names how the caller retries earlier failures (the CLI passes
        its flag, ``--retry-failed``)."""
        text = (f"indexed {self.indexed} files ({self.clips} clips), {self.unchanged} unchanged, "
                f"{self.failed} failed, {self.removed} removed")
        if self.moved:
            text += f", {self.moved} moved"
        if self.duplicates:
            n = len(self.duplicates)
            text += f", {n} duplicate path{'s' if n != 1 else ''} skipped (same file as another path)"
        if self.unreadable:
            text += f", {len(self.unreadable)} unreadable (kept as they were)"
        if self.empty:
            # A mistyped folder (or a folder of .mov files behind the wrong mount) otherwise reads like success.
            shown = ", ".join(self.empty[:3]) + (f" and {len(self.empty) - 3} more" if len(self.empty) > 3 else "")
            text += f", no videos found under {shown}"
        text += f" in {self.seconds:.1f} s"
        if self.clips:
            text += f" ({self.clips_per_second:.1f} clips/s)"
        if self.skipped_failed:
            text += f"; {self.skipped_failed} earlier failures skipped ({retry_hint} retries them)"
        return text


# -- opening a library for writing ------------------------------------------------------------
class _Lock:
    """An exclusive flock on the library's lock file; the kernel drops it if the process dies."""

    def __init__(self, library: str):
        path = os.path.join(library, LOCK_FILE)
        try:
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as error:
            raise VmmError(f"cannot write to library folder {library} ({error.strerror}); "
                           "choose a folder you can write to") from None
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(self._fd, 32, 0).decode(errors="replace").strip() or "another process"
            os.close(self._fd)
            raise VmmError(f"library {library} is being written by {holder}; wait for it to finish") from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"pid {os.getpid()}".encode(), 0)

    def release(self) -> None:
        os.close(self._fd)  # closing drops the flock


def _prepare_folder(library: str) -> None:
    try:
        os.makedirs(library, exist_ok=True)
    except OSError as error:
        raise VmmError(f"cannot create library folder {library} ({error.strerror}); "
                       "choose a folder you can write to") from None
    if not os.access(library, os.W_OK | os.X_OK):
        raise VmmError(f"library folder {library} is not writable; choose a folder you can write to")


def _foreign_files(library: str) -> list[str]:
    """Names in a folder without a catalog that a library run did not write (so must never be touched)."""
    try:
        names = os.listdir(library)
    except (FileNotFoundError, NotADirectoryError):
        return []  # a new folder; one that cannot be created is reported when creating it
    except OSError as error:
        raise VmmError(f"cannot list library folder {library} ({error.strerror}); "
                       "choose a folder you can read and write") from None
    return sorted(name for name in names if not _is_ours(library, name))


def _is_ours(library: str, name: str) -> bool:
    path = os.path.join(library, name)
    try:
        # One lstat decides, as another rank's temporary file can vanish between two checks.
        mode = os.lstat(path).st_mode
    except FileNotFoundError:  # gone since the listing: another rank's finished temporary file
        return True
    if name == ".staging":  # index.distributed's STAGING_DIR: a distributed run that failed before its plan
        return stat.S_ISDIR(mode)
    if name.startswith(CATALOG_FILE + ".new") or name in (CATALOG_FILE + "-wal", CATALOG_FILE + "-shm"):
        return stat.S_ISREG(mode)
    if name not in (LOCK_FILE, MANIFEST_FILE) or not stat.S_ISREG(mode):
        return False
    try:
        with open(path, "rb") as f:
            text = f.read(1 << 16).decode()
        if name == LOCK_FILE:  # empty only in the instant between our truncate and write
            return text == "" or re.fullmatch(r"pid \d+", text) is not None
        LibraryManifest.from_json(text)
        return True
    except FileNotFoundError:
        return True
    except (OSError, ValueError, TypeError, KeyError):
        return False


def refuse_foreign_folder(library: str) -> None:
    """Raise VmmError when ``library`` holds no catalog but files a library run did not write (nothing may be
    written there). A new, empty or library folder passes.

    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> refuse_foreign_folder(folder)  # empty: fine
    >>> _ = open(os.path.join(folder, "notes.txt"), "w").write("mine")
    >>> refuse_foreign_folder(folder)
    Traceback (most recent call last):
    ...
    vmm.errors.VmmError: ... is not empty and holds no vmm library (no catalog.sqlite; it holds notes.txt); ...
    """
    if os.path.exists(os.path.join(library, CATALOG_FILE)):
        return
    foreign = _foreign_files(library)
    if foreign and all(_is_leftover(library, name) for name in foreign):
        # The catalog was deleted (or not copied along): the rest would make a new catalog's generations name
        # vectors of the lost one, so it must go first, and that is the user's call (they may restore the catalog).
        raise VmmError(f"{library} holds a vmm library whose {CATALOG_FILE} is missing, and its other files are no "
                       f"use without it; nothing was written there: put {CATALOG_FILE} back, or delete "
                       f"{', '.join(foreign)} from {library} and run again to build the library anew")
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise VmmError(f"{library} is not empty and holds no vmm library (no {CATALOG_FILE}; it holds {shown}); "
                       "nothing was written there: choose an empty or new folder for the library (--library)")


def _is_leftover(library: str, name: str) -> bool:
    """A file only a library writes (the FAISS cache, its state, vmm index's model.json), checked by content."""
    path = os.path.join(library, name)
    if re.fullmatch(r"vectors\.g\d{12}\.[0-9a-f]{8}\.faiss(\.tmp\.\d+)?", name):
        return os.path.isfile(path) and not os.path.islink(path)
    if name == STATE_FILE:
        return not os.path.islink(path) and read_state(library) is not None
    if name == "model.json":  # retrieval.library.MODEL_FILE
        try:
            with open(path) as f:
                data = json.load(f)
        except (OSError, ValueError):
            return False
        return not os.path.islink(path) and isinstance(data, dict) and set(data) == {"model", "checkpoint", "frames"}
    return False


def _no_library(library: str) -> VmmError:
    return VmmError(f"no vmm library at {library} (no {CATALOG_FILE}; nothing was created); check the --library "
                    f"path, or build one with `vmm index PATH --library {library}`")


def _open_catalog(library: str, *, read_only: bool) -> Catalog:
    path = os.path.join(library, CATALOG_FILE)
    if not os.path.isfile(path):
        raise _no_library(library)
    try:
        return Catalog.open(path, read_only=read_only)
    except sqlite3.DatabaseError as error:
        if is_access_error(error):  # a full disk or a permission: "damaged, rebuild" would throw an intact library away
            raise VmmError(f"cannot {'read' if read_only else 'write'} the library catalog {path} ({error}); "
                           "this is a problem of its drive or permissions, not of its contents: check free space and "
                           "permissions, then run again") from None
        raise damaged(path, str(error)) from None


class LibraryWriter:
    """A library opened for writing: the folder lock plus the catalog (use as a context manager)."""

    def __init__(self, library: str, catalog: Catalog, lock: _Lock):
        self.library = library
        self.catalog = catalog
        self._lock = lock

    @classmethod
    def open(cls, library_dir: str, wanted: LibraryManifest | None = None, *,
             explicit: tuple[str, ...] = ()) -> "LibraryWriter":
        """Lock and open ``library_dir``, creating it for ``wanted`` if it is new.

        An existing library whose model differs from ``wanted`` is refused; so is a
        clip setting named in ``explicit`` ("window", "stride", "max_seconds") that
        differs from the library's.
        """
        library = library_folder(library_dir)
        path = os.path.join(library, CATALOG_FILE)
        # Everything that can refuse the folder is decided before a file (even the lock) is created in it.
        if os.path.lexists(library) and not os.path.isdir(library):
            raise VmmError(f"library path {library} exists and is not a folder; choose another library folder")
        if not os.path.exists(path):
            if wanted is None:
                raise _no_library(library)
            refuse_foreign_folder(library)
            _check_clip_settings(wanted)
        _prepare_folder(library)
        lock = _Lock(library)
        try:
            if not os.path.exists(path):
                if wanted is None:
                    raise _no_library(library)
                refuse_foreign_folder(library)  # again under the lock: the folder may have changed meanwhile
                for stale in glob.glob(path + "-*"):  # a -wal/-shm without its database
                    os.remove(stale)
                _check_clip_settings(wanted)
                catalog = Catalog.create(path, wanted)
            else:
                catalog = _open_catalog(library, read_only=False)
                _check_manifest(library, catalog.manifest(), wanted, explicit)
            writer = cls(library, catalog, lock)
            writer._write_manifest_copy()
            return writer
        except sqlite3.OperationalError as error:
            lock.release()
            raise VmmError(f"cannot write the library catalog in {library} ({error}); check free space on its drive "
                           "and its permissions, or choose a folder you can write to") from None
        except BaseException:
            lock.release()
            raise

    @property
    def manifest(self) -> LibraryManifest:
        return self.catalog.manifest()

    def _write_manifest_copy(self) -> None:
        path = os.path.join(self.library, MANIFEST_FILE)
        text = self.catalog.manifest().to_json()
        try:
            with open(path) as f:
                if f.read() == text:
                    return
        except OSError:
            pass
        try:
            atomic_write_bytes(path, text.encode())
        except OSError:
            pass  # a copy for people and for checks that do without it; the catalog holds the manifest

    def close(self) -> None:
        self.catalog.close()
        self._lock.release()

    def __enter__(self) -> "LibraryWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _check_manifest(library: str, have: LibraryManifest, wanted: LibraryManifest | None,
                    explicit: tuple[str, ...]) -> None:
    if wanted is None:
        return
    problem = have.model_mismatch(wanted)
    if problem:
        raise VmmError(
            f"library {library} was built with model {have.model_name} (weights {have.weights_hash}, dim {have.dim}) "
            f"but this run uses {wanted.model_name} (weights {wanted.weights_hash}, dim {wanted.dim}): {problem}; "
            "use the library's model or index into a new library folder")
    for name in explicit:
        if getattr(have, name) != getattr(wanted, name):
            raise VmmError(f"library {library} uses {_setting(name, getattr(have, name))} but "
                           f"{_setting(name, getattr(wanted, name))} was asked for; drop the option to use the "
                           "library's value or index into a new folder")


def _setting(name: str, value) -> str:
    if name == "window" and value == float("inf"):
        return "window=inf (one clip per video, --window 0)"
    return f"{name}={value}"


# -- the FAISS cache ----------------------------------------------------------------------------
@dataclass(frozen=True)
class IndexState:
    """Contents of index-state.json: which FAISS file reflects which catalog generation."""

    generation: int
    file: str
    factory: str  # resolved factory string of that file
    factory_setting: str  # what the library asks for ("auto" or a factory string)
    count: int
    dim: int


def library_folder(library_dir) -> str:
    """The absolute path of a library folder; an empty one is refused, since abspath("") is the working folder
    (a library would be built in, or looked for in, whatever folder the command ran from).

    >>> library_folder("/videos/lib")
    '/videos/lib'
    """
    if os.fspath(library_dir) == "":
        raise VmmError("the library path is an empty string (''); pass the library's folder")
    return os.path.abspath(os.fspath(library_dir))


def read_manifest_copy(library: str) -> LibraryManifest | None:
    """The manifest from the library's human-readable copy (manifest.json), read without opening the catalog; None
    when there is no readable copy (no library yet, or a damaged file: the catalog holds the master).

    >>> read_manifest_copy("/nonexistent-library") is None
    True
    """
    try:
        with open(os.path.join(library, MANIFEST_FILE), encoding="utf-8") as f:
            return LibraryManifest.from_json(f.read())
    except (OSError, ValueError, TypeError, AttributeError):
        return None


def read_state(library: str) -> IndexState | None:
    try:
        with open(os.path.join(library, STATE_FILE)) as f:
            state = IndexState(**json.load(f))
    except (OSError, ValueError, TypeError):
        return None
    # A hand-edited or foreign file: wrong types would fail later, far from here; without a state the FAISS
    # file is rebuilt (writers) or ignored (readers).
    texts, counts = (state.file, state.factory, state.factory_setting), (state.generation, state.count, state.dim)
    if not all(isinstance(t, str) for t in texts) or not all(type(n) is int for n in counts):
        return None
    return state


def sync_index(library_dir: str, *, flat_max: int = AUTO_FLAT_MAX, _writer: LibraryWriter | None = None) -> IndexState:
    """Bring the library's FAISS file up to date with its catalog (writers only; takes the lock).

    ``build_library`` and ``remove_paths`` end with this; call it yourself after an
    interrupted run if you want the file refreshed before the next run.

    >>> import tempfile
    >>> from index.encoder import ColorHistogramEncoder
    >>> folder = tempfile.mkdtemp()
    >>> _ = build_library([folder], folder + "/lib", ColorHistogramEncoder(), workers=0, progress=False)
    >>> state = sync_index(folder + "/lib")
    >>> state.factory, state.count
    ('IDMap2,Flat', 0)
    """
    writer = _writer or LibraryWriter.open(library_dir)
    try:
        return _sync(writer, flat_max)
    finally:
        if _writer is None:
            writer.close()


def _sync(writer: LibraryWriter, flat_max: int) -> IndexState:
    library, catalog = writer.library, writer.catalog
    setting = _factory_setting(writer)
    state = read_state(library)
    with catalog.snapshot():
        generation = catalog.generation()
        count = catalog.clip_count()
        dim = catalog.manifest().dim
        if (state is not None and state.generation == generation and state.factory_setting == setting
                and _load_saved(library, state, dim, catalog, count, mmap=True) is not None):
            return state
        wanted = resolve_factory(setting, count, flat_max=flat_max)
        if "IVF" in wanted and count < _ivf_lists(wanted):
            wanted = "IDMap2,Flat"  # too few vectors to train the IVF the library asks for, yet
        store = None
        if state is not None and state.factory == wanted:
            store = _load_saved(library, state, dim, catalog, mmap=False)
            if store is not None:
                store = _apply_changes(store, catalog, state.generation)
        if store is None or store.ntotal != count:
            store = _rebuild(catalog, wanted, count, dim)
    # A fresh name every time: a file that a state ever named is never rewritten.
    name = f"vectors.g{generation:012d}.{os.urandom(4).hex()}.faiss"
    new_state = IndexState(generation, name, wanted, setting, count, dim)
    try:
        store.save(os.path.join(library, name))
        atomic_write_bytes(os.path.join(library, STATE_FILE), (json.dumps(asdict(new_state), indent=2) + "\n").encode())
    except OSError as error:
        # A full disk: the FAISS file is only a cache of the catalog, which holds every committed file; the old
        # state still names a complete file (or none), and readers add the newer clips from the catalog.
        if os.path.exists(os.path.join(library, name)):
            os.remove(os.path.join(library, name))
        raise VmmError(f"cannot write the FAISS index of library {library} ({error.strerror or error}); every "
                       "finished file is in its catalog and searches find them: free space on its drive, then run "
                       "the same command again to write the index") from None
    for old in glob.glob(os.path.join(library, "vectors.g*.faiss*")):
        if os.path.basename(old) != name:
            os.remove(old)
    catalog.prune_tombstones(generation)
    return new_state


def _load_saved(library: str, state: IndexState, dim: int, catalog: Catalog, count: int | None = None, *,
                mmap: bool) -> VectorStore | None:
    """The FAISS file ``state`` names, or None when it is missing, unreadable or not the index the state describes.

    A valid FAISS file of another library or generation copied over it (a restored backup) loads fine but would
    hide or invent clips, so its size and dimension must match the state's (and ``count``, the catalog's, when
    the state claims to be current), and its clip ids the catalog's; a mismatch is rebuilt from the catalog like
    a missing file.
    """
    path = os.path.join(library, state.file)
    if factory_problem(state.factory) is not None or not os.path.isfile(path):
        return None
    try:
        store = VectorStore.load(path, state.factory, mmap=mmap)
    except (RuntimeError, MemoryError):  # not a FAISS file (truncated, overwritten)
        return None
    if not matches_state(store, state, dim) or count not in (None, state.count):
        return None
    if not _holds_catalog_ids(store, catalog, state.generation):
        return None
    return store


def matches_state(store: VectorStore, state: IndexState, dim: int) -> bool:
    """Whether a loaded FAISS file has the size and dimension its state records, at the library's dimension (a
    file of another library or generation copied over it has not); readers and writers both ask."""
    return store.dim == state.dim == dim and store.ntotal == state.count


def _holds_catalog_ids(store: VectorStore, catalog: Catalog, generation: int) -> bool:
    """Whether the file holds the ids it should at ``generation``: the clips added up to then, plus any deleted
    since (tombstones). An older backup of the same library has the right count and dimension but other ids
    (clip ids are never reused); readers only notice it when a search meets one, and cannot repair it. Checked
    where the type lists its ids without reading its vectors (IDMap/IDMap2, IVF lists), else trusted."""
    index = faiss.downcast_index(store.index)
    if isinstance(index, (faiss.IndexIDMap, faiss.IndexIDMap2)):
        ids = faiss.vector_to_array(index.id_map)
    else:
        try:
            lists = faiss.extract_index_ivf(index).invlists
        except RuntimeError:  # neither: no cheap list of ids
            return True
        ids = np.concatenate([np.zeros(0, np.int64)] + [faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i)).copy()
                                                        for i in range(lists.nlist) if lists.list_size(i)])
    live, dead = catalog.clip_ids(up_to=generation), catalog.tombstones_newer_than(generation)
    # Two membership tests and the counts, no sort of the ids: np.isin on integers is linear (0.01 s a million,
    # np.unique's sort took 0.5 s). With no tombstones, a live id held twice leaves another out of the count.
    return (len(ids) == store.ntotal and len(ids) <= len(live) + len(dead) and bool(np.isin(live, ids).all())
            and bool(np.isin(ids, np.concatenate([live, dead]) if len(dead) else live).all()))


def _ivf_lists(factory: str) -> int:
    match = re.search(r"IVF(\d+)", factory)
    return int(match.group(1)) if match else 1


def _factory_setting(writer: LibraryWriter) -> str:
    """The library's index type, checked (a library may hold a setting that an older version accepted)."""
    setting = writer.catalog.setting("index_factory", "auto")
    try:
        check_factory(writer.catalog.manifest().dim, setting)
    except VmmError as error:
        # The stored setting is all that is wrong: one run with --factory replaces it and rebuilds the FAISS file.
        raise VmmError(f"library {writer.library} is set to an index type it cannot build: {error}, with `vmm index "
                       "PATH --library LIB --factory auto` (build_library(factory=...)); the catalog is intact"
                       ) from None
    return setting


def _apply_changes(store: VectorStore, catalog: Catalog, since: int) -> VectorStore | None:
    if not store.remove(catalog.tombstones_newer_than(since)):
        return None  # HNSW cannot remove: rebuild
    for ids, vectors in catalog.iter_vectors(newer_than=since):
        store.add(vectors, ids)
    return store


def _rebuild(catalog: Catalog, factory: str, count: int, dim: int) -> VectorStore:
    store = VectorStore.create(dim, factory)
    if not store.index.is_trained:
        # A fixed-seed sample of the library's own vectors, drawn chunk by chunk.
        limit = 64 * _ivf_lists(factory)
        keep = min(1.0, limit / max(count, 1))
        rng = np.random.default_rng(0)
        sample = [vectors[rng.random(len(vectors)) < keep] for _, vectors in catalog.iter_vectors()]
        store.train(np.concatenate(sample) if sample else np.zeros((0, dim), np.float32))
    for ids, vectors in catalog.iter_vectors():
        store.add(vectors, ids)
    return store


# -- planning a run -------------------------------------------------------------------------------
@dataclass
class _Plan:
    todo: list[Candidate] = field(default_factory=list)
    problems: list[FileResult] = field(default_factory=list)
    remove: list[FileRecord] = field(default_factory=list)
    rename: list[tuple[int, str, int, int]] = field(default_factory=list)
    touch: list[tuple[int, int, int]] = field(default_factory=list)
    duplicates: list[tuple[str, str]] = field(default_factory=list)
    unchanged: int = 0
    skipped_failed: int = 0


def _safe_fingerprint(path: str) -> str:
    try:
        return fingerprint_file(path)
    except OSError:
        return ""


def _plan(catalog: Catalog, found: Discovery, known: list[FileRecord], retry_failed: bool) -> _Plan:
    """Compare disk (``found``) with the catalog (``known``: its rows under the run's paths)."""
    plan = _Plan(duplicates=list(found.duplicates))
    known = {row.path: row for row in known}
    scoped = set(known)
    # Discovery keeps the library's path of a file reached twice, so a path it left out whose row is in the
    # library is a second row of one file (made before files were told apart by identity): it goes.
    plan.remove = [known.pop(path) for path, _ in found.duplicates if path in known]
    fresh: list[Candidate] = []
    for candidate in found.candidates:
        row = known.pop(candidate.path, None)
        if row is None:
            fresh.append(candidate)
            continue
        retry = row.status == "failed" and retry_failed
        if (row.size, row.mtime_ns) != (candidate.size, candidate.mtime_ns):
            if _safe_fingerprint(candidate.path) != row.fingerprint:
                _schedule(plan, candidate)
                continue
            plan.touch.append((row.id, candidate.size, candidate.mtime_ns))  # touched, same content
        if retry:
            _schedule(plan, candidate)
        elif row.status == "ok":
            plan.unchanged += 1
        else:
            plan.skipped_failed += 1
    # Only a file that is really gone loses its clips (a fresh file with its content is a move): one that still
    # exists (unreadable, or under a folder that could not be listed) keeps them until it can be looked at again.
    listable: dict[str, bool] = {}
    known = {path: row for path, row in known.items() if path in found.rejected or _gone(path, listable)}
    missing_by_size: dict[int, list[FileRecord]] = defaultdict(list)
    for row in known.values():
        if row.status == "ok":
            missing_by_size[row.size].append(row)
    # Only a row of a new file's size can be that file (a second path to it, or its old path): one query for both.
    same_size = catalog.files_of_size({c.size for c in fresh}) if fresh else []
    indexed_as = _indexed_elsewhere([row.path for row in same_size], fresh)
    # A folder moved out from under the paths of the runs that indexed it (`mv ~/videos/trip ~/archive/`, then
    # `vmm index ~/archive`) leaves its rows outside this run's paths: those that are gone are moves too, else
    # the library would embed every file again and keep searching the vanished paths. They are only followed,
    # never removed: files outside this run's paths are not reconciled.
    sizes = {c.size for c in fresh if c.path not in indexed_as}
    for row in same_size:
        if (row.size in sizes and row.status == "ok" and row.path not in scoped
                and _gone(row.path, listable)):
            missing_by_size[row.size].append(row)
    for candidate in fresh:
        if candidate.path in indexed_as:
            plan.duplicates.append((candidate.path, indexed_as[candidate.path]))
            continue
        rows = missing_by_size.get(candidate.size)
        if rows and candidate.problem is None:
            fingerprint = _safe_fingerprint(candidate.path)
            match = next((row for row in rows if row.fingerprint == fingerprint), None)
            if match is not None:
                rows.remove(match)
                known.pop(match.path, None)
                plan.rename.append((match.id, candidate.path, candidate.size, candidate.mtime_ns))
                continue
        _schedule(plan, candidate)
    plan.remove = sorted(plan.remove + list(known.values()), key=lambda row: row.path)
    plan.duplicates.sort()
    return plan


def _indexed_elsewhere(same_size: list[str], fresh: list[Candidate]) -> dict[str, str]:
    """New paths whose file the library already holds under another path that still reaches it: a hard link made
    since, or a file indexed through a symbolic link (or a link to its folder) and now reached directly, or the
    other way round. The library may hold that path outside this run's paths, so the whole catalog is asked for
    ``same_size``, the paths of its rows of a new file's size (only those can be the same file); only they are
    looked at on disk."""
    by_identity: dict[tuple[int, int], str] = {}
    for path in same_size:
        identity = _identity(path)
        if identity is not None:
            by_identity.setdefault(identity, path)
    return {c.path: by_identity[identity] for c in fresh
            if (identity := _identity(c.path)) is not None and identity in by_identity}


def _identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _gone(path: str, listable: dict[str, bool]) -> bool:
    """True when ``path`` does not exist and the folder that would hold it was listed fine.

    ``listable`` caches, per folder, whether it could be listed (a deleted folder of many files asks once).
    """
    try:
        os.lstat(path)
        return False
    except (FileNotFoundError, NotADirectoryError):
        pass
    except OSError:
        return False  # permission denied on the way, I/O error...: cannot tell
    folder = os.path.dirname(path)
    while True:
        try:
            st = os.lstat(folder)
        except (FileNotFoundError, NotADirectoryError):
            folder, above = os.path.dirname(folder), folder
            if folder == above:
                return True
            continue
        except OSError:
            return False
        if stat.S_ISLNK(st.st_mode):  # a broken link may be an unmounted drive
            return os.path.exists(folder) and _listable(folder, listable)
        return not stat.S_ISDIR(st.st_mode) or _listable(folder, listable)


def _listable(folder: str, cache: dict[str, bool]) -> bool:
    if folder not in cache:
        try:
            with os.scandir(folder) as entries:
                next(entries, None)
            cache[folder] = True
        except OSError:
            cache[folder] = False
    return cache[folder]


def _schedule(plan: _Plan, candidate: Candidate) -> None:
    if candidate.problem is None:
        plan.todo.append(candidate)
    else:
        plan.problems.append(FileResult(candidate.path, candidate.size, candidate.mtime_ns,
                                        _safe_fingerprint(candidate.path), "failed", candidate.problem))


# -- the ingestion pipeline -------------------------------------------------------------------------
@dataclass
class _FileState:
    candidate: Candidate
    attempt: int = 0
    fingerprint: str = ""
    info: object = None
    spans: list = field(default_factory=list)
    vectors: dict = field(default_factory=dict)  # clip index -> vector
    decoded: bool = False
    finished: bool = False


class _Pipeline:
    """Consumes decoder events, embeds clips in batches, commits finished files in batches."""

    def __init__(self, catalog: Catalog, encoder, summary: IngestSummary, progress: IngestProgress,
                 batch_size: int, commit_seconds: float):
        self.catalog = catalog
        self.encoder = encoder
        self.summary = summary
        self.progress = progress
        self.batch_size = batch_size
        self.commit_seconds = commit_seconds
        self.states: dict[int, _FileState] = {}
        self.batch: list[tuple[int, int, object]] = []  # (key, attempt, Clip)
        self.finished: list[FileResult] = []
        self.finished_clips = 0
        self.last_commit = time.monotonic()

    def run(self, pool: DecodePool, todo: list[Candidate]) -> None:
        for key, candidate in enumerate(todo):
            self.states[key] = _FileState(candidate)
            pool.submit(key, candidate.path)
        try:
            while pool.pending() or self.batch:
                event = pool.get(timeout=0.02 if self.batch else 0.5)
                if event is None:
                    if self.batch:  # the decoders are behind: embed what we have
                        self._encode()
                else:
                    self._handle(*event)
                self._maybe_commit()
        finally:
            self._commit()  # files finished before an interruption are complete: keep them

    def _handle(self, kind: str, key: int, payload) -> None:
        state = self.states[key]
        if kind == "start":
            state.fingerprint, start = payload
            state.attempt += 1
            state.info, state.spans, state.vectors, state.decoded = start.info, start.spans, {}, False
        elif kind == "clip":
            self.batch.append((key, state.attempt, payload))
            if len(self.batch) >= self.batch_size:
                self._encode()
        elif kind == "done":
            state.decoded = True
            self._finish_if_complete(key)
        elif kind == "failed":
            self._fail(key, payload)

    def _encode(self) -> None:
        batch, self.batch = self.batch, []
        live = [(key, attempt, clip) for key, attempt, clip in batch
                if not self.states[key].finished and self.states[key].attempt == attempt]
        if not live:
            return
        vectors = np.asarray(self.encoder.encode_clips([clip.frames for _, _, clip in live]), dtype=np.float32)
        dim = self.encoder.dim
        if vectors.shape != (len(live), dim):
            raise VmmError(f"encoder {self.encoder.name} returned an array of shape {vectors.shape} for "
                           f"{len(live)} clips; it must return ({len(live)}, {dim})")
        norms = np.linalg.norm(vectors, axis=1)
        touched = set()
        for (key, _, clip), vector, norm in zip(live, vectors, norms):
            state = self.states[key]
            if state.finished:
                continue
            if not (np.isfinite(norm) and norm > 0):
                self._fail(key, f"the encoder returned a {'zero' if norm == 0 else 'non-finite'} vector for the "
                                f"clip at {clip.start:.1f}-{clip.end:.1f} s")
                continue
            state.vectors[clip.index] = vector / norm
            touched.add(key)
        self.progress.advance(clips=len(live))
        for key in touched:
            self._finish_if_complete(key)

    def _finish_if_complete(self, key: int) -> None:
        state = self.states[key]
        if state.finished or not state.decoded or len(state.vectors) < len(state.spans):
            return
        state.finished = True
        c = state.candidate
        order = sorted(state.vectors)
        result = FileResult(c.path, c.size, c.mtime_ns, state.fingerprint, "ok", None, state.info,
                            [(state.spans[i].start, state.spans[i].end) for i in order],
                            np.stack([state.vectors[i] for i in order]))
        self.finished.append(result)
        self.finished_clips += len(order)
        self.summary.indexed += 1
        self.summary.clips += len(order)
        state.vectors = {}
        self.progress.advance(files=1, path=c.path)

    def _fail(self, key: int, message: str) -> None:
        state = self.states[key]
        if state.finished:
            return
        state.finished = True
        state.vectors = {}
        c = state.candidate
        self.finished.append(FileResult(c.path, c.size, c.mtime_ns, state.fingerprint or _safe_fingerprint(c.path),
                                        "failed", message))
        self.summary.failed += 1
        self.summary.failures.append((c.path, message))
        self.progress.advance(files=1, path=c.path)

    def _maybe_commit(self) -> None:
        if self.finished and (time.monotonic() - self.last_commit >= self.commit_seconds
                              or self.finished_clips >= 8192):
            self._commit()

    def _commit(self) -> None:
        if self.finished:
            self.catalog.commit(self.finished)
            self.finished, self.finished_clips = [], 0
        self.last_commit = time.monotonic()


def _default_workers() -> int:
    return max(1, min(8, (os.cpu_count() or 2) - 1))


def build_library(paths: list[str], library_dir: str, encoder, *, window: float | None = None,
                  stride: float | None = None, max_seconds: float | None = None, batch_size: int = 16,
                  workers: int | None = None, timeout: float = 60.0, retry_failed: bool = False,
                  factory: str | None = None, backend: str = "auto", max_pixels: int = DEFAULT_MAX_PIXELS,
                  progress: bool | Callable[[ProgressUpdate], None] = True, commit_seconds: float = 2.0,
                  flat_max: int = AUTO_FLAT_MAX, worker_hook: str | None = None,
                  on_open: Callable[[str], None] | None = None) -> IngestSummary:
    """Index the videos under ``paths`` into ``library_dir`` with ``encoder``; incremental and crash-safe.

    ``window``/``stride`` (seconds) cut long videos into overlapping clips
    (``window=math.inf``: one clip per video); ``max_seconds`` uses only the start
    of each video (DiDeMo: 30). None takes the library's value (10 s / 5 s / all for a
    new library). ``workers`` decoder processes (0: decode in this process, no
    timeout) each get ``timeout`` seconds per decoding step before being killed.
    ``factory`` sets the FAISS index type ("auto", "Flat", "HNSW32,Flat",
    "IVF4096,Flat", ...). Files that failed before are skipped unless
    ``retry_failed``. ``progress`` is True (rich bar), False, or a callback.
    ``on_open(library)`` runs once the library is locked and checked, before the
    run commits anything (``vmm index`` writes ``model.json`` there).

    >>> import tempfile
    >>> from index.encoder import ColorHistogramEncoder
    >>> folder = tempfile.mkdtemp()
    >>> build_library([folder], folder + "/lib", ColorHistogramEncoder(), workers=0, progress=False).failed
    0
    """
    started = time.monotonic()
    request = _check_request(paths, library_dir, encoder, window=window, stride=stride, max_seconds=max_seconds,
                             batch_size=batch_size, workers=workers, timeout=timeout, factory=factory,
                             max_pixels=max_pixels, commit_seconds=commit_seconds, flat_max=flat_max, on_open=on_open)
    library = request.library
    with LibraryWriter.open(library, request.wanted, explicit=request.explicit) as writer:
        if on_open is not None:
            on_open(library)
        try:
            return _ingest(writer, request.roots, encoder, started, batch_size=batch_size, workers=workers,
                           timeout=timeout, retry_failed=retry_failed, factory=factory, backend=backend,
                           max_pixels=max_pixels, progress=progress, commit_seconds=commit_seconds,
                           flat_max=flat_max, worker_hook=worker_hook)
        except sqlite3.OperationalError as error:
            raise VmmError(f"cannot write the library catalog in {library} ({error}); check free space and "
                           "permissions, then run again (finished files are kept)") from None


@dataclass(frozen=True)
class _Request:
    """A checked build request: absolute roots and library, the manifest it asks for, options given explicitly."""

    roots: list[str]
    library: str
    wanted: LibraryManifest
    explicit: tuple[str, ...]


def _check_request(paths, library_dir, encoder, *, window, stride, max_seconds, batch_size, workers,
                   timeout, factory=None, max_pixels=DEFAULT_MAX_PIXELS, commit_seconds=2.0, flat_max=AUTO_FLAT_MAX,
                   on_open=None) -> _Request:
    """Validate build_library's arguments (raising VmmError) before anything is written."""
    _check_encoder(encoder)
    paths = _path_args(paths, "index")
    if not paths:
        raise VmmError("no paths to index; pass video files or folders")
    roots = [os.path.abspath(p) for p in paths]
    for given, root in zip(paths, roots):
        check_root(given, root)
    optional = {"workers": workers, "window": window, "stride": stride, "max_seconds": max_seconds}
    _check_numbers(batch_size=batch_size, timeout=timeout, max_pixels=max_pixels, commit_seconds=commit_seconds,
                   flat_max=flat_max, **{name: value for name, value in optional.items() if value is not None})
    if on_open is not None and not callable(on_open):
        raise VmmError(f"on_open must be a function of the library folder or None, got {reprlib.repr(on_open)}")
    if batch_size < 1:
        raise VmmError(f"batch_size must be >= 1, got {batch_size}")
    if workers is not None and workers < 0:
        raise VmmError(f"workers must be >= 0, got {workers}")
    if not timeout > 0:
        raise VmmError(f"timeout must be > 0 seconds, got {timeout}")
    if factory is not None:
        check_factory(encoder.dim, factory)

    explicit = tuple(name for name, value in (("window", window), ("stride", stride), ("max_seconds", max_seconds))
                     if value is not None)
    window_s = DEFAULT_WINDOW if window is None else float(window)
    stride_s = (min(DEFAULT_STRIDE, window_s) if stride is None else float(stride))
    wanted = LibraryManifest.for_encoder(encoder, window=window_s, stride=stride_s, max_seconds=max_seconds)
    for name in explicit:  # the combination is checked when a library is created with it
        if not getattr(wanted, name) > 0:
            raise VmmError(f"{name} must be > 0 seconds, got {getattr(wanted, name)}; fix the option")
    return _Request(roots, library_folder(library_dir), wanted, explicit)


def _path_args(paths, action: str) -> list[str]:
    """``paths`` (one path or a list) as a list of str paths; VmmError for anything else."""
    if isinstance(paths, (str, bytes, os.PathLike)):
        paths = [paths]
    try:
        paths = list(paths)
    except TypeError:
        paths = [paths]  # None or a number: named below
    given = []
    for path in paths:
        path = os.fspath(path) if isinstance(path, os.PathLike) else path
        if isinstance(path, bytes):
            raise VmmError(f"paths must be str, not bytes: got {reprlib.repr(path)}; decode it with os.fsdecode")
        if not isinstance(path, str):
            raise VmmError(f"paths must be file or folder paths (str or os.PathLike), got {reprlib.repr(path)}; "
                           f"pass the videos to {action}")
        if not path:
            # abspath("") is the working folder: removing "" would empty the library of everything below it.
            raise VmmError(f"paths holds an empty path (''); pass the files or folders to {action}")
        if "\0" in path:
            raise VmmError(f"paths holds {reprlib.repr(path)}, with a NUL character no file name can hold; fix the path")
        given.append(path)
    return given


_WHOLE_NUMBERS = ("batch_size", "workers", "max_pixels", "flat_max")


def _check_numbers(**values) -> None:
    """A string or None where a number belongs is named here, not left to fail inside a comparison later."""
    for name, value in values.items():
        whole = name in _WHOLE_NUMBERS
        if isinstance(value, bool) or not isinstance(value, numbers.Integral if whole else numbers.Real):
            raise VmmError(f"{name} must be {'a whole number' if whole else 'a number of seconds'}, got "
                           f"{reprlib.repr(value)}; fix the option")


def _check_encoder(encoder) -> None:
    missing = [name for name in ("name", "weights_hash", "dim", "num_frames", "encode_clips")
               if not hasattr(encoder, name)]
    if missing:
        raise VmmError(f"{type(encoder).__name__} is not a ClipEncoder (missing {', '.join(missing)}); "
                       "see index.encoder.ClipEncoder")


def _check_clip_settings(manifest: LibraryManifest) -> None:
    try:
        DecodeOptions(num_frames=manifest.num_frames, window=manifest.window, stride=manifest.stride,
                      max_seconds=manifest.max_seconds).check()
    except ValueError as error:
        raise VmmError(f"{error}; fix the option") from None


def _ingest(writer: LibraryWriter, roots: list[str], encoder, started: float, *, batch_size, workers, timeout,
            retry_failed, factory, backend, max_pixels, progress, commit_seconds, flat_max,
            worker_hook) -> IngestSummary:
    workers = _default_workers() if workers is None else workers
    options = _decode_options(writer.manifest, max_pixels=max_pixels, backend=backend, workers=workers)
    summary, plan = _start_run(writer, roots, factory=factory, retry_failed=retry_failed)

    bar = IngestProgress(progress, len(plan.todo))
    pipeline = _Pipeline(writer.catalog, encoder, summary, bar, batch_size, commit_seconds)
    try:
        with DecodePool(options, workers=workers, timeout=timeout, prefetch=max(8, 2 * batch_size),
                        worker_hook=worker_hook) as pool:
            pipeline.run(pool, plan.todo)
    finally:
        bar.close()
    _sync(writer, flat_max)
    summary.seconds = time.monotonic() - started
    return summary


def _decode_options(manifest: LibraryManifest, *, max_pixels: int, backend: str, workers: int,
                    cpus: int | None = None) -> DecodeOptions:
    """Decoding settings for a run; ``cpus`` (default: all) are shared among ``workers`` as decoder threads."""
    cpus = cpus or os.cpu_count() or 2
    options = DecodeOptions(num_frames=manifest.num_frames, window=manifest.window, stride=manifest.stride,
                            max_seconds=manifest.max_seconds, max_pixels=max_pixels, backend=backend,
                            threads=max(1, cpus // max(1, workers)))
    try:
        options.check()
    except ValueError as error:
        raise VmmError(f"{error}; fix the option") from None
    return options


def _start_run(writer: LibraryWriter, roots: list[str], *, factory: str | None,
               retry_failed: bool) -> tuple[IngestSummary, _Plan]:
    """Apply the factory setting, compare disk with the catalog, and commit what needs no decoding.

    Returns the run's summary so far and the plan, whose ``todo`` files still need decoding.
    """
    catalog, manifest = writer.catalog, writer.manifest
    summary = IngestSummary(writer.library)
    if factory is not None and factory != catalog.setting("index_factory", "auto"):
        check_factory(manifest.dim, factory)  # a bad factory string fails here, before any work
        catalog.set_setting("index_factory", factory)
    else:
        _factory_setting(writer)  # the stored one, which an older version may have accepted

    known = catalog.files(under=roots)
    found = discover(roots, exclude=[writer.library], prefer={row.path for row in known})
    summary.unreadable = found.unreadable
    summary.empty = _empty_roots(roots, found)
    plan = _plan(catalog, found, known, retry_failed)
    summary.unchanged, summary.skipped_failed, summary.duplicates = plan.unchanged, plan.skipped_failed, plan.duplicates
    summary.removed, summary.moved = len(plan.remove), len(plan.rename)
    summary.failed = len(plan.problems)
    summary.failures = [(r.path, r.error) for r in plan.problems]
    if plan.problems or plan.remove or plan.rename or plan.touch:
        catalog.commit(plan.problems, remove=[row.id for row in plan.remove], rename=plan.rename, touch=plan.touch)
    return summary, plan


def _empty_roots(roots: list[str], found: Discovery) -> list[str]:
    """The roots under which discovery found nothing, not even an unreadable entry or another path of a file."""
    seen = [c.path for c in found.candidates] + [p for p, _ in found.duplicates] + [p for p, _ in found.unreadable]
    # Sorted once and searched per root: a run given 16,000 files as paths spent 15 s comparing every root with
    # every path.
    ordered = sorted(seen)
    empty = [root for root in roots if not _holds_any(ordered, root)]
    if empty and seen:
        # A file is stored under the path the library knows it by, which may reach it through another spelling
        # of the root (a symbolic link to it, or the real folder of a linked root): compare real paths too.
        real = sorted(os.path.realpath(path) for path in seen)
        empty = [root for root in empty if not _holds_any(real, os.path.realpath(root))]
    return empty


def _holds_any(ordered: list[str], root: str) -> bool:
    """Whether a path of the sorted list is ``root`` or lies under it.

    Paths under root sort together from root + '/' on; root itself sorts before them (siblings such as
    root + '-2' come in between), so each needs one look.
    """
    at = bisect.bisect_left(ordered, root)
    under = bisect.bisect_left(ordered, root.rstrip(os.sep) + os.sep)
    return ((at < len(ordered) and ordered[at] == root)
            or (under < len(ordered) and _at_or_under(ordered[under], root)))


def _at_or_under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def remove_paths(library_dir: str, paths: list[str], *, flat_max: int = AUTO_FLAT_MAX,
                 not_found: list | None = None) -> int:
    """Drop files (or everything under folders) from a library; returns how many files were removed.

    The files on disk are not touched. The ``paths`` that match no file of the library
    are appended to ``not_found`` when it is given.

    >>> import tempfile
    >>> from index.encoder import ColorHistogramEncoder
    >>> folder = tempfile.mkdtemp()
    >>> _ = build_library([folder], folder + "/lib", ColorHistogramEncoder(), workers=0, progress=False)
    >>> remove_paths(folder + "/lib", [folder + "/old-videos"])
    0
    """
    paths = _path_args(paths, "remove")
    with LibraryWriter.open(library_dir) as writer:
        _factory_setting(writer)
        rows = {}
        for given in paths:
            # A file is stored under the path it was indexed by: the link's path when reached only through a
            # symbolic link, its real path otherwise. The path as written comes first, and the real path only
            # when it matches nothing: a link repointed since (current -> 2023, now -> 2024) removes what was
            # indexed through it, not the folder it reaches now.
            found = (writer.catalog.files(under=[os.path.abspath(given)])
                     or writer.catalog.files(under=[os.path.realpath(given)]))
            rows.update((row.id, row) for row in found)
            if not found and not_found is not None:
                not_found.append(given)
        if rows:
            writer.catalog.commit(remove=list(rows))
        _sync(writer, flat_max)
        return len(rows)
