"""Decode files in worker processes, with a watchdog that kills a hung decoder.

decord can hang in native code while holding the GIL (a container that
over-reports its frame count), where no Python-level timeout can interrupt it; only
killing the process works. So each worker is a separate process (started with
``python -c``, so it imports the decoders and not the caller's ``__main__``) with its
own pipes (a killed worker can corrupt nothing shared), and before every decoding step it
stamps the start time into shared memory. A manager thread in the parent reads the
pipes into a bounded queue (so decoding runs ahead of encoding) and kills a worker
whose current step has run longer than ``timeout`` seconds. Time a worker spends
waiting for the encoder to catch up is not a decoding step, so a slow model never
triggers the watchdog; a long file is never killed for being long.

A file whose decoder hung or crashed with ``backend="auto"`` is retried once with
PyAV in a fresh worker; if that fails too it is reported as failed. A worker that dies
before it begins its file costs the file nothing (it goes to the next worker as it
was); three in a row, or no worker that can be started at all, end the run with a
:class:`vmm.errors.VmmError`. When the system refuses more processes or open files,
the run goes on with the workers that started.

Events, in order per file: ``("start", key, (FileStamp, DecodeStart))``, then
``("clip", key, Clip)`` per clip, then ``("done", key, None)``; or
``("failed", key, message)`` at any point. A second "start" for a key means the
decoder restarted: drop that key's earlier clips. A file that changed while it was
decoded is decoded again (a new "start"), so the :class:`FileStamp` of the last "start"
before "done" is the size, mtime and fingerprint of the content of its clips.

>>> from index.decode import DecodeOptions
>>> with DecodePool(DecodeOptions(), workers=0) as pool:
...     pool.pending()
0
"""
from __future__ import annotations

import collections
import contextlib
import ctypes
import importlib
import json
import mmap
import multiprocessing.connection
import numbers
import os
import pickle
import queue
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from typing import Callable

from index.decode import DecodeFailure, DecodeOptions, DecodeStart, _is_number, iter_decode
from index.discovery import fingerprint_file, storable_mtime

Event = tuple  # (kind, key, payload)

# Decoded frames that may wait for the encoder: frames are full size, so 32 clips of 8 frames of 4K video held
# 6.4 GB (25 GB at 8K, which max_pixels lets through) where a clip count alone bounded them.
PREFETCH_BYTES = 1 << 30


# A file that changed while it was decoded (still being copied or written) is decoded again this many times before
# it is reported as failed.
_CHANGE_RETRIES = 2


@dataclass(frozen=True)
class FileStamp:
    """What a decoded file was: its content fingerprint and the size and mtime (``storable_mtime``) it had.

    A library stores these beside the file's vectors, and a later run takes a file of the same size and mtime as
    unchanged, so all three must describe the content that was decoded.

    >>> import tempfile
    >>> with tempfile.NamedTemporaryFile(delete=False) as f:
    ...     _ = f.write(b"abc")
    >>> stamp = FileStamp.read(f.name)
    >>> stamp.size, stamp.holds(f.name)
    (3, True)
    """

    fingerprint: str
    size: int
    mtime_ns: int

    @classmethod
    def read(cls, path: str) -> "FileStamp":
        """The file's stamp; its size and mtime are taken before the fingerprint, so while :meth:`holds` is True
        the fingerprint is of the content they describe."""
        size, mtime_ns = _size_and_mtime(path)
        return cls(fingerprint_file(path), size, mtime_ns)

    def holds(self, path: str) -> bool:
        """Whether the file still has this size and mtime: the test by which a library takes it as unchanged
        (inode numbers and ctimes change without the content on some network and FUSE file systems)."""
        return _size_and_mtime(path) == (self.size, self.mtime_ns)


def _size_and_mtime(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_size, storable_mtime(st.st_mtime_ns)


def _resolve_hook(name: str | None) -> Callable[[str, str], None] | None:
    if not name:
        return None
    module, _, function = name.partition(":")
    return getattr(importlib.import_module(module), function)


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this worker when its parent dies (a SIGKILLed indexer leaves no orphans)."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except OSError:
            pass


class _Stamp:
    """Stand-in for the shared start-time value when decoding inline."""

    value = 0.0


def _task_events(key: int, path: str, options: DecodeOptions, hook, busy):
    """Yield the events of one file; ``busy.value`` is the start time of the running step, 0 between steps."""
    try:
        busy.value = time.monotonic()
        if hook is not None:
            hook(path, options.backend)
        for _ in range(1 + _CHANGE_RETRIES):
            stamp = FileStamp.read(path)
            # Each packet read and frame decoded restarts the step's clock: PyAV reads a whole file to count its
            # frames and decodes every frame up to a clip's last, which on slow storage or with a long window
            # outlasted the timeout, and a file was killed as hung for being large.
            try:
                for event in iter_decode(path, options, progress=lambda: setattr(busy, "value", time.monotonic())):
                    busy.value = 0.0
                    yield ("start", key, (stamp, event)) if isinstance(event, DecodeStart) else ("clip", key, event)
                    busy.value = time.monotonic()
            except DecodeFailure:
                # A copy in progress fails as cut short, or as no video at all (an MP4's index comes last): the
                # failure may be of content the file no longer has.
                if stamp.holds(path):
                    raise
                continue
            # Changed since it was stamped: its clips may be of other content than the stamp says, and a library
            # storing them with that size and mtime would take them as current whenever those came back.
            if stamp.holds(path):
                busy.value = 0.0
                yield ("done", key, None)
                return
        raise DecodeFailure(f"the file changed while it was decoded, {1 + _CHANGE_RETRIES} times (still being "
                            "copied or written?); index it again once it is complete")
    except DecodeFailure as error:
        busy.value = 0.0
        yield ("failed", key, str(error))
    except OSError as error:
        busy.value = 0.0
        yield ("failed", key, f"cannot read the file ({error.strerror or error})")
    except Exception as error:  # a decoder bug must cost one file, not the run
        from vmm.errors import error_text
        busy.value = 0.0
        yield ("failed", key, f"unexpected {type(error).__name__} while decoding: {error_text(error)}")


class _SharedStamp:
    """A float in a shared memory page: the worker writes it, the parent's watchdog reads it."""

    def __init__(self, fd: int):
        self._map = mmap.mmap(fd, 8)

    @property
    def value(self) -> float:
        return struct.unpack_from("d", self._map, 0)[0]

    @value.setter
    def value(self, stamp: float) -> None:
        struct.pack_into("d", self._map, 0, stamp)

    def close(self) -> None:
        self._map.close()


def _worker_entry() -> None:
    """Body of a worker process: ``python -c`` calls it with the pipe fds and settings in argv."""
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    task_fd, result_fd, stamp_fd = (int(x) for x in sys.argv[2:5])
    options, hook_name = pickle.loads(bytes.fromhex(sys.argv[5]))
    tasks = multiprocessing.connection.Connection(task_fd, writable=False)
    results = multiprocessing.connection.Connection(result_fd, readable=False)
    busy = _SharedStamp(stamp_fd)
    hook = _resolve_hook(hook_name)
    while True:
        try:
            task = tasks.recv()
        except (EOFError, OSError):
            return
        if task is None:
            # Everything was sent; skipping the interpreter's teardown (tens of ms of CPU with the decoders
            # loaded) lets a pool of many workers close at once. A worker_hook's prints are flushed first.
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except (AttributeError, OSError, ValueError):  # None, a closed pipe, a closed file
                    pass
            os._exit(0)
        key, path, backend = task
        try:
            for event in _task_events(key, path, replace(options, backend=backend), hook, busy):
                results.send(event)
        except (BrokenPipeError, EOFError):
            return


def _crash_reason(code: int | None) -> str:
    """What a file's failure says of the worker that died decoding it, from its exit status.

    >>> _crash_reason(-9)
    'the decoder was killed by SIGKILL (out of memory? fewer workers need less memory)'
    >>> _crash_reason(-11), _crash_reason(3)
    ('the decoder crashed (SIGSEGV)', 'the decoder crashed (worker exit code 3)')
    """
    if code == -signal.SIGKILL:
        # Mostly the kernel's out-of-memory killer (8 workers decoding 4K video): no fault of the file, which
        # "crashed (worker exit code -9)" blamed.
        return "the decoder was killed by SIGKILL (out of memory? fewer workers need less memory)"
    try:
        return f"the decoder crashed ({signal.Signals(-code).name})"
    except (TypeError, ValueError):  # no exit status yet, or an exit code rather than a signal
        return f"the decoder crashed (worker exit code {code})"


def _check_limits(workers, timeout) -> None:
    """Refuse what no run can finish with: a negative worker count started no worker and get() waited forever, and a
    timeout of 0 killed every decoder at once, each file recorded as failed (and skipped by later runs)."""
    from vmm.errors import VmmError, is_whole_number
    if not (is_whole_number(workers) and workers >= 0):
        raise VmmError(f"workers must be a whole number >= 0 (0 decodes in this process), got {workers!r}")
    if not _is_number(timeout, numbers.Real) or not timeout > 0:
        raise VmmError(f"timeout must be a number of seconds > 0, got {timeout!r}")


def _frame_bytes(event: Event) -> int:
    return event[2].frames.nbytes if event[0] == "clip" else 0


# The child gets the parent's sys.path, so whatever the parent can import (an
# uninstalled checkout, a test helper module for worker_hook) the worker can too.
_BOOTSTRAP = "import sys, json; sys.path[:0] = json.loads(sys.argv[1]); import index.pool as p; p._worker_entry()"


@dataclass
class _Task:
    key: int
    path: str
    backend: str
    retried: bool = False


class _Worker:
    """One decoder process, started with ``python -c`` (no re-import of the caller's __main__)."""

    def __init__(self, options: DecodeOptions, hook: str | None, quiet: bool):
        # The child's ends and the stamp file are closed here either way, the parent's ends only when the start
        # fails (a process or open-file limit): the pool goes on with the workers it has, so nothing may leak.
        with contextlib.ExitStack() as child_ends, contextlib.ExitStack() as parent_ends:
            task_r, task_w = os.pipe()
            child_ends.callback(os.close, task_r)
            parent_ends.callback(os.close, task_w)
            result_r, result_w = os.pipe()
            child_ends.callback(os.close, result_w)
            parent_ends.callback(os.close, result_r)
            stamp_file = child_ends.enter_context(tempfile.TemporaryFile())
            stamp_file.write(bytes(8))
            stamp_file.flush()
            fds = (task_r, result_w, stamp_file.fileno())
            settings = pickle.dumps((options, hook)).hex()
            self.process = subprocess.Popen(
                [sys.executable, "-c", _BOOTSTRAP, json.dumps(sys.path), *map(str, fds), settings],
                pass_fds=fds, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL if quiet else None)
            self.busy = _SharedStamp(stamp_file.fileno())
            parent_ends.pop_all()
        self.tasks = multiprocessing.connection.Connection(task_w, readable=False)
        self.results = multiprocessing.connection.Connection(result_r, writable=False)
        self.task: _Task | None = None
        self.done = 0
        self.began = False  # it has stamped a step of its task or sent an event of it

    def assign(self, task: _Task) -> None:
        self.task = task
        self.began = False
        self.busy.value = 0.0
        self.tasks.send((task.key, task.path, task.backend))

    def stop(self, kill: bool) -> None:
        self.ask_to_stop(kill)
        self.reap()

    def ask_to_stop(self, kill: bool) -> None:
        """An idle worker is told to exit; a busy one (``kill``) is killed."""
        if not kill:
            try:
                self.tasks.send(None)
            except OSError:
                kill = True
        if kill:
            self.process.kill()

    def reap(self, deadline: float | None = None) -> None:
        """Wait for the process to exit (killing it past ``deadline``, default 5 s from now) and close its pipes."""
        try:
            if deadline is None:
                deadline = time.monotonic() + 5
            self.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.tasks.close()
        self.results.close()
        self.busy.close()


class DecodePool:
    """Decode submitted files in ``workers`` processes; ``workers=0`` decodes inline (no timeout).

    ``timeout`` bounds each decoding step (opening a file or decoding one clip);
    ``prefetch`` bounds how many decoded clips wait for the encoder, and ``prefetch_bytes``
    their frames' bytes (one clip may always wait, however large).
    ``worker_hook`` ("module:function") is called as ``hook(path, backend)`` inside the
    worker before decoding: a test and debugging seam.
    """

    def __init__(self, options: DecodeOptions, *, workers: int = 1, timeout: float = 60.0, prefetch: int = 32,
                 prefetch_bytes: int = PREFETCH_BYTES, max_files_per_worker: int = 200,
                 worker_hook: str | None = None, quiet: bool = True):
        options.check()
        _check_limits(workers, timeout)
        self.options = options
        self.workers = workers
        self.timeout = timeout
        self.max_files_per_worker = max_files_per_worker
        self.worker_hook = worker_hook
        self.quiet = quiet
        self._todo: collections.deque[_Task] = collections.deque()
        self._out: queue.Queue = queue.Queue(maxsize=max(2, prefetch))
        self.prefetch_bytes = prefetch_bytes
        self._queued_bytes = 0  # frames in self._out
        self._unfinished = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._inline = None
        self._thread = None
        self._early_deaths = 0
        self._deferred: list[Event] = []  # failures found while emitting; sent after the current event
        if workers > 0:
            self._workers: list[_Worker] = []
            self._thread = threading.Thread(target=self._manage, name="vmm-decode-pool", daemon=True)
            self._thread.start()

    # -- consumer side -------------------------------------------------------------------
    def submit(self, key: int, path: str) -> None:
        """Queue a file; its events will carry ``key``."""
        with self._lock:
            self._todo.append(_Task(key, path, self.options.backend))
            self._unfinished += 1

    def pending(self) -> int:
        """Files submitted whose "done"/"failed" event has not been returned by :meth:`get` yet."""
        with self._lock:
            return self._unfinished

    def get(self, timeout: float | None = None) -> Event | None:
        """Next event, or None if none arrives within ``timeout`` seconds."""
        if self.workers == 0:
            event = self._next_inline()
        else:
            deadline = None if timeout is None else time.monotonic() + timeout
            event = None
            while event is None:
                if self._error is not None:
                    from vmm.errors import VmmError
                    if isinstance(self._error, VmmError):  # already one line for the user
                        raise self._error
                    raise RuntimeError(f"decoder pool failed: {self._error}") from self._error
                wait = 0.1 if deadline is None else min(0.1, deadline - time.monotonic())
                try:
                    event = self._out.get(timeout=max(0.0, wait))  # timeout=0 still takes an event already there
                except queue.Empty:
                    if wait <= 0:
                        return None
            with self._lock:
                self._queued_bytes -= _frame_bytes(event)
        if event is not None and event[0] in ("done", "failed"):
            with self._lock:
                self._unfinished -= 1
        return event

    def close(self) -> None:
        """Stop all workers (killing busy ones)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._inline is not None:
            self._inline.close()
            self._inline = None

    def __enter__(self) -> "DecodePool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- inline mode -----------------------------------------------------------------------
    def _next_inline(self) -> Event | None:
        while True:
            if self._inline is None:
                with self._lock:
                    if not self._todo:
                        return None
                    task = self._todo.popleft()
                self._inline = _task_events(task.key, task.path, replace(self.options, backend=task.backend),
                                            _resolve_hook(self.worker_hook), _Stamp())
            try:
                return next(self._inline)
            except StopIteration:
                self._inline = None

    # -- manager thread ------------------------------------------------------------------
    def _manage(self) -> None:
        try:
            while not self._stop.is_set():
                self._dispatch()
                self._flush_deferred()
                busy = [w for w in self._workers if w.task is not None]
                if not busy:
                    time.sleep(0.02)
                    continue
                ready = multiprocessing.connection.wait([w.results for w in busy], timeout=0.1)
                for worker in busy:
                    if worker.results in ready and worker in self._workers:
                        self._receive(worker)
                self._watch()
                self._flush_deferred()
        except BaseException as error:  # surfaced to the consumer by get()
            self._error = error
        finally:
            # All are told first, then waited for: each interpreter takes tens of ms to exit, and 15 decoders
            # stopped one after another added half a second to every run.
            for worker in self._workers:
                worker.ask_to_stop(kill=worker.task is not None)
            deadline = time.monotonic() + 5
            for worker in self._workers:
                worker.reap(deadline)
            self._workers = []

    def _dispatch(self) -> None:
        while True:
            idle = [w for w in self._workers if w.task is None]
            with self._lock:
                if not self._todo:
                    return
                if not idle and len(self._workers) >= self.workers:
                    return
                task = self._todo.popleft()
            if idle:
                worker = idle[0]
            else:
                try:
                    worker = _Worker(self.options, self.worker_hook, self.quiet)
                except OSError as error:
                    self._cannot_start(task, error)
                    return
                self._workers.append(worker)
            try:
                worker.assign(task)
            except OSError:  # the worker died before taking its first task
                self._lost(worker, "the decoder process exited")

    def _cannot_start(self, task: _Task, error: OSError) -> None:
        """The system refused another worker (a limit on processes or open files): go on with those running."""
        with self._lock:
            self._todo.appendleft(task)
        if not self._workers:
            from vmm.errors import VmmError
            raise VmmError(f"cannot start a decoder worker process ({error.strerror or error}); raise the limit on "
                           "processes or open files (ulimit -u, ulimit -n), or run with workers=0 (--workers 0) to "
                           "decode in this process")
        self.workers = len(self._workers)

    def _flush_deferred(self) -> None:
        while self._deferred:
            self._emit(self._deferred.pop(0))

    def _emit(self, event: Event) -> None:
        size = _frame_bytes(event)
        while not self._stop.is_set():
            with self._lock:
                fits = self._queued_bytes == 0 or self._queued_bytes + size <= self.prefetch_bytes
                if fits:
                    self._queued_bytes += size  # before the put: the consumer may take the event at once
            if fits:
                try:
                    self._out.put(event, timeout=0.1)
                    return
                except queue.Full:
                    with self._lock:
                        self._queued_bytes -= size
            else:
                self._stop.wait(0.02)
            self._watch()  # the consumer is busy; busy workers are still watched

    def _receive(self, worker: _Worker) -> None:
        try:
            message = worker.results.recv()
        except (EOFError, OSError):
            try:
                code = worker.process.wait(timeout=1)
            except subprocess.TimeoutExpired:
                code = None
            self._lost(worker, _crash_reason(code))
            return
        worker.began = True
        self._early_deaths = 0  # workers can start: only deaths in a row before decoding mean they cannot
        if message[0] in ("done", "failed"):
            worker.task = None
            worker.done += 1
            if worker.done >= self.max_files_per_worker:  # decord leaks memory over many files
                worker.stop(kill=False)
                self._workers.remove(worker)
        self._emit(message)

    def _watch(self) -> None:
        now = time.monotonic()
        for worker in list(self._workers):
            started = worker.busy.value
            if worker.task is not None and started > 0 and now - started > self.timeout:
                self._lost(worker, f"decoding timed out after {self.timeout:g} s (the decoder hung and was killed)")

    def _lost(self, worker: _Worker, reason: str) -> None:
        """A worker hung or died: replace it, and retry its file with PyAV once (as it was if not begun yet)."""
        task = worker.task
        worker.task = None
        began = worker.began or worker.busy.value > 0
        worker.stop(kill=True)
        self._workers.remove(worker)
        if not began:
            # It died before touching the file (a broken environment, the OOM killer at start-up): the file goes
            # back as it was, where it was recorded as failed and skipped by later runs. Deaths only of this kind,
            # again and again, mean no worker can start.
            self._early_deaths += 1
            if self._early_deaths >= 3:
                from vmm.errors import VmmError
                raise VmmError(f"decoder worker processes exit before decoding anything (exit code "
                               f"{worker.process.returncode}, {self._early_deaths} in a row); run with workers=0 "
                               "(--workers 0) to decode in this process and see why")
            with self._lock:
                self._todo.appendleft(task)
            return
        # What ended a worker that had begun is the file: two files that crash the decoder (each tried twice) cost
        # those files, where they ended the run.
        self._early_deaths = 0
        if task.backend == "auto" and not task.retried:
            with self._lock:
                self._todo.appendleft(_Task(task.key, task.path, "pyav", retried=True))
        else:
            self._deferred.append(("failed", task.key, reason))
