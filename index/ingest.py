"""Index videos into a library: discover them, plan against the catalog, decode, embed, commit.

A run compares what is on disk with the catalog first (:func:`_plan`): moves, removals, touched files and files
known to fail are committed without decoding; new and changed files are decoded in worker processes and embedded
in batches (:class:`_Pipeline`), each committed whole with its clips, and the FAISS file is refreshed at the end.
The library folder itself (its lock, catalog checks and FAISS cache) is :mod:`index.library`.

>>> import tempfile
>>> from index.encoder import ColorHistogramEncoder
>>> folder = tempfile.mkdtemp()           # an empty folder: nothing to index
>>> summary = build_library([folder], folder + "/lib", ColorHistogramEncoder(), progress=False)
>>> summary.line().startswith("indexed 0 files (0 clips), 0 unchanged, 0 failed, 0 removed, no videos found under ")
True
"""
from __future__ import annotations

import bisect
import math
import numbers
import os
import re
import reprlib
import stat
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from index.catalog import Catalog, FileRecord, FileResult, LibraryManifest
from index.decode import DEFAULT_MAX_PIXELS, DEFAULT_STRIDE, DEFAULT_WINDOW, DecodeOptions, _is_number
from index.discovery import Candidate, Discovery, _path_args, check_root, discover
from index.library import CATALOG_FILE, LibraryWriter, _catalog_writes, _factory_setting, _sync, library_folder
from index.pool import DecodePool, FileStamp
from index.progress import IngestProgress, ProgressUpdate
from index.store import AUTO_FLAT_MAX, check_factory, factory_spelling
from vmm.errors import VmmError, one_line


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
    kept: list[tuple[str, str]] = field(default_factory=list)  # (missing file kept, the empty folder that held it)

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
        if self.kept:
            n, folders = len(self.kept), list(dict.fromkeys(folder for _, folder in self.kept))
            text += (f", {n} missing file{'s' if n != 1 else ''} kept (the folder{'s' if len(folders) > 1 else ''} "
                     f"{_some(folders)} {'are' if len(folders) > 1 else 'is'} empty: a drive not mounted? if deleted, "
                     "vmm index --remove or remove_paths drops them)")
        if self.empty:
            # A mistyped folder (or a folder of .mov files behind the wrong mount) otherwise reads like success.
            text += f", no videos found under {_some(self.empty)}"
        text += f" in {self.seconds:.1f} s"
        if self.clips:
            text += f" ({self.clips_per_second:.1f} clips/s)"
        text += self._run_details()  # with the run's figures, before the hint that may end the line
        if self.skipped_failed:
            text += f"; {self.skipped_failed} earlier failures skipped ({retry_hint} retries them)"
        return text

    def _run_details(self) -> str:
        """What a kind of run adds to :meth:`line`'s figures: nothing here, the ranks for a distributed run."""
        return ""


def _some(paths: list[str]) -> str:
    # Escaped: a folder name with a newline split the summary line in two.
    return one_line(", ".join(paths[:3])) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")


# -- planning a run -------------------------------------------------------------------------------
@dataclass
class _Plan:
    todo: list[Candidate] = field(default_factory=list)
    problems: list[FileResult] = field(default_factory=list)
    remove: list[FileRecord] = field(default_factory=list)
    rename: list[tuple[int, str, int, int]] = field(default_factory=list)
    touch: list[tuple[int, int, int]] = field(default_factory=list)
    duplicates: list[tuple[str, str]] = field(default_factory=list)
    kept: list[tuple[str, str]] = field(default_factory=list)  # (missing path, the empty folder that held it)
    unchanged: int = 0
    skipped_failed: int = 0


def _fingerprint_as_seen(candidate: Candidate) -> str:
    """The fingerprint of ``candidate``'s file while it still has the size and mtime discovery saw, else "".

    A fingerprint is stored or compared beside those two: one of content written since would leave the library
    holding the old size and mtime with the new content, taken as current whenever they came back (a copy tool
    that keeps mtimes). "" matches no stored fingerprint, so a file changed since is looked at again.
    """
    try:
        stamp = FileStamp.read(candidate.path)
        current = stamp.holds(candidate.path) and (stamp.size, stamp.mtime_ns) == (candidate.size, candidate.mtime_ns)
    except OSError:
        return ""
    return stamp.fingerprint if current else ""


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
            if _fingerprint_as_seen(candidate) != row.fingerprint:
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
    listing: dict[str, bool | None] = {}
    held_by = {path: _missing_from(path, listing) for path in known if path not in found.rejected}
    known = {path: row for path, row in known.items() if path in found.rejected or held_by[path] is not None}
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
                and _gone(row.path, listing)):
            missing_by_size[row.size].append(row)
    for candidate in fresh:
        if candidate.path in indexed_as:
            plan.duplicates.append((candidate.path, indexed_as[candidate.path]))
            continue
        rows = missing_by_size.get(candidate.size)
        if rows and candidate.problem is None:
            fingerprint = _fingerprint_as_seen(candidate)
            match = next((row for row in rows if row.fingerprint == fingerprint), None)
            if match is not None:
                rows.remove(match)
                known.pop(match.path, None)
                plan.rename.append((match.id, candidate.path, candidate.size, candidate.mtime_ns))
                continue
        _schedule(plan, candidate)
    # An empty folder where the library holds files is more often a drive not mounted at its mount point (a NAS
    # share, a camera card) than every video deleted: removing them cost a whole re-embedding once it was back.
    # They stay, and the summary says how to drop them; a file found elsewhere with their content still moves.
    for path in [path for path in known if listing.get(held_by.get(path)) is False]:
        plan.kept.append((path, held_by[path]))
        del known[path]
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


def _gone(path: str, listing: dict[str, bool | None]) -> bool:
    """True when ``path`` does not exist and the folder that would hold it was listed fine."""
    return _missing_from(path, listing) is not None


def _missing_from(path: str, listing: dict[str, bool | None]) -> str | None:
    """For a ``path`` that does not exist, the nearest existing folder above it, which could be listed ("" where a
    file stands in place of a folder); None when the path exists or whether it is gone cannot be told.

    ``listing`` caches, per folder, None when it cannot be listed, else whether it holds anything (a deleted folder
    of many files is listed once).
    """
    try:
        os.lstat(path)
        return None
    except (FileNotFoundError, NotADirectoryError):
        pass
    except OSError:
        return None  # permission denied on the way, I/O error...: cannot tell
    folder = os.path.dirname(path)
    while True:
        try:
            st = os.lstat(folder)
        except (FileNotFoundError, NotADirectoryError):
            folder, above = os.path.dirname(folder), folder
            if folder == above:
                return ""
            continue
        except OSError:
            return None
        if stat.S_ISLNK(st.st_mode) and not os.path.exists(folder):
            return None  # a broken link may be an unmounted drive
        if not stat.S_ISLNK(st.st_mode) and not stat.S_ISDIR(st.st_mode):
            return ""
        return folder if _holds_anything(folder, listing) is not None else None


def _holds_anything(folder: str, listing: dict[str, bool | None]) -> bool | None:
    if folder not in listing:
        try:
            with os.scandir(folder) as entries:
                listing[folder] = next(entries, None) is not None
        except OSError:
            listing[folder] = None
    return listing[folder]


def _schedule(plan: _Plan, candidate: Candidate) -> None:
    if candidate.problem is None:
        plan.todo.append(candidate)
    else:
        plan.problems.append(FileResult(candidate.path, candidate.size, candidate.mtime_ns,
                                        _fingerprint_as_seen(candidate), "failed", candidate.problem))


# -- the ingestion pipeline -------------------------------------------------------------------------
@dataclass
class _FileState:
    candidate: Candidate
    attempt: int = 0
    stamp: FileStamp | None = None  # what the decoder read, from its latest "start"
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
            state.stamp, start = payload
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
        c, stamp = state.candidate, state.stamp
        order = sorted(state.vectors)
        result = FileResult(c.path, stamp.size, stamp.mtime_ns, stamp.fingerprint, "ok", None, state.info,
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
        c, stamp = state.candidate, state.stamp
        if stamp is None:  # failed before the decoder read it (or its worker died): as discovery saw it
            stamp = FileStamp(_fingerprint_as_seen(c), c.size, c.mtime_ns)
        self.finished.append(FileResult(c.path, stamp.size, stamp.mtime_ns, stamp.fingerprint, "failed", message))
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


def usable_cpus() -> int:
    """The CPUs this process may use: its affinity mask where the system has one (a container or ``taskset``
    pinned to 4 cores of a 128-core host gets 4), else the machine's count, and no more than a cgroup CPU quota
    allows (``docker run --cpus 4`` or a Kubernetes CPU limit of 4 on that host also gets 4).

    >>> 1 <= usable_cpus() <= (os.cpu_count() or 1)
    True
    """
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 2)
    quota = cgroup_cpu_quota()
    return cpus if quota is None else max(1, min(cpus, math.floor(quota)))


def cgroup_cpu_quota(mountinfo: str = "/proc/self/mountinfo", cgroup: str = "/proc/self/cgroup") -> float | None:
    """How many CPUs' worth of time a cgroup CPU quota grants this process (cgroup v2 ``cpu.max``, v1
    ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``), the tightest of its own cgroup and those above it; None
    without a quota, or where there are no cgroups to read (not Linux, no permission).

    >>> quota = cgroup_cpu_quota()
    >>> quota is None or quota > 0
    True
    """
    try:  # a mount point may have any bytes in its name (a vfat stick's Latin-1), so no decoding can fail
        with open(mountinfo, errors="surrogateescape") as f:
            mounts = f.read().splitlines()
        with open(cgroup, errors="surrogateescape") as f:
            memberships = [line.split(":", 2) for line in f.read().splitlines() if line.count(":") >= 2]
    except OSError:
        return None
    v2_path = next((path for _, controllers, path in memberships if controllers == ""), None)
    v1_path = next((path for _, controllers, path in memberships if "cpu" in controllers.split(",")), None)
    quotas = []
    for line in mounts:
        fields, _, tail = line.partition(" - ")
        fields, tail = fields.split(), tail.split()
        if len(fields) < 5 or len(tail) < 3:
            continue
        root, mount_point, (fstype, _, options) = _unescape(fields[3]), _unescape(fields[4]), tail[:3]
        if fstype == "cgroup2" and v2_path is not None:
            path, read = v2_path, _cpu_max
        elif fstype == "cgroup" and "cpu" in options.split(",") and v1_path is not None:
            path, read = v1_path, _cfs_quota
        else:
            continue
        # The mount shows the hierarchy from `root` down (a container usually sees its own cgroup as "/"). A path
        # with ".." in it lies outside this cgroup namespace: whatever the walk would read is not this process's.
        if ".." in path.split("/"):
            continue
        relative = os.path.relpath(path, root)
        if relative == ".." or relative.startswith("../"):  # (a cgroup may be called "..foo")
            continue
        folder = os.path.normpath(os.path.join(mount_point, relative))
        while True:  # a limit on a parent cgroup binds its children too
            quota = read(folder)
            if quota is not None:
                quotas.append(quota)
            if folder == os.path.normpath(mount_point):
                break
            folder = os.path.dirname(folder)
    return min(quotas) if quotas else None


def _unescape(field: str) -> str:
    """mountinfo writes a space, tab, newline or backslash in a path as an octal escape (\\040)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _cpu_max(folder: str) -> float | None:
    try:
        with open(os.path.join(folder, "cpu.max")) as f:
            quota, period = f.read().split()[:2]
        return None if quota == "max" or int(period) <= 0 else int(quota) / int(period)
    except (OSError, ValueError):
        return None


def _cfs_quota(folder: str) -> float | None:
    try:
        with open(os.path.join(folder, "cpu.cfs_quota_us")) as f, open(os.path.join(folder, "cpu.cfs_period_us")) as g:
            quota, period = int(f.read()), int(g.read())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def default_workers(encoder, cpus: int | None = None) -> int:
    """Decoder processes when ``workers`` is not given: ``cpus`` (default: all) less one, at most 8 for an encoder
    on the CPU and 32 for one on a GPU.

    A model on the CPU is most of the run and needs the cores itself. On a GPU decoding bounds the run, and more
    processes with one thread each decode more per core than fewer with two (H200, 16 cores, 1280 clips: 15
    decoders 227-237 clips/s with 51-54 CPU s of decoding, 8 decoders 172-178 clips/s with 70-74 CPU s).

    >>> from index.encoder import ColorHistogramEncoder
    >>> default_workers(ColorHistogramEncoder(), cpus=16)
    8
    """
    cpus = cpus or usable_cpus()
    on_gpu = str(getattr(encoder, "device", "cpu")).startswith("cuda")
    return max(1, min(32 if on_gpu else 8, cpus - 1))


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
        with _catalog_writes(library, kept="finished files are kept"):
            return _ingest(writer, request.roots, encoder, started, batch_size=batch_size, workers=workers,
                           timeout=timeout, retry_failed=retry_failed, factory=request.factory, backend=backend,
                           max_pixels=max_pixels, progress=progress, commit_seconds=commit_seconds,
                           flat_max=flat_max, worker_hook=worker_hook)


@dataclass(frozen=True)
class _Request:
    """A checked build request: absolute roots and library, the manifest it asks for, options given explicitly."""

    roots: list[str]
    library: str
    wanted: LibraryManifest
    explicit: tuple[str, ...]
    factory: str | None  # in FAISS's case ("flat" given is "Flat")


def _check_request(paths, library_dir, encoder, *, window, stride, max_seconds, batch_size, workers,
                   timeout, factory=None, max_pixels=DEFAULT_MAX_PIXELS, commit_seconds=2.0, flat_max=AUTO_FLAT_MAX,
                   on_open=None) -> _Request:
    """Validate build_library's arguments (raising VmmError) before anything is written."""
    _check_encoder(encoder)
    paths = _path_args(paths, "index")
    if not paths:
        raise VmmError("no paths to index; pass video files or folders")
    # A "~" is the home folder, as in the library's path (library_folder) and as `vmm index` takes its PATHs:
    # VideoLibrary.open("~/lib").add("~/Videos") was "no such file or folder".
    roots = [os.path.abspath(os.path.expanduser(p)) for p in paths]
    for given, root in zip(paths, roots):
        if not os.path.lexists(root):
            _refuse_gone_root(given, root, library_dir)
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
    if isinstance(factory, str):
        factory = factory_spelling(factory)  # "flat" and "ivf4096,flat" as vmm index --factory takes them
    if factory is not None:
        check_factory(encoder.dim, factory)

    explicit = tuple(name for name, value in (("window", window), ("stride", stride), ("max_seconds", max_seconds))
                     if value is not None)
    window_s = DEFAULT_WINDOW if window is None else float(window)
    stride_s = (min(DEFAULT_STRIDE, window_s) if stride is None else float(stride))
    # No limit, as None records it: JSON has no infinity, and manifest.json got a bare `Infinity` that strict JSON
    # readers refuse. Still explicit, so a library that keeps only the first seconds names the difference.
    whole = max_seconds is None or max_seconds == math.inf
    wanted = LibraryManifest.for_encoder(encoder, window=window_s, stride=stride_s,
                                         max_seconds=None if whole else max_seconds)
    for name in explicit:  # the combination is checked when a library is created with it
        if name == "max_seconds" and whole:
            continue
        if not getattr(wanted, name) > 0:
            raise VmmError(f"{name} must be > 0 seconds, got {getattr(wanted, name)}; fix the option")
    return _Request(roots, library_folder(library_dir), wanted, explicit, factory)


def _refuse_gone_root(given, root: str, library_dir) -> None:
    """Raise VmmError naming how to drop the files the library holds under ``root``, a path that no longer exists:
    a folder deleted since it was indexed was only "no such file or folder; check the path", while `vmm search`
    listed its files as not found and said that `vmm index` updates the library."""
    import sqlite3
    try:
        path = os.path.join(library_folder(library_dir), CATALOG_FILE)
        catalog = Catalog.open(path, read_only=True) if os.path.isfile(path) else None
    except (sqlite3.Error, OSError, VmmError):
        catalog = None
    if catalog is None:
        return  # no library (or none readable): check_root's message says all there is
    try:
        held = len(catalog.files(under=[root]))
    except sqlite3.Error:
        return
    finally:
        catalog.close()
    if held:
        them = "them" if held > 1 else "it"
        # Not removed here: an unmounted drive looks the same, and its files would cost a whole re-embedding.
        raise VmmError(one_line(f"{given}: no such file or folder, and the library holds {held} file"
                                f"{'s' * (held > 1)} indexed under it: if its drive is not mounted, mount it; if "
                                f"deleted, drop {them} with vmm index --remove or remove_paths; if moved, index the "
                                "new place (the library follows a move)"))


_WHOLE_NUMBERS = ("batch_size", "workers", "max_pixels", "flat_max")


def _check_numbers(**values) -> None:
    """A string or None where a number belongs is named here, not left to fail inside a comparison later."""
    for name, value in values.items():
        whole = name in _WHOLE_NUMBERS
        if not _is_number(value, numbers.Integral if whole else numbers.Real):
            raise VmmError(f"{name} must be {'a whole number' if whole else 'a number of seconds'}, got "
                           f"{reprlib.repr(value)}; fix the option")


def _check_encoder(encoder) -> None:
    missing = [name for name in ("name", "weights_hash", "dim", "num_frames", "encode_clips")
               if not hasattr(encoder, name)]
    if missing:
        raise VmmError(f"{type(encoder).__name__} is not a ClipEncoder (missing {', '.join(missing)}); "
                       "see index.encoder.ClipEncoder")


def _ingest(writer: LibraryWriter, roots: list[str], encoder, started: float, *, batch_size, workers, timeout,
            retry_failed, factory, backend, max_pixels, progress, commit_seconds, flat_max,
            worker_hook) -> IngestSummary:
    cpus = usable_cpus()  # read once: the quota check parses /proc/self/mountinfo
    workers = default_workers(encoder, cpus) if workers is None else workers
    options = _decode_options(writer.manifest, max_pixels=max_pixels, backend=backend, workers=workers, cpus=cpus)
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
    # An interrupted multi-process run over these paths left its staged files: every file under them is committed
    # now, so they are of no more use (they stayed, however large, until a multi-process run succeeded).
    from index.distributed import STAGING_DIR, _clean_staging
    _clean_staging(os.path.join(writer.library, STAGING_DIR), "", roots, unplanned=False)
    summary.seconds = time.monotonic() - started
    return summary


def _decode_options(manifest: LibraryManifest, *, max_pixels: int, backend: str, workers: int,
                    cpus: int | None = None) -> DecodeOptions:
    """Decoding settings for a run; ``cpus`` (default: all) are shared among ``workers`` as decoder threads."""
    cpus = cpus or usable_cpus()
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
    found = discover(roots, exclude=[writer.library], prefer={row.path for row in known}, utf8_only=True)
    summary.unreadable = found.unreadable
    summary.empty = _empty_roots(roots, found)
    plan = _plan(catalog, found, known, retry_failed)
    summary.unchanged, summary.skipped_failed, summary.duplicates = plan.unchanged, plan.skipped_failed, plan.duplicates
    summary.removed, summary.moved, summary.kept = len(plan.remove), len(plan.rename), plan.kept
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
