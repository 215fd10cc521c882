"""The library catalog: SQLite tables for files, clips (with their vectors) and the manifest.

The catalog is the library's single source of truth; the FAISS file is a cache
derived from it (see :mod:`index.library`). Every write is one SQLite transaction
that also bumps ``generation``; clips remember the generation that added them and
deleted clips leave a tombstone with the generation that removed them, so a FAISS
index saved at generation G is brought up to date with "add clips newer than G,
remove tombstones newer than G". Clip ids come from AUTOINCREMENT and are never
reused. WAL mode lets readers keep a consistent snapshot while a writer commits.

>>> import tempfile, os
>>> manifest = LibraryManifest("toy", "w0", 4, 8, "middle", {}, 10.0, 5.0, None)
>>> catalog = Catalog.create(os.path.join(tempfile.mkdtemp(), "catalog.sqlite"), manifest)
>>> catalog.generation(), catalog.manifest().model_name
(1, 'toy')
"""
from __future__ import annotations

import json
import math
import os
import sqlite3
import time
import urllib.parse
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Iterator

import numpy as np

FORMAT_VERSION = 1

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE files (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    path TEXT NOT NULL UNIQUE,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    fingerprint TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('ok', 'failed')),
    error TEXT,
    fps REAL, num_frames INTEGER, duration REAL, width INTEGER, height INTEGER,
    codec TEXT, backend TEXT,
    indexed_at REAL NOT NULL
);
CREATE TABLE clips (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    file_id INTEGER NOT NULL REFERENCES files(id),
    start_sec REAL NOT NULL,
    end_sec REAL NOT NULL,
    generation INTEGER NOT NULL,
    vector BLOB NOT NULL
);
CREATE INDEX clips_by_file ON clips(file_id);
CREATE INDEX clips_by_generation ON clips(generation);
CREATE TABLE tombstones (clip_id INTEGER PRIMARY KEY, generation INTEGER NOT NULL);
"""
# New paths are matched to known files by size (files_of_size): without this index every batch scanned the
# files table. Libraries made before it get it when a writer opens them; readers of any version ignore it.
_SIZE_INDEX = "CREATE INDEX IF NOT EXISTS files_by_size ON files(size)"


@dataclass(frozen=True)
class LibraryManifest:
    """What a library's vectors depend on. Opening a library with another model is refused."""

    model_name: str
    weights_hash: str
    dim: int
    num_frames: int
    sampling: str
    preprocessing: dict
    window: float  # seconds per clip window; math.inf = one clip per video
    stride: float
    max_seconds: float | None
    format_version: int = FORMAT_VERSION

    @classmethod
    def for_encoder(cls, encoder, *, window: float, stride: float, max_seconds: float | None) -> "LibraryManifest":
        """The manifest a library built with ``encoder`` and these clip settings gets."""
        preprocessing = dict(getattr(encoder, "preprocessing", {}) or {})
        return cls(str(encoder.name), str(encoder.weights_hash), int(encoder.dim), int(encoder.num_frames),
                   str(preprocessing.get("sampling", "middle")), preprocessing, float(window), float(stride),
                   None if max_seconds is None else float(max_seconds))

    def to_json(self) -> str:
        data = asdict(self)
        data["window"] = None if math.isinf(self.window) else self.window  # JSON has no infinity
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "LibraryManifest":
        data = json.loads(text)
        data["window"] = math.inf if data.get("window") is None else float(data["window"])
        return cls(**data)

    def model_mismatch(self, model: "LibraryManifest") -> str | None:
        """A one-phrase description of how ``model``'s embedding differs from this library's, or None."""
        for name in ("model_name", "weights_hash", "dim", "num_frames", "sampling", "preprocessing"):
            mine, theirs = getattr(self, name), getattr(model, name)
            # In a dict (preprocessing), the first differing entry: the whole dict was cut at 80 characters
            # before the one that differs ("pooling" comes last).
            while isinstance(mine, dict) and isinstance(theirs, dict) and _canonical(mine) != _canonical(theirs):
                key = next(k for k in sorted({*mine, *theirs}, key=str)
                           if _canonical(mine.get(k)) != _canonical(theirs.get(k)))
                name, mine, theirs = f"{name}[{key!r}]", mine.get(key), theirs.get(key)
            if _canonical(mine) != _canonical(theirs):
                return f"{name} is {_short(mine)} in the library but {_short(theirs)} for this model"
        return None

    def clip_mismatch(self, other: "LibraryManifest") -> str | None:
        """How the window/stride/max_seconds settings differ, or None."""
        for name in ("window", "stride", "max_seconds"):
            if getattr(self, name) != getattr(other, name):
                return f"{name} is {getattr(self, name)} in the library but {getattr(other, name)} was asked for"
        return None


def _canonical(value):
    return json.dumps(value, sort_keys=True, default=str)


def _short(value) -> str:
    text = _canonical(value) if isinstance(value, dict) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


@dataclass(frozen=True)
class FileRecord:
    """One row of the files table."""

    id: int
    path: str
    size: int
    mtime_ns: int
    fingerprint: str
    status: str  # "ok" or "failed"
    error: str | None
    fps: float | None
    num_frames: int | None
    duration: float | None
    width: int | None
    height: int | None
    codec: str | None
    backend: str | None
    indexed_at: float


_FILE_COLUMNS = ("id, path, size, mtime_ns, fingerprint, status, error, fps, num_frames, duration, width, "
                 "height, codec, backend, indexed_at")


@dataclass
class FileResult:
    """The outcome of processing one file, written by :meth:`Catalog.commit`."""

    path: str
    size: int
    mtime_ns: int
    fingerprint: str
    status: str  # "ok" or "failed"
    error: str | None = None
    info: object | None = None  # index.decode.VideoInfo for decoded files
    spans: list[tuple[float, float]] = field(default_factory=list)
    vectors: np.ndarray | None = None  # (len(spans), dim) float32


def damaged(path: str, detail: str):
    """The VmmError for a catalog that SQLite opens but whose contents a vmm library never writes."""
    from vmm.errors import VmmError

    return VmmError(f"{path} is damaged or not a vmm catalog ({detail}); rebuild the library into a new folder")


# SQLite's primary result codes that say a file could not be read or written (permissions, a lock, memory, a
# read-only medium, an I/O error, a full disk, a file that cannot be opened), not that it holds no catalog.
_ACCESS_CODES = {3, 5, 6, 7, 8, 10, 13, 14}
_ACCESS_TEXTS = ("access permission denied", "database is locked", "out of memory", "readonly database",
                 "disk I/O error", "database or disk is full", "unable to open database file")


def is_access_error(error: sqlite3.Error) -> bool:
    """Whether ``error`` is about reaching the file (its drive, permissions, locks) rather than its contents.

    >>> is_access_error(sqlite3.OperationalError("database or disk is full"))
    True
    >>> is_access_error(sqlite3.DatabaseError("file is not a database"))
    False
    """
    code = getattr(error, "sqlite_errorcode", None)  # Python 3.11+
    if code is not None:
        return code & 0xFF in _ACCESS_CODES
    return any(text in str(error) for text in _ACCESS_TEXTS)


def _connect_read_only(path: str, attempts: int = 50) -> tuple[sqlite3.Connection, tuple | None]:
    """The connection, and for one that reads the file without SQLite's locks (see below) the state of the files
    when it was opened (:meth:`Catalog.changed_since_open`)."""
    # Quoted: in a URI '#' starts a fragment and '?' the parameters, so a library folder named "Videos #2" lost
    # mode=ro and opened (creating) a file named "Videos ", and '%' escapes were decoded into another path.
    uri = f"file:{urllib.parse.quote(path)}?mode=ro"
    for attempt in range(attempts):
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA schema_version")  # the first read opens the WAL index (the -shm file)
            return conn, None
        except sqlite3.OperationalError as error:
            conn.close()
            if not _cannot_make_shm(path, error) or attempt == attempts - 1:
                raise
        if not _opened_by_a_writer(path):
            break
        # A writer opened the catalog between this attempt, which found no -shm file and could not make one, and
        # the check above: its -shm is there now, and the next attempt reads through it with locks. Without this
        # the race gave "cannot read the library catalog (attempt to write a readonly database)" in one read of
        # about fifty while the owner indexed.
        time.sleep(0.002 * attempt)
    # A WAL database is read through its -shm file, which the last writer deleted when it closed and which cannot
    # be made where the folder is not writable (a backup drive mounted read-only, a read-only volume): the library
    # could not be searched there at all. No -shm and no -wal means no writer has the catalog open and every
    # commit is in the file itself, so it is read as it is. Without locks, though: a writer (the owner, where this
    # user may not write the folder) that opens it meanwhile and checkpoints into the file while it is read gave
    # "database disk image is malformed" or a torn snapshot, so readers check changed_since_open() and read again.
    state = _files_state(path)
    return sqlite3.connect(f"{uri}&immutable=1", uri=True, isolation_level=None, check_same_thread=False), state


def _files_state(path: str) -> tuple:
    st = os.stat(path)
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, os.path.exists(path + "-wal"),
            os.path.exists(path + "-shm"))


def _cannot_make_shm(path: str, error: sqlite3.Error) -> bool:
    code = getattr(error, "sqlite_errorcode", None)
    # SQLite says CANTOPEN (14) on a read-only mount, but READONLY_DIRECTORY (8 | 6 << 8) for a folder this user
    # may not write (another user's library, chmod a-w): that case was "cannot read the library catalog".
    cannot_open = (code & 0xFF in (8, 14) if code is not None else
                   any(text in str(error) for text in ("unable to open database file", "readonly database")))
    return cannot_open and not os.access(os.path.dirname(os.path.abspath(path)), os.W_OK)


def _opened_by_a_writer(path: str) -> bool:
    if os.path.exists(path + "-shm"):
        return True
    try:
        return os.path.getsize(path + "-wal") > 0
    except OSError:  # none, or the writer that had it open just deleted it
        return False


def _connect(path: str, read_only: bool) -> tuple[sqlite3.Connection, tuple | None]:
    unlocked = None
    if read_only:
        conn, unlocked = _connect_read_only(path)
    else:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn, unlocked


def _under(root: str) -> tuple[str, tuple]:
    """SQL condition and parameters for "path is root or inside it" (no LIKE: paths may hold % or _)."""
    root = root.rstrip(os.sep) or os.sep
    if root == os.sep:
        return "1", ()
    return "(path = ? OR (path >= ? AND path < ?))", (root, root + os.sep, root + chr(ord(os.sep) + 1))


class Catalog:
    """A library's SQLite catalog. Writers hold the library lock (see :mod:`index.library`)."""

    def __init__(self, conn: sqlite3.Connection, path: str, read_only: bool):
        self._conn = conn
        self.path = path
        self.read_only = read_only
        self._unlocked = None  # the files' state when opened without SQLite's locks (_connect_read_only)

    @classmethod
    def create(cls, path: str, manifest: LibraryManifest) -> "Catalog":
        """Create a new catalog at ``path`` holding ``manifest``.

        It is built under a temporary name and renamed into place, so a reader or a
        crash never sees a catalog without its tables.
        """
        path = os.fspath(path)
        staging = path + ".new"
        for leftover in (staging, staging + "-wal", staging + "-shm", staging + "-journal"):
            if os.path.exists(leftover):
                os.remove(leftover)
        # Made here, as any other file of the library, with the mode the umask allows: SQLite makes a new database
        # (and its -wal and -shm, which take the database's mode) 0644 whatever the umask, so a library made with
        # umask 002 in a group's shared folder could not be written by the rest of the group.
        os.close(os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666))
        conn, _ = _connect(staging, read_only=False)
        with _transaction(conn):
            for statement in filter(str.strip, _SCHEMA.split(";")):
                conn.execute(statement)
            conn.executemany("INSERT INTO meta(key, value) VALUES (?, ?)", [
                ("format_version", str(FORMAT_VERSION)),
                ("manifest", manifest.to_json()),
                ("generation", "1"),
                ("created_at", repr(time.time())),
            ])
        # The tables are in the -wal file until a checkpoint copies them into the database, and the rename below
        # moves the database alone. close() checkpoints too, but ignores a failure: on a full disk it left half the
        # pages behind, and the renamed catalog was "malformed" for good. A failed checkpoint raises here instead.
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            conn.close()
        if os.path.exists(staging + "-wal") and os.path.getsize(staging + "-wal"):
            raise sqlite3.OperationalError("database or disk is full")  # the checkpoint did not finish
        os.replace(staging, path)
        fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return cls.open(path)

    @classmethod
    def open(cls, path: str, *, read_only: bool = False) -> "Catalog":
        """Open an existing catalog; raises sqlite3.Error if it is not one."""
        path = os.fspath(path)  # a pathlib.Path failed in urllib's quote (read-only) or at ``path + "-wal"``
        conn, unlocked = _connect(path, read_only)
        catalog = cls(conn, path, read_only)
        catalog._unlocked = unlocked
        version = catalog._meta("format_version")
        try:
            version = int(version)
        except (TypeError, ValueError):
            conn.close()
            raise damaged(path, f"meta.format_version is {version!r}, not a number") from None
        if version != FORMAT_VERSION:
            from vmm.errors import VmmError

            conn.close()
            if version > FORMAT_VERSION:  # rebuilding it would throw away a library that a newer vmm reads
                raise VmmError(f"{path}: library format {version} was written by a newer vmm (this one reads format "
                               f"{FORMAT_VERSION}); use that version, or upgrade vmm")
            raise VmmError(f"{path}: library format {version} is not supported by this vmm "
                           f"(it reads format {FORMAT_VERSION}); rebuild the library")
        if not read_only:
            try:
                conn.execute(_SIZE_INDEX)
            except sqlite3.OperationalError:
                pass  # a catalog file this process cannot write: the lookups work without it (a run that must
                # write says so then), as before the index existed
        return catalog

    def close(self) -> None:
        self._conn.close()

    def changed_since_open(self) -> bool:
        """Whether what was read may be torn: True only for a catalog read without SQLite's locks (a folder this
        user cannot write) whose file was rewritten, or that a writer opened, since it was opened."""
        if self._unlocked is None:
            return False
        try:
            return _files_state(self.path) != self._unlocked
        except OSError:
            return True

    # -- metadata --------------------------------------------------------------------------
    def _meta(self, key: str) -> str | None:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def manifest(self) -> LibraryManifest:
        text = self._meta("manifest")
        try:
            manifest = LibraryManifest.from_json(text)
        except (TypeError, ValueError, KeyError, AttributeError) as error:
            raise damaged(self.path, f"meta.manifest is not a library manifest: {type(error).__name__}: "
                                     f"{str(error)[:100]}") from None
        if not all(type(n) is int and n > 0 for n in (manifest.dim, manifest.num_frames)):
            raise damaged(self.path, f"meta.manifest holds dim={manifest.dim!r}, num_frames={manifest.num_frames!r}")
        return manifest

    def generation(self) -> int:
        value = self._meta("generation")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise damaged(self.path, f"meta.generation is {value!r}, not a number") from None

    def setting(self, key: str, default: str | None = None) -> str | None:
        value = self._meta(f"setting:{key}")
        return default if value is None else value

    def set_setting(self, key: str, value: str) -> int:
        with self._write() as generation:
            self._conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (f"setting:{key}", value))
        return generation

    # -- reads -----------------------------------------------------------------------------
    @contextmanager
    def snapshot(self) -> Iterator["Catalog"]:
        """Every read inside sees the same committed state (a read transaction)."""
        self._conn.execute("BEGIN")
        try:
            self._conn.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()  # pins the snapshot
            yield self
        finally:
            self._conn.execute("COMMIT")

    def files(self, under: list[str] | None = None) -> list[FileRecord]:
        """All file rows, or those at or below the paths in ``under`` (one path or a list of them)."""
        if isinstance(under, (str, os.PathLike)):  # a lone string was taken for its characters: "/" matched all
            under = [under]
        if under is None:
            rows = self._conn.execute(f"SELECT {_FILE_COLUMNS} FROM files ORDER BY path").fetchall()
        else:
            rows = []
            for root in under:
                condition, params = _under(os.fspath(root))
                rows += self._conn.execute(f"SELECT {_FILE_COLUMNS} FROM files WHERE {condition}", params).fetchall()
            rows = sorted(set(rows), key=lambda r: r[1])
        return [FileRecord(*row) for row in rows]

    def files_of_size(self, sizes) -> list[FileRecord]:
        """The rows of the files whose recorded size is one of ``sizes``, in path order."""
        sizes, rows = sorted(set(sizes)), []
        for i in range(0, len(sizes), 500):  # SQLite limits the parameters of one statement
            chunk = sizes[i:i + 500]
            rows += self._conn.execute(
                f"SELECT {_FILE_COLUMNS} FROM files WHERE size IN ({', '.join('?' * len(chunk))})", chunk).fetchall()
        return [FileRecord(*row) for row in sorted(rows, key=lambda r: r[1])]

    def file_by_path(self, path: str) -> FileRecord | None:
        row = self._conn.execute(f"SELECT {_FILE_COLUMNS} FROM files WHERE path = ?", (os.fspath(path),)).fetchone()
        return None if row is None else FileRecord(*row)

    def clip_table(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """All clips as arrays: (ids, file_ids, starts, ends, generations), sorted by id."""
        rows = self._conn.execute(
            "SELECT id, file_id, start_sec, end_sec, generation FROM clips ORDER BY id").fetchall()
        if not rows:
            return (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0), np.zeros(0), np.zeros(0, np.int64))
        ids, files, starts, ends, generations = zip(*rows)
        try:
            return (np.array(ids, np.int64), np.array(files, np.int64), np.array(starts, np.float64),
                    np.array(ends, np.float64), np.array(generations, np.int64))
        except (TypeError, ValueError) as error:  # SQLite keeps text that a numeric column was given
            raise damaged(self.path, f"the clips table holds a value that is not a number: {error}") from None

    def clip_count(self, *, up_to: int | None = None) -> int:
        """Number of clips, or of those added at or before generation ``up_to``."""
        if up_to is None:
            return self._conn.execute("SELECT COUNT(*) FROM clips").fetchone()[0]
        return self._conn.execute("SELECT COUNT(*) FROM clips WHERE generation <= ?", (up_to,)).fetchone()[0]

    def clip_ids(self, *, up_to: int) -> np.ndarray:
        """Ids of the clips added at or before generation ``up_to``, in no particular order: read from the
        generation index alone (ORDER BY id made SQLite scan the table, vectors and all: 750 MB for 2M clips)."""
        rows = self._conn.execute("SELECT id FROM clips INDEXED BY clips_by_generation WHERE generation <= ?",
                                  (up_to,))
        return np.fromiter((row[0] for row in rows), np.int64)

    def iter_vectors(self, *, newer_than: int = 0, chunk: int = 65536) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids, vectors) in id order for clips added after generation ``newer_than``."""
        dim = self.manifest().dim
        last = 0
        while True:
            rows = self._conn.execute(
                "SELECT id, vector FROM clips WHERE generation > ? AND id > ? ORDER BY id LIMIT ?",
                (newer_than, last, chunk)).fetchall()
            if not rows:
                return
            ids = np.fromiter((r[0] for r in rows), np.int64, len(rows))
            blobs = [r[1] for r in rows]
            if not all(type(b) is bytes and len(b) == 4 * dim for b in blobs):
                raise self._bad_vector(ids, blobs, dim)
            vectors = np.frombuffer(b"".join(blobs), np.float32).reshape(len(rows), dim)
            yield ids, vectors
            last = int(ids[-1])

    def vectors_for(self, ids: np.ndarray) -> np.ndarray:
        """Stored vectors of clip ``ids`` (KeyError for an unknown id)."""
        dim = self.manifest().dim
        out = np.empty((len(ids), dim), np.float32)
        for row, clip_id in enumerate(np.asarray(ids).tolist()):
            found = self._conn.execute("SELECT vector FROM clips WHERE id = ?", (clip_id,)).fetchone()
            if found is None:
                raise KeyError(clip_id)
            if type(found[0]) is not bytes or len(found[0]) != 4 * dim:
                raise self._bad_vector([clip_id], [found[0]], dim)
            out[row] = np.frombuffer(found[0], np.float32)
        return out

    def _bad_vector(self, ids, blobs, dim: int):
        clip_id, blob = next((i, b) for i, b in zip(ids, blobs) if type(b) is not bytes or len(b) != 4 * dim)
        size = f"{len(blob)} bytes" if type(blob) is bytes else f"a {type(blob).__name__}"
        return damaged(self.path, f"clip {int(clip_id)}'s vector is {size}, not {4 * dim} (dim {dim} float32)")

    def tombstones_newer_than(self, generation: int) -> np.ndarray:
        rows = self._conn.execute("SELECT clip_id FROM tombstones WHERE generation > ?", (generation,)).fetchall()
        return np.array([r[0] for r in rows], np.int64)

    # -- writes ----------------------------------------------------------------------------
    @contextmanager
    def _write(self) -> Iterator[int]:
        """One write transaction; yields the generation it commits."""
        with _transaction(self._conn, immediate=True):
            generation = self.generation() + 1
            self._conn.execute("UPDATE meta SET value = ? WHERE key = 'generation'", (str(generation),))
            yield generation

    def _drop_clips(self, file_ids: list[int], generation: int) -> None:
        for file_id in file_ids:
            self._conn.execute("INSERT OR REPLACE INTO tombstones(clip_id, generation) "
                               "SELECT id, ? FROM clips WHERE file_id = ?", (generation, file_id))
            self._conn.execute("DELETE FROM clips WHERE file_id = ?", (file_id,))

    def commit(self, results: list[FileResult] = (), *, remove: list[int] = (),
               rename: list[tuple[int, str, int, int]] = (), touch: list[tuple[int, int, int]] = ()) -> int:
        """Apply one batch atomically and return its generation.

        ``results`` replace the row and all clips of their path; ``remove`` deletes
        file ids with their clips; ``rename`` is (file_id, new_path, size, mtime_ns)
        for moved files; ``touch`` is (file_id, size, mtime_ns) for files whose stat
        changed but whose content did not.
        """
        with self._write() as generation:
            self._drop_clips(list(remove), generation)
            self._conn.executemany("DELETE FROM files WHERE id = ?", [(i,) for i in remove])
            for file_id, path, size, mtime_ns in rename:
                self._conn.execute("UPDATE files SET path = ?, size = ?, mtime_ns = ? WHERE id = ?",
                                   (path, size, mtime_ns, file_id))
            for file_id, size, mtime_ns in touch:
                self._conn.execute("UPDATE files SET size = ?, mtime_ns = ? WHERE id = ?", (size, mtime_ns, file_id))
            for result in results:
                self._write_result(result, generation)
        return generation

    def _write_result(self, result: FileResult, generation: int) -> None:
        info = result.info
        values = (result.size, result.mtime_ns, result.fingerprint, result.status, result.error,
                  getattr(info, "fps", None), getattr(info, "num_frames", None), getattr(info, "duration", None),
                  getattr(info, "width", None), getattr(info, "height", None), getattr(info, "codec", None),
                  getattr(info, "backend", None), time.time())
        existing = self._conn.execute("SELECT id FROM files WHERE path = ?", (result.path,)).fetchone()
        if existing is None:
            file_id = self._conn.execute(
                "INSERT INTO files(path, size, mtime_ns, fingerprint, status, error, fps, num_frames, duration, "
                "width, height, codec, backend, indexed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (result.path, *values)).lastrowid
        else:
            file_id = existing[0]
            self._drop_clips([file_id], generation)
            self._conn.execute(
                "UPDATE files SET size = ?, mtime_ns = ?, fingerprint = ?, status = ?, error = ?, fps = ?, "
                "num_frames = ?, duration = ?, width = ?, height = ?, codec = ?, backend = ?, indexed_at = ? "
                "WHERE id = ?", (*values, file_id))
        if result.status == "ok":
            vectors = np.ascontiguousarray(result.vectors, dtype=np.float32)
            self._conn.executemany(
                "INSERT INTO clips(file_id, start_sec, end_sec, generation, vector) VALUES (?, ?, ?, ?, ?)",
                [(file_id, float(start), float(end), generation, vectors[i].tobytes())
                 for i, (start, end) in enumerate(result.spans)])

    def prune_tombstones(self, up_to: int) -> None:
        """Forget tombstones a saved FAISS index (at generation ``up_to``) already reflects."""
        with _transaction(self._conn, immediate=True):
            self._conn.execute("DELETE FROM tombstones WHERE generation <= ?", (up_to,))


@contextmanager
def _transaction(conn: sqlite3.Connection, immediate: bool = False):
    conn.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
    try:
        yield
    except BaseException:
        # SQLite has already rolled back after some errors (a full disk, an I/O error): a ROLLBACK then failed
        # with "cannot rollback - no transaction is active", which hid the real error.
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
