"""Files replaced whole or not at all, used by every vmm writer that replaces a file (library state and FAISS
files, distributed indexing's staged batches, training's run files, model folders, evaluation reports).

The new content goes to ``NAME.tmp.PID`` beside the file, is flushed to the disk (fsync), renamed over ``NAME``,
and the folder is flushed so that the rename itself survives. A rename without the first flush could leave a
zero-length file after a power cut on ext4 or XFS, where the old file was whole; a kill -9 at any point leaves
the old or the new file, and at most a ``NAME.tmp.PID`` file (a library's next run deletes its own).

Each write costs two fsyncs. No caller writes often enough for that to matter: the most frequent, distributed
indexing's staged batches, writes once per batch of encoded videos, and its per-second heartbeat is rewritten in
place without this module (a heartbeat lost to a power cut is only a stale one).

A new file gets the mode the umask gives (a temporary file made by ``tempfile.mkstemp`` is 0600, and a model or
library saved into a group's folder could be read by no one else); a replaced file keeps its own mode, as a
plain ``open(path, "w")`` would. A symlink is followed: its target is replaced and the link kept (replacing the
link left the file it named stale, and the next reader of the link found the old content).

>>> import os, pathlib, tempfile
>>> path = os.path.join(tempfile.mkdtemp(), "notes.txt")
>>> atomic_write_text(path, "first\\n"); atomic_write_bytes(path, b"second\\n"); open(path).read()
'second\\n'
>>> atomic_write_file(path, lambda tmp: pathlib.Path(tmp).write_text("third")); os.listdir(os.path.dirname(path))
['notes.txt']
"""
from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from typing import Callable


def fsync_path(path: str) -> None:
    """Flush a file's data, or a folder's entries, to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_folder(folder: str) -> None:
    """Flush ``folder``'s entries (a rename into it). Some file systems cannot sync a folder (FUSE and network
    mounts answer EINVAL): there the data itself was synced, which is all they offer."""
    try:
        fsync_path(folder)
    except OSError as error:
        if error.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise


def write_temp(path: str, write: Callable[[str], object]) -> str:
    """Write a new file beside ``path`` (what ``path`` is a symlink to) through ``write(temporary_path)``, with
    ``path``'s mode or the umask's, flushed to the disk; returns its name, for the caller to rename over the file.
    Deleted if anything fails, an interrupt included. Writers that take a file name (FAISS, safetensors) may
    create the file anew, so the mode is set after they are done."""
    target = os.path.realpath(path)
    try:
        existing = os.stat(target)
        mode = stat.S_IMODE(existing.st_mode) if stat.S_ISREG(existing.st_mode) else None
    except FileNotFoundError:
        mode = None
    tmp = f"{target}.tmp.{os.getpid()}"
    while True:
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666))
            break
        except FileExistsError:
            # A dead process's leftover that had this pid, or another thread writing the same file. Digits only:
            # the library's clean-up recognises "NAME.tmp.<digits>" as its own.
            tmp = f"{target}.tmp.{os.getpid()}{secrets.randbelow(10**8):08d}"
        except OSError as error:  # a missing or read-only folder: the file the caller named, not our temporary
            raise OSError(error.errno, error.strerror, os.fspath(path)) from None
    try:
        if mode is None:
            mode = stat.S_IMODE(os.stat(tmp).st_mode)  # 0666 less the umask, as open() makes a new file
        write(tmp)
        if stat.S_IMODE(os.stat(tmp).st_mode) != mode:
            os.chmod(tmp, mode)
        fsync_path(tmp)
    except BaseException:
        with contextlib.suppress(OSError):  # a half-written file on a full disk would only keep the space taken
            os.unlink(tmp)
        raise
    return tmp


def atomic_write_file(path: str, write: Callable[[str], object]) -> None:
    """Replace ``path`` with the file that ``write(temporary_path)`` writes; OSError (or the writer's own error)
    leaves ``path`` as it was and no temporary file behind."""
    tmp = write_temp(path, write)
    try:
        os.replace(tmp, os.path.realpath(path))
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_folder(os.path.dirname(tmp))


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Replace ``path`` with ``data``, whole or not at all."""
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)
    atomic_write_file(path, write)


def atomic_write_text(path: str, text: str) -> None:
    """Replace ``path`` with ``text`` (UTF-8), whole or not at all."""
    atomic_write_bytes(path, text.encode("utf-8"))
