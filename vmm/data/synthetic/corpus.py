"""The corpus on disk: every clip planned from the seed, rendered and encoded (in worker processes), the
annotation files written last, and the command line, ``python -m vmm.data.synthetic``.
"""
from __future__ import annotations

import contextlib
import json
import math
import multiprocessing
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from vmm import folder_lock
from vmm.atomic import fsync_folder, fsync_path
from vmm.data.synthetic.captions import Description, describe, signature
from vmm.data.synthetic.scene import VideoSpec, iter_frames, reverse_spec, sample_spec
from vmm.data.synthetic.video import pick_codec, write_video
from vmm.errors import OneLineArgumentParser, VmmError, is_whole_number

# Frames are streamed to the encoder, so memory is about one frame whatever the
# length (drawn in float64, 24 bytes a pixel: 25 MB at 1024); the frame cap only
# bounds the time one clip takes to encode.
MAX_SIZE = 1024
MAX_FRAMES = 36000  # 10 minutes at 60 fps
# Planned in memory and listed in meta.json (about 1 KB a clip): a mistyped 10**20 ran until memory ran out.
MAX_VIDEOS = 1_000_000
CORPUS_FORMAT_VERSION = 1
OWN_JSON_FILES = ("train.json", "val.json", "test.json", "test_paragraph.json", "test_order.json", "meta.json")
# What a file browser leaves in a folder someone looked at (macOS Finder, Windows Explorer): neither user data to
# protect nor ours to delete, so it is left where it is. Counted as foreign, it made --overwrite (and every rerun
# of vmm demo) refuse a corpus folder once opened in Finder.
FILE_BROWSER_FILES = (".DS_Store", "Thumbs.db", "desktop.ini")
# flock-ed by the run writing the folder (vmm.folder_lock) and deleted when it ends; one a killed run left is ours.
LOCK_FILE = ".vmm-synthetic.lock"


# ----------------------------------------------------------------------------
# The corpus.
# ----------------------------------------------------------------------------


def _render_and_write(job: tuple[dict[str, Any], str, str]) -> None:
    spec_dict, path, codec = job
    spec = VideoSpec.from_dict(spec_dict)
    write_video(iter_frames(spec, range(spec.num_frames)), path, spec.fps, codec)  # via .NAME.partial, as JSON


def _worker_signals() -> None:
    """Signals in a worker: Ctrl-C is left to the parent (it is reported once, there), and SIGTERM, which the pool
    ends its workers with, gets its default action back."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A forked worker inherits the parent's Python SIGTERM handler (the vmm command has one), which runs only
    # between bytecodes: a SIGTERM landing just before the worker blocked on the pool's task queue was lost, and
    # leaving the pool waited for that worker for ever (vmm demo hung after writing all 300 clips).
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


@dataclass(frozen=True)
class CorpusConfig:
    """Settings of :func:`generate_corpus`; checked by :meth:`validate`."""

    num_videos: int = 300
    seed: int = 0
    splits: tuple[float, float, float] = (0.8, 0.1, 0.1)
    size: int = 64
    fps: int = 10
    seconds: float = 3.0
    order_fraction: float = 0.5
    codec: str = "auto"

    @property
    def num_frames(self) -> int:
        return int(round(self.fps * self.seconds))

    def split_sizes(self) -> dict[str, int]:
        """Largest-remainder rounding; every split with a share > 0 gets a clip when there are enough."""
        wanted = [self.num_videos * f for f in self.splits]
        counts = [int(w) for w in wanted]
        # Ties go to test, then val, so small corpora still have held-out clips.
        by_remainder = sorted(range(3), key=lambda i: (counts[i] - wanted[i], -i))
        for i in by_remainder[: self.num_videos - sum(counts)]:
            counts[i] += 1
        for i in (2, 1, 0):
            largest = max(range(3), key=lambda j: counts[j])
            if self.splits[i] > 0 and counts[i] == 0 and counts[largest] > 1:
                counts[i], counts[largest] = 1, counts[largest] - 1
        return dict(zip(("train", "val", "test"), counts))

    def validate(self) -> None:
        if not isinstance(self.num_videos, int) or not 1 <= self.num_videos <= MAX_VIDEOS:
            raise VmmError(f"--num-videos {self.num_videos}: must be a whole number from 1 to {MAX_VIDEOS}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise VmmError(f"--seed {self.seed}: must be a whole number >= 0")
        # "not 0 <= f" also refuses NaN, which every comparison fails.
        if len(self.splits) != 3 or not all(0 <= f <= 1 for f in self.splits) or abs(sum(self.splits) - 1) > 1e-6:
            raise VmmError(f"--splits {' '.join(map(str, self.splits))}: give three fractions >= 0 "
                           "(train val test) that sum to 1")
        if not isinstance(self.size, int) or not 32 <= self.size <= MAX_SIZE or self.size % 2:
            raise VmmError(f"--size {self.size}: must be an even number of pixels from 32 to {MAX_SIZE}")
        if not isinstance(self.fps, int) or not 1 <= self.fps <= 60:
            raise VmmError(f"--fps {self.fps}: must be a whole number from 1 to 60")
        # fps x seconds is checked as a float first: past about 1.8e307 s it is infinite, which round() in
        # num_frames cannot take (an OverflowError traceback for --seconds 1e308).
        if not math.isfinite(self.fps * self.seconds) or not 8 <= self.num_frames <= MAX_FRAMES:
            frames = (f"gives {self.num_frames} frames" if abs(self.seconds) < 1e9 else "is far too long"
                      ) if math.isfinite(self.seconds) else "is not a finite length"
            raise VmmError(f"--seconds {self.seconds} at --fps {self.fps} {frames}; "
                           f"use 8 to {MAX_FRAMES} frames (fps x seconds)")
        if not 0 <= self.order_fraction <= 1:
            raise VmmError(f"--order-fraction {self.order_fraction}: must be between 0 and 1")


@dataclass(frozen=True)
class CorpusInfo:
    """What :func:`generate_corpus` wrote. ``"video"`` paths in the JSON files are relative to ``out_dir``."""

    out_dir: Path
    num_videos: int
    split_sizes: dict[str, int]
    num_order_pairs: int
    codec: str
    size: int
    fps: int
    num_frames: int
    annotation_files: dict[str, Path] = field(default_factory=dict)
    seconds_taken: float = 0.0


@dataclass
class _Clip:
    split: str
    spec: VideoSpec
    description: Description
    pair_id: int | None = None
    pair_kind: str | None = None
    reversed_member: bool = False


# Kinds of order-sensitive pairs, in the order pairs are made; direction and
# multi-event sequences come twice as often as the rest.
PAIR_KIND_CYCLE = ("direction", "sequence", "color_order", "direction", "size", "visibility", "sequence")


def _pair_kind(spec: VideoSpec) -> str:
    if len(spec.events) > 1:
        return "sequence"
    return {"move": "direction", "recolor": "color_order", "grow": "size", "shrink": "size",
            "appear": "visibility", "disappear": "visibility"}[spec.events[0].kind]


def _plan(config: CorpusConfig) -> list[_Clip]:
    """All clips in slot order: train, val, regular test, then test pairs. Pure function of the config."""
    sizes = config.split_sizes()
    num_pairs = int(sizes["test"] * config.order_fraction) // 2
    args = dict(size=config.size, fps=config.fps, num_frames=config.num_frames)
    clips: list[_Clip] = []
    slot = 0
    for split in ("train", "val", "test"):
        regular = sizes[split] - (2 * num_pairs if split == "test" else 0)
        # Val and test captions must be unique within their split, or retrieval has two right answers. Distinct
        # content is not enough: a caption may leave out the background, so two clips that differ only there read
        # the same (a test split of 3000 clips had such a pair).
        seen: set[str] = set()
        for _ in range(regular):
            rng = np.random.default_rng([config.seed, slot])
            spec = sample_spec(rng, **args)
            description = describe(spec, (config.seed, slot))
            for _attempt in range(50):
                if split == "train" or not {signature(spec), description.caption} & seen:
                    break
                spec = sample_spec(rng, **args)
                description = describe(spec, (config.seed, slot))
            seen.update((signature(spec), description.caption))
            clips.append(_Clip(split, spec, description))
            slot += 1
        if split != "test":
            continue
        for pair in range(num_pairs):
            rng = np.random.default_rng([config.seed, slot])
            wanted = PAIR_KIND_CYCLE[pair % len(PAIR_KIND_CYCLE)]
            style = (config.seed, slot)
            # Short clips cannot hold every kind: after 200 draws any usable pair will do.
            for attempt in range(2000):
                spec = sample_spec(rng, **args, max_actors=1)
                back = reverse_spec(spec)
                if signature(spec) == signature(back) or {signature(spec), signature(back)} & seen:
                    continue
                if _pair_kind(spec) != wanted and attempt < 200:
                    continue
                keys = list(range(len(spec.events)))
                forward, backward = describe(spec, style, keys), describe(back, style, keys[::-1])
                if not {forward.caption, backward.caption} & seen:
                    break
            else:
                raise VmmError(f"could not make {num_pairs} distinct order pairs at --size {config.size}; "
                               "lower --order-fraction or --num-videos")
            seen.update((signature(spec), signature(back), forward.caption, backward.caption))
            kind = _pair_kind(spec)
            clips.append(_Clip("test", spec, forward, pair, kind))
            clips.append(_Clip("test", back, backward, pair, kind, True))
            slot += 2
    return clips


def _check_out_dir(out_dir: Path, overwrite: bool) -> None:
    """Refuse a folder holding anything this generator did not write, or a corpus without ``overwrite``."""
    if out_dir.exists() and not out_dir.is_dir():
        raise VmmError(f"{out_dir} is a file; give a folder path for the corpus")
    if not out_dir.is_dir():
        return
    # Names alone do not make files ours: an annotations folder's own train.json and test.json were overwritten.
    ours = _written_here(out_dir)
    foreign = [p for p in out_dir.iterdir() if not (ours and _unpartial(p.name) in OWN_JSON_FILES)
               and p.name not in ("videos", LOCK_FILE, *FILE_BROWSER_FILES)]
    videos = out_dir / "videos"
    if videos.is_dir():
        foreign += [p for p in videos.iterdir()
                    if not (ours and _is_own_video_name(p.name)) and p.name not in FILE_BROWSER_FILES]
    elif videos.exists():
        foreign.append(videos)
    if foreign:
        raise VmmError(f"{out_dir} holds files this generator did not write (e.g. {foreign[0].name}); "
                       "choose an empty or new folder")
    # Without meta.json (written last) the folder holds what a failed run left: nothing worth keeping.
    if (out_dir / "meta.json").exists() and not overwrite:
        raise VmmError(f"{out_dir} already holds a synthetic corpus; pass --overwrite (overwrite=True) "
                       "to replace it or choose a new folder")


def _written_here(out_dir: Path) -> bool:
    """Whether ``out_dir`` holds a corpus of this generator (its meta.json) or what a killed run of it left (the
    lock file, there from a run's first write to its end)."""
    if (out_dir / LOCK_FILE).exists():
        return True
    try:
        with open(out_dir / "meta.json", "rb") as meta:
            return meta.read(64).startswith(b'{\n "format": "vmm.synthetic"')  # as _write_json writes it
    except FileNotFoundError:
        return False


def _lock(out_dir: Path) -> int | None:
    """This run's claim on ``out_dir`` (made if missing): a second run into the same folder is refused, where its
    clearing and failure cleanup deleted the first one's videos under it (which then reported a corpus of 300
    clips with 28 on disk). None where the file system has no locks: unguarded beats refused, as in vmm demo."""
    path = out_dir / LOCK_FILE
    for _ in range(100):
        out_dir.mkdir(parents=True, exist_ok=True)
        try:
            fd = folder_lock.claim(path)
        except FileNotFoundError:  # a failed run removed the folder it had made; make it again
            continue
        except folder_lock.LockHeld as held:
            raise VmmError(f"{out_dir} is being written by another corpus generation ({held.holder}); wait for it "
                           "to end or choose another folder") from None
        except folder_lock.LocksUnsupported:
            return None
        # The holder deletes the file when it ends (see _unlock): a lock won on that deleted file guards nothing.
        with contextlib.suppress(FileNotFoundError):
            if os.path.samestat(os.fstat(fd), os.stat(path)):
                return fd
        folder_lock.release(fd)
    raise VmmError(f"{out_dir} is being written by other corpus generations; wait for them to end or choose "
                   "another folder")


def _unlock(out_dir: Path, fd: int | None, remove_folder: bool) -> None:
    """Delete the lock file (before letting the lock go, so a run waiting on it sees the change) and, if asked,
    the folder when nothing else is left in it."""
    with contextlib.suppress(OSError):
        (out_dir / LOCK_FILE).unlink()
        if remove_folder:
            out_dir.rmdir()
    folder_lock.release(fd)


def _clear(out_dir: Path) -> None:
    """Delete the files this generator writes (by name; nothing else)."""
    # meta.json first: once it is gone, what is left no longer passes for a corpus.
    for name in ("meta.json", *OWN_JSON_FILES):
        (out_dir / name).unlink(missing_ok=True)
        (out_dir / f".{name}.partial").unlink(missing_ok=True)
    videos = out_dir / "videos"
    if videos.is_dir():
        for p in videos.iterdir():
            if _is_own_video_name(p.name):
                p.unlink()


def _unpartial(name: str) -> str:
    """``.x.partial`` (a file being written) -> ``x``."""
    return name[1:-len(".partial")] if name.startswith(".") and name.endswith(".partial") else name


def _is_own_video_name(name: str) -> bool:
    stem = _unpartial(name)
    return stem.startswith("synth_") and stem.endswith(".mp4") and stem[6:-4].isdigit()


def _write_json(path: Path, data: Any) -> None:
    partial = path.with_name("." + path.name + ".partial")
    partial.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    # As vmm.atomic (whose NAME.tmp.PID would read as a foreign file here): an unflushed meta.json could be empty
    # after a power cut, and the folder then held "files this generator did not write" to every later run.
    fsync_path(str(partial))
    os.replace(partial, path)
    fsync_folder(str(path.parent))


def _is_kind(value, kind: str) -> bool:
    whole = is_whole_number(value)
    return {"a whole number": whole, "a number": whole or isinstance(value, (float, np.floating)),
            "a whole number or None": value is None or whole, "a str": isinstance(value, str),
            "True or False": isinstance(value, (bool, np.bool_))}[kind]


def _annotation_lists(clips: Sequence[_Clip], names: Sequence[str], order: Sequence[int]):
    """The entries of the corpus's JSON files, clips taken in ``order`` (file-number order): per split the
    ``{"video", "caption"}`` lists, the test paragraphs, the order-sensitive test pairs (sorted by pair) and the
    meta.json records."""
    annotations: dict[str, list[dict[str, Any]]] = {"train": [], "val": [], "test": []}
    paragraphs, order_subset, meta_videos = [], [], []
    for i in order:
        clip, name = clips[i], names[i]
        entry: dict[str, Any] = {"video": name, "caption": clip.description.caption}
        paragraph: dict[str, Any] = {"video": name, "caption": list(clip.description.sentences)}
        if clip.pair_id is not None:
            entry.update(order_sensitive=True, pair_id=clip.pair_id)
            paragraph.update(order_sensitive=True, pair_id=clip.pair_id)
            order_subset.append(entry)
        annotations[clip.split].append(entry)
        if clip.split == "test":
            paragraphs.append(paragraph)
        meta_entry = {"video": name, "split": clip.split, "caption": clip.description.caption,
                      "paragraph": list(clip.description.sentences)}
        if clip.pair_id is not None:
            meta_entry.update(order_sensitive=True, pair_id=clip.pair_id, pair_kind=clip.pair_kind,
                              pair_member="reversed" if clip.reversed_member else "forward")
        meta_entry["spec"] = clip.spec.to_dict()
        meta_videos.append(meta_entry)
    order_subset.sort(key=lambda e: (e["pair_id"], e["video"]))
    return annotations, paragraphs, order_subset, meta_videos


def generate_corpus(out_dir: str | os.PathLike, num_videos: int = 300, seed: int = 0,
                    splits: Sequence[float] = (0.8, 0.1, 0.1), size: int = 64, fps: int = 10,
                    seconds: float = 3.0, workers: int | None = None, order_fraction: float = 0.5,
                    codec: str = "auto", overwrite: bool = False) -> CorpusInfo:
    """Write a procedural video-text corpus to ``out_dir``.

    Files: ``videos/synth_NNNNN.mp4``; ``train.json``, ``val.json``, ``test.json``
    (lists of ``{"video", "caption"}``, video paths relative to ``out_dir``;
    order-sensitive test entries add ``"order_sensitive": true`` and ``"pair_id"``);
    ``test_order.json`` (only those pairs); ``test_paragraph.json`` (DiDeMo style,
    ``"caption"`` is a list of sentences); ``meta.json`` (each clip's spec, split,
    caption and paragraph). ``order_fraction`` of the test split is made of
    time-reversed pairs. The output depends only on the arguments other than
    ``workers``: the same seed gives byte-identical files.

    >>> import tempfile
    >>> info = generate_corpus(tempfile.mkdtemp(), num_videos=10, seed=0, workers=1)
    >>> info.num_videos, info.num_frames
    (10, 30)
    """
    began = time.perf_counter()
    # Types first: a str or None from a Python caller failed inside the range checks with a bare TypeError, and
    # overwrite="no" counted as yes.
    # os.fspath(None) raised a bare TypeError, and a bytes path failed inside Path().
    try:
        out_path = os.fspath(out_dir)
    except TypeError:
        out_path = None
    if not isinstance(out_path, str):
        raise VmmError(f"out_dir={out_dir!r}: must be a folder path (a str or os.PathLike); pass a folder for the "
                       "corpus")
    for name, value, kind in (("num_videos", num_videos, "a whole number"), ("seed", seed, "a whole number"),
                              ("size", size, "a whole number"), ("fps", fps, "a whole number"),
                              ("seconds", seconds, "a number"), ("order_fraction", order_fraction, "a number"),
                              ("workers", workers, "a whole number or None"), ("codec", codec, "a str"),
                              ("overwrite", overwrite, "True or False")):
        if not _is_kind(value, kind):
            raise VmmError(f"--{name.replace('_', '-')} ({name}={value!r}): must be {kind}")
    try:
        parts = None if isinstance(splits, (str, bytes)) else tuple(splits)
    except TypeError:
        parts = None
    if parts is None or not all(_is_kind(f, "a number") for f in parts):
        raise VmmError(f"--splits (splits={splits!r}): must be three numbers (train val test) that sum to 1")
    # NumPy numbers are fine, as plain ones from here on (the checks below and the JSON written need those).
    num_videos, seed, size, fps = int(num_videos), int(seed), int(size), int(fps)
    seconds, order_fraction = float(seconds), float(order_fraction)
    workers = None if workers is None else int(workers)
    config = CorpusConfig(num_videos=num_videos, seed=seed, splits=tuple(float(f) for f in parts), size=size,
                          fps=fps, seconds=seconds, order_fraction=order_fraction, codec=codec)
    config.validate()
    codec_name = pick_codec(codec)
    if workers is not None and workers < 0:
        raise VmmError(f"--workers {workers}: must be 0 or more (0 and 1 encode in this process)")
    if not out_path:  # Path("") is the working directory, which the message then named as "."
        raise VmmError("the output folder (out_dir) is empty; pass a folder for the corpus")
    out = Path(out_path).expanduser()  # as every vmm path is read: a "~/corpus" no shell expanded made a "~" folder
    try:
        _check_out_dir(out, overwrite)
    except OSError as err:
        raise VmmError(f"cannot read {out} ({err.strerror or err}); choose a readable folder for the corpus") from None
    # Everything that can be refused is refused above or here, before anything is created or deleted.
    clips = _plan(config)
    # File numbers are shuffled so a file name does not reveal its split.
    file_number = np.random.default_rng([seed, 1 << 30]).permutation(len(clips))
    width = max(5, len(str(len(clips) - 1)))
    names = [f"videos/synth_{int(n):0{width}d}.mp4" for n in file_number]

    annotations, paragraphs, order_subset, meta_videos = _annotation_lists(
        clips, names, np.argsort(file_number, kind="stable"))
    meta_config = {"num_videos": num_videos, "seed": seed, "splits": list(config.splits), "size": size,
                   "fps": fps, "seconds": seconds, "num_frames": config.num_frames,
                   "order_fraction": order_fraction, "codec": codec_name}
    # meta.json is written last: its presence marks a complete corpus.
    contents = {**annotations, "test_paragraph": paragraphs, "test_order": order_subset,
                "meta": {"format": "vmm.synthetic", "version": CORPUS_FORMAT_VERSION, "config": meta_config,
                         "videos": meta_videos}}
    jobs = [(clip.spec.to_dict(), str(out / name), codec_name) for clip, name in zip(clips, names)]
    if workers is None:  # the CPUs this process may use, as vmm index counts them: cpu_count() is the host's
        from index.ingest import usable_cpus
        workers = min(usable_cpus(), 4)
    workers = max(1, int(workers))

    created = not out.exists()
    try:
        lock = _lock(out)
    except OSError as err:
        raise VmmError(f"cannot write the corpus to {out} ({err.strerror or err}); choose a writable folder") from None
    try:
        _check_out_dir(out, overwrite)  # again: a run that held the folder until now may have left a corpus
        files = _write_corpus(out, jobs, workers, contents)
    finally:
        _unlock(out, lock, remove_folder=created)
    return CorpusInfo(out_dir=out, num_videos=len(clips), split_sizes=config.split_sizes(),
                      num_order_pairs=len(order_subset) // 2, codec=codec_name, size=size, fps=fps,
                      num_frames=config.num_frames, annotation_files=files,
                      seconds_taken=time.perf_counter() - began)


def _write_corpus(out: Path, jobs: list[tuple], workers: int, contents: dict[str, Any]) -> dict[str, Path]:
    """Clear ``out`` of an earlier corpus, then write the videos, then ``contents`` as NAME.json files in their
    order; a failure removes what was written."""
    try:
        _clear(out)
        (out / "videos").mkdir(exist_ok=True)
        # Never more processes than clips: each idle one still costs a fork (--workers 10000 for 10 clips forked
        # for a minute).
        workers = min(workers, len(jobs))
        if workers == 1 or len(jobs) < 8:
            for job in jobs:
                _render_and_write(job)
        else:
            # Forked workers only render with numpy and encode with PyAV, never touching torch.
            method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            # A Pool, not a ProcessPoolExecutor: leaving the block on Ctrl-C terminates the workers at once
            # (the executor would first finish every queued clip).
            with multiprocessing.get_context(method).Pool(workers, initializer=_worker_signals) as pool:
                pool.map(_render_and_write, jobs, chunksize=max(1, len(jobs) // (4 * workers)))
        fsync_folder(str(out / "videos"))  # the videos' renames, before meta.json vouches for them
        files = {}
        for key, data in contents.items():
            files[key] = out / f"{key}.json"
            _write_json(files[key], data)
        return files
    except BaseException as err:
        # A failed run leaves nothing a loader or the next run could take for a corpus.
        with contextlib.suppress(OSError):
            _clear(out)
            (out / "videos").rmdir()
        if isinstance(err, OSError):
            raise VmmError(f"cannot write the corpus to {out} ({err.strerror or err}); "
                           "choose a writable folder with free space") from None
        raise


def read_specs(out_dir: str | os.PathLike) -> dict[str, VideoSpec]:
    """Map each ``"video"`` path of a corpus to its :class:`VideoSpec`, read from ``meta.json``.

    >>> import tempfile
    >>> root = tempfile.mkdtemp()
    >>> _ = generate_corpus(root, num_videos=4, seed=0, workers=1)
    >>> len(read_specs(root))
    4
    """
    path = Path(out_dir).expanduser() / "meta.json"
    if not path.is_file():
        raise VmmError(f"{path} not found; generate the corpus first with python -m vmm.data.synthetic {out_dir}")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
        return {v["video"]: VideoSpec.from_dict(v["spec"]) for v in meta["videos"]}
    except (ValueError, KeyError, TypeError) as err:
        raise VmmError(f"{path} is not a vmm synthetic meta file ({err}); regenerate the corpus") from None


# ----------------------------------------------------------------------------
# Command line.
# ----------------------------------------------------------------------------


def build_parser() -> OneLineArgumentParser:
    """The options of ``python -m vmm.data.synthetic``."""
    parser = OneLineArgumentParser(prog="python -m vmm.data.synthetic",
                                   description="Write a procedural video-text corpus (videos + captions).")
    parser.add_argument("out_dir", help="folder to write (new or empty; see --overwrite)")
    parser.add_argument("--num-videos", type=int, default=300,
                        help=f"total clips over all splits, up to {MAX_VIDEOS} (default 300)")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same corpus (default 0)")
    parser.add_argument("--splits", type=float, nargs=3, default=(0.8, 0.1, 0.1), metavar=("TRAIN", "VAL", "TEST"),
                        help="split fractions summing to 1 (default 0.8 0.1 0.1)")
    parser.add_argument("--size", type=int, default=64, help="frame side in pixels, even (default 64)")
    parser.add_argument("--fps", type=int, default=10, help="frames per second (default 10)")
    parser.add_argument("--seconds", type=float, default=3.0, help="clip length (default 3.0)")
    parser.add_argument("--workers", type=int, default=None, help="encoding processes (default: up to 4 cores)")
    parser.add_argument("--order-fraction", type=float, default=0.5,
                        help="share of the test split made of time-reversed pairs (default 0.5)")
    parser.add_argument("--codec", default="auto", choices=("auto", "libx264", "mpeg4"),
                        help="video codec: libx264 when PyAV has it, else mpeg4 (default auto)")
    parser.add_argument("--overwrite", action="store_true", help="replace a corpus this command wrote earlier")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m vmm.data.synthetic OUT_DIR --num-videos N --seed S``; returns the exit status.

    >>> import tempfile
    >>> main([tempfile.mkdtemp(), "--num-videos", "4", "--seed", "0", "--workers", "1"])  # doctest: +ELLIPSIS
    wrote 4 videos ...
    0
    """
    args = build_parser().parse_args(argv)
    try:
        info = generate_corpus(args.out_dir, num_videos=args.num_videos, seed=args.seed, splits=args.splits,
                               size=args.size, fps=args.fps, seconds=args.seconds, workers=args.workers,
                               order_fraction=args.order_fraction, codec=args.codec, overwrite=args.overwrite)
    except VmmError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # generate_corpus has removed what it wrote
        print("interrupted; nothing was kept", file=sys.stderr)
        return 130
    sizes = ", ".join(f"{k} {v}" for k, v in info.split_sizes.items())
    print(f"wrote {info.num_videos} videos ({sizes}; {info.num_order_pairs} order pairs) "
          f"to {info.out_dir} in {info.seconds_taken:.1f} s [{info.codec}, {info.size}x{info.size}, "
          f"{info.num_frames} frames at {info.fps} fps]")
    return 0
