"""Find video files under the paths a user gives, and fingerprint their content.

A file is a video candidate when its extension is a video extension or its first
bytes are a video container's signature (so ``holiday.bin`` holding an MP4 is found).
A file with a video extension whose bytes are clearly not a video (empty, or text)
is returned with a ``problem`` so the library records it as failed instead of
handing it to a decoder. Hidden files and folders (``.name``), downloads in progress
(``clip.mp4.part``), the trash and thumbnail folders of other systems
(``$RECYCLE.BIN``, ``@eaDir``) and the low-resolution copies cameras write beside
each video (GoPro ``.LRV``, DJI ``.LRF``) are skipped.

>>> import os, tempfile
>>> root = tempfile.mkdtemp()
>>> with open(os.path.join(root, "notes.mp4"), "w") as f:
...     _ = f.write("not a video")
>>> found = discover([root])
>>> [(os.path.basename(c.path), c.problem) for c in found.candidates]
[('notes.mp4', 'not a video: the file holds text')]
"""
from __future__ import annotations

import hashlib
import os
import reprlib
import stat
from dataclasses import dataclass, field

VIDEO_EXTENSIONS = frozenset(
    ".mp4 .m4v .mov .qt .mkv .webm .avi .wmv .asf .flv .f4v .mpg .mpeg .mpe .m1v .m2v .ts .mts "
    ".m2ts .3gp .3g2 .ogv .vob .mxf .rm .rmvb .y4m .divx .dv .h264 .264 .hevc .265".split()
)
# Containers that also hold audio or still images: found by extension only, never by sniffing.
NOT_VIDEO_EXTENSIONS = frozenset(
    ".m4a .m4b .m4p .m4r .mka .mp3 .aac .wav .flac .oga .ogg .opus .wma .heic .heif .avif .jpg .jpeg "
    ".png .gif .webp .mid .mpc".split()
)
# Low-resolution copies that action cameras and drones write beside each video (GoPro .LRV, DJI .LRF): MP4 inside,
# so sniffing found them, and every match on a camera's card came back twice. Like audio and images, they are
# read only when named.
PROXY_EXTENSIONS = frozenset((".lrv", ".lrf"))
# A browser's or torrent client's download in progress: a truncated copy of a video that gets its real name when
# complete, so indexing it only records a failure (or half a video) under a path about to vanish.
PARTIAL_DOWNLOAD_SUFFIXES = (".part", ".partial", ".crdownload", ".download", ".opdownload", ".!ut", ".!qb")
# Folders that other systems hide by an attribute rather than a leading dot, seen when their drive or share is
# indexed from Linux: Windows' and NAS recycle bins (deleted videos) and Synology's thumbnails (@eaDir holds
# transcoded copies of every video). Compared in lower case, as those file systems compare names.
SYSTEM_FOLDERS = frozenset(("$recycle.bin", "recycler", "system volume information", "@eadir", "#recycle",
                            "@recycle"))
_NON_VIDEO_BRANDS = {b"M4A ", b"M4B ", b"M4P ", b"heic", b"heix", b"mif1", b"msf1", b"avif", b"avis", b"crx "}
_HEAD_BYTES = 4096
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Candidate:
    """One file that should end up in the library (as clips, or as a recorded failure)."""

    path: str  # absolute path as stored in the library
    size: int
    mtime_ns: int  # as storable_mtime gives it
    container: str | None  # sniffed container family ("mp4", "matroska", ...) or None
    problem: str | None = None  # why it cannot be a video, when that is clear without decoding


@dataclass
class Discovery:
    """Result of :func:`discover`: candidates in path order and folders that could not be read."""

    candidates: list[Candidate] = field(default_factory=list)
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    rejected: set[str] = field(default_factory=set)  # files read and found not to be videos
    duplicates: list[tuple[str, str]] = field(default_factory=list)  # (path, the kept path of the same file)


def sniff_container(head: bytes) -> str | None:
    """Name the container family from a file's first bytes, or None when unknown.

    >>> sniff_container(b"\\x00\\x00\\x00\\x20ftypisom" + bytes(20))
    'mp4'
    >>> sniff_container(b"hello world") is None
    True
    """
    if len(head) >= 12 and head[4:8] == b"ftyp":
        return "mp4-audio-or-image" if head[8:12] in _NON_VIDEO_BRANDS else "mp4"
    if len(head) >= 8 and head[4:8] in (b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot"):
        return "quicktime"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "matroska"
    if head.startswith(b"RIFF") and head[8:12] in (b"AVI ", b"AVIX"):
        return "avi"
    if head.startswith(b"FLV\x01"):
        return "flv"
    if head.startswith(b"\x30\x26\xb2\x75\x8e\x66\xcf\x11"):
        return "asf"
    if head.startswith(b"\x00\x00\x01\xba"):
        return "mpeg-ps"
    if head.startswith(b"\x00\x00\x01\xb3"):
        return "mpeg-video"
    if len(head) > 376 and head[0] == head[188] == head[376] == 0x47:
        return "mpeg-ts"
    if len(head) > 388 and head[4] == head[196] == head[388] == 0x47:
        return "mpeg-ts"  # M2TS: a 4-byte timestamp before each 188-byte packet
    if head.startswith(b"OggS"):
        return "ogg"
    if head.startswith(b".RMF"):
        return "realmedia"
    if head.startswith(b"\x06\x0e\x2b\x34"):
        return "mxf"
    if head.startswith(b"YUV4MPEG2"):
        return "y4m"
    if head.startswith(b"\x00\x00\x00\x01\x67") or head.startswith(b"\x00\x00\x01\x67"):
        return "h264-annexb"
    return None


# Sniffed without a video extension: only signatures that are (nearly) always video.
_SNIFF_ACCEPTS = {"mp4", "quicktime", "matroska", "avi", "flv", "asf", "mpeg-ps", "mpeg-ts", "mxf", "y4m"}


def _looks_like_text(head: bytes) -> bool:
    if not head or b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as error:
        # A multi-byte character cut at the end of the sample is still text.
        if error.start < len(head) - 4:
            return False
    return True


def classify_file(path: str, explicit: bool = False) -> Candidate | None:
    """Decide whether ``path`` is a video candidate; None means "not a video, ignore".

    ``explicit`` files (named on the command line) are always returned, with a
    ``problem`` when they are clearly not videos.
    """
    ext = os.path.splitext(path)[1].lower()
    if (ext in NOT_VIDEO_EXTENSIONS or ext in PROXY_EXTENSIONS) and not explicit:
        # Never a candidate whatever its bytes, so never opened: a phone's DCIM folder on a network drive holds
        # thousands of photos, each open a round trip on every run, and a FIFO or locked photo was "unreadable".
        return None
    with _open_regular(path) as f:
        st = os.fstat(f.fileno())
        head = f.read(_HEAD_BYTES) if st.st_size else b""
    mtime = storable_mtime(st.st_mtime_ns)
    by_extension = ext in VIDEO_EXTENSIONS
    if st.st_size == 0:
        if by_extension or explicit:
            return Candidate(path, 0, mtime, None, "empty file (0 bytes)")
        return None
    container = sniff_container(head)
    if container == "mp4-audio-or-image":
        problem = "not a video: MP4 container of audio or a still image (ftyp brand %r)" % head[8:12].decode("latin-1")
        return Candidate(path, st.st_size, mtime, None, problem) if by_extension or explicit else None
    if by_extension:
        problem = "not a video: the file holds text" if container is None and _looks_like_text(head) else None
        return Candidate(path, st.st_size, mtime, container, problem)
    if container in _SNIFF_ACCEPTS:
        return Candidate(path, st.st_size, mtime, container)  # the decoder has the last word
    if explicit:
        kind = "text" if _looks_like_text(head) else "unrecognised content"
        return Candidate(path, st.st_size, mtime, container, f"not a video: {kind} and no video extension")
    return None


def storable_mtime(mtime_ns: int) -> int:
    """A file's ``st_mtime_ns`` as a library stores and compares it: a signed 64-bit integer, as SQLite keeps.

    A time after 2262 (a camera with a wrong clock, ``touch -d 2300-01-01``; ext4 and XFS keep such times) does
    not fit and ended the run with a traceback, losing the files of its batch; it wraps around instead, which
    keeps two different times different.

    >>> storable_mtime(1_700_000_000_000_000_000), storable_mtime(2**63)
    (1700000000000000000, -9223372036854775808)
    """
    return (mtime_ns + 2**63) % 2**64 - 2**63


def named_video_problem(path: str) -> str | None:
    """Why a file a user named as a video (a query, a file to classify) cannot be one, with the fix; or None.

    >>> import tempfile, os; d = tempfile.mkdtemp(); p = os.path.join(d, "notes.json")
    >>> _ = open(p, "w").write('{"a": 1}')
    >>> named_video_problem(p)
    'not a video: text and no video extension; pass a video file'
    """
    try:
        problem = classify_file(path, explicit=True).problem
    except PermissionError:
        return "permission denied; make the file readable (chmod a+r) and run again"
    except NotRegularFile:
        return "not a regular file (a FIFO, socket or device); pass a video file"
    except OSError as error:
        return f"cannot be read ({error.strerror or error}); pass a readable video file"
    return None if problem is None else f"{problem}; pass a video file"


class NotRegularFile(OSError):
    """A FIFO, socket or device: reading it could block forever, so it is never opened for reading."""


def _open_regular(path: str):
    # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer, forever.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NotRegularFile(0, "not a regular file (a FIFO, socket or device); skipped", path)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _path_args(paths, action: str) -> list[str]:
    """``paths`` (one path or a list) as a list of str paths; VmmError for anything else."""
    from vmm.errors import VmmError

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


def discover(paths: list[str], *, exclude: list[str] = (), prefer: set[str] = frozenset(),
             utf8_only: bool = False) -> Discovery:
    """Walk ``paths`` (files or folders, recursively) and return video candidates.

    ``paths`` may also be one path. Raises :class:`vmm.errors.VmmError` for a path that
    does not exist or is no path (a number, bytes, ""). Folders
    listed in ``exclude`` (for example the library itself) are not entered. A file
    reached by several paths is returned once, under the one in ``prefer`` (the
    library's) if any, else the one without a symbolic link in it. ``utf8_only``
    (``build_library`` passes it) lists a file whose name is not valid UTF-8 in
    ``unreadable`` instead of returning it: a library's catalog stores names as UTF-8
    text, while a decoder opens any name (``vmm classify`` reads such a file).
    """
    from vmm.errors import VmmError

    excluded = {os.path.abspath(p) for p in exclude}
    excluded_ids = _folder_ids(excluded)
    found: dict[str, Candidate] = {}
    result = Discovery()
    # One str is one path: iterated, "/videos" was the paths "/", "v", ... and walked the whole file system.
    for given in _path_args(paths, "find"):
        root = os.path.abspath(given)
        check_root(given, root)
        if os.path.isfile(root):
            _add(found, result, root, explicit=True, utf8_only=utf8_only)
            continue
        if not os.path.isdir(root):
            raise VmmError(f"{given}: not a regular file or folder; pass video files or folders")

        def on_error(error: OSError) -> None:
            if not _vanished(error):
                result.unreadable.append((_printable(error.filename or root), error.strerror or str(error)))

        # Symbolic links to folders are followed: a phone's DCIM linked into ~/Videos was skipped without a word.
        walked = set()
        for folder, subfolders, files in os.walk(root, onerror=on_error, followlinks=True):
            walked |= _folder_ids([folder])
            subfolders[:] = sorted(
                d for d in subfolders if _walked_into(d) and os.path.join(folder, d) not in excluded
                and not _skipped_folder(os.path.join(folder, d), walked, excluded_ids)
            )
            for name in sorted(files):
                if not name.startswith("."):
                    path = os.path.join(folder, name)
                    if name.lower().endswith(PARTIAL_DOWNLOAD_SUFFIXES):
                        result.rejected.add(path)  # not read: it is being written
                    else:
                        _add(found, result, path, explicit=False, utf8_only=utf8_only)
    result.candidates, result.duplicates = _one_path_per_file(found, prefer)
    return result


def _walked_into(name: str) -> bool:
    lower = name.lower()
    return not (name.startswith(".") or lower in SYSTEM_FOLDERS or lower.endswith(PARTIAL_DOWNLOAD_SUFFIXES))


def _skipped_folder(path: str, walked: set[tuple[int, int]], excluded: set[tuple[int, int]]) -> bool:
    """The library (under any path: its folder reached through a link was walked, its files read), or a symbolic
    link to a folder already walked (a parent: following it would loop)."""
    ids = _folder_ids([path])
    return bool(ids & excluded) or (os.path.islink(path) and bool(ids & walked))


def _vanished(error: OSError) -> bool:
    """A file or folder deleted since its folder was listed: gone, not unreadable (a broken link still exists)."""
    return isinstance(error, FileNotFoundError) and bool(error.filename) and not os.path.lexists(error.filename)


def _folder_ids(folders) -> set[tuple[int, int]]:
    ids = set()
    for folder in folders:
        try:
            st = os.stat(folder)
        except OSError:
            continue
        ids.add((st.st_dev, st.st_ino))
    return ids


def _one_path_per_file(found: dict[str, Candidate],
                       prefer: set[str]) -> tuple[list[Candidate], list[tuple[str, str]]]:
    """Candidates in path order, each file once, and the (path, kept path) pairs left out.

    A folder given beside a symbolic link to it (or a hard link) reaches one file by two paths, and indexing both
    would return every match of it twice. The path the library already has is kept, so a new link never moves a
    file; among new paths, one without symbolic links in it."""
    kept: dict[tuple[int, int], str] = {}
    candidates, duplicates = [], []
    for path in sorted(found, key=lambda p: (p not in prefer, os.path.realpath(p) != p, p)):
        try:
            st = os.stat(path)
        except OSError:
            candidates.append(found[path])  # fingerprinting reports it
            continue
        identity = (st.st_dev, st.st_ino)
        if identity in kept:
            duplicates.append((path, kept[identity]))
        else:
            kept[identity] = path
            candidates.append(found[path])
    return sorted(candidates, key=lambda c: c.path), sorted(duplicates)


def _printable(path: str) -> str:
    # Escaped, not replaced by U+FFFD: "caf\xe9.mp4" tells which byte to fix, and bash's $'caf\xe9.mp4' names the file.
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def check_root(given, root: str) -> None:
    """Raise VmmError unless ``root`` (the absolute form of the user's ``given`` path) can be looked at."""
    from vmm.errors import VmmError

    try:
        os.stat(root)
    except FileNotFoundError:
        if os.path.islink(root):
            raise VmmError(f"{given}: broken symbolic link (its target is missing); fix the link or drop the path")
        raise VmmError(f"{given}: no such file or folder; check the path") from None
    except OSError as error:
        raise VmmError(f"{given}: cannot be read ({error.strerror}); check its permissions") from None


def _add(found: dict[str, Candidate], result: Discovery, path: str, explicit: bool, utf8_only: bool) -> None:
    if path in found:
        return
    if utf8_only and not _utf8(path):
        result.unreadable.append((_printable(path), "file name is not valid UTF-8, which a library cannot store; "
                                                    "rename the file (convmv renames a whole folder)"))
        return
    try:
        candidate = classify_file(path, explicit=explicit)
    except FileNotFoundError as error:
        if _vanished(error):
            return  # deleted by another program during the walk: the plan finds it gone
        reason = "broken symbolic link (its target is missing)" if os.path.islink(path) else error.strerror
        result.unreadable.append((path, reason or str(error)))
        return
    except OSError as error:
        result.unreadable.append((path, error.strerror or str(error)))
        return
    if candidate is None:
        result.rejected.add(path)
    else:
        found[path] = candidate


def _utf8(path: str) -> bool:
    try:
        path.encode("utf-8")  # undecodable bytes in the name are lone surrogates here
    except UnicodeEncodeError:
        return False
    return True


def fingerprint_file(path: str) -> str:
    """Content fingerprint: blake2b-128 of the size and the first, middle and last MiB.

    Files up to 3 MiB are hashed whole. Renames keep the fingerprint; any edit that
    changes the size or those bytes changes it.

    >>> import tempfile
    >>> with tempfile.NamedTemporaryFile(delete=False) as f:
    ...     _ = f.write(b"abc")
    >>> len(fingerprint_file(f.name))
    32
    """
    digest = hashlib.blake2b(digest_size=16)
    with _open_regular(path) as f:
        size = os.fstat(f.fileno()).st_size
        digest.update(size.to_bytes(8, "little"))
        if size <= 3 * _CHUNK:
            digest.update(f.read())
        else:
            for offset in (0, size // 2 - _CHUNK // 2, size - _CHUNK):
                f.seek(offset)
                digest.update(f.read(_CHUNK))
    return digest.hexdigest()
