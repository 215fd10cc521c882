"""Scale-out ingestion: several processes (GPUs, nodes) fill one library, with one merge at the end.

Start the same script on every rank (``accelerate launch``, ``torchrun``, a SLURM
step...) and call :func:`build_library_distributed` on each. A run has three steps:

1. **Plan** (rank 0). Lock the library, compare disk with the catalog exactly as
   :func:`index.ingest.build_library` does, commit what needs no decoding (removed,
   moved, touched and unreadable files), and split the files that need decoding into
   one shard per rank (:func:`assign_shards`: by size, deterministic). The plan goes
   to ``LIB/.staging/<run>/plan.json``; rank 0 keeps the library lock until the end.
2. **Stage** (every rank). Decode and embed the rank's shard with the same pipeline
   as a single process, but write finished files to ``LIB/.staging/<run>/rank-NNNNN/``
   instead of the catalog: per batch, the vectors (``batch-N.npy``) and then a list
   naming the files, their clip windows and their rows (``batch-N.json``). Both are
   written atomically and the ``.json`` last, so a batch is whole or absent.
3. **Merge** (rank 0, after a barrier). Commit every staged file into the catalog in
   path order, a chunk of files per SQLite transaction, refresh the FAISS file, and
   delete the staging folder. Rank 0 returns the run's summary; the other ranks
   return None once the merge is done (or raise the same error as rank 0).

Crash safety is the single-process argument plus one rule: staged work is only a
cache. A file is in the library once its transaction commits, never before. A crash
anywhere (a rank killed while staging, rank 0 killed in the middle of the merge)
leaves every file either committed or not, and the next run plans again from the
catalog: committed files are unchanged, the others are done again, except that a
staged record of the same path, size, mtime and model is merged instead of being
embedded again. Either way the library ends with the same ``(path, start, end) ->
vector`` map as an uninterrupted single-process run (bit for bit whenever the
encoder's output for a clip does not depend on the rest of its batch).

Ranks meet at barriers through ``torch.distributed`` (a gloo group of our own, so no
GPU is needed and a long shard cannot time out a NCCL group), or through files in
``LIB/.staging/<run>/`` when there is no process group to use. Every rank must see
the videos and the library folder at the same absolute paths (a shared file system
across nodes).

>>> assign_shards([("a.mp4", 5_000_000), ("b.mp4", 3_000_000), ("c.mp4", 3_000_000), ("d.mp4", 100)], 2)
[['a.mp4', 'd.mp4'], ['b.mp4', 'c.mp4']]
"""
from __future__ import annotations

import collections
import datetime
import hashlib
import heapq
import io
import json
import os
import shutil
import sqlite3
import threading
import time
import traceback
import uuid
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np

from index.catalog import FileResult, LibraryManifest
from index.decode import DEFAULT_MAX_PIXELS, VideoInfo
from index.discovery import Candidate
from index.ingest import (IngestSummary, _check_numbers, _check_request, _decode_options, _Pipeline, _start_run,
                          build_library, default_workers, usable_cpus)
from index.library import LibraryWriter, _sync, library_folder, refuse_foreign_folder
from index.pool import DecodePool
from index.progress import IngestProgress, ProgressUpdate
from index.store import AUTO_FLAT_MAX, atomic_write_bytes
from vmm.errors import VmmError, error_text

STAGING_DIR = ".staging"
DEFAULT_BARRIER_TIMEOUT = 24 * 3600.0
_MERGE_MAX_CLIPS = 8192  # clips per merge transaction: bounds the work a crash mid-merge undoes
_MAPPED_BATCHES = 64  # staged vector files a reader keeps mapped (see _StagedReader._load_vectors)
_FILE_COST = 1 << 20  # bytes a file counts for on top of its size, so many small files spread too
_HEARTBEAT_S = 5.0  # coordination="files": how often a rank rewrites its heartbeat file
_SILENCE_S = 120.0  # ... and how long an unchanged heartbeat means the rank is dead (far above any GIL stall)
_LONGEST_WAIT_S = 10 * 365 * 86400.0  # a torch.distributed timeout for barrier_timeout=inf


# -- who am I -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class LaunchInfo:
    """This process's place in a multi-process launch (what torchrun and accelerate put in the environment)."""

    rank: int
    world_size: int
    local_rank: int  # which GPU of its node this rank should use
    local_world_size: int  # ranks on this node; decoder workers share the node's CPUs among them


def launch_info(rank: int | None = None, world_size: int | None = None, environ=None) -> LaunchInfo:
    """Rank and world size from the arguments, else from RANK / WORLD_SIZE / LOCAL_RANK / LOCAL_WORLD_SIZE.

    Missing variables mean a single process.

    >>> launch_info(environ={"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "3", "LOCAL_WORLD_SIZE": "4"})
    LaunchInfo(rank=3, world_size=8, local_rank=3, local_world_size=4)
    >>> launch_info(environ={})
    LaunchInfo(rank=0, world_size=1, local_rank=0, local_world_size=1)
    """
    env = os.environ if environ is None else environ

    def read(name: str, given: int | None, default: int) -> int:
        if given is not None:
            return int(given)
        text = env.get(name, "").strip()
        if not text:
            return default
        try:
            return int(text)
        except ValueError:
            raise VmmError(f"environment variable {name}={text!r} is not an integer; unset it or fix the "
                           "launcher") from None

    world = read("WORLD_SIZE", world_size, 1)
    me = read("RANK", rank, 0)
    if world < 1:
        raise VmmError(f"world_size must be >= 1, got {world}; fix WORLD_SIZE or the world_size argument")
    if not 0 <= me < world:
        raise VmmError(f"rank {me} is outside a world of {world} processes; RANK must be 0..WORLD_SIZE-1")
    local_world = max(1, read("LOCAL_WORLD_SIZE", None, world))
    return LaunchInfo(me, world, read("LOCAL_RANK", None, me % local_world), local_world)


# -- sharding ---------------------------------------------------------------------------------------
def assign_shards(files: list[tuple[str, int]], world_size: int) -> list[list[str]]:
    """Split ``(path, size)`` pairs into ``world_size`` shards of similar total size; deterministic.

    Largest first, each file goes to the shard with the fewest bytes so far (ties: the
    lowest rank); a file also counts 1 MiB, so many small files spread evenly too.
    Every shard is returned in path order.

    >>> assign_shards([("x", 10), ("y", 10), ("z", 10)], 2)
    [['x', 'z'], ['y']]
    """
    loads = [(0, rank) for rank in range(world_size)]
    shards: list[list[str]] = [[] for _ in range(world_size)]
    for path, size in sorted(files, key=lambda item: (-item[1], item[0])):
        load, rank = heapq.heappop(loads)
        shards[rank].append(path)
        heapq.heappush(loads, (load + size + _FILE_COST, rank))
    return [sorted(shard) for shard in shards]


# -- meeting points ---------------------------------------------------------------------------------
class _PeerLost(Exception):
    """A barrier could not complete: another rank died, gave up, or did not come in time."""


class _TorchCoordinator:
    """Barriers and rank-0 broadcasts over a gloo process group (ours, or a subgroup of the caller's)."""

    def __init__(self, info: LaunchInfo, timeout_s: float):
        import torch.distributed as dist

        self._dist = dist
        # barrier_timeout=inf means no limit, which a timedelta cannot hold (it was an OverflowError traceback).
        timeout = datetime.timedelta(seconds=min(timeout_s, _LONGEST_WAIT_S))
        self._owned = not dist.is_initialized()
        if self._owned:
            try:
                dist.init_process_group("gloo", rank=info.rank, world_size=info.world_size, timeout=timeout)
            except (ValueError, RuntimeError) as error:
                raise VmmError(f"rank {info.rank} cannot join the other ranks ({error_text(error, 300)}); check "
                               "MASTER_ADDR/MASTER_PORT, or use coordination='files' with a run id") from None
            self._group = None
        else:
            if (dist.get_rank(), dist.get_world_size()) != (info.rank, info.world_size):
                raise VmmError(f"the process group has rank {dist.get_rank()} of {dist.get_world_size()} but "
                               f"indexing was asked to run as rank {info.rank} of {info.world_size}; "
                               "leave rank and world_size unset")
            # Our own gloo group: it needs no GPU, and its timeout is ours (ranks may finish hours apart).
            self._group = dist.new_group(backend="gloo", timeout=timeout)
        self._closed = False

    def barrier(self, name: str) -> None:
        try:
            self._dist.barrier(group=self._group)
        except RuntimeError as error:
            raise _PeerLost(error_text(error, 300)) from None

    def broadcast(self, name: str, value=None):
        box = [value]
        try:
            self._dist.broadcast_object_list(box, src=0, group=self._group)
        except RuntimeError as error:
            raise _PeerLost(error_text(error, 300)) from None
        return box[0]

    def abort(self, message: str) -> None:
        """Nothing to write: a process that exits closes its connections and the others notice."""

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if self._owned:
                self._dist.destroy_process_group()
            elif self._group is not None:
                self._dist.destroy_process_group(self._group)
        except (RuntimeError, ValueError):
            pass


class _FileCoordinator:
    """Barriers and broadcasts through marker files in the run's staging folder (no process group).

    The run id must be new for every launch (all ranks must agree on it), since
    markers of an earlier launch with the same id would satisfy the barriers.

    No connection breaks when a rank dies here (SIGKILL, a lost node), so each rank also keeps a heartbeat
    file changing: a rank still awaited whose heartbeat has not changed for ``_SILENCE_S`` seconds of the
    waiter's own clock (node clocks may differ) is given up on, instead of after ``barrier_timeout`` (24 h).
    """

    def __init__(self, info: LaunchInfo, run_dir: str, timeout_s: float, poll_s: float = 0.05):
        self.info = info
        self.run_dir = run_dir
        self.timeout_s = timeout_s
        self.poll_s = poll_s
        self._heard: dict[int, tuple[bytes, float]] = {}  # rank -> (its last heartbeat, when it changed)
        self._stop = threading.Event()
        path = self._heartbeat_file(info.rank)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        try:
            # Created, never replaced: one already there is an earlier launch's (or another process's started as
            # this rank), whose messages and markers would pass for this launch's. A rerun after a failed plan read
            # that plan's error on rank 1 and met rank 0 at stale barriers.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            raise _used_run_id(run_dir) from None
        try:
            os.write(fd, _beat(0))
        finally:
            os.close(fd)
        self._beats = threading.Thread(target=self._keep_beating, args=(path,), daemon=True,
                                       name=f"vmm-heartbeat-{info.rank}")
        self._beats.start()

    def barrier(self, name: str) -> None:
        folder = os.path.join(self.run_dir, "barriers", name)
        os.makedirs(folder, exist_ok=True)
        atomic_write_bytes(os.path.join(folder, f"rank-{self.info.rank:05d}"), b"")

        def absent() -> list[int]:
            try:
                here = {n for n in os.listdir(folder) if ".tmp." not in n}
            except FileNotFoundError:  # rank 0 passed the last barrier and cleaned up: all had arrived
                return []
            return [rank for rank in range(self.info.world_size) if f"rank-{rank:05d}" not in here]

        self._wait(absent, f"the other ranks at barrier '{name}'")

    def broadcast(self, name: str, value=None):
        path = os.path.join(self.run_dir, "messages", f"{name}.json")
        if self.info.rank == 0:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            atomic_write_bytes(path, json.dumps(value).encode())
            return value
        self._wait(lambda: [] if os.path.exists(path) else [0], f"rank 0's '{name}' message")
        with open(path) as f:
            return json.load(f)

    def abort(self, message: str) -> None:
        """Tell the other ranks to stop waiting (this rank is going away)."""
        try:
            os.makedirs(self.run_dir, exist_ok=True)
            atomic_write_bytes(os.path.join(self.run_dir, "abort"), f"rank {self.info.rank}: {message}".encode())
        except OSError:
            pass

    def _wait(self, awaited: Callable[[], list[int]], what: str) -> None:
        """Wait until ``awaited()`` (the ranks still to come) is empty."""
        deadline = time.monotonic() + self.timeout_s
        pause = self.poll_s
        abort = os.path.join(self.run_dir, "abort")
        while ranks := awaited():
            if os.path.exists(abort):
                with open(abort) as f:
                    raise _PeerLost(f.read().strip())
            silent = self._silent_rank(ranks)
            if silent is not None:
                raise _PeerLost(f"rank {silent} gave no sign of life for {_SILENCE_S:g} s (killed, or its node "
                                "was lost)")
            if time.monotonic() > deadline:
                raise _PeerLost(f"rank {self.info.rank} waited {self.timeout_s:g} s for {what}")
            time.sleep(pause)
            pause = min(1.0, pause * 1.5)

    def _silent_rank(self, ranks: list[int]) -> int | None:
        now = time.monotonic()
        for rank in ranks:
            try:
                with open(self._heartbeat_file(rank), "rb") as f:
                    beat = f.read()
            except OSError:
                continue  # not started yet: only barrier_timeout can tell a rank that never comes
            heard = self._heard.get(rank)
            if heard is None or heard[0] != beat:
                self._heard[rank] = (beat, now)
            elif now - heard[1] > _SILENCE_S:
                return rank
        return None

    def _heartbeat_file(self, rank: int) -> str:
        return os.path.join(self.run_dir, "alive", f"rank-{rank:05d}")

    def _keep_beating(self, path: str) -> None:
        count = 0
        while not self._stop.wait(_HEARTBEAT_S):
            count += 1
            try:
                # Rewritten in place, never created: once rank 0 has deleted the run's folder, nothing comes back.
                fd = os.open(path, os.O_WRONLY)
            except FileNotFoundError:
                return
            except OSError:
                continue  # a network file system's passing error (ESTALE, EIO): stopping made a live rank look dead
            try:
                os.write(fd, _beat(count))
            except OSError:
                pass
            finally:
                os.close(fd)

    def close(self) -> None:
        self._stop.set()
        self._beats.join()


def _used_run_id(run_dir: str) -> VmmError:
    library = os.path.dirname(os.path.dirname(run_dir))
    return VmmError(f"run id {os.path.basename(run_dir)} was already used in {library}; give every launch a new run "
                    "id")


def _beat(count: int) -> bytes:
    return f"{count:020d}\n".encode()  # a fixed width, so an in-place rewrite leaves no old digits behind


# -- staging area -------------------------------------------------------------------------------------
def _manifest_key(manifest: LibraryManifest) -> str:
    return hashlib.blake2b(manifest.to_json().encode(), digest_size=16).hexdigest()


def _write_json(path: str, value) -> None:
    atomic_write_bytes(path, (json.dumps(value, indent=1) + "\n").encode())


class _StagingArea:
    """One rank's finished files, batch by batch; it stands in for the catalog in the ingestion pipeline."""

    def __init__(self, folder: str, manifest_key: str, dim: int):
        os.makedirs(folder, exist_ok=True)
        self.folder = folder
        self.manifest_key = manifest_key
        self.dim = dim
        self.batches = 0

    def commit(self, results: list[FileResult]) -> None:
        """Write ``results`` as one batch: the vectors first, then the list that names them (atomically)."""
        if not results:
            return
        self.batches += 1
        name = f"batch-{self.batches:06d}"
        entries, blocks, row = [], [], 0
        for result in results:
            entry = {"path": result.path, "size": result.size, "mtime_ns": result.mtime_ns,
                     "fingerprint": result.fingerprint, "status": result.status, "error": result.error,
                     "info": None if result.info is None else asdict(result.info),
                     "spans": [list(span) for span in result.spans], "row": row}
            if result.status == "ok":
                blocks.append(np.asarray(result.vectors, dtype="<f4").reshape(len(result.spans), self.dim))
                row += len(result.spans)
            entries.append(entry)
        vectors = np.concatenate(blocks) if blocks else np.zeros((0, self.dim), "<f4")
        buffer = io.BytesIO()
        np.save(buffer, vectors)
        atomic_write_bytes(os.path.join(self.folder, name + ".npy"), buffer.getvalue())
        _write_json(os.path.join(self.folder, name + ".json"),
                    {"manifest_key": self.manifest_key, "vectors": name + ".npy", "files": entries})


@dataclass(frozen=True)
class _StagedRef:
    """Where one staged file lives: a batch list (relative to .staging/) and the file's position in it."""

    batch: str
    index: int


def _staged_batches(staging: str, run: str | None = None) -> list[str]:
    """Batch lists (.json, relative to ``staging``) of one run or of all runs, in a fixed order."""
    found = []
    runs = [run] if run is not None else sorted(os.listdir(staging)) if os.path.isdir(staging) else []
    for run_name in runs:
        run_dir = os.path.join(staging, run_name)
        if not os.path.isdir(run_dir):
            continue
        for rank_dir in sorted(n for n in os.listdir(run_dir) if n.startswith("rank-")):
            folder = os.path.join(run_dir, rank_dir)
            found += [os.path.join(run_name, rank_dir, n) for n in sorted(os.listdir(folder))
                      if n.startswith("batch-") and n.endswith(".json")]
    return found


class _StagedReader:
    """Reads staged batches (lists parsed once, vectors memory-mapped); unreadable batches count as absent."""

    def __init__(self, staging: str, manifest_key: str, dim: int):
        self.staging = staging
        self.manifest_key = manifest_key
        self.dim = dim
        self._lists: dict[str, dict | None] = {}
        self._vectors: collections.OrderedDict[str, np.ndarray | None] = collections.OrderedDict()

    def entries(self, batch: str) -> list[dict]:
        if batch not in self._lists:
            try:
                with open(os.path.join(self.staging, batch)) as f:
                    data = json.load(f)
                self._lists[batch] = data if data.get("manifest_key") == self.manifest_key else None
            except (OSError, ValueError, AttributeError):
                self._lists[batch] = None
        data = self._lists[batch]
        return [] if data is None else data["files"]

    def result(self, ref: _StagedRef) -> FileResult | None:
        """The staged file as a catalog result, or None if its batch cannot be read whole."""
        entry = self.entries(ref.batch)[ref.index]
        vectors = None
        if entry["status"] == "ok":
            all_vectors = self._load_vectors(ref.batch)
            n = len(entry["spans"])
            if all_vectors is None or entry["row"] + n > len(all_vectors) or n == 0:
                return None
            vectors = np.array(all_vectors[entry["row"]:entry["row"] + n], dtype=np.float32)
        info = None if entry["info"] is None else VideoInfo(**entry["info"])
        return FileResult(entry["path"], entry["size"], entry["mtime_ns"], entry["fingerprint"], entry["status"],
                          entry["error"], info, [tuple(span) for span in entry["spans"]], vectors)

    def _load_vectors(self, batch: str) -> np.ndarray | None:
        if batch in self._vectors:
            self._vectors.move_to_end(batch)
            return self._vectors[batch]
        path = os.path.join(self.staging, os.path.dirname(batch), self._lists[batch]["vectors"])
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
            ok = array.ndim == 2 and array.shape[1] == self.dim and array.dtype == np.dtype("<f4")
            array = array if ok else None
        except (OSError, ValueError):
            array = None
        self._vectors[batch] = array
        # A mapped file holds a file descriptor: mapping every batch of a long run ran out of them (ulimit -n, often
        # 1024), and the merge took the batches past that as damaged and left their files out of a run it called
        # complete. Path order visits a few batches at a time (about one per rank), so a few stay mapped.
        if len(self._vectors) > _MAPPED_BATCHES:
            self._vectors.popitem(last=False)
        return array


def _find_reusable(reader: _StagedReader, todo: list[Candidate], retry_failed: bool) -> dict[str, _StagedRef]:
    """Staged records (of earlier, interrupted runs) that match a file still to do: same path, size, mtime, model."""
    wanted = {c.path: (c.size, c.mtime_ns) for c in todo}
    found: dict[str, _StagedRef] = {}
    for batch in _staged_batches(reader.staging):
        for index, entry in enumerate(reader.entries(batch)):
            stat = wanted.get(entry["path"])
            if stat != (entry["size"], entry["mtime_ns"]):
                continue
            if entry["status"] == "failed" and retry_failed:
                continue  # retrying failures means decoding them again
            if reader.result(_StagedRef(batch, index)) is not None:
                found[entry["path"]] = _StagedRef(batch, index)  # later runs sort later and win
    return found


# -- summary ----------------------------------------------------------------------------------------------
@dataclass
class DistributedSummary(IngestSummary):
    """What a distributed run did (the whole run, as rank 0 returns it), plus per-rank figures."""

    world_size: int = 1
    reused: int = 0  # files merged from an interrupted run's staging instead of being embedded again
    merge_seconds: float = 0.0  # rank 0's merge and FAISS refresh, the serial part of the run
    ranks: list[dict] = field(default_factory=list)  # per rank: files, clips, failed, seconds, encode_seconds

    def _run_details(self) -> str:
        # Before the hint on earlier failures that may end the line: after it they read "... --retry-failed
        # retries them) on 2 ranks".
        ranks = f" on {self.world_size} rank{'s' if self.world_size != 1 else ''}"
        if self.reused:
            ranks += f" ({self.reused} files reused from an interrupted run)"
        return ranks

    def to_json(self) -> dict:
        """The summary as plain JSON types (what ``vmm index --json`` style output wants)."""
        return asdict(self)


class _TimedEncoder:
    """The rank's encoder, with the time spent in ``encode_clips`` added up (the encode busy time)."""

    def __init__(self, encoder):
        self._encoder = encoder
        self.seconds = 0.0

    def __getattr__(self, name):
        return getattr(self._encoder, name)

    def encode_clips(self, clips):
        started = time.perf_counter()
        try:
            return self._encoder.encode_clips(clips)
        finally:
            self.seconds += time.perf_counter() - started


# -- the run ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Settings:
    """The per-rank options of one call."""

    batch_size: int
    workers: int | None
    timeout: float
    commit_seconds: float
    progress: bool | Callable[[ProgressUpdate], None]
    worker_hook: str | None


def build_library_distributed(paths: list[str], library_dir: str, encoder, *, rank: int | None = None,
                              world_size: int | None = None, run_id: str | None = None,
                              coordination: str = "auto", barrier_timeout: float = DEFAULT_BARRIER_TIMEOUT,
                              window: float | None = None, stride: float | None = None,
                              max_seconds: float | None = None, batch_size: int = 16, workers: int | None = None,
                              timeout: float = 60.0, retry_failed: bool = False, factory: str | None = None,
                              backend: str = "auto", max_pixels: int = DEFAULT_MAX_PIXELS,
                              progress: bool | Callable[[ProgressUpdate], None] = True,
                              commit_seconds: float = 2.0, flat_max: int = AUTO_FLAT_MAX,
                              worker_hook: str | None = None,
                              on_open: Callable[[str], None] | None = None) -> DistributedSummary | None:
    """:func:`~index.ingest.build_library` spread over ``world_size`` processes; call it on every rank.

    ``rank``/``world_size`` default to RANK/WORLD_SIZE (set by ``accelerate launch``
    and ``torchrun``); with one process this is ``build_library``. Ranks meet through
    ``torch.distributed`` (gloo) when a process group exists or MASTER_ADDR/MASTER_PORT
    are set (``coordination="torch"``), else through files under the library
    (``coordination="files"``), which needs a ``run_id`` shared by all ranks and new
    for every launch (default: VMM_RUN_ID, else the SLURM job, step and restart count). ``barrier_timeout`` bounds how long a
    rank waits for the others; with file barriers, a rank that started but has shown no sign of life for 2
    minutes (killed, or on a lost node) is given up on sooner. Each rank should embed on its own GPU
    (LOCAL_RANK, see :func:`launch_info`). The other options are ``build_library``'s (``on_open`` runs on rank 0); ``workers`` is per rank (default: the node's
    CPUs shared among its ranks) and ``progress=True`` draws rank 0's bar only.
    Rank 0 returns the run's summary and the other ranks None, all after the merge
    (the library is complete when any rank returns); if any rank failed, every rank
    raises the same ``VmmError`` (finished files are kept: run it again).

    Two ranks, here simulated with two threads and file coordination:

    >>> import tempfile, threading
    >>> from index.encoder import ColorHistogramEncoder
    >>> folder = tempfile.mkdtemp()
    >>> results = {}
    >>> def run(rank):
    ...     results[rank] = build_library_distributed(
    ...         [folder], folder + "/lib", ColorHistogramEncoder(), rank=rank, world_size=2,
    ...         coordination="files", run_id="doctest", workers=0, progress=False)
    >>> threads = [threading.Thread(target=run, args=(r,)) for r in (0, 1)]
    >>> for t in threads: t.start()
    >>> for t in threads: t.join()
    >>> results[0].indexed, results[0].world_size, results[1]
    (0, 2, None)
    """
    started = time.monotonic()
    info = launch_info(rank, world_size)
    settings = _Settings(batch_size, workers, timeout, commit_seconds, progress, worker_hook)
    if info.world_size == 1:
        summary = build_library(paths, library_dir, encoder, window=window, stride=stride, max_seconds=max_seconds,
                                batch_size=batch_size, workers=workers, timeout=timeout, retry_failed=retry_failed,
                                factory=factory, backend=backend, max_pixels=max_pixels, progress=progress,
                                commit_seconds=commit_seconds, flat_max=flat_max, worker_hook=worker_hook,
                                on_open=on_open)
        return DistributedSummary(**asdict(summary), ranks=[{"rank": 0, "files": summary.indexed + summary.failed,
                                                             "clips": summary.clips, "seconds": summary.seconds}])
    library = library_folder(library_dir)
    coordinator, run_id, library = _coordinator(info, library, coordination, run_id, barrier_timeout)
    try:
        if info.rank == 0:
            return _run_rank0(coordinator, info, run_id, started, paths, library, encoder, settings, window=window,
                              stride=stride, max_seconds=max_seconds, retry_failed=retry_failed, factory=factory,
                              backend=backend, max_pixels=max_pixels, flat_max=flat_max, on_open=on_open)
        return _run_rank(coordinator, info, run_id, library, encoder, settings)
    except BaseException as error:  # Ctrl-C, a bug: let the others stop waiting for us
        coordinator.abort(error_text(error, 300) or type(error).__name__)
        raise
    finally:
        coordinator.close()


def _coordinator(info: LaunchInfo, library: str, coordination: str, run_id: str | None, timeout_s: float):
    """The meeting points, the run id all ranks use, and the library path (rank 0's, when it can be sent)."""
    if coordination not in ("auto", "torch", "files"):
        raise VmmError(f"coordination must be 'auto', 'torch' or 'files', got {coordination!r}")
    _check_numbers(barrier_timeout=timeout_s)
    if not timeout_s > 0:
        raise VmmError(f"barrier_timeout must be > 0 seconds, got {timeout_s}")
    if run_id:  # in every mode: with a process group, '../..' had rank 0 delete a folder outside the library
        _check_run_id(run_id)
    if coordination == "auto":
        coordination = "torch" if _torch_group_possible() else "files"
    if coordination == "torch":
        coordinator = _TorchCoordinator(info, timeout_s)
        if info.rank == 0:
            run_id = run_id or f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
        try:
            run_id, library = coordinator.broadcast("run", (run_id, library))  # a relative path may differ by rank
        except _PeerLost as error:
            coordinator.close()
            raise _lost_contact(info, error) from None
        return coordinator, run_id, library
    run_id = run_id or _run_id_from_environment()
    if not run_id:
        raise VmmError("ranks cannot meet: no torch.distributed process group and no MASTER_ADDR/MASTER_PORT; "
                       "launch with accelerate/torchrun, or give every rank the same new VMM_RUN_ID")
    _check_run_id(run_id)  # VMM_RUN_ID or SLURM's ids
    # The markers live in the library folder, so a folder that is not ours is refused here, by every rank alike
    # (rank 0 cannot tell the others through markers it must not write there).
    refuse_foreign_folder(library)
    run_dir = os.path.join(library, STAGING_DIR, run_id)
    try:
        coordinator = _FileCoordinator(info, run_dir, timeout_s)
    except OSError as e:  # its first marker, the heartbeat: a folder this rank may not write was a traceback
        raise VmmError(f"rank {info.rank} cannot write the run's marker files in {run_dir} ({e.strerror or e}); "
                       "every rank must be able to write the library folder: check its permissions and free "
                       "space") from None
    return coordinator, run_id, library


def _check_run_id(run_id) -> None:
    """The run's folder, LIB/.staging/<run_id>, is deleted at the end: the id must not lead out of it."""
    if not isinstance(run_id, str) or run_id.startswith(".") or any(sep and sep in run_id
                                                                    for sep in (os.sep, os.altsep)):
        raise VmmError(f"run_id {run_id!r} must be a plain name (no '/', not starting with '.'); choose another")


def _torch_group_possible() -> bool:
    try:
        import torch.distributed as dist
    except ImportError:
        return False
    if not dist.is_available():
        return False
    return dist.is_initialized() or bool(os.environ.get("MASTER_ADDR") and os.environ.get("MASTER_PORT"))


def _run_id_from_environment() -> str | None:
    if os.environ.get("VMM_RUN_ID"):
        return os.environ["VMM_RUN_ID"]
    if os.environ.get("SLURM_JOB_ID"):
        run_id = f"slurm-{os.environ['SLURM_JOB_ID']}-{os.environ.get('SLURM_STEP_ID', '0')}"
        # A requeued job (preempted, or `scontrol requeue` after a failure) keeps its job and step ids: without the
        # restart count its rerun was refused as "run id ... was already used", a launch that gave no run id.
        restarts = os.environ.get("SLURM_RESTART_COUNT", "0").strip()
        return run_id if restarts in ("", "0") else f"{run_id}-r{restarts}"
    return None


def _run_rank0(coordinator, info: LaunchInfo, run_id: str, started: float, paths, library: str, encoder,
               settings: _Settings, *, window, stride, max_seconds, retry_failed, factory, backend, max_pixels,
               flat_max, on_open=None) -> DistributedSummary:
    staging = os.path.join(library, STAGING_DIR)
    run_dir = os.path.join(staging, run_id)
    writer = None
    try:
        # 1. plan
        try:
            request = _check_request(paths, library, encoder, window=window, stride=stride, max_seconds=max_seconds,
                                     batch_size=settings.batch_size, workers=settings.workers,
                                     timeout=settings.timeout, factory=factory, max_pixels=max_pixels,
                                     commit_seconds=settings.commit_seconds, flat_max=flat_max, on_open=on_open)
            if os.path.exists(os.path.join(run_dir, "plan.json")):
                raise _used_run_id(run_dir)
            writer = LibraryWriter.open(library, request.wanted, explicit=request.explicit)
            if on_open is not None:
                on_open(library)
            summary, plan = _plan_run(writer, request.roots, run_id, info.world_size, retry_failed=retry_failed,
                                      factory=request.factory, backend=backend, max_pixels=max_pixels)
            message = {"error": None}
        except (VmmError, sqlite3.OperationalError) as error:
            message = {"error": str(error)}
        try:
            coordinator.broadcast("plan", message)
        except _PeerLost:
            pass  # rank 0's failure is reported below; a lost rank is found at the next barrier
        if message["error"]:
            raise VmmError(message["error"])

        # 2. stage rank 0's own shard
        _stage_and_report(plan, info, run_dir, encoder, settings)
        try:
            coordinator.barrier("staged")
            lost = None
        except _PeerLost as error:
            lost = str(error)
            coordinator.close()  # release the ranks still waiting on us, promptly

        # 3. merge everything staged (also after a lost rank: whatever is staged is whole)
        errors = []
        merge_started = time.monotonic()
        try:
            _merge(writer, plan, staging, summary)
            _sync(writer, flat_max)
        except (VmmError, sqlite3.Error, OSError) as error:
            errors.append(f"merging the staged files failed ({error_text(error, 300)})")
        summary.merge_seconds = time.monotonic() - merge_started
        summary.ranks = _rank_reports(run_dir, info.world_size)
        for report in summary.ranks:
            if report.get("error"):
                errors.append(report["error"])
            elif report.get("missing"):
                errors.append(f"rank {report['rank']} did not finish its shard")
        if lost and not errors:
            errors.append(f"lost contact with the other ranks ({lost})")
        summary.seconds = time.monotonic() - started
        failure = None
        if errors:
            failure = (f"distributed indexing into {library} did not finish: {'; '.join(errors)}; the files "
                       "finished so far are in the library, run the same command again to do the rest")
        if lost is None:
            try:
                coordinator.broadcast("result", {"error": failure})
                coordinator.barrier("finished")  # every rank has the result: the run folder can go
            except _PeerLost:
                failure = failure or "lost contact with the other ranks at the end of the run"
        if failure:
            raise VmmError(failure)
        _clean_staging(staging, run_id, plan["roots"])
        return summary
    finally:
        if writer is not None:
            writer.close()


def _plan_run(writer: LibraryWriter, roots: list[str], run_id: str, world_size: int, *, retry_failed: bool,
              factory: str | None, backend: str, max_pixels: int) -> tuple[DistributedSummary, dict]:
    summary, plan = _start_run(writer, roots, factory=factory, retry_failed=retry_failed)
    summary = DistributedSummary(**asdict(summary), world_size=world_size)
    manifest = writer.manifest
    staging = os.path.join(writer.library, STAGING_DIR)
    reader = _StagedReader(staging, _manifest_key(manifest), manifest.dim)
    reuse = _find_reusable(reader, plan.todo, retry_failed)
    work = {c.path: c for c in plan.todo if c.path not in reuse}
    shards = assign_shards([(c.path, c.size) for c in work.values()], world_size)
    document = {
        "run": run_id, "world_size": world_size, "library": writer.library, "roots": roots,
        "manifest": manifest.to_json(), "manifest_key": _manifest_key(manifest),
        "backend": backend, "max_pixels": max_pixels, "created": time.time(),
        "shards": [[{"path": p, "size": work[p].size, "mtime_ns": work[p].mtime_ns} for p in shard]
                   for shard in shards],
        "reuse": [{"path": path, "batch": ref.batch, "index": ref.index} for path, ref in sorted(reuse.items())],
    }
    run_dir = os.path.join(staging, run_id)
    os.makedirs(run_dir, exist_ok=True)
    _write_json(os.path.join(run_dir, "plan.json"), document)
    return summary, document


def _run_rank(coordinator, info: LaunchInfo, run_id: str, library: str, encoder, settings: _Settings) -> None:
    try:
        message = coordinator.broadcast("plan")
    except _PeerLost as error:  # rank 0 died while planning: a traceback of _PeerLost said less than this
        raise _lost_contact(info, error) from None
    if message["error"]:
        raise VmmError(message["error"])
    run_dir = os.path.join(library, STAGING_DIR, run_id)
    try:
        with open(os.path.join(run_dir, "plan.json")) as f:
            plan = json.load(f)
    except OSError:
        plan = None
    _stage_and_report(plan, info, run_dir, encoder, settings)
    try:
        coordinator.barrier("staged")
        outcome = coordinator.broadcast("result")
        coordinator.barrier("finished")
    except _PeerLost as error:
        raise _lost_contact(info, error) from None
    if outcome["error"]:
        raise VmmError(outcome["error"])
    return None


def _lost_contact(info: LaunchInfo, error: _PeerLost) -> VmmError:
    return VmmError(f"rank {info.rank} lost contact with the other ranks ({error}); the files finished so far are "
                    "kept, run the same command again to do the rest")


def _stage_and_report(plan: dict | None, info: LaunchInfo, run_dir: str, encoder, settings: _Settings) -> None:
    """Stage this rank's shard and leave a report (figures or the error) for rank 0; never raises VmmError."""
    folder = os.path.join(run_dir, f"rank-{info.rank:05d}")
    report = {"rank": info.rank, "error": None}
    try:
        if plan is None:
            raise VmmError(f"cannot read {os.path.join(run_dir, 'plan.json')}; every node must see the library "
                           "folder at the same path (a shared file system)")
        report.update(_stage(plan, info, folder, encoder, settings))
    except VmmError as error:
        report["error"] = f"rank {info.rank}: {error}"
    except Exception as error:  # a bug on one rank: report it, and still meet the others at the barrier
        traceback.print_exc()
        report["error"] = f"rank {info.rank}: unexpected {type(error).__name__}: {error_text(error, 300)}"
    try:
        os.makedirs(folder, exist_ok=True)
        _write_json(os.path.join(folder, "done.json"), report)
    except OSError:
        pass  # rank 0 reports this rank as not finished


def _stage(plan: dict, info: LaunchInfo, folder: str, encoder, settings: _Settings) -> dict:
    started = time.monotonic()
    # Rank 0 checked only its own options: another rank's timeout=0 recorded its whole shard as failed.
    _check_numbers(batch_size=settings.batch_size, timeout=settings.timeout, commit_seconds=settings.commit_seconds,
                   **({} if settings.workers is None else {"workers": settings.workers}))
    manifest = LibraryManifest.from_json(plan["manifest"])
    _check_rank_encoder(encoder, manifest, info.rank)
    for root in plan["roots"]:
        if not os.path.exists(root):
            raise VmmError(f"{root} does not exist on this node; every node must see the videos at the same paths")
    todo = [Candidate(f["path"], f["size"], f["mtime_ns"], None) for f in plan["shards"][info.rank]]
    cpus = max(1, usable_cpus() // info.local_world_size)
    workers = default_workers(encoder, cpus) if settings.workers is None else settings.workers
    options = _decode_options(manifest, max_pixels=plan["max_pixels"], backend=plan["backend"], workers=workers,
                              cpus=cpus)
    staging = _StagingArea(folder, plan["manifest_key"], manifest.dim)
    summary = IngestSummary(plan["library"])
    progress = settings.progress if (info.rank == 0 or callable(settings.progress)) else False
    bar = IngestProgress(progress, len(todo))
    timed = _TimedEncoder(encoder)
    pipeline = _Pipeline(staging, timed, summary, bar, settings.batch_size, settings.commit_seconds)
    try:
        with DecodePool(options, workers=workers, timeout=settings.timeout,
                        prefetch=max(8, 2 * settings.batch_size), worker_hook=settings.worker_hook) as pool:
            pipeline.run(pool, todo)
    finally:
        bar.close()
    return {"files": len(todo), "indexed": summary.indexed, "failed": summary.failed, "clips": summary.clips,
            "seconds": round(time.monotonic() - started, 3), "encode_seconds": round(timed.seconds, 3)}


def _check_rank_encoder(encoder, manifest: LibraryManifest, rank: int) -> None:
    missing = [name for name in ("name", "weights_hash", "dim", "num_frames", "encode_clips")
               if not hasattr(encoder, name)]
    if missing:
        raise VmmError(f"{type(encoder).__name__} is not a ClipEncoder (missing {', '.join(missing)}); "
                       "see index.encoder.ClipEncoder")
    mine = LibraryManifest.for_encoder(encoder, window=manifest.window, stride=manifest.stride,
                                       max_seconds=manifest.max_seconds)
    problem = manifest.model_mismatch(mine)
    if problem:
        raise VmmError(f"this rank's model differs from the library's: {problem}; every rank must load the "
                       "same model and weights")


def _merge(writer: LibraryWriter, plan: dict, staging: str, summary: DistributedSummary) -> None:
    """Commit every whole staged file of this plan, in path order, a chunk of files per transaction."""
    reader = _StagedReader(staging, plan["manifest_key"], LibraryManifest.from_json(plan["manifest"]).dim)
    selected = {item["path"]: _StagedRef(item["batch"], item["index"]) for item in plan["reuse"]}
    reused = set(selected)
    # This run's records carry the size and mtime of what was decoded, which differ from the plan's where a file
    # changed after planning: they are the file's record all the same.
    planned = {f["path"] for shard in plan["shards"] for f in shard}
    for batch in _staged_batches(staging, plan["run"]):
        for index, entry in enumerate(reader.entries(batch)):
            if entry["path"] in planned:
                selected[entry["path"]] = _StagedRef(batch, index)
    chunk: list[FileResult] = []
    clips = 0
    for path in sorted(selected):
        result = reader.result(selected[path])
        if result is None:
            continue  # a damaged batch: the file is simply not done yet
        chunk.append(result)
        clips += len(result.spans)
        if clips >= _MERGE_MAX_CLIPS:
            _commit_chunk(writer, chunk, summary, reused)
            chunk, clips = [], 0
    _commit_chunk(writer, chunk, summary, reused)
    summary.failures.sort()


def _commit_chunk(writer: LibraryWriter, chunk: list[FileResult], summary: DistributedSummary,
                  reused: set[str]) -> None:
    if not chunk:
        return
    writer.catalog.commit(chunk)
    for result in chunk:
        summary.reused += result.path in reused
        if result.status == "ok":
            summary.indexed += 1
            summary.clips += len(result.spans)
        else:
            summary.failed += 1
            summary.failures.append((result.path, result.error))


def _rank_reports(run_dir: str, world_size: int) -> list[dict]:
    reports = []
    for rank in range(world_size):
        try:
            with open(os.path.join(run_dir, f"rank-{rank:05d}", "done.json")) as f:
                reports.append(json.load(f))
        except (OSError, ValueError):
            reports.append({"rank": rank, "missing": True, "error": None})
    return reports


def _clean_staging(staging: str, run_id: str, roots: list[str], *, unplanned: bool = True) -> None:
    """Delete this run's folder, and earlier runs' whose staged files this run has merged or outdated.

    ``unplanned=False`` keeps the folders without a plan (a one-process run cannot tell a launch that has not
    planned yet from a dead one)."""
    if run_id:
        shutil.rmtree(os.path.join(staging, run_id), ignore_errors=True)
    if not os.path.isdir(staging):
        return
    for name in os.listdir(staging):
        folder = os.path.join(staging, name)
        try:
            with open(os.path.join(folder, "plan.json")) as f:
                old_roots = json.load(f)["roots"]
        except (OSError, ValueError, KeyError, TypeError):
            if not unplanned:
                continue
            old_roots = []  # never planned: holds no staged files
        if all(any(old == root or old.startswith(root.rstrip(os.sep) + os.sep) for root in roots)
               for old in old_roots):
            shutil.rmtree(folder, ignore_errors=True)
    try:
        os.rmdir(staging)
    except OSError:
        pass  # an earlier run over other paths keeps its staged files for a run over those paths
