"""Training data: corpora, frame sampling and decoding, the seeded epoch plan, batches.

A corpus is an official annotation list (``[{"video" | "image": path, "caption": str | [str]}]`` with a media
root) or webdataset-style tar shards (``key.mp4``/``key.jpg`` next to ``key.txt``/``key.json``, read with the
standard ``tarfile`` module and indexed once so any sample can be read by offset). Several corpora mix with
weights. All randomness of a sample (its caption, frames, crop, flip, and the replacement drawn for a corrupt
file) comes from ``(seed, epoch, corpus, unit, attempt)``, not from worker state, so a resumed run sees the
same pixels as an uninterrupted one. Corpora of one kind are shuffled together, as the official loader
concatenates them; a batch never mixes images and videos, and all processes draw the same kind at the same
step, so gathered features always have equal shapes.
"""
from __future__ import annotations

import bisect
import contextlib
import functools
import glob
import hashlib
import io
import json
import os
import random
import re
import signal
import tarfile
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from vmm.data.text import has_words
from vmm.errors import VmmError

VIDEO_EXTS = ("mp4", "avi", "mkv", "webm", "mov", "m4v")
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp")
CAPTION_EXTS = ("txt", "json")


# -- corpora ---------------------------------------------------------------------------------------------
@dataclass
class TarMember:
    shard: int
    offset: int
    size: int


@dataclass
class Corpus:
    """One source's samples: media references and their caption lists (all one kind)."""

    name: str
    kind: str  # "video" | "image"
    captions: list  # per item: list of str
    paths: list = field(default_factory=list)  # annotation corpora: media path per item
    root: Path = Path(".")
    shards: list = field(default_factory=list)  # tar corpora: shard paths ...
    members: list = field(default_factory=list)  # ... and the media member of each item
    weight: float = 1.0
    groups: Optional[list] = None  # per item: a group id (items of a group share batches) or None
    missing_note: Optional[str] = None  # start-up warning: missing media data.max_missing allowed, skipped tar keys
    # Per item, the first item of the list naming the same media file; None when every item names its own.
    first_of_media: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return len(self.captions)

    def media_item(self, item: int) -> int:
        """The item whose index identifies ``item``'s media file (itself unless the list names the file before)."""
        return item if self.first_of_media is None else int(self.first_of_media[item])

    def describe(self, item: int) -> str:
        if self.shards:
            m = self.members[item]
            return f"{self.shards[m.shard]}@{m.offset}"
        return str(self.root / self.paths[item])

    def media_source(self, item: int):
        """A path for decoders, or a file object over a tar member's bytes."""
        if not self.shards:
            # Absolute: ffmpeg takes a relative "12:30 clip.mp4" (a list in the current folder) for a URL whose
            # protocol is "12", and every draw of the file failed.
            return str((self.root / self.paths[item]).absolute())
        m = self.members[item]
        with open(self.shards[m.shard], "rb") as f:
            f.seek(m.offset)
            data = f.read(m.size)
        if len(data) != m.size:
            raise OSError(f"tar member truncated ({len(data)} of {m.size} bytes)")
        return io.BytesIO(data)


def _caption_list(value: Any) -> Optional[list]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(c, str) for c in value):
        return list(value)
    return None


def load_annotation_corpus(anno: str, root: str, weight: float = 1.0, name: Optional[str] = None,
                           where: str = "data.train[0]", group_key: Optional[str] = None,
                           max_missing: float = 0.0) -> Corpus:
    """Read one official annotation list; every entry is checked, and so is its media file (a seeded sample of them
    past 200,000 entries, see :func:`check_media`).

    >>> import json, tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp()); (d / "a.mp4").write_bytes(b"x")
    1
    >>> _ = (d / "anno.json").write_text(json.dumps([{"video": "a.mp4", "caption": ["one", "two"]}]))
    >>> c = load_annotation_corpus(str(d / "anno.json"), str(d)); (c.kind, c.captions)
    ('video', [['one', 'two']])
    """
    path = Path(anno)
    if not path.is_file():
        raise VmmError(f"{where}.anno: annotation file {path} not found; check the path or generate the data")
    try:
        # utf-8-sig: Notepad and PowerShell start a file with a byte-order mark, which json refuses.
        entries = json.loads(path.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError as e:
        raise VmmError(f"{where}.anno: {path} is not UTF-8 text ({e}); save it as UTF-8") from None
    except ValueError as e:
        raise VmmError(f"{where}.anno: {path} is not valid JSON ({e})") from None
    if not isinstance(entries, list):
        raise VmmError(f"{where}.anno: {path} must hold a JSON list of {{\"video\"|\"image\", \"caption\"}} entries")
    if not entries:
        raise VmmError(f"{where}.anno: {path} is empty (no samples); point it at a non-empty annotation list")
    kinds, paths, captions = set(), [], []
    for i, entry in enumerate(entries):
        kind = "video" if isinstance(entry, dict) and "video" in entry else "image"
        media = entry.get(kind) if isinstance(entry, dict) else None
        caps = _caption_list(entry.get("caption")) if isinstance(entry, dict) else None
        if not isinstance(media, str) or caps is None:
            raise VmmError(f"{where}.anno: entry {i} of {path} needs a \"video\" or \"image\" path and a "
                           f"\"caption\" string or list of strings")
        blank = next((c for c in caps if not has_words(c)), None)
        if blank is not None:
            # A blank caption tokenizes to [CLS] [SEP]: every such sample gets the same text embedding, and VTC
            # would push apart clips whose captions it cannot tell apart.
            raise VmmError(f"{where}.anno: entry {i} of {path} ({media}) has an empty caption ({blank!r}, once "
                           f"cleaned); write one or remove the entry")
        kinds.add(kind)
        paths.append(media)
        captions.append(caps)
    if len(kinds) > 1:
        raise VmmError(f"{where}.anno: {path} mixes \"video\" and \"image\" entries; split it into one file per kind")
    media_root = Path(root) if root else path.parent
    if not media_root.is_dir():
        raise VmmError(f"{where}.root: media folder {media_root} not found")
    missing_note = check_media(paths, media_root, path, where, max_missing)
    groups = None
    if group_key is not None:
        groups = [entry.get(group_key) for entry in entries]
        if all(g is None for g in groups):
            raise VmmError(f"{where}.group_key: no entry of {path} has the key {group_key!r}; remove group_key or "
                           f"fix its name")
        odd = next((i for i, g in enumerate(groups) if isinstance(g, (list, dict))), None)
        if odd is not None:  # the epoch plan keys groups by their id, and a JSON list or object is unhashable
            raise VmmError(f"{where}.group_key: entry {odd} of {path} has {group_key}={json.dumps(groups[odd])}; "
                           f"a group id must be a string or a number")
    return Corpus(name=name or path.stem, kind=kinds.pop(), captions=captions, paths=paths, root=media_root,
                  weight=weight, groups=groups, missing_note=missing_note, first_of_media=first_of_media(paths))


def first_of_media(paths: Sequence[str]) -> Optional[np.ndarray]:
    """Per entry, the index of the first entry naming the same file; None when no file is named twice.

    A list with one entry per caption (MSR-VTT's, a user's) names a video once per caption. Their sample ids must
    be one, as the official retrieval training's ``match_ids`` make them: else VTC pushes the video away from its
    own other captions, and VTM draws them as its hardest negatives and trains the ITM head to call them no match.

    >>> first_of_media(["a.mp4", "b.mp4", "a.mp4"]).tolist(), first_of_media(["a.mp4", "b.mp4"])
    ([0, 1, 0], None)
    """
    if len(set(paths)) == len(paths):  # the usual case, and the cheap test (a second for 10M entries)
        return None
    first: dict[str, int] = {}
    return np.fromiter((first.setdefault(p, i) for i, p in enumerate(paths)), dtype=np.int64, count=len(paths))


# Up to this many entries every media file is stat-ed (about a second on a local disk); a bigger corpus checks a
# seeded random sample, so start-up stays fast on network file systems too.
FULL_MEDIA_CHECK = 200_000
MEDIA_SAMPLE = 5_000


def check_media(paths: Sequence[str], media_root: Path, anno: Path, where: str, max_missing: float) -> Optional[str]:
    """Refuse a corpus with more than ``max_missing`` of its listed media files missing; a warning line if fewer.

    A missing file would only surface at run time, replaced by another sample like a corrupt one: a wrong root or
    a half-copied corpus would train on a fraction of the data without a word.
    """
    full = len(paths) <= FULL_MEDIA_CHECK
    checked = range(len(paths)) if full else sorted(random.Random(0).sample(range(len(paths)), MEDIA_SAMPLE))
    root = str(media_root)
    exists: dict[str, bool] = {}
    missing = []
    for i in checked:
        if paths[i] not in exists:
            exists[paths[i]] = os.path.isfile(os.path.join(root, paths[i]))
        if not exists[paths[i]]:
            missing.append(i)
    if not missing:
        return None
    counted = (f"{len(missing)} of {len(checked)} media files" if full
               else f"{len(missing)} of {len(checked)} media files sampled from the {len(paths)} entries")
    found = f"{counted} listed in {anno} are missing under {media_root} (e.g. {os.path.join(root, paths[missing[0]])})"
    if len(missing) == len(checked):  # no fraction can help: the root or the paths are wrong
        posix = paths[missing[0]].replace("\\", "/")
        if os.sep == "/" and posix != paths[missing[0]] and os.path.isfile(os.path.join(root, posix)):
            # A list written on Windows (json.dump of str(path)): "\\" is a character of a file name here.
            raise VmmError(f"{where}: {found}; its paths are separated with \\ (Windows), which names no folder "
                           f"here: write them with / (e.g. {posix})")
        raise VmmError(f"{where}: {found}; fix {where}.root or the paths in the annotation file")
    if len(missing) / len(checked) > max_missing:
        allowed = f" (now {max_missing})" if max_missing else ""
        raise VmmError(f"{where}: {found}; fix {where}.root or the annotation file, or allow a small fraction with "
                       f"data.max_missing{allowed} (missing files are then replaced by other samples)")
    return f"warning: {where}: {found}; they are replaced by other samples (data.max_missing={max_missing})"


def expand_shards(spec: Any, where: str = "data.train[0]") -> list[Path]:
    """Shard paths from a path, a glob, ``name-{000..009}.tar`` ranges, or a list of those.

    >>> [p.name for p in expand_shards("/nonexistent-{0..1}.tar", where="x")]  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    vmm.errors.VmmError: x.shards: /nonexistent-0.tar not found
    """
    specs = spec if isinstance(spec, list) else [spec]
    out: list[Path] = []
    for s in specs:
        s = str(s)
        m = re.search(r"\{(\d+)\.\.(\d+)\}", s)
        names = ([s[:m.start()] + str(i).zfill(len(m.group(1))) + s[m.end():]
                  for i in range(int(m.group(1)), int(m.group(2)) + 1)] if m else [s])
        for name in names:
            if any(c in name for c in "*?["):
                found = sorted(glob.glob(name))
                if not found:
                    raise VmmError(f"{where}.shards: pattern {name} matches no file")
                out += [Path(f) for f in found]
            elif not Path(name).is_file():
                raise VmmError(f"{where}.shards: {name} not found")
            else:
                out.append(Path(name))
    return out


def _parse_caption_member(ext: str, data: bytes) -> Optional[list]:
    """The captions of a .txt or .json member with words once cleaned; None if there are none (the sample is
    skipped, as a blank caption would train every such sample on the same text)."""
    # utf-8-sig: a member written by Notepad or PowerShell starts with a byte-order mark, which json refuses.
    text = data.decode("utf-8-sig", errors="replace")
    if ext == "txt":
        caps = [text.strip()]
    else:
        try:
            obj = json.loads(text)
        except ValueError:
            return None
        caps = _caption_list(obj.get("caption") if isinstance(obj, dict) else obj) or []
    return [c for c in caps if has_words(c)] or None


def load_tar_corpus(spec: Any, weight: float = 1.0, name: Optional[str] = None,
                    where: str = "data.train[0]") -> Corpus:
    """Index tar shards: one sample per key with a media member and a caption member (.txt or .json).

    A key with only one of the two, or whose captions are all blank, is skipped and counted in the corpus's
    start-up warning (``missing_note``).
    """
    shards = expand_shards(spec, where)
    kinds, captions, members = set(), [], []
    skipped, keys, example = 0, 0, None
    for shard_id, shard in enumerate(shards):
        groups: dict[str, dict[str, tarfile.TarInfo]] = {}
        try:
            with tarfile.open(shard, "r:") as tar:  # uncompressed only: members are read by offset
                for info in tar:
                    if not info.isfile():
                        continue
                    base = info.name.rsplit("/", 1)[-1]
                    stem, dot, ext = base.partition(".")
                    if not dot:
                        continue
                    key = info.name[: len(info.name) - len(base)] + stem  # webdataset key: path to first dot
                    groups.setdefault(key, {})[ext.lower()] = info
                caption_of = {}
                for key, group in groups.items():
                    cap = next((e for e in CAPTION_EXTS if e in group), None)
                    if cap is not None:
                        f = tar.extractfile(group[cap])
                        caption_of[key] = _parse_caption_member(cap, f.read() if f else b"")
        except (tarfile.TarError, OSError) as e:
            raise VmmError(f"{where}.shards: {shard} is not a readable uncompressed tar file ({e})") from None
        for key, group in groups.items():
            media_ext = next((e for e in VIDEO_EXTS + IMAGE_EXTS if e in group), None)
            if media_ext is None and key not in caption_of:
                continue  # other files of the shard, no sample
            keys += 1
            caps = caption_of.get(key)
            if media_ext is None or not caps:
                skipped += 1
                example = example or f"{shard}:{key}"
                continue
            kinds.add("video" if media_ext in VIDEO_EXTS else "image")
            info = group[media_ext]
            members.append(TarMember(shard_id, info.offset_data, info.size))
            captions.append(caps)
    if not members:
        raise VmmError(f"{where}.shards: {len(shards)} shard(s) hold no samples (need key.mp4|key.jpg + "
                       f"key.txt|key.json members, the caption with words)")
    if len(kinds) > 1:
        raise VmmError(f"{where}.shards: shards mix videos and images; use one source per kind")
    note = (f"warning: {where}: {skipped} of {keys} samples in the shards are skipped: no media member, or no "
            f"caption with words in key.txt|key.json (e.g. {example})" if skipped else None)
    return Corpus(name=name or shards[0].stem, kind=kinds.pop(), captions=captions, shards=[str(s) for s in shards],
                  members=members, weight=weight, missing_note=note)


def load_corpora(sources: Sequence, max_missing: float = 0.0) -> list[Corpus]:
    """Every ``data.train`` entry as a checked :class:`Corpus` (one-line errors for missing/empty data)."""
    corpora = []
    for i, src in enumerate(sources):
        where = f"data.train[{i}]"
        if src.anno is not None:
            corpora.append(load_annotation_corpus(src.anno, src.root, src.weight, src.name, where,
                                                  getattr(src, "group_key", None), max_missing))
        else:
            if getattr(src, "group_key", None) is not None:
                raise VmmError(f"{where}.group_key works with annotation lists ('anno'), not tar shards")
            corpora.append(load_tar_corpus(src.shards, src.weight, src.name, where))
    videos = [i for i, corpus in enumerate(corpora) if corpus.kind == "video"]
    if videos:
        try:
            import decord  # noqa: F401
        except ImportError as e:  # else every sample fails and the run stops on "corrupt samples in a row"
            raise VmmError(f"data.train[{videos[0]}] holds videos, which training decodes with decord, but it cannot "
                           f"be imported ({e}); install it (pip install decord)") from None
    return corpora


# -- frames ----------------------------------------------------------------------------------------------
def rand_segment_indices(vlen: int, num_frames: int, rng: random.Random) -> list[int]:
    """Official 'rand' sampling: one random frame from each of N equal segments of [0, vlen).

    Segments come from ``linspace(0, vlen, N + 1)`` cast to int, and the draw from segment [s, e) is taken in
    [s, e - 1), as the official ``get_frame_indices`` does (its ranges end one frame early, so a segment's last
    frame is never drawn). When some segment is too short for that (videos under about 2N frames), the official
    code falls back to N distinct frames drawn from the whole video, sorted; so does this. A video shorter than
    N frames repeats its last index.

    >>> rand_segment_indices(80, 8, random.Random(0))
    [6, 16, 20, 34, 48, 57, 66, 74]
    >>> rand_segment_indices(12, 8, random.Random(0))  # segments of one frame: distinct sorted frames instead
    [0, 2, 3, 4, 6, 7, 10, 11]
    """
    n = min(num_frames, vlen)
    edges = np.linspace(0, vlen, n + 1).astype(int)
    if all(edges[i + 1] - 1 > edges[i] for i in range(n)):
        idx = [rng.randrange(int(edges[i]), int(edges[i + 1]) - 1) for i in range(n)]
    else:
        idx = sorted(rng.sample(range(vlen), n))
    return idx + [idx[-1]] * (num_frames - n)


def read_video_frames(source, num_frames: int, rng: random.Random) -> np.ndarray:
    """Decode N 'rand'-sampled frames -> (N, H, W, 3) uint8: with decord, as the official loader does, except a
    file whose frames decord cannot fetch accurately or turn upright (see :func:`_pyav_reading`) or that it cannot
    open (an animated GIF), which PyAV decodes."""
    import decord
    if isinstance(source, str) and not os.path.exists(source):
        # decord would print its own C++ "ERROR opening" line to stderr before raising, once per draw of a file
        # that data.max_missing let through. (exists, not isfile: a path that is there goes to the decoder as
        # before, whatever it is.)
        raise FileNotFoundError("no such file")
    if isinstance(source, str):
        from index.decode import _ffmpeg_path
        source = _ffmpeg_path(source)  # a bare "12:30 clip.mp4" is a file, not an FFmpeg protocol
    if isinstance(source, str) and (orientation := _pyav_reading(source)) is not None:
        return _read_frames_in_order(source, num_frames, rng, *orientation)
    try:
        reader = decord.VideoReader(source, num_threads=1, ctx=decord.cpu(0))
    except decord.DECORDError:
        # decord 0.6 opens no animated GIF ("broken meta"), which PyAV reads (a damaged file fails there too).
        with _as_path(source) as path:
            return _read_frames_in_order(path, num_frames, rng)
    vlen = len(reader)
    if vlen < 1:
        raise ValueError("video has no frames")
    draw = rng.getstate()
    try:
        frames = reader.get_batch(rand_segment_indices(vlen, num_frames, rng)).asnumpy()
    except decord.DECORDError:
        # decord 0.6 fails to copy out frames of some widths (48 and 72 px: "from_size == to_size"), which PyAV
        # reads; the same draw, so the run does not depend on which decoder read the file. A damaged file fails
        # there too and is skipped as corrupt.
        rng.setstate(draw)
        with _as_path(source) as path:
            return _read_frames_in_order(path, num_frames, rng)
    if frames.ndim != 4 or frames.shape[0] != num_frames or frames.shape[-1] != 3:
        raise ValueError(f"decoder returned frames of shape {frames.shape}")
    return frames


@contextlib.contextmanager
def _as_path(source):
    """A path to the media: the source itself, or a temporary copy of a tar member's bytes (PyAV opens its input
    twice, and a file object can be read only once)."""
    if isinstance(source, str):
        yield source
        return
    with tempfile.NamedTemporaryFile(prefix="vmm-member-") as f:
        f.write(source.getvalue())
        f.flush()
        yield f.name


def _pyav_reading(path: str) -> Optional[tuple[int, bool]]:
    """None when decord reads this file as it is; else the (rotation, mirrored) with which PyAV reads it: a file
    from which decord returns other frames than asked for, with no error (MPEG program and transport streams, open
    GOPs, B-frames in AVI, MP4 edit lists: index.decode's check, about 1.5-5 ms), or a phone video's display matrix,
    which decord applied in MP4 and MOV, not in Matroska, and not where it failed (64x48) and PyAV took over: the
    same portrait video came out upright or sideways by its container and size. The answer (one open, a first frame
    decoded without its pixels, decord's seek check: about 3 ms at 640x360, 15-25 ms at 1920x1080, 2% of reading 8
    frames) is remembered per file version and process: for a worker's later draws of the file, and for later
    epochs only with num_workers=0, as make_loader's workers are new each epoch: it is paid for nearly every sample."""
    st = os.stat(path)
    return _pyav_reading_version(path, st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=65536)
def _pyav_reading_version(path: str, size: int, mtime_ns: int) -> Optional[tuple[int, bool]]:
    from index.decode import _orientation_and_seek_problem
    orientation, seek_problem = _orientation_and_seek_problem(path)
    return orientation if orientation != (0, False) or seek_problem is not None else None


def _read_frames_in_order(path: str, num_frames: int, rng: random.Random, rotation: int = 0,
                          mirrored: bool = False) -> np.ndarray:
    """The same draw as :func:`read_video_frames`, decoded by PyAV, which finds each frame by its timestamp (exact,
    where decord's seeking is not for these files), turned by ``rotation`` and ``mirrored`` (the display matrix)."""
    from index.decode import ClipSpan, _PyAVReader
    reader = _PyAVReader(path, threads=1, rotation=rotation, mirrored=mirrored)
    if reader.num_frames < 1:
        raise ValueError("video has no frames")
    indices = tuple(rand_segment_indices(reader.num_frames, num_frames, rng))
    (frames,) = reader.read([ClipSpan(0, 0.0, 0.0, indices)], frame_bytes=0)
    return frames


def read_image(source) -> np.ndarray:
    """An image as one frame, (1, H, W, 3) uint8."""
    from PIL import Image
    with Image.open(source) as img:
        return np.array(img.convert("RGB"))[None]


def unit_groups(corpora: Sequence[Corpus], caption_sampling: str) -> list[Optional[list]]:
    """Per corpus, the group id of every unit (None for a corpus without groups); see :class:`EpochPlan`."""
    out = []
    for c in corpora:
        if c.groups is None:
            out.append(None)
        elif caption_sampling == "all":
            out.append([g for g, caps in zip(c.groups, c.captions) for _ in caps])
        else:
            out.append(list(c.groups))
    return out


def units_per_corpus(corpora: Sequence[Corpus], caption_sampling: str) -> list[int]:
    """Samples per corpus and epoch at weight 1: items, or captions with ``caption_sampling="all"``."""
    if caption_sampling == "all":
        return [sum(len(caps) for caps in c.captions) for c in corpora]
    return [len(c) for c in corpora]


# -- dataset ---------------------------------------------------------------------------------------------
class PretrainDataset(Dataset):
    """Map-style dataset indexed by ``(epoch, corpus, unit)`` keys from :class:`EpochPlan`.

    A unit is an item (``caption_sampling="random"``) or one (item, caption) pair (``"all"``); unit
    ``u + r * units`` is repeat r of unit u (a corpus weighted above 1), with draws of its own. The sample id
    used for multi-positive contrastive targets is the item's index over all corpora, so captions (and repeats)
    of the same video share it, and so do entries of one list naming the same file (:func:`first_of_media`).
    """

    def __init__(self, corpora: list[Corpus], num_frames: int, transform, seed: int,
                 caption_sampling: str = "random", max_retries: int = 20):
        self.corpora = corpora
        self.num_frames = num_frames
        self.transform = transform
        self.seed = seed
        self.caption_sampling = caption_sampling
        self.max_retries = max_retries
        self.item_offset = np.cumsum([0] + [len(c) for c in corpora]).tolist()
        # With "all", unit u of a corpus is caption (u - cum[item]) of item = bisect(cum, u) - 1.
        self.caption_cum = [np.cumsum([0] + [len(caps) for caps in c.captions]).tolist()
                            if caption_sampling == "all" else None for c in corpora]
        self.units = units_per_corpus(corpora, caption_sampling)  # (a sum over every caption with "all")

    def num_units(self, corpus: int) -> int:
        return self.units[corpus]

    def _unit(self, corpus: int, unit: int, rng: random.Random) -> tuple[int, str]:
        caps = self.caption_cum[corpus]
        if caps is None:
            return unit, rng.choice(self.corpora[corpus].captions[unit])
        item = bisect.bisect_right(caps, unit) - 1
        return item, self.corpora[corpus].captions[item][unit - caps[item]]

    def __getitem__(self, key: tuple[int, int, int]) -> dict:
        epoch, corpus_id, unit = key
        corpus = self.corpora[corpus_id]
        failed = []
        for attempt in range(self.max_retries + 1):
            rng = random.Random(f"{self.seed}/{epoch}/{corpus_id}/{unit}/{attempt}")
            item, caption = self._unit(corpus_id, unit % self.units[corpus_id], rng)
            try:
                source = corpus.media_source(item)
                frames = (read_image(source) if corpus.kind == "image"
                          else read_video_frames(source, self.num_frames, rng))
                pixels = self.transform(frames, rng)
            except Exception as e:  # any decoder failure: count it and draw a replacement
                failed.append(f"{corpus.describe(item)} ({type(e).__name__}: {str(e).splitlines()[0][:80] if str(e) else ''})")
                unit = rng.randrange(self.num_units(corpus_id))
                continue
            return {"video": pixels, "caption": caption, "kind": corpus.kind, "failed": failed,
                    "sample_id": self.item_offset[corpus_id] + corpus.media_item(item)}
        raise VmmError(f"{self.max_retries + 1} corrupt samples in a row in corpus {corpus.name} "
                       f"(last: {failed[-1]}); check the data (data.max_retries raises the limit)")

    def __len__(self) -> int:  # only for DataLoader bookkeeping; sampling goes through EpochPlan
        return sum(self.num_units(i) for i in range(len(self.corpora)))


# -- epoch plan ------------------------------------------------------------------------------------------
class EpochPlan:
    """The seeded batch schedule shared by all processes.

    Per epoch each corpus contributes ``round(weight * units)`` units (a fresh permutation, repeated when
    weight > 1; repeat r of unit u is numbered ``u + r * units``). Corpora of one pool (one media kind in
    training, see :func:`training_plan`) are shuffled together, as the official loader concatenates the datasets
    of a media type, and cut into global batches of ``batch_size * world`` (an incomplete tail is dropped, a
    fresh one each epoch; the official DistributedSampler instead pads a corpus with up to ``world - 1`` repeated
    samples before each process drops its incomplete batch, so it can run one more step with those repeats);
    global batches of all pools are shuffled together (the official MetaLoader order) and the count is cut to a
    multiple of ``grad_accum``. Process r takes slice r of every global batch. Without ``pools`` every corpus is a
    pool of its own.
    """

    def __init__(self, units_per_corpus: Sequence[int], weights: Sequence[float], batch_size: int, world: int,
                 seed: int, grad_accum: int = 1, unit_groups: Optional[Sequence[Optional[list]]] = None,
                 pools: Optional[Sequence[Any]] = None):
        self.units = list(units_per_corpus)
        # Per corpus, None or the group id of every unit: a group's units are kept next to each other in the
        # shuffled order, so they fall into one global batch (unless the group straddles a batch boundary).
        self.unit_groups = list(unit_groups) if unit_groups is not None else [None] * len(self.units)
        self.weights = list(weights)
        self.pools = list(pools) if pools is not None else list(range(len(self.units)))
        self._codes: dict[int, np.ndarray] = {}
        self._digest: tuple = (None, "")  # (epoch, digest) of the last digest() asked for
        self.batch_size, self.world, self.seed, self.grad_accum = batch_size, world, seed, grad_accum
        self.global_batch = batch_size * world
        self.counts = [max(0, int(round(w * n))) for n, w in zip(self.units, self.weights)]  # units per epoch
        per_pool = [sum(self.counts[c] for c in members) // self.global_batch for members in self._pool_members()]
        self.batches_per_epoch = sum(per_pool) // grad_accum * grad_accum
        if self.batches_per_epoch == 0:
            raise VmmError(f"the training data gives {sum(self.counts)} samples per epoch, fewer than "
                           f"{self.global_batch * grad_accum} for one optimizer step (data.batch_size="
                           f"{batch_size} x {world} processes x train.grad_accum={grad_accum}); lower "
                           f"data.batch_size or add data")

    @property
    def steps_per_epoch(self) -> int:
        return self.batches_per_epoch // self.grad_accum

    def _pool_members(self) -> list[list[int]]:
        """Corpus indices of each pool, pools in order of first appearance."""
        members: dict = {}
        for c, pool in enumerate(self.pools):
            members.setdefault(pool, []).append(c)
        return list(members.values())

    def _plan_arrays(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(corpus, unit) of every slot of the epoch's global batches, each (batches, global_batch), shuffled.

        Arrays rather than tuples: a 25M-sample epoch is built by every process, which then keeps only its slice.
        """
        corpus_rows, unit_rows = [], []
        for members in self._pool_members():
            cs, us = [], []
            for c in members:
                n, count = self.units[c], self.counts[c]
                if count <= 0:
                    continue
                rng = np.random.default_rng([self.seed, epoch, c])
                # Repeat r (weight > 1) holds units u + r * n: a key of its own, so the dataset draws that copy's
                # caption, frames, crop and flip afresh instead of decoding the first copy's pixels again.
                order = np.concatenate([self._permutation(c, n, rng) + r * n
                                        for r in range(-(-count // n))])[:count]
                cs.append(np.full(count, c, dtype=np.int64))
                us.append(order)
            if not us:
                continue
            c_all, u_all = np.concatenate(cs), np.concatenate(us)
            if len(members) > 1:  # a pool of one keeps its corpus order, so single-corpus plans are unchanged
                # Blocks stay together when pooled: a run of one group of one corpus, else a single unit.
                mixer = np.random.default_rng([self.seed, epoch, 1 << 21, members[0]])
                if all(self._group_codes(c) is None for c in members):
                    index = mixer.permutation(len(u_all))  # every block one unit: the same draw, less memory
                else:
                    code = np.concatenate([self._unit_codes(int(c[0]), u) for c, u in zip(cs, us)])
                    new = np.ones(len(u_all), dtype=bool)
                    new[1:] = (code[1:] < 0) | (code[1:] != code[:-1]) | (c_all[1:] != c_all[:-1])
                    starts = np.flatnonzero(new)
                    lengths = np.diff(np.append(starts, len(u_all)))
                    mix = mixer.permutation(len(starts))
                    take = lengths[mix]
                    index = np.arange(len(u_all)) + np.repeat(starts[mix] - (np.cumsum(take) - take), take)
                c_all, u_all = c_all[index], u_all[index]
            full = len(u_all) // self.global_batch * self.global_batch
            corpus_rows.append(c_all[:full].reshape(-1, self.global_batch))
            unit_rows.append(u_all[:full].reshape(-1, self.global_batch))
        if not corpus_rows:
            empty = np.zeros((0, self.global_batch), dtype=np.int64)
            return empty, empty
        corpora, units = np.concatenate(corpus_rows), np.concatenate(unit_rows)
        shuffle = np.random.default_rng([self.seed, epoch, 1 << 20]).permutation(len(units))[: self.batches_per_epoch]
        return corpora[shuffle], units[shuffle]

    def digest(self, epoch: int) -> str:
        """A fingerprint of the epoch's global batches: a mid-epoch resume skips the micro-batches the checkpoint
        consumed, which are those batches only if the plan is the same (another ``train.seed``, corpus order or
        group_key draws other batches of the same count: samples of the epoch are then trained twice or never).

        >>> EpochPlan([19], [1.0], 4, 1, seed=0).digest(0) == EpochPlan([19], [1.0], 2, 2, seed=0).digest(0)
        True
        >>> EpochPlan([19], [1.0], 4, 1, seed=0).digest(0) == EpochPlan([19], [1.0], 4, 1, seed=5).digest(0)
        False
        """
        if self._digest[0] != epoch:  # (a run saves several checkpoints per epoch of a large corpus)
            digest = hashlib.sha256()
            for array in self._plan_arrays(epoch):  # (no copy: a 25M-sample epoch is 400 MB of them)
                digest.update(np.ascontiguousarray(array, dtype="<i8"))
            self._digest = (epoch, digest.hexdigest()[:16])
        return self._digest[1]

    def global_batches(self, epoch: int) -> list[list[tuple[int, int, int]]]:
        return self._keys(epoch, slice(None))

    def rank_batches(self, epoch: int, rank: int) -> list[list[tuple[int, int, int]]]:
        return self._keys(epoch, slice(rank * self.batch_size, (rank + 1) * self.batch_size))

    def _keys(self, epoch: int, columns: slice) -> list[list[tuple[int, int, int]]]:
        """The dataset keys (epoch, corpus, unit) of those columns of every global batch."""
        corpora, units = self._plan_arrays(epoch)
        return [list(zip([epoch] * len(u), c, u))
                for c, u in zip(corpora[:, columns].tolist(), units[:, columns].tolist())]

    def _unit_codes(self, corpus: int, order: np.ndarray) -> np.ndarray:
        """The group code of each unit in ``order`` (-1 for none)."""
        code = self._group_codes(corpus)
        return np.full(len(order), -1, dtype=np.int64) if code is None else code[order % len(code)]

    def _group_codes(self, corpus: int) -> Optional[np.ndarray]:
        """Per unit of a grouped corpus, an integer for its group (-1: none); None for a corpus without groups."""
        groups = self.unit_groups[corpus]
        if groups is None:
            return None
        if corpus not in self._codes:
            ids: dict = {}
            # A NaN id equals nothing, itself included: each such unit is a block of its own, as no group shares it.
            self._codes[corpus] = np.array([-1 if g is None or g != g else ids.setdefault(g, len(ids)) for g in groups],
                                           dtype=np.int64)
        return self._codes[corpus]

    def _permutation(self, corpus: int, n: int, rng: np.random.Generator) -> np.ndarray:
        groups = self.unit_groups[corpus]
        if groups is None:
            return rng.permutation(n)
        members: dict = {}
        blocks = []
        for unit, g in enumerate(groups):
            if g is None:
                blocks.append([unit])
            else:
                if g not in members:
                    members[g] = []
                    blocks.append(members[g])
                members[g].append(unit)
        return np.array([u for i in rng.permutation(len(blocks)) for u in blocks[i]], dtype=np.int64)


def training_plan(corpora: Sequence[Corpus], caption_sampling: str, batch_size: int, world: int, seed: int,
                  grad_accum: int = 1) -> EpochPlan:
    """The plan of a training run: one pool per media kind, so image corpora (CC3M, COCO, ...) share batches
    as in the official loader, and videos never meet images.

    >>> plan = training_plan([Corpus("a", "image", [["x"]] * 6), Corpus("b", "image", [["y"]] * 6)], "random",
    ...                      batch_size=4, world=1, seed=0)
    >>> plan.steps_per_epoch, sorted({c for b in plan.global_batches(0) for _, c, _ in b})
    (3, [0, 1])
    """
    plan = EpochPlan(units_per_corpus(corpora, caption_sampling), [c.weight for c in corpora], batch_size, world,
                     seed, grad_accum, unit_groups(corpora, caption_sampling), pools=[c.kind for c in corpora])
    for i, (corpus, n, count) in enumerate(zip(corpora, plan.units, plan.counts)):
        if count == 0:  # else a corpus the user listed would silently never be trained on
            raise VmmError(f"data.train[{i}].weight={corpus.weight:g} gives corpus {corpus.name} 0 of its {n} samples "
                           f"per epoch; raise it to {1 / n:.3g} or more, or remove the corpus")
    for members in plan._pool_members():
        # A batch holds one kind, so images that do not fill one (3 beside a video corpus, at batch 4) were left out
        # of every epoch without a word, while --check counted them.
        samples = sum(plan.counts[c] for c in members)
        if samples < plan.global_batch:
            listed = ", ".join(f"data.train[{c}] ({corpora[c].name})" for c in members)
            raise VmmError(f"{listed} {'gives' if len(members) == 1 else 'give'} {samples} {corpora[members[0]].kind} "
                           f"samples per epoch, fewer than one batch of {plan.global_batch} (data.batch_size="
                           f"{batch_size} x {world} processes; a batch never mixes images and videos), so they would "
                           f"never be trained on; raise data.train[{members[0]}].weight, lower data.batch_size or add "
                           f"{corpora[members[0]].kind}s")
    return plan


class Collate:
    """Stack pixels, clean + tokenize captions, keep sample ids and the corrupt-file list."""

    def __init__(self, tokenizer, max_text_len: int):
        self.tokenizer = tokenizer
        self.max_text_len = max_text_len

    def __call__(self, samples: list[dict]) -> dict:
        kinds = {s["kind"] for s in samples}
        if len(kinds) != 1:
            raise RuntimeError("a batch mixes images and videos")  # EpochPlan never builds one
        input_ids, attention_mask = self.tokenizer([s["caption"] for s in samples], max_length=self.max_text_len)
        return {"video": torch.stack([s["video"] for s in samples]), "input_ids": input_ids,
                "attention_mask": attention_mask,
                "sample_id": torch.tensor([s["sample_id"] for s in samples], dtype=torch.long),
                "failed": [f for s in samples for f in s["failed"]]}


def make_loader(dataset: PretrainDataset, plan: EpochPlan, epoch: int, rank: int, collate: Collate,
                num_workers: int, prefetch_factor: int = 2, pin_memory: bool = False) -> DataLoader:
    """The DataLoader of one epoch for one process; its own generator keeps the global RNG untouched. At most one
    decoding worker per usable CPU: more only add memory and contention (the released recipes' 12 drew PyTorch's
    warning on a laptop), and each sample draws from its own seed, so the batches do not depend on the count."""
    from index.ingest import usable_cpus
    num_workers = min(num_workers, usable_cpus())
    kwargs = (dict(prefetch_factor=prefetch_factor, persistent_workers=False, worker_init_fn=_ignore_ctrl_c)
              if num_workers > 0 else {})
    return DataLoader(dataset, batch_sampler=plan.rank_batches(epoch, rank), collate_fn=collate,
                      num_workers=num_workers, pin_memory=pin_memory,
                      generator=torch.Generator().manual_seed(plan.seed * 1000003 + epoch), **kwargs)


def _ignore_ctrl_c(worker_id: int) -> None:
    # The main process stops the workers when it is interrupted; one that dies of the same Ctrl-C first makes the
    # main process report a crashed worker instead of the interrupt.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextlib.contextmanager
def ctrl_c_held():
    """Deliver a Ctrl-C that arrives in the block when the block ends; a second one interrupts at once.

    Under ``python -m vmm.train`` nothing is held: its Ctrl-C ends the process without unwinding (see
    :mod:`vmm.training.stop`), so there is nothing to protect, and holding would wait for a stuck worker.
    """
    from vmm.training.stop import is_handler
    previous = signal.getsignal(signal.SIGINT)
    if (threading.current_thread() is not threading.main_thread() or previous == signal.SIG_IGN
            or is_handler(previous)):
        yield
        return
    held = []

    def hold(signum, frame):
        if held:
            raise KeyboardInterrupt
        held.append(signum)
    signal.signal(signal.SIGINT, hold)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)
    if held:
        signal.raise_signal(signal.SIGINT)


def batches(loader: DataLoader):
    """The loader's batches, with Ctrl-C held while its workers start and while a batch is taken from them.

    A KeyboardInterrupt raised while the workers fork (inside an at-fork callback, such as logging's) is printed as
    "Exception ignored" and lost; one raised while a batch's tensors are being received leaves a worker's
    resource-sharing thread to print a ConnectionResetError traceback.
    """
    from vmm.training.stop import shield_sigchld
    with ctrl_c_held():
        loaded = iter(loader)
        shield_sigchld()
    while True:
        with ctrl_c_held():
            try:
                batch = next(loaded, None)
            except VmmError as e:
                raise _worker_error(e) from None
        if batch is None:
            return
        yield batch


def _worker_error(error: VmmError) -> VmmError:
    """A :class:`VmmError` raised in a decoding worker (``data.max_retries`` corrupt samples in a row) comes back
    from the DataLoader as "Caught VmmError in DataLoader worker process 0." plus the worker's traceback, which
    ``python -m vmm.train`` would print after ``error:``; keep the worker's own message.

    >>> _worker_error(VmmError("Caught VmmError in DataLoader worker process 0.\\nOriginal Traceback (most recent "
    ...                        "call last):\\n  ...\\nvmm.errors.VmmError: 3 corrupt samples in a row"))
    VmmError('3 corrupt samples in a row')
    """
    text = str(error)
    marker = f"{type(error).__module__}.{type(error).__name__}: "
    if not text.startswith("Caught ") or marker not in text:
        return error
    return type(error)(text.rsplit(marker, 1)[1].strip())
