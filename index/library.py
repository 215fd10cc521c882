"""A video library folder: its layout, the one writer's lock and checks, the FAISS file kept in step with the
catalog, and removing files. Building one (discover, decode, embed, commit) is :mod:`index.ingest`.

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
"""
from __future__ import annotations

import glob
import json
import os
import re
import shlex
import sqlite3
import stat
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import faiss
import numpy as np

from index.catalog import Catalog, LibraryManifest, damaged, is_access_error
from index.decode import DecodeOptions
from index.discovery import _path_args
from index.store import AUTO_FLAT_MAX, VectorStore, atomic_write_bytes, check_factory, factory_problem, resolve_factory
from vmm import folder_lock
from vmm.errors import VmmError

CATALOG_FILE = "catalog.sqlite"
MANIFEST_FILE = "manifest.json"
STATE_FILE = "index-state.json"
LOCK_FILE = "lock"


# -- opening a library for writing ------------------------------------------------------------
class _Lock:
    """An exclusive flock on the library's lock file (vmm.folder_lock); the kernel drops it if the process dies."""

    def __init__(self, library: str):
        path = os.path.join(library, LOCK_FILE)
        try:
            self._fd = folder_lock.claim(Path(path))
        except folder_lock.LockHeld as held:
            raise VmmError(f"library {library} is being written by {held.holder}; wait for it to finish") from None
        except folder_lock.LocksUnsupported as error:
            # A file system without locks (NFSv3 without its lock service says ENOLCK): "being written by" named
            # the last run's pid, long gone, and the user waited for a run that did not exist.
            raise VmmError(f"cannot lock {path} ({error}): the drive of library {library} does not support file "
                           "locks, which keep two runs from writing a library at once; enable locking on it (an "
                           "NFS mount's lock service) or keep the library on another drive") from None
        except OSError as error:
            if os.path.exists(path) and os.access(library, os.W_OK | os.X_OK):
                # The folder is writable but the lock is another user's (a library shared by a group, made before
                # its files followed the umask): "choose a folder you can write to" named the wrong thing.
                raise VmmError(f"cannot write the lock file {path} ({error.strerror}); ask its owner to make the "
                               f"library's files writable for you (chmod g+w {shlex.quote(library)}/*)") from None
            raise VmmError(f"cannot write to library folder {library} ({error.strerror}); "
                           "choose a folder you can write to") from None

    def release(self) -> None:
        folder_lock.release(self._fd)


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
        if name == LOCK_FILE:  # empty only in the instant between our truncate and write; an older vmm wrote no host
            return text == "" or re.fullmatch(r"pid \d+( on host [^\n]*\n)?", text) is not None
        LibraryManifest.from_json(text)
        return True
    except FileNotFoundError:
        return True
    except (OSError, ValueError, TypeError, KeyError):
        return False


def refuse_non_folder(library: str) -> None:
    """Raise VmmError when ``library`` exists as something other than a folder (a video file, a broken link)."""
    if os.path.lexists(library) and not os.path.isdir(library):
        raise VmmError(f"library path {library} exists and is not a folder; choose another library folder")


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
    if foreign and os.path.exists(os.path.join(library, CATALOG_FILE)):
        return  # rank 0 of a distributed run renamed its new catalog into place between the two looks
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
        refuse_non_folder(library)
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
                for stale in glob.glob(glob.escape(path) + "-*"):  # a -wal/-shm without its database
                    os.remove(stale)
                _check_clip_settings(wanted)
                catalog = Catalog.create(path, wanted)
            else:
                catalog = _open_catalog(library, read_only=False)
                _check_manifest(library, catalog.manifest(), wanted, explicit)
            writer = cls(library, catalog, lock)
            writer._write_manifest_copy()
            return writer
        except (sqlite3.OperationalError, OSError) as error:
            # OSError: a drive out of inodes (or over a quota on files) cannot make catalog.sqlite.new, which
            # ended the run with a traceback where SQLite's own failure to make a file was this line.
            lock.release()
            reason = error.strerror if isinstance(error, OSError) and error.strerror else error
            raise VmmError(f"cannot write the library catalog in {library} ({reason}); check free space on its drive "
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
        if name == "stride" and have.window == float("inf") and "window" not in explicit:
            # The stride recorded beside window=inf is the unused default: "uses stride=5.0" named a setting the
            # library never had.
            raise VmmError(f"library {library} holds one clip per video (--window 0), "
                           "where a stride does not apply; drop --stride, or index into a new folder")
        if getattr(have, name) != getattr(wanted, name):
            raise VmmError(f"library {library} uses {_setting(name, getattr(have, name))} but "
                           f"{_setting(name, getattr(wanted, name))} was asked for; drop the option to use the "
                           "library's value or index into a new folder")


def _setting(name: str, value) -> str:
    if name == "window" and value == float("inf"):
        return "window=inf (one clip per video, --window 0)"
    return f"{name}={value}"


def _check_clip_settings(manifest: LibraryManifest) -> None:
    try:
        DecodeOptions(num_frames=manifest.num_frames, window=manifest.window, stride=manifest.stride,
                      max_seconds=manifest.max_seconds).check()
    except ValueError as error:
        raise VmmError(f"{error}; fix the option") from None


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
    # Vectors in the library when an IVF's centroids were last trained (0: not recorded, an older state file): the
    # lists are retrained once the library has doubled since, as new kinds of content land in lists drawn for
    # the old (recall@10 0.41 after 10 drifting topics grew a 1024-list library to 50k clips; 1.00 retrained).
    trained_count: int = 0


def library_folder(library_dir) -> str:
    """The absolute path of a library folder, "~" being the home folder; an empty one is refused, since abspath("")
    is the working folder (a library would be built in, or looked for in, whatever folder the command ran from).

    >>> library_folder("/videos/lib"), library_folder("~/lib") == os.path.join(os.path.expanduser("~"), "lib")
    ('/videos/lib', True)
    """
    given = os.fspath(library_dir)
    if not given.strip():  # an unset variable (in quotes with a space: a folder no one meant)
        what = f"blank ({given!r})" if given else "an empty string ('')"
        raise VmmError(f"the library path is {what}; pass the library's folder")
    # As vmm index --library and VideoLibrary take it: build_library(..., "~/lib") made a folder named "~" in the
    # working one, and open_library("~/lib") found no library there.
    path = os.path.abspath(os.path.expanduser(given))
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        # A name in another encoding (Latin-1 bytes in a UTF-8 locale): SQLite and FAISS take UTF-8 paths, so
        # indexing failed in FAISS after creating the catalog, and a search in SQLite, both with a traceback.
        shown = path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        raise VmmError(f"the library path {shown} is not valid UTF-8; choose a folder whose name is") from None
    return path


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


def check_library_frames(library: str, frames: int, option: str = "--frames") -> None:
    """VmmError when the library holds clips of other than ``frames`` frames, naming ``option`` ("--frames" for
    vmm index, "frames=" for VideoLibrary.create). Checked before a model loads at that count: the catalog's own
    check blamed the model ("built with color-histogram but this run uses color-histogram"), and a recorded model
    loaded at it was reported as model.json failing to load. Without a readable manifest copy the catalog checks.

    >>> check_library_frames("/nonexistent-library", 8)
    """
    manifest = read_manifest_copy(library)
    if manifest is not None and manifest.num_frames != frames:
        asked = f"{option}{frames}" if option.endswith("=") else f"{option} {frames}"
        raise VmmError(f"library {library} uses {manifest.num_frames} frames per clip but {asked} was asked for; "
                       f"drop {option} to use the library's value or index into a new folder")


def read_state(library: str) -> IndexState | None:
    try:
        with open(os.path.join(library, STATE_FILE)) as f:
            state = IndexState(**json.load(f))
    except (OSError, ValueError, TypeError):
        return None
    # A hand-edited or foreign file: wrong types would fail later, far from here; without a state the FAISS
    # file is rebuilt (writers) or ignored (readers).
    texts = (state.file, state.factory, state.factory_setting)
    counts = (state.generation, state.count, state.dim, state.trained_count)
    if not all(isinstance(t, str) for t in texts) or not all(type(n) is int for n in counts):
        return None
    return state


def sync_index(library_dir: str, *, flat_max: int = AUTO_FLAT_MAX, _writer: LibraryWriter | None = None) -> IndexState:
    """Bring the library's FAISS file up to date with its catalog (writers only; takes the lock).

    ``build_library`` and ``remove_paths`` end with this; call it yourself after an
    interrupted run if you want the file refreshed before the next run.

    >>> import tempfile
    >>> from index.encoder import ColorHistogramEncoder
    >>> from index.ingest import build_library
    >>> folder = tempfile.mkdtemp()
    >>> _ = build_library([folder], folder + "/lib", ColorHistogramEncoder(), workers=0, progress=False)
    >>> state = sync_index(folder + "/lib")
    >>> state.factory, state.count
    ('IDMap2,Flat', 0)
    """
    _check_flat_max(flat_max)
    writer = _writer or LibraryWriter.open(library_dir)
    try:
        with _catalog_writes(writer.library):
            return _sync(writer, flat_max)
    finally:
        if _writer is None:
            writer.close()


def _check_flat_max(flat_max) -> None:
    """Checked before any write: None or a string failed in the FAISS sync after remove_paths had committed."""
    from index.ingest import _check_numbers  # as build_library checks it (ingest imports this module)
    _check_numbers(flat_max=flat_max)


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
            # A run killed after switching the state but before deleting the old file leaves the state current:
            # without this the old file (as large as the index) stayed until the catalog next changed.
            _delete_leftovers(library, state.file)
            return state
        wanted = resolve_factory(setting, count, flat_max=flat_max)
        if "IVF" in wanted and count < _ivf_lists(wanted):
            wanted = "IDMap2,Flat"  # too few vectors to train the IVF the library asks for, yet
        store, trained = None, count
        if state is not None and state.factory == wanted and not _centroids_outgrown(state, count):
            store = _load_saved(library, state, dim, catalog, mmap=False)
            if store is not None:
                store = _apply_changes(store, catalog, state.generation)
                trained = state.trained_count or state.count
        if store is None or store.ntotal != count:
            store, trained = _rebuild(catalog, wanted, count, dim), count
    # A fresh name every time: a file that a state ever named is never rewritten.
    name = f"vectors.g{generation:012d}.{os.urandom(4).hex()}.faiss"
    new_state = IndexState(generation, name, wanted, setting, count, dim, trained if "IVF" in wanted else 0)
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
    _delete_leftovers(library, name)
    catalog.prune_tombstones(generation)
    return new_state


@contextmanager
def _catalog_writes(library: str, kept: str = "what was committed is kept"):
    """Catalog writes that SQLite refuses (a full disk, a lost permission) end in one line: each write is one
    transaction, rolled back whole, so what was committed before is kept and the same command can be run again."""
    try:
        yield
    except sqlite3.OperationalError as error:
        raise VmmError(f"cannot write the library catalog in {library} ({error}); check free space on its drive "
                       f"and its permissions, then run the same command again ({kept})") from None


def _centroids_outgrown(state: IndexState, count: int) -> bool:
    """Whether an IVF's lists were trained on fewer than half the vectors the library now holds: retrained then,
    once a doubling, so a library grown by many small runs costs at most about twice one build.

    >>> _centroids_outgrown(IndexState(1, "f", "IVF1024,Flat", "IVF1024,Flat", 3000, 512, 1024), 2048)
    True
    >>> _centroids_outgrown(IndexState(1, "f", "IVF1024,Flat", "IVF1024,Flat", 3000, 512, 3000), 5999)
    False
    """
    return "IVF" in state.factory and count >= 2 * (state.trained_count or state.count)


def _delete_leftovers(library: str, keep: str) -> None:
    """Delete the FAISS files other than ``keep`` (the one the state names), and the temporary files of a writer
    killed while replacing a file. Only the lock holder writes these, so any other is a dead writer's."""
    # Escaped: in a folder named "Videos [2024]" the brackets read as a pattern and matched nothing, so every run
    # left its old FAISS file behind, each as large as the index.
    folder = glob.escape(library)
    leftovers = glob.glob(os.path.join(folder, "vectors.g*.faiss*"))
    leftovers += glob.glob(os.path.join(folder, STATE_FILE + ".tmp.*"))
    leftovers += glob.glob(os.path.join(folder, MANIFEST_FILE + ".tmp.*"))
    leftovers += glob.glob(os.path.join(folder, "model.json.tmp.*"))  # retrieval.library.MODEL_FILE's (vmm.atomic)
    for old in leftovers:
        if os.path.basename(old) != keep:
            os.remove(old)


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


# -- removing files ----------------------------------------------------------------------------
def remove_paths(library_dir: str, paths: list[str], *, flat_max: int = AUTO_FLAT_MAX,
                 not_found: list | None = None) -> int:
    """Drop files (or everything under folders) from a library; returns how many files were removed.

    The files on disk are not touched. The ``paths`` that match no file of the library
    are appended to ``not_found`` when it is given.

    >>> import tempfile
    >>> from index.encoder import ColorHistogramEncoder
    >>> from index.ingest import build_library
    >>> folder = tempfile.mkdtemp()
    >>> _ = build_library([folder], folder + "/lib", ColorHistogramEncoder(), workers=0, progress=False)
    >>> remove_paths(folder + "/lib", [folder + "/old-videos"])
    0
    """
    paths = _path_args(paths, "remove")
    _check_flat_max(flat_max)
    with LibraryWriter.open(library_dir) as writer, _catalog_writes(writer.library):
        _factory_setting(writer)
        rows = {}
        for given in paths:
            # A file is stored under the path it was indexed by: the link's path when reached only through a
            # symbolic link, its real path otherwise. The path as written comes first, and the real path only
            # when it matches nothing: a link repointed since (current -> 2023, now -> 2024) removes what was
            # indexed through it, not the folder it reaches now.
            path = os.path.expanduser(given)  # as build_library takes it
            found = (writer.catalog.files(under=[os.path.abspath(path)])
                     or writer.catalog.files(under=[os.path.realpath(path)]))
            rows.update((row.id, row) for row in found)
            if not found and not_found is not None:
                not_found.append(given)
        if rows:
            writer.catalog.commit(remove=list(rows))
        _sync(writer, flat_max)
        return len(rows)
