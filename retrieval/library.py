"""Search a video library by text or by example video: the Python API behind ``vmm search``.

>>> from retrieval import VideoLibrary                      # doctest: +SKIP
>>> lib = VideoLibrary.open("my-library")                    # doctest: +SKIP
>>> for hit in lib.search(text="a dog catches a frisbee", k=5):   # doctest: +SKIP
...     print(hit.rank, f"{hit.score:.3f}", hit.path, hit.start, hit.end)

A library remembers the model it was built with (``model.json`` beside the catalog); ``open`` loads it and
checks its weights against the manifest, so vectors and queries always come from the same model.
"""
from __future__ import annotations

import json
import math
import os
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np

from vmm.errors import VmmError

MODEL_FILE = "model.json"
NOT_RERANKED = -100.0  # score of hits outside the re-ranked top K (the official value)
COLOR_HISTOGRAM = "color-histogram"


@dataclass(frozen=True)
class SearchHit:
    """One result: a moment of a video (merged overlapping windows), its score and rank (1-based)."""

    rank: int
    path: str
    start: float
    end: float
    score: float
    clip_ids: tuple[int, ...] = ()
    itm: Optional[float] = None  # ITM match logit when re-ranked (it replaces the score)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["clip_ids"] = list(self.clip_ids)
        return d


@dataclass
class Where:
    """Metadata filter applied before ranking: path glob(s) and video duration range (seconds)."""

    path_glob: Union[str, list[str], None] = None
    min_duration: Optional[float] = None
    max_duration: Optional[float] = None


def load_encoder(model: Optional[str] = None, checkpoint: Optional[str] = None, device: Optional[str] = None,
                 frames: Optional[int] = None, batch_size: int = 8):
    """The encoder a library uses: a vmm model name or ``save_pretrained`` folder (+ optional checkpoint file),
    or ``"color-histogram"`` for the dependency-free colour/motion baseline (video queries only)."""
    if model == COLOR_HISTOGRAM:
        from index.encoder import ColorHistogramEncoder
        return ColorHistogramEncoder(num_frames=frames or 8)
    import vmm
    from vmm.embedder import VideoTextEncoder
    if model is None and checkpoint is None:
        raise VmmError("no model given; pass --model NAME (e.g. vmm_nano) or --checkpoint PATH")
    name = model or "videomamba_m16_25m"
    if checkpoint and Path(checkpoint).is_dir():
        name, checkpoint = checkpoint, None
    from vmm.factory import frames_override
    overrides = frames_override(name, frames)
    if checkpoint is None and not Path(name).is_dir():
        from vmm.factory import default_pretrained
        # A named model means its released weights (vmm_nano: the shipped checkpoint), never random ones.
        checkpoint = default_pretrained(name)
    net, _, _ = vmm.create_model_and_transforms(name, pretrained=checkpoint, **overrides)
    return VideoTextEncoder(net, device=device, batch_size=batch_size)


def merge_moments(hits: Sequence[Any], gap: float = 0.0) -> list[dict]:
    """Temporal NMS: hits of one video whose windows overlap (or touch within ``gap`` s), directly or through a
    chain of overlapping hits, become one moment spanning them all, scored by its best hit.

    Returns dicts with path, start, end, score and clip_ids (best hit first), best moment first.

    >>> from types import SimpleNamespace as H
    >>> [(m["start"], m["end"]) for m in merge_moments([H(path="a", start=0, end=10, score=.9, clip_id=1),
    ...     H(path="a", start=5, end=15, score=.8, clip_id=2), H(path="a", start=30, end=40, score=.7, clip_id=3)])]
    [(0, 15), (30, 40)]
    """
    by_path: dict[str, list] = {}
    for h in hits:
        by_path.setdefault(h.path, []).append(h)
    moments: list[dict] = []
    for path, group in by_path.items():
        group.sort(key=lambda h: (h.start, h.end))
        current: list = []
        end = -math.inf
        for h in group + [None]:
            if h is None or (current and h.start > end + gap):
                best = sorted(current, key=lambda x: -x.score)
                moments.append({"path": path, "start": min(x.start for x in current), "end": end,
                                "score": float(best[0].score), "clip_ids": [x.clip_id for x in best]})
                current, end = [], -math.inf
            if h is not None:
                current.append(h)
                end = max(end, h.end)
    moments.sort(key=lambda m: -m["score"])
    return moments


class VideoLibrary:
    """A searchable video library (a folder made by ``vmm index`` / :meth:`VideoLibrary.create`).

    Thread-safe for concurrent searches: each search reads the snapshot taken at :meth:`open` (or at the
    last :meth:`refresh`), and model calls are serialised.
    """

    def __init__(self, path: str, encoder, reader):
        self.path = path
        self.encoder = encoder
        self._reader = reader
        self._model_lock = threading.Lock()
        self._model_source: Optional[tuple] = None

    # -- opening ------------------------------------------------------------------------------------
    @classmethod
    def create(cls, path: Union[str, Path], model: Optional[str] = None, checkpoint: Optional[str] = None,
               device: Optional[str] = None, frames: Optional[int] = None) -> "VideoLibrary":
        """A new (or existing) library folder bound to a model; add videos with :meth:`add`."""
        path = os.path.abspath(os.fspath(path))
        lib = cls(path, encoder=load_encoder(model, checkpoint, device, frames), reader=None)
        lib._model_source = (model, checkpoint, frames)  # recorded beside the catalog by the first add()
        return lib

    @classmethod
    def open(cls, path: Union[str, Path], model: Optional[str] = None, checkpoint: Optional[str] = None,
             device: Optional[str] = None) -> "VideoLibrary":
        """Open an existing library with the model it was built with (or the one given, which must match)."""
        path = os.path.abspath(os.fspath(path))
        if not os.path.isdir(path):
            raise VmmError(f"library {path} does not exist; create it with `vmm index VIDEOS --library {path}`")
        if not _is_library(path):
            raise VmmError(f"{path} is not a vmm library (no catalog.sqlite); index videos into one with "
                           f"`vmm index VIDEOS --library LIB`, then search LIB")
        saved = _read_model_file(path)
        if model is None and checkpoint is None:
            if not saved:
                raise VmmError(f"library {path} records no model (no {MODEL_FILE}); pass --model/--checkpoint "
                               "with the model it was built with")
            encoder = _load_recorded_encoder(path, saved, device)
        else:
            encoder = load_encoder(model, checkpoint, device, saved.get("frames"))
        from index.reader import open_library
        reader = open_library(path, model=encoder)
        return cls(path, encoder, reader)

    def refresh(self) -> None:
        """Take a new snapshot (see videos indexed since :meth:`open`)."""
        from index.reader import open_library
        old, self._reader = self._reader, open_library(self.path, model=self.encoder)
        if old is not None:
            old.close()

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def __enter__(self) -> "VideoLibrary":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __len__(self) -> int:
        """Number of clips (vectors) in the snapshot."""
        return 0 if self._reader is None else len(self._reader)

    # -- changing -----------------------------------------------------------------------------------
    def add(self, paths: Union[str, Path, Sequence[Union[str, Path]]], **options):
        """Index new or changed videos under ``paths``, one path or a list (see ``index.build_library`` for
        options)."""
        from index.library import build_library
        paths = _path_list(paths, "add")
        options.setdefault("progress", False)
        if self._model_source is not None:
            source = self._model_source
            options.setdefault("on_open", lambda library: _write_model_file(library, *source))
        summary = build_library(paths, self.path, self.encoder, **options)
        self._model_source = None
        self.refresh()
        return summary

    def remove(self, paths: Union[str, Path, Sequence[Union[str, Path]]]) -> int:
        """Drop videos (files or folders, one path or a list) from the library; the files on disk are untouched."""
        from index.library import remove_paths
        n = remove_paths(self.path, _path_list(paths, "remove"))
        self.refresh()
        return n

    # -- searching ----------------------------------------------------------------------------------
    def search(self, text: Optional[str] = None, video: Optional[Union[str, Path]] = None, k: int = 10,
               rerank: int = 0, where: Union[Where, dict, Callable, None] = None, per_video: bool = False,
               merge: bool = True) -> list[SearchHit]:
        """Top ``k`` moments for a text query or an example video.

        ``rerank=K`` re-scores the top K clips with the ITM head (the official two-stage recipe: the match
        logit replaces the embedding score); ``where`` filters on metadata before ranking (path glob,
        duration range, or a callable on the file record); ``per_video`` keeps one moment per video;
        ``merge`` joins overlapping windows of a video into one moment.
        """
        if self._reader is None:
            self.refresh()
        if (text is None) == (video is None):
            raise VmmError("give exactly one query: text=... or video=...")
        if text is not None and not isinstance(text, str):
            raise VmmError(f"text must be a string, got {type(text).__name__}; pass text='a red car'")
        if video is not None and not isinstance(video, (str, os.PathLike)):
            raise VmmError(f"video must be a path, got {type(video).__name__}; pass video='clip.mp4'")
        if not _is_int(k) or k < 1:
            raise VmmError(f"k must be a whole number >= 1, got {k!r}")
        if not _is_int(rerank) or rerank < 0:
            raise VmmError(f"rerank must be a whole number >= 0 (0: no re-ranking), got {rerank!r}")
        if text is not None and not text.strip():
            raise VmmError("empty query text; give some words to search for")
        query = self._query_vector(text, video)
        fetch = max(k, rerank) * (4 if merge or per_video else 1)
        hits = self._reader.search_vectors(query, k=fetch, where=_as_filter(where))[0]
        itm: dict[int, float] = {}
        if rerank:
            if text is None:
                raise VmmError("--rerank needs a text query (ITM scores text-video pairs)")
            itm = self._rerank_scores(text, hits[:rerank])
            # As the official evaluation: the ITM logit replaces the score of the top K, the rest get -100
            # (finite, so --json stays valid JSON; ITM logits never come near it).
            hits = [_with_score(h, itm.get(h.clip_id, NOT_RERANKED)) for h in hits]
            hits.sort(key=lambda h: -h.score)
        moments = merge_moments(hits) if merge else [
            {"path": h.path, "start": h.start, "end": h.end, "score": float(h.score), "clip_ids": [h.clip_id]}
            for h in hits]
        if per_video:
            seen, kept = set(), []
            for m in moments:
                if m["path"] not in seen:
                    seen.add(m["path"])
                    kept.append(m)
            moments = kept
        out = []
        for rank, m in enumerate(moments[:k], 1):
            best = m["clip_ids"][0]
            out.append(SearchHit(rank, m["path"], float(m["start"]), float(m["end"]), m["score"],
                                 tuple(m["clip_ids"]), itm.get(best)))
        return out

    def _query_vector(self, text, video) -> np.ndarray:
        with self._model_lock:
            if text is not None:
                if not hasattr(self.encoder, "encode_texts"):
                    raise VmmError(f"model {self.encoder.name} has no text tower; search it with --video QUERY.mp4")
                return self.encoder.encode_texts([text]).astype(np.float32)
            return self.encoder.encode_clips([read_query_clip(video, self.encoder.num_frames)]).astype(np.float32)

    def _rerank_scores(self, text: str, hits) -> dict[int, float]:
        m = self._reader.manifest
        by_path: dict[str, list] = {}
        for h in hits:
            by_path.setdefault(h.path, []).append(h)
        frames = {}
        for path, group in by_path.items():
            _check_unchanged(self._reader.files.get(group[0].file_id), path)
            windows = read_windows(path, m.num_frames, m.window, m.stride, m.max_seconds)
            for h in group:
                frames[h.clip_id] = windows[min(windows, key=lambda se: abs(se[0] - h.start) + abs(se[1] - h.end))]
        clips = [frames[h.clip_id] for h in hits]
        with self._model_lock:
            scores = self.encoder.itm_scores_for(text, clips)
        return {h.clip_id: float(s) for h, s in zip(hits, scores)}


def _with_score(hit, score: float):
    from dataclasses import replace
    return replace(hit, score=score)


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _path_list(paths, what: str) -> list[str]:
    # A lone path is one path: iterating a string would give its characters, and "/" matches every file.
    if isinstance(paths, (str, os.PathLike)):
        return [os.fspath(paths)]
    try:
        return [os.fspath(p) for p in paths]
    except TypeError:
        raise VmmError(f"{what}() takes a path or a list of paths, got {paths!r}") from None


def _as_filter(where):
    if where is None or callable(where):
        return where
    from index.reader import ClipFilter
    if isinstance(where, dict):
        unknown = set(where) - {"path_glob", "min_duration", "max_duration"}
        if unknown:
            raise VmmError(f"where has unknown keys {sorted(unknown)}; use path_glob, min_duration, max_duration")
        where = Where(**where)
    if not isinstance(where, Where):
        raise VmmError(f"where must be a Where, a dict or a callable on the file record, got {type(where).__name__}")
    globs = [where.path_glob] if isinstance(where.path_glob, str) else where.path_glob
    if globs is not None and not (isinstance(globs, (list, tuple)) and all(isinstance(g, str) for g in globs)):
        raise VmmError(f"where path_glob must be a glob string or a list of them, got {where.path_glob!r}")
    for name in ("min_duration", "max_duration"):
        value = getattr(where, name)
        if value is not None and not (_is_int(value) or isinstance(value, float)):
            raise VmmError(f"where {name} must be a number of seconds, got {value!r}")
        if value is not None and (math.isnan(value) or value < 0):
            raise VmmError(f"where {name} must be a number of seconds >= 0, got {value!r}")
    if where.min_duration is not None and where.max_duration is not None and where.min_duration > where.max_duration:
        raise VmmError(f"where min_duration {where.min_duration} is above max_duration {where.max_duration}; "
                       "no video can match")
    return ClipFilter(path_glob=where.path_glob, min_duration=where.min_duration, max_duration=where.max_duration)


def _check_unchanged(record, path: str) -> None:
    """Re-ranking decodes the file again: one replaced since indexing would be scored on other content than the
    clip its vectors describe."""
    try:
        st = os.stat(path)
    except OSError:
        return  # read_windows reports a file that is gone
    if record is not None and (st.st_size != record.size or st.st_mtime_ns != record.mtime_ns):
        raise VmmError(f"{path} changed since it was indexed; run `vmm index` again to update the library, "
                       "or search without --rerank")


def read_query_clip(path: Union[str, Path], num_frames: int) -> np.ndarray:
    """The whole video as one clip of ``num_frames`` middle-sampled frames (uint8 (T, H, W, 3))."""
    from index.decode import decode_video
    path = os.fspath(path)
    if not os.path.exists(path):
        raise VmmError(f"query video {path} does not exist")
    if not os.path.isfile(path):  # a folder, a FIFO (reading one would wait forever)...
        raise VmmError(f"query video {path} is not a file; pass the path of a video file")
    _, clips = decode_video(path, num_frames=num_frames, window=math.inf)
    return clips[0].frames


def read_windows(path: str, num_frames: int, window: float, stride: float,
                 max_seconds: Optional[float]) -> dict[tuple[float, float], np.ndarray]:
    """All clip windows of a video planned exactly as at indexing time: {(start, end): frames}."""
    from index.decode import decode_video
    if not os.path.isfile(path):
        raise VmmError(f"{path} is gone since it was indexed; run `vmm index` again to update the library")
    _, clips = decode_video(path, num_frames=num_frames, window=window, stride=stride, max_seconds=max_seconds)
    return {(c.start, c.end): c.frames for c in clips}


def _write_model_file(path: str, model, checkpoint, frames) -> None:
    """Record the model beside the catalog (called with the library locked, before its first commit)."""
    if model and model != COLOR_HISTOGRAM and Path(model).is_dir():
        model = os.path.abspath(model)  # a relative folder would name another one from another working directory
    data = {"model": model, "checkpoint": os.path.abspath(checkpoint) if checkpoint else None, "frames": frames}
    tmp = os.path.join(path, f".{MODEL_FILE}.tmp")
    try:
        with open(tmp, "w") as f:
            json.dump(data, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, os.path.join(path, MODEL_FILE))
    except OSError as error:
        raise VmmError(f"cannot write {os.path.join(path, MODEL_FILE)} ({error.strerror}); check free space and "
                       "permissions of the library folder") from None


def _read_model_file(path: str) -> dict:
    p = os.path.join(path, MODEL_FILE)
    if not os.path.isfile(p):
        return {}
    damaged = f"{p} is damaged; pass --model/--checkpoint explicitly (it is rewritten by vmm index)"
    try:
        data = json.loads(Path(p).read_text())
    except (ValueError, UnicodeDecodeError):
        raise VmmError(damaged) from None
    except OSError as error:
        raise VmmError(f"cannot read {p} ({error.strerror}); check its permissions or pass --model/--checkpoint "
                       "explicitly") from None
    if (not isinstance(data, dict) or not all(isinstance(data.get(key), (str, type(None))) for key in
                                              ("model", "checkpoint"))
            or not isinstance(data.get("frames"), (int, type(None))) or isinstance(data.get("frames"), bool)):
        raise VmmError(damaged)
    return data


def _is_library(path: str) -> bool:
    from index.library import CATALOG_FILE
    return os.path.isfile(os.path.join(path, CATALOG_FILE))


def _load_recorded_encoder(path: str, saved: dict, device, frames=None, batch_size: int = 8):
    """The encoder model.json names; a model that no longer loads gets a message naming model.json and the fix."""
    try:
        return load_encoder(saved.get("model"), saved.get("checkpoint"), device, frames or saved.get("frames"),
                            batch_size=batch_size)
    except VmmError as error:
        if saved.get("model") is None and saved.get("checkpoint") is None:
            raise
        recorded = " + ".join(repr(v) for v in (saved.get("model"), saved.get("checkpoint")) if v)
        raise VmmError(f"the model recorded in {os.path.join(path, MODEL_FILE)} ({recorded}) cannot be loaded "
                       f"({error}); pass --model/--checkpoint with the library's model") from None
