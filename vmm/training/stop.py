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

_line: Optional[Callable[[int], Optional[str]]] = None  # the command's last words for a signal (None: say nothing)
_owner = 0  # the process that installed the handlers; forked decoding workers inherit them
_stopping = False
_deferring = 0  # depth of deferred() blocks in the owning process
_pending: Optional[int] = None  # a signal that arrived inside one


def _stop(signum: int, frame) -> None:
    global _stopping
    if os.getpid() != _owner:
        # A decoding worker between its fork and its own signal set-up: the process that owns it kills it.
        return
    if _stopping:  # a second signal while the first one's line is being written: the exit below follows
        return
    if _deferring:
        global _pending
        _pending = signum  # deferred() stops the process when its block ends
        return
    _stopping = True
    try:
        # torch's SIGCHLD handler would raise "DataLoader worker killed" for the workers killed below.
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):  # interrupted in the middle of a write: a flush cannot re-enter
                stream.flush()
        line = _line(signum) if _line is not None else None
        if line:
            # Unbuffered: print() may be what this signal interrupted. On a terminal the line starts on a line of
            # its own, not after the progress bar or the "^C" that the terminal echoes.
            os.write(2, (("\n" if os.isatty(2) else "") + line + "\n").encode())
        _kill_children()
    finally:
        os._exit(128 + signum)


def _kill_children() -> None:
    """SIGKILL this process's children (its decoding workers) and reap them.

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
    while pids and time.monotonic() < deadline:  # reaped here, so none stays a zombie of a process that is gone
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
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1
        if not _deferring and _pending is not None and os.getpid() == _owner:
            _stop(_pending, None)


def is_handler(handler) -> bool:
    """Whether ``handler`` (from ``signal.getsignal``) is this module's: the process stops at once on it."""
    return handler is _stop


@contextlib.contextmanager
def on_signals(line: Callable[[int], Optional[str]]) -> Iterator[bool]:
    """Stop the process at once on SIGINT or SIGTERM inside the block, after writing ``line(signum)`` to stderr.

    Yields whether the handlers are installed (signals can be handled only in the main thread); the previous
    handlers come back when the block ends.
    """
    global _line, _owner
    if threading.current_thread() is not threading.main_thread():
        yield False
        return
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    _line, _owner = line, os.getpid()
    for s in SIGNALS:
        signal.signal(s, _stop)
    try:
        yield True
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        _line = None
