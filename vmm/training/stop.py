"""How ``python -m vmm.train`` stops on Ctrl-C (SIGINT) and SIGTERM: every process of the run, at once.

Under :func:`on_signals`, the first SIGINT or SIGTERM that reaches a process ends it on the spot: process 0 prints
one line (the command's hint), the process kills its decoding workers and exits with status 128 + the signal.

It does not unwind first, because there is nothing to finish: checkpoints and the final export are written to
hidden folders and renamed when complete, and a metrics line reaches the file whole or not at all. The few steps
that swap a complete folder for the one it replaces run under :func:`deferred`: a signal there ends the process
right after them, so a stop never leaves the run without its newest complete checkpoint or final model. Unwinding
only gave a run ways to hang or to print tracebacks: a KeyboardInterrupt had to wait for a DataLoader worker
stuck in a read (for ever, on a dead mount), a process whose peer had already left waited in a gloo collective,
the launcher gave up after 30 s and killed both without a word, and a second signal during the unwinding
printed "Exception ignored" tracebacks from the DataLoader's clean-up.

Python runs a signal handler only in the main thread, between two bytecodes: not while that thread waits inside
a C call, such as ``.item()`` on a GPU whose NCCL collective waits for a peer that has already stopped (NCCL
never notices; seen on two H200s: the waiting process outlived its peer's exit until killed). So a watcher
thread, woken through :func:`signal.set_wakeup_fd`, stops the process itself when the main thread has not done
so within ``GRACE_S``; both go through one lock, which :func:`deferred` takes too.

Called as a library, :func:`vmm.training.loop.train` keeps Python's KeyboardInterrupt (see
:func:`vmm.training.data.ctrl_c_held`); only the command installs this.
"""
from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sys
import threading
import time
from typing import Callable, Iterator, Optional

SIGNALS = (signal.SIGINT, signal.SIGTERM)

GRACE_S = 1.0  # how long the main thread has to run the handler before the watcher thread stops the process

_line: Optional[Callable[[int], Optional[str]]] = None  # the command's last words for a signal (None: say nothing)
_owner = 0  # the process that installed the handlers; forked decoding workers inherit them
_stopping = False
_deferring = 0  # depth of deferred() blocks in the owning process
_pending: Optional[int] = None  # a signal that arrived inside one
# Taken by the thread that stops the process and never given back, so the other one waits there for the exit;
# reentrant for a second signal in the main thread while it holds it.
_lock = threading.RLock()
_wakeup: Optional[tuple[int, int]] = None  # the watcher's pipe (read end, write end) while on_signals is active
_fork_hook = False


def _stop(signum: int, frame) -> None:
    global _stopping, _pending
    if os.getpid() != _owner:
        # A decoding worker between its fork and its own signal set-up: the process that owns it kills it.
        return
    _lock.acquire()  # held by the other thread if it is stopping the process: then this one waits for the exit
    if _stopping or _deferring:
        if not _stopping:
            _pending = signum  # deferred() stops the process when its block ends
        # Else a second signal in the thread writing the first one's line: the exit there follows.
        _lock.release()
        return
    _stopping = True
    main = threading.current_thread() is threading.main_thread()
    try:
        if main:
            # torch's SIGCHLD handler would raise "DataLoader worker killed" for the workers killed below.
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        _flush(wait=None if main else 1.0)
        line = _line(signum) if _line is not None else None
        if line:
            # Unbuffered: print() may be what this signal interrupted. On a terminal the line starts on a line of
            # its own, not after the progress bar or the "^C" that the terminal echoes.
            os.write(2, (("\n" if os.isatty(2) else "") + line + "\n").encode())
        # The watcher does not wait to reap: the main thread, back from its C call, would run torch's SIGCHLD
        # handler and print a "DataLoader worker killed" traceback. The orphans are reaped by init.
        _kill_children(reap=main)
    finally:
        os._exit(128 + signum)


def _flush(wait: Optional[float]) -> None:
    """Flush stdout and stderr; from the watcher, in a thread of its own given ``wait`` seconds, as the stuck
    main thread may hold a stream's lock (a print blocked on a full pipe)."""
    def flush():
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):  # interrupted in the middle of a write: a flush cannot re-enter
                stream.flush()
    if wait is None:
        flush()
    else:
        flusher = threading.Thread(target=flush, daemon=True)
        flusher.start()
        flusher.join(wait)


def _watch(read_fd: int) -> None:
    """The watcher thread: the wakeup fd gets a byte for each signal the process receives (in the C handler, so
    also while the main thread waits in C code); a stop signal the main thread has not acted on within
    ``GRACE_S`` is acted on here. Ends when on_signals closes the write end."""
    while True:
        try:
            received = os.read(read_fd, 64)
        except InterruptedError:
            continue
        except OSError:
            received = b""
        if not received:
            with contextlib.suppress(OSError):
                os.close(read_fd)
            return
        stops = [s for s in received if s in SIGNALS]
        if not stops:
            continue  # SIGCHLD and the like, which have Python handlers too
        time.sleep(GRACE_S)
        if _wakeup is not None and _wakeup[0] == read_fd:  # still installed: the main thread is stuck in C
            _stop(stops[0], None)


def _forget_in_child() -> None:
    # A forked child (a decoding worker) inherits the wakeup fd: its signals would reach the parent's watcher.
    global _wakeup
    if _wakeup is not None:
        with contextlib.suppress(ValueError, OSError):
            signal.set_wakeup_fd(-1)
        for fd in _wakeup:
            with contextlib.suppress(OSError):
                os.close(fd)
        _wakeup = None


def _kill_children(reap: bool = True) -> None:
    """SIGKILL this process's children (its decoding workers) and reap them (``reap``).

    A worker may be blocked in a read that never returns; SIGKILL ends it anyway. The children are read from
    /proc as well as from multiprocessing's list, because a worker forked just before the signal is not yet on
    that list; it would otherwise live on, orphaned, until its watchdog noticed 5 s later.
    """
    me = os.getpid()
    pids = {p.pid for p in multiprocessing.active_children() if p.pid}
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                with contextlib.suppress(OSError, ValueError, IndexError):
                    with open(f"/proc/{entry.name}/stat") as f:
                        stat = f.read()
                    if int(stat.rsplit(")", 1)[1].split()[1]) == me:  # the parent's pid follows the name and state
                        pids.add(int(entry.name))
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 2
    while reap and pids and time.monotonic() < deadline:  # reaped here: none stays a zombie of a process that is gone
        for pid in list(pids):
            try:
                if os.waitpid(pid, os.WNOHANG)[0]:
                    pids.discard(pid)
            except ChildProcessError:
                pids.discard(pid)
        if pids:
            time.sleep(0.01)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """A block that a stop signal does not cut in two (a folder swap: remove or move the old one, rename the new
    one): a SIGINT or SIGTERM arriving inside it stops the process as soon as the block ends. Outside
    :func:`on_signals` (a library call of ``train()``), it does nothing.

    >>> with deferred():
    ...     pass
    """
    global _deferring
    with _lock:  # never begins once the watcher thread is stopping the process
        _deferring += 1
    try:
        yield
    finally:
        with _lock:
            _deferring -= 1
            pending = _pending if not _deferring else None
        if pending is not None and os.getpid() == _owner:
            _stop(pending, None)


def shield_sigchld() -> None:
    """Keep the SIGCHLD handler now installed (torch's, set once per process by the first DataLoader iterator with
    workers) from running inside :func:`_stop` before it has switched that handler off.

    A job scheduler's SIGTERM goes to the whole process group: the decoding workers die with the process, and
    their SIGCHLD is pending when Python calls ``_stop`` for the SIGTERM. Python checks for pending signals again at
    the handler's first bytecode, so torch's handler ran there and raised "DataLoader worker (pid N) is killed by
    signal: Terminated" out of ``_stop``: a traceback instead of the one line. Call it after creating the iterator.
    """
    if _wakeup is None or threading.current_thread() is not threading.main_thread():
        return  # outside on_signals, _stop never runs
    current = signal.getsignal(signal.SIGCHLD)
    if not callable(current) or getattr(current, "_vmm_shielded", False):
        return

    def handler(signum, frame):
        if _stopping or (frame is not None and frame.f_code is _stop.__code__):
            return  # the process is stopping: its workers' deaths are its own doing
        current(signum, frame)
    handler._vmm_shielded = True
    signal.signal(signal.SIGCHLD, handler)


def is_handler(handler) -> bool:
    """Whether ``handler`` (from ``signal.getsignal``) is this module's: the process stops at once on it."""
    return handler is _stop


@contextlib.contextmanager
def on_signals(line: Callable[[int], Optional[str]]) -> Iterator[bool]:
    """Stop the process at once on SIGINT or SIGTERM inside the block, after writing ``line(signum)`` to stderr.

    Yields whether the handlers are installed (signals can be handled only in the main thread); the previous
    handlers come back when the block ends.
    """
    global _line, _owner, _wakeup, _fork_hook
    if threading.current_thread() is not threading.main_thread():
        yield False
        return
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    _line, _owner = line, os.getpid()
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)  # the C handler must never block on it
    if not _fork_hook:
        os.register_at_fork(after_in_child=_forget_in_child)
        _fork_hook = True
    _wakeup = (read_fd, write_fd)
    previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    threading.Thread(target=_watch, args=(read_fd,), name="vmm-stop-watcher", daemon=True).start()
    for s in SIGNALS:
        signal.signal(s, _stop)
    try:
        yield True
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        signal.set_wakeup_fd(previous_fd)
        _wakeup = None
        os.close(write_fd)  # the watcher reads the end of the pipe, closes its end and returns
        _line = None
