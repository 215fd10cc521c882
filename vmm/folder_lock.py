"""One process's claim on a folder it writes: an exclusive ``flock`` on a file in it, held until released.

The kernel drops the lock when the process ends, a SIGKILL or a crash included, so a dead writer never blocks the
next one. The file is not deleted: a writer deleting it while a second one opened it would let a third lock a
new file beside the second's (the synthetic corpus generator, which leaves no lock file in a finished corpus,
deletes its own and so checks after each claim that the file it locked is still the folder's). Used by training
runs (``train.output_dir``), ``vmm demo`` (``--out``), library writers and the synthetic corpus generator; each
words its own refusal.
"""
from __future__ import annotations

import errno
import fcntl
import os
import socket
import time
from pathlib import Path
from typing import Optional


class LockHeld(Exception):
    """Another process holds the lock; ``holder`` is what it wrote in the file ("pid N on host H")."""

    def __init__(self, holder: str):
        super().__init__(holder)
        self.holder = holder


class LocksUnsupported(Exception):
    """The file system cannot lock (NFS without its lock service: ENOLCK; Lustre without flock: ENOSYS)."""


def _holder(fd: int) -> str:
    return os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"


def claim(path: Path, wait_s: float = 0.0) -> int:
    """The descriptor of ``path`` (made 0666 less the umask if missing) holding an exclusive flock, with the text
    "pid N on host H"; waits up to ``wait_s`` for a lock held by someone else, then raises :class:`LockHeld`.
    OSError when the file cannot be opened; :class:`LocksUnsupported` where the file system has no locks.

    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / ".lock"
    >>> fd = claim(path)
    >>> holder(path).startswith(f"pid {os.getpid()} on host ")
    True
    >>> release(fd); holder(path) is None
    True
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except OSError as e:
            if e.errno == errno.EWOULDBLOCK and time.monotonic() < deadline:
                time.sleep(0.05)  # perhaps a look of holder(), held for a moment
                continue
            who = _holder(fd)
            os.close(fd)
            if e.errno != errno.EWOULDBLOCK:
                raise LocksUnsupported(e.strerror or str(e)) from None
            raise LockHeld(who) from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on host {socket.gethostname()}\n".encode(), 0)
    except OSError:
        pass  # a full disk: the flock is what locks, the text only names the holder
    return fd


def release(fd: Optional[int]) -> None:
    if fd is not None:
        os.close(fd)  # closing drops the flock


def holder(path: Path) -> Optional[str]:
    """Who holds ``path``'s lock, None when no one does (or it cannot be told); creates and takes nothing that
    stays, so a check leaves the folder as it was."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None  # no writer has started here (or the file is odd: claim() names the problem)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # shared: a read-only folder or file can be tried too
        return None
    except OSError as e:
        return _holder(fd) if e.errno == errno.EWOULDBLOCK else None
    finally:
        os.close(fd)
