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
import shlex
import threading
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np

from vmm.atomic import atomic_write_text
from vmm.errors import VmmError, is_whole_number

MODEL_FILE = "model.json"
NOT_RERANKED = -100.0  # score of hits outside the re-ranked top K (the official value)
_BLOCK_HITS = 1 << 16  # first-fetch hits a batch search holds at once: 10,000 texts at k=100 would be 4M Hit objects
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
        """The JSON object ``vmm search --json`` prints for the hit, less the ``exists`` field the command adds.

        >>> SearchHit(rank=1, path="/v/a.mp4", start=0.0, end=10.0, score=0.31, clip_ids=(4, 5)).to_dict()
        {'rank': 1, 'path': '/v/a.mp4', 'start': 0.0, 'end': 10.0, 'score': 0.31, 'clip_ids': [4, 5], 'itm': None}
        """
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
    or ``"color-histogram"`` for the dependency-free colour/motion baseline (video queries only). ``frames=None``:
    a checkpoint file's own frame count, else the model's."""
    if model == COLOR_HISTOGRAM:
        from index.encoder import ColorHistogramEncoder
        return ColorHistogramEncoder(num_frames=frames or 8)
    import vmm
    from vmm.embedder import VideoTextEncoder
    if model is None and checkpoint is None:
        raise VmmError("no model given; pass model= (--model) a name such as vmm_nano, or checkpoint= (--checkpoint) a "
                       "weights file")
    for option, value in (("model", model), ("checkpoint", checkpoint)):
        # An unset variable (--model "$MODEL"): an empty model was videomamba_m16_25m (downloaded, or "not in the
        # cache"), an empty checkpoint "pretrained='' is empty", an option the commands do not have.
        if value is not None and not str(value).strip():
            raise VmmError(f"--{option} is empty ({option}={value!r}); pass a "
                           f"{'model name such as vmm_nano or a model folder' if option == 'model' else 'weights file'}"
                           ", or leave it out")
    name = model or "videomamba_m16_25m"
    if model and os.sep in model and not os.path.exists(model) and model not in vmm.list_models():
        # A folder path (model.json records them absolute) is no model name: "unknown model" and the list of
        # every registered name hid that the folder was moved or deleted.
        raise VmmError(f"model folder {model} does not exist (moved, renamed or mistyped?); pass the folder's "
                       "current path, or a model name such as 'vmm_nano'")
    if checkpoint and Path(checkpoint).is_dir():
        name, checkpoint = checkpoint, None
    from vmm.models.persistence import is_pretrained_dir
    # Else "unknown model" and the list of registered names, which hides that the folder was found.
    if Path(name).is_dir() and not is_pretrained_dir(name) and name not in vmm.list_models():
        fix = ("checkpoint= (--checkpoint) a .pth or .safetensors file" if name != model else
               "model= (--model) a model name such as 'vmm_nano'")
        raise VmmError(f"{'model' if name == model else 'checkpoint'} {name} is a folder but not a vmm model folder "
                       f"(no config.json + model.safetensors); pass {fix}, or a folder written by save_pretrained")
    from vmm.factory import _not_a_model, checkpoint_frames, frames_override
    if Path(name).is_file():  # else looked up as a registered name: "unknown model" and every name listed
        raise VmmError(_not_a_model(name))
    overrides = frames_override(name, frames if frames is not None else checkpoint_frames(checkpoint))
    # is_pretrained_dir, not is_dir: a folder in the working one that shares a registered name (an empty "vmm_nano"
    # made for a run's output) is no model, and vmm.create_model_and_transforms builds the name there; taken as a
    # folder, vmm_nano got random weights and model.json recorded that folder.
    if checkpoint is None and not is_pretrained_dir(name):
        from vmm.factory import _is_multimodal, default_pretrained
        # A named model means its released weights (vmm_nano: the shipped checkpoint), never random ones.
        checkpoint = default_pretrained(name)
        # A video-text architecture without released weights (videomamba_m16_mm, vmm_nano_framemean) got random
        # ones, new at every load: the library it indexed refused every later search as built with another model.
        # Other architectures go on to VideoTextEncoder, which names what they are not.
        if checkpoint is None and _is_multimodal(name):
            raise VmmError(f"model {name} has no released weights, and random ones would differ at every load (no "
                           "search could use what they index); pass its weights with checkpoint= (--checkpoint "
                           "PATH), or a save_pretrained folder as model= (--model)")
    net, _, _ = vmm.create_model_and_transforms(name, pretrained=checkpoint, **overrides)
    return VideoTextEncoder(net, device=device, batch_size=batch_size)


def merge_moments(hits: Sequence[Any], gap: float = 0.0, *, partial: bool = False) -> list[dict]:
    """Temporal NMS over a ranking. Walking the hits best first, a window that overlaps (or touches within
    ``gap`` s) no moment of its video seeds a new one, and the moment seeded before it is final; until then,
    a window touching the open moment's seed window joins it, and any other window touching a moment of its
    video is dropped. So a moment is its seed window widened by the neighbours that touch the seed and rank
    above the next seed, however much of a video matches (chaining windows let one video become a single
    moment as long as itself), and never changed by asking for more results.

    ``partial``: ``hits`` are only the top of a longer ranking, so the open moment (which lower windows
    could still widen) is left out. Returns dicts with path, start, end, score and clip_ids (best hit first),
    best moment first.

    >>> from types import SimpleNamespace as H
    >>> [(m["start"], m["end"]) for m in merge_moments([H(path="a", start=0, end=10, score=.9, clip_id=1),
    ...     H(path="a", start=5, end=15, score=.8, clip_id=2), H(path="a", start=30, end=40, score=.7, clip_id=3)])]
    [(0, 15), (30, 40)]
    """
    def touches(m, h) -> bool:
        return h.start <= m["end"] + gap and m["start"] <= h.end + gap

    moments: list[dict] = []  # final, best first
    by_path: dict[str, list] = {}  # every moment of a video, the open one included
    current = None  # the open moment
    ranked = sorted(hits, key=lambda h: -h.score)  # stable: equal scores keep the caller's order
    for i, h in enumerate(ranked):
        if current is not None and current["path"] == h.path and touches(current["seed"], h) and not any(
                m is not current and touches(m, h) for m in by_path[h.path]):
            current["start"], current["end"] = min(current["start"], h.start), max(current["end"], h.end)
            current["ranks"].append(i)
        elif not any(touches(m, h) for m in by_path.get(h.path, ())):
            if current is not None:
                moments.append(current)
            current = {"path": h.path, "start": h.start, "end": h.end, "score": float(h.score), "ranks": [i],
                       "seed": {"start": h.start, "end": h.end}}
            by_path.setdefault(h.path, []).append(current)
    if current is not None and not partial:
        moments.append(current)
    for m in moments:
        del m["seed"]
        m["clip_ids"] = [ranked[i].clip_id for i in m.pop("ranks")]
    return moments


class VideoLibrary:
    """A searchable video library (a folder made by ``vmm index`` / :meth:`VideoLibrary.create`).

    Thread-safe for concurrent searches: each search reads the snapshot taken at :meth:`open` (or at the
    last :meth:`refresh`) from start to end, even when another thread refreshes, adds or removes meanwhile,
    and model calls are serialised.
    """

    def __init__(self, path: str, encoder, reader):
        self.path = path
        self.encoder = encoder
        self._reader = reader
        self._model_lock = threading.Lock()
        self._refresh_lock = threading.Lock()
        self._model_source: Optional[tuple] = None

    # -- opening ------------------------------------------------------------------------------------
    @classmethod
    def create(cls, path: Union[str, Path], model: Optional[str] = None, checkpoint: Optional[str] = None,
               device: Optional[str] = None, frames: Optional[int] = None, batch_size: int = 8) -> "VideoLibrary":
        """A new (or existing) library folder bound to a model, as ``vmm index`` binds it; add videos with
        :meth:`add`. An existing library's recorded model and frames are the defaults: without ``model`` and
        ``checkpoint`` its model, and a ``checkpoint`` given alone is loaded into it. ``batch_size``: clips per
        encoder call."""
        path, model, checkpoint = _check_arguments(path, model, checkpoint, None)
        if frames is not None and not is_whole_number(frames):
            raise VmmError(f"frames must be a whole number of frames per clip, got {frames!r}")
        frames = None if frames is None else int(frames)  # a NumPy integer failed in model.json's json.dump
        is_library = _is_library(path)
        if is_library and frames is not None:
            from index.library import check_library_frames
            check_library_frames(path, frames, "frames=")
        saved = _read_model_file(path, given=model is not None or checkpoint is not None) if is_library else {}
        if device is not None and not (checkpoint is None and (model or saved.get("model")) == COLOR_HISTOGRAM):
            # Before the model loads, so that a bad device is not reported as model.json failing to load; the
            # colour histogram runs on no device, so any is moot there.
            from vmm.factory import resolve_device
            resolve_device(device, "device= (--device)")
        # An existing library's model for a weights file given alone, as `vmm index --checkpoint` takes it
        model = _model_for(saved, model, checkpoint)
        # Its frames for its own model too: at the model's count, an existing library built with other frames
        # refused the same model as "built with color-histogram but this run uses color-histogram".
        recorded = frames if frames is not None else saved.get("frames")
        if model is None and checkpoint is None:
            if not saved:
                raise VmmError("no model given; pass model= (--model) a name such as vmm_nano, or checkpoint= "
                               "(--checkpoint) a weights file"
                               + (f" (library {path} records none{built_with(path)})" if is_library else ""))
            model, checkpoint = saved.get("model"), saved.get("checkpoint")
            encoder = _load_recorded_encoder(path, saved, device, recorded, batch_size=batch_size)
        else:
            try:
                encoder = load_encoder(model, checkpoint, device, _library_frames(path, recorded, checkpoint),
                                       batch_size=batch_size)
            except VmmError:
                if frames is not None or recorded is None:
                    raise
                # The frames came from model.json, recorded for the library's model: another model may not run at
                # them, and its error blamed frames never asked for. At its own count it loads, and the library's
                # check names the real difference (another model).
                encoder = load_encoder(model, checkpoint, device, _library_frames(path, None, checkpoint),
                                       batch_size=batch_size)
        lib = cls(path, encoder=encoder, reader=None)
        lib._model_source = (model, checkpoint, recorded)  # recorded beside the catalog by the first add()
        return lib

    @classmethod
    def open(cls, path: Union[str, Path], model: Optional[str] = None, checkpoint: Optional[str] = None,
             device: Optional[str] = None) -> "VideoLibrary":
        """Open an existing library with the model it was built with (or the one given, which must match)."""
        path, model, checkpoint = _check_arguments(path, model, checkpoint, device)
        if os.path.isfile(path):
            raise VmmError(f"{path} is a file, not a library folder; pass the folder the library was built in")
        if not os.path.isdir(path):
            raise VmmError(f"library {path} does not exist; create it with `vmm index VIDEOS --library "
                           f"{shlex.quote(path)}`")
        if not _is_library(path):
            raise VmmError(f"{path} is not a vmm library (no catalog.sqlite); index videos into one with "
                           f"`vmm index VIDEOS --library LIB`, then search LIB")
        saved = _read_model_file(path, given=model is not None or checkpoint is not None)
        if model is None and checkpoint is None:
            if not saved:
                raise VmmError(f"library {path} records no model (no {MODEL_FILE}); pass --model/--checkpoint "
                               f"(model=/checkpoint=) with the model it was built with{built_with(path)}")
            encoder = _load_recorded_encoder(path, saved, device)
        else:
            encoder = load_encoder(_model_for(saved, model, checkpoint), checkpoint, device,
                                   _library_frames(path, saved.get("frames"), checkpoint))
        from index.reader import open_library
        reader = open_library(path, model=encoder)
        return cls(path, encoder, reader)

    def refresh(self) -> None:
        """Take a new snapshot (see videos indexed since :meth:`open`); searches already running finish on theirs."""
        self._new_snapshot()

    def _new_snapshot(self):
        from index.reader import open_library
        with self._refresh_lock:  # of two refreshes at once, the later snapshot must be the one kept
            # The old snapshot is dropped, not closed: a search in another thread may still be reading it, and
            # it is freed with its last reference.
            self._reader = reader = open_library(self.path, model=self.encoder)
        return reader

    def close(self) -> None:
        self._reader = None  # not reader.close(), for the same reason as in _new_snapshot

    def __enter__(self) -> "VideoLibrary":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __len__(self) -> int:
        """Number of clips (vectors) in the snapshot."""
        reader = self._reader
        return 0 if reader is None else len(reader)

    # -- changing -----------------------------------------------------------------------------------
    def add(self, paths: Union[str, Path, Sequence[Union[str, Path]]], **options):
        """Index new or changed videos under ``paths``, one path or a list (see ``index.build_library`` for
        options)."""
        import inspect
        from index.ingest import build_library
        paths = _path_list(paths, "add")
        # build_library's TypeError named build_library, not add, and not the options there are.
        accepted = [name for name, p in inspect.signature(build_library).parameters.items()
                    if p.kind is p.KEYWORD_ONLY]
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            raise VmmError(f"add() got unknown option{'s' * (len(unknown) > 1)} {', '.join(unknown)}; the options "
                           f"are {', '.join(accepted)} (see index.build_library)")
        options.setdefault("progress", False)
        if self._model_source is not None:
            options.setdefault("on_open", self.record_model)
        summary = build_library(paths, self.path, self.encoder, **options)
        self._model_source = None
        self.refresh()
        return summary

    def record_model(self, folder: Union[str, Path, None] = None) -> None:
        """Write the model :meth:`create` was given into ``model.json`` in ``folder`` (default: the library's), so
        that :meth:`open` and ``vmm search`` load it; :meth:`add` does this at its first run. Pass it as
        ``on_open=`` when indexing with ``index.build_library`` or ``build_library_distributed`` instead (it then
        runs with the library locked and checked, before the first commit). Nothing for a library from
        :meth:`open`, which has its model recorded."""
        if self._model_source is not None:
            _write_model_file(self.path if folder is None else os.fspath(folder), *self._model_source)

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
        if (text is None) == (video is None):
            raise VmmError("give exactly one query: text=... or video=...")
        if text is not None and not isinstance(text, str):
            raise VmmError(f"text must be a string, got {type(text).__name__}; pass text='a red car'")
        if video is not None and not isinstance(video, (str, os.PathLike)):
            raise VmmError(f"video must be a path, got {type(video).__name__}; pass video='clip.mp4'")
        if text is not None and not text.strip():
            raise VmmError("empty query text; give some words to search for")
        return self._search([text], video, k, rerank, where, per_video, merge)[0]

    def search_many(self, texts: Sequence[str], k: int = 10, rerank: int = 0,
                    where: Union[Where, dict, Callable, None] = None, per_video: bool = False,
                    merge: bool = True) -> list[list[SearchHit]]:
        """The top ``k`` moments of each text, in the order of ``texts``: for each, what ``search(text=...)`` gives
        for it alone (the same hits; scores equal to float rounding, since the texts are encoded in batches), with
        one snapshot, one ``where`` decision and one FAISS call for the first fetch of all of them.

        >>> lib.search_many(["a dog catches a frisbee", "a red car"], k=5)   # doctest: +SKIP
        [[SearchHit(rank=1, ...), ...], [SearchHit(rank=1, ...), ...]]
        """
        if isinstance(texts, (str, bytes)) or not hasattr(texts, "__iter__"):
            # A lone string would be searched as its characters, one query each.
            raise VmmError(f"texts must be a list of strings, got {type(texts).__name__}; for one text pass [text] "
                           "or call search(text=...)")
        from vmm.tokenizer import refuse_unordered_texts
        refuse_unordered_texts(texts)
        texts = list(texts)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise VmmError(f"texts[{i}] must be a string, got {type(text).__name__}; pass texts=['a red car']")
        return self._search(texts, None, k, rerank, where, per_video, merge)

    def _search(self, texts: list, video, k, rerank, where, per_video: bool, merge: bool) -> list[list[SearchHit]]:
        """One ranking per text of ``texts`` ([None] with ``video``), all from one snapshot."""
        if not is_whole_number(k) or k < 1:
            raise VmmError(f"k must be a whole number >= 1, got {k!r}")
        if not is_whole_number(rerank) or rerank < 0:
            raise VmmError(f"rerank must be a whole number >= 0 (0: no re-ranking), got {rerank!r}")
        if rerank and video is not None:
            raise VmmError("rerank= (--rerank) needs a text query (ITM scores text-video pairs), not a video query; "
                           "drop it for a search by video")
        where = _as_filter(where)
        reader = self._reader
        if reader is None and self._model_source is not None and not _is_library(self.path):
            # create()d and nothing added yet: empty, as len() says, not "no vmm library at ... (--library)"
            self._query_vectors(texts, video)  # still names a wrong query
            return [[] for _ in texts]
        if reader is None:
            reader = self._new_snapshot()
        queries = self._query_vectors(texts, video)
        if where is not None:  # decided once per file, not once per query or per round of _rank
            from index.reader import ClipFilter
            accepts = where.accepts if isinstance(where, ClipFilter) else where
            allowed = {i for i, record in reader.files.items() if record.status == "ok" and accepts(record)}
            where = lambda record: record.id in allowed  # noqa: E731
        # per_video: more videos than the library (or the filter) holds cannot come, however deep the fetch
        videos = (len(allowed) if where is not None else sum(r.status == "ok" for r in reader.files.values())
                  ) if per_video else 0
        frames = _FrameCache()  # re-ranked windows, for later texts whose top K share them
        fetch = min(len(reader), 4 * max(int(k), int(rerank)))
        rows = max(1, _BLOCK_HITS // max(fetch, 1))
        ranked = []
        for start in range(0, len(queries), rows):
            block = queries[start:start + rows]
            # The first fetch of every text in one FAISS call: one matrix product over a flat index, where a scan
            # per text took 118 s for 1,000 texts over 200k clips against 7.7 s (benchmarks/search_many.py). Only a
            # text whose top k needs a deeper fetch searches again, alone, in _rank.
            first = reader.search_vectors(block, k=fetch, where=where) if fetch else [[] for _ in block]
            ranked += [self._rank(reader, query[None], text, where, videos, int(k), int(rerank), per_video, merge,
                                  frames, fetch, hits)
                       for query, text, hits in zip(block, texts[start:start + rows], first)]
        return ranked

    def _rank(self, reader, query: np.ndarray, text: Optional[str], where, videos: int, k: int, rerank: int,
              per_video: bool, merge: bool, frames: "_FrameCache", fetch: int, first: list) -> list[SearchHit]:
        """The top ``k`` moments of one query vector, given its ``first`` ``fetch`` hits; ``videos``: how many videos
        ``where`` lets through."""
        total = len(reader)
        moments, itm, options = [], {}, {}
        # Fetch deeper until k moments (or videos) are final: one long video can fill any fixed depth with its
        # windows and leave fewer than k results, each cut short by the depth.
        while fetch:
            hits = first if first is not None else reader.search_vectors(query, k=fetch, where=where, **options)[0]
            first = None
            if where is None and len(hits) < fetch and not options:
                # Unfiltered, the snapshot holds `total` >= fetch clips: a short answer is an IVF whose nprobe
                # lists hold fewer than fetch clips (or an HNSW graph cut short), not the end of the library,
                # and fetching deeper returned the same few (k=50 gave 32 hits of 594). Ask again exhaustively.
                from index.store import IVF_NLIST_MAX
                options = {"nprobe": IVF_NLIST_MAX, "ef_search": total}
                continue
            complete = fetch == total or len(hits) < fetch
            if not complete:  # clips tied with the last are ordered by FAISS beyond it, not by the ranking
                hits = [h for h in hits if h.score > hits[-1].score]
            hits.sort(key=lambda h: (-h.score, h.clip_id))
            if complete or len(hits) >= rerank:
                if rerank:
                    itm.update(self._rerank_scores(reader, text, [h for h in hits[:rerank] if h.clip_id not in itm],
                                                   frames))
                    # As the official evaluation: the ITM logit replaces the score of the top K, the rest get -100
                    # (finite, so --json stays valid JSON; ITM logits never come near it).
                    hits = sorted((_with_score(h, itm.get(h.clip_id, NOT_RERANKED)) for h in hits),
                                  key=lambda h: -h.score)
                moments = merge_moments(hits, partial=not complete) if merge else [
                    {"path": h.path, "start": h.start, "end": h.end, "score": float(h.score),
                     "clip_ids": [h.clip_id]} for h in hits]
                if per_video:
                    seen: set = set()
                    moments = [m for m in moments if not (m["path"] in seen or seen.add(m["path"]))]
                if complete or len(moments) >= (min(k, videos) if per_video else k):
                    break
            fetch = min(total, 4 * fetch)
        return [SearchHit(rank, m["path"], float(m["start"]), float(m["end"]), m["score"], tuple(m["clip_ids"]),
                          itm.get(m["clip_ids"][0])) for rank, m in enumerate(moments[:k], 1)]

    def truncated_query(self, text: str) -> Optional[str]:
        """The words the model reads of a text query longer than its text length (``encoder.max_text_len`` tokens,
        32 for the released models), or None when it reads all of it. The tokenizer cuts the rest off, as the
        official model does, so two long queries that differ only after the cut rank the library the same way.

        >>> lib.truncated_query("a dog " * 40)                   # doctest: +SKIP
        'a dog a dog a dog a dog a dog a dog a dog a dog a dog a dog a dog a dog a dog a dog a dog'
        """
        tokenizer = getattr(self.encoder, "tokenizer", None)
        if tokenizer is None:  # no text tower: a text search is refused anyway
            return None
        length = self.encoder.max_text_len
        if int(tokenizer([text], max_length=length + 1)[1].sum()) <= length:
            return None
        return tokenizer.decode(tokenizer([text], max_length=length)[0][0])

    def _query_vectors(self, texts: list, video) -> np.ndarray:
        """One row per text of ``texts``, or the one row of ``video`` (``texts`` is then [None])."""
        with self._model_lock:
            if video is None:
                if not hasattr(self.encoder, "encode_texts"):
                    raise VmmError(f"model {self.encoder.name} has no text tower; search it with video= (--video) QUERY.mp4")
                return self.encoder.encode_texts(texts).astype(np.float32)
            return self.encoder.encode_clips([read_query_clip(video, self.encoder.num_frames)]).astype(np.float32)

    def _rerank_scores(self, reader, text: str, hits, frames: "_FrameCache") -> dict[int, float]:
        if not hits:
            return {}
        m = reader.manifest
        by_path: dict[str, list] = {}
        mine = {h.clip_id: frames[h.clip_id] for h in hits if h.clip_id in frames}  # held here, whatever the cache drops
        for h in hits:
            if h.clip_id not in mine:
                by_path.setdefault(h.path, []).append(h)
        for path, group in by_path.items():
            _check_unchanged(reader.files.get(group[0].file_id), path)
            windows = read_windows(path, m.num_frames, m.window, m.stride, m.max_seconds,
                                   spans=[(h.start, h.end) for h in group])
            for h in group:
                mine[h.clip_id] = windows[(h.start, h.end)]
                frames.add(h.clip_id, mine[h.clip_id])
        clips = [mine[h.clip_id] for h in hits]
        with self._model_lock:
            scores = self.encoder.itm_scores_for(text, clips)
        return {h.clip_id: float(s) for h, s in zip(hits, scores)}


class _FrameCache(dict):
    """Decoded windows by clip id, for the re-ranking of one search call: the texts of ``search_many`` often share
    top-K clips, and each text decoded them again (20 texts re-ranking 5 clips each of six 720p videos: 6.8-7.1 s,
    4.4 s with the cache, 2.2-2.4 s without re-ranking). Up to ``max_bytes``; past it the oldest windows go (a window of a 1080p video is 50 MB at 8
    frames), the last one added excepted."""

    def __init__(self, max_bytes: int = 1 << 30):
        super().__init__()
        self.max_bytes, self.bytes = max_bytes, 0

    def add(self, clip_id: int, window: np.ndarray) -> None:
        self[clip_id] = window
        self.bytes += window.nbytes
        for old in list(self)[:-1]:  # insertion order: the oldest first, never the one just added
            if self.bytes <= self.max_bytes:
                break
            self.bytes -= self.pop(old).nbytes


def _with_score(hit, score: float):
    return replace(hit, score=score)


def _path_list(paths, what: str) -> list[str]:
    # A lone path is one path: iterating a string would give its characters, and "/" matches every file.
    if isinstance(paths, (str, os.PathLike)):
        return [os.fspath(paths)]
    try:
        return [os.fspath(p) for p in paths]
    except TypeError:
        raise VmmError(f"{what}() takes a path or a list of paths, got {paths!r}") from None


def _as_filter(where):
    from index.reader import ClipFilter, as_clip_filter
    if isinstance(where, Where):
        where = asdict(where)
    if isinstance(where, dict) and where.get("path_glob") is not None:
        where = {**where, "path_glob": absolute_path_glob(where["path_glob"])}
    where = as_clip_filter(where)
    if not isinstance(where, ClipFilter) or where.path_glob is None:
        return where
    clip_filter, real_folders = where, {}

    def accepts(record) -> bool:
        # A library indexed through a symlinked folder (~/videos -> /mnt/nas/videos) holds the link's paths:
        # --path /mnt/nas/videos/2019 matched none of them. Folders are resolved once each: a realpath per file
        # cost seconds over a large library at every search.
        if clip_filter.accepts(record):
            return True
        folder, name = os.path.split(record.path)
        if folder not in real_folders:
            real_folders[folder] = os.path.realpath(folder)
        real = real_folders[folder]
        return real != folder and clip_filter.accepts(replace(record, path=os.path.join(real, name)))
    return accepts


def absolute_path_glob(pattern):
    """``path_glob`` as the library's stored paths can match it: they are absolute and normalised, so a relative
    glob is taken from the current folder (``.``, ``..`` and ``~`` resolved as the shell would), one starting with
    ``*`` matches anywhere, and an existing file or folder means itself, or every video under it. A list is each of
    its globs; anything else is returned for the filter to name.

    >>> absolute_path_glob("*.mp4")
    '*.mp4'
    >>> absolute_path_glob("/videos/./2019/../*.mkv")
    '/videos/*.mkv'
    """
    if isinstance(pattern, (list, tuple)):
        globs = [absolute_path_glob(g) for g in pattern]
        return [g for glob in globs for g in ([glob] if isinstance(glob, str) else glob)]
    if isinstance(pattern, os.PathLike):
        pattern = os.fspath(pattern)
    if not isinstance(pattern, str) or pattern.startswith("*"):
        return pattern
    if pattern == "":  # an unset variable (path_glob=os.environ.get(...)): abspath("") is the working folder
        raise VmmError("path_glob is an empty string (''); pass a glob or a folder of the videos to keep, or no "
                       "path_glob")
    import glob
    # "vids/*" typed in the videos' parent folder matched nothing, and so did "./vids/*", "../vids/*" and a quoted
    # "~/vids/*", whose ".", ".." and "~" no stored path holds.
    absolute = os.path.normpath(os.path.abspath(os.path.expanduser(pattern)))
    if glob.has_magic(pattern) and not os.path.exists(absolute):
        return absolute
    # A file or folder that exists is meant as written: "[intro] clip.mp4" or "[2019] holidays" read as a glob
    # (a character class) matched nothing. A folder means the videos under it, also one no longer on disk (an
    # unmounted drive) whose videos the library still holds; one reached through a symlink also means its target,
    # which is where the library holds them when they were indexed from there (as `vmm index --remove` does).
    globs = []
    for path in dict.fromkeys((absolute, os.path.realpath(absolute))):
        literal = glob.escape(path)
        globs += [literal] if os.path.isfile(path) else [literal, os.path.join(literal, "*")]
    return globs


def _check_arguments(path, model, checkpoint, device) -> tuple:
    """The library path, model and checkpoint as strings, or VmmError naming the argument of a wrong type."""
    for name, value, what in (("path", path, "the library folder"),
                              ("model", model, "a model name or folder, e.g. 'vmm_nano',"),
                              ("checkpoint", checkpoint, "a checkpoint file")):
        if not isinstance(value, (str, os.PathLike)) and (value is not None or name == "path"):
            raise VmmError(f"{name} must be {what} as a str or pathlib.Path, got {type(value).__name__}"
                           + ("; decode it with os.fsdecode" if isinstance(value, bytes) else ""))
    if device is not None:  # before the model loads, so that a bad device is not reported as a bad model
        from vmm.factory import resolve_device
        resolve_device(device, option="device")
    from index.library import library_folder
    from vmm.models.persistence import user_path
    # A "~" the shell left alone ("~/My Videos/lib", quoted for its space) is the home folder, as `vmm index
    # --library` and path_glob take it: `vmm search` looked for a folder named "~" in the working one. So in a
    # model folder (`--model=~/models/final`, which vmm classify reads): it "did not exist".
    return (library_folder(os.path.expanduser(os.fspath(path))),
            *(None if v is None else user_path(os.fspath(v)) for v in (model, checkpoint)))


def _check_unchanged(record, path: str) -> None:
    """Re-ranking decodes the file again: one replaced since indexing would be scored on other content than the
    clip its vectors describe."""
    if record is None:
        return
    from index.pool import FileStamp  # the test a run of vmm index makes, a time after 2262 wrapped as stored
    try:
        unchanged = FileStamp(record.fingerprint, record.size, record.mtime_ns).holds(path)
    except OSError:
        return  # read_windows reports a file that is gone
    if not unchanged:
        raise VmmError(f"{path} changed since it was indexed; run `vmm index` again to update the library, "
                       "or search without rerank= (--rerank)")


def built_with(library: str) -> str:
    """", per its manifest.json: model 'vmm_nano' (weights ...)", or "" when that copy cannot be read: the name is
    all that is left to go on once model.json is gone.

    >>> built_with("/nonexistent-library")
    ''
    """
    from index.library import read_manifest_copy
    manifest = read_manifest_copy(library)
    if manifest is None:
        return ""
    return f", per its manifest.json: model {manifest.model_name!r} (weights {manifest.weights_hash})"


def check_video_file(path: Union[str, Path], what: str = "query video") -> None:
    """Refuse, in one line naming ``what``, a path that is not a readable video file (before any decoding).

    >>> check_video_file("/nonexistent/clip.mp4", "video")
    Traceback (most recent call last):
    vmm.errors.VmmError: video /nonexistent/clip.mp4 does not exist; check the path
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise VmmError(f"{what} {path} does not exist; check the path")
    if not os.path.isfile(path):  # a folder, a FIFO (reading one would wait forever)...
        raise VmmError(f"{what} {path} is not a file; pass the path of a video file")
    from index.discovery import named_video_problem
    # The indexer's own test: FFmpeg reads some text files as subtitles, and a JSON file given by mistake was
    # reported as "no video stream in the container (it holds subtitle)".
    problem = named_video_problem(path)
    if problem is not None:
        raise VmmError(f"{what} {path}: {problem}")


def read_query_clip(path: Union[str, Path], num_frames: int, what: str = "query video") -> np.ndarray:
    """The whole video as one clip of ``num_frames`` middle-sampled frames (uint8 (T, H, W, 3)). A leading ``~`` is
    the home folder, as in the library's own paths: `vmm search LIB --video "~/q.mp4"` and search(video="~/q.mp4")
    said "does not exist"."""
    from index.decode import decode_video
    from vmm.models.persistence import user_path
    path = user_path(path)
    check_video_file(path, what)
    _, clips = decode_video(os.fspath(path), num_frames=num_frames, window=math.inf)
    return clips[0].frames


def read_windows(path: str, num_frames: int, window: float, stride: float, max_seconds: Optional[float],
                 spans: Optional[Sequence[tuple[float, float]]] = None) -> dict[tuple[float, float], np.ndarray]:
    """All clip windows of a video planned exactly as at indexing time: {(start, end): frames}; with ``spans``,
    only the window nearest each (start, end) of them, keyed by that span.

    Frames are kept at the video's own size, so ``spans`` bounds the memory: re-ranking one hit of a 5-minute 720p
    video held all of its 59 windows, 0.6 GB (an hour of 1080p: 35 GB).
    """
    from index.decode import DecodeFailure, DecodeOptions, DecodeStart, _as_vmm_error, iter_decode
    if not os.path.isfile(path):
        raise VmmError(f"{path} is gone since it was indexed; run `vmm index` again to update the library, or "
                       "search without rerank= (--rerank)")
    options = DecodeOptions(num_frames=num_frames, window=window, stride=stride, max_seconds=max_seconds)
    nearest: dict = {}  # span: (distance to the window, its frames)
    try:
        for event in iter_decode(path, options):
            if isinstance(event, DecodeStart):  # a first decoder failed midway: its clips are dropped
                nearest = {}
                continue
            for span in [(event.start, event.end)] if spans is None else spans:
                distance = abs(span[0] - event.start) + abs(span[1] - event.end)
                if span not in nearest or distance < nearest[span][0]:
                    nearest[span] = (distance, event.frames)
    except DecodeFailure as error:
        raise _as_vmm_error(path, error) from None
    return {span: frames for span, (_, frames) in nearest.items()}


def _write_model_file(path: str, model, checkpoint, frames) -> None:
    """Record the model beside the catalog (called with the library locked, before its first commit)."""
    from vmm.factory import HF_PREFIX
    from vmm.models.persistence import is_pretrained_dir
    if model and model != COLOR_HISTOGRAM and is_pretrained_dir(model):
        model = os.path.abspath(model)  # a relative folder would name another one from another working directory
    if checkpoint and checkpoint != "default" and not checkpoint.startswith(HF_PREFIX):
        # A hub reference, or "default" (the model's released file), names the same file from anywhere: made
        # "absolute" it became a file under the working folder, and every later search failed to load it.
        checkpoint = os.path.abspath(checkpoint)
    data = {"model": model, "checkpoint": checkpoint or None, "frames": frames}
    target = os.path.join(path, MODEL_FILE)
    try:
        with open(target) as f:
            if json.load(f) == data:
                return  # rewritten on every run, it was the first write to fail on a full disk, for no change
    except (OSError, ValueError):
        pass
    try:
        # The folder is flushed too: written before the catalog's first commit, a model.json whose rename was lost
        # to a power cut left a library whose every search asked for --model.
        atomic_write_text(target, json.dumps(data, indent=2))
    except OSError as error:
        raise VmmError(f"cannot write {target} ({error.strerror}); check free space and permissions of the library "
                       "folder") from None


def _read_model_file(path: str, *, given: bool = False) -> dict:
    """The library's model.json, {} when it has none. ``given``: the caller passes the model itself, as the message
    for a damaged or unreadable file asks, so such a file counts as none (vmm index rewrites it); it was refused
    again, and the only way on was to delete the file by hand."""
    try:
        return _model_file(path)
    except VmmError:
        if given:
            return {}
        raise


def _model_file(path: str) -> dict:
    p = os.path.join(path, MODEL_FILE)
    if not os.path.isfile(p):
        return {}
    damaged = f"{p} is damaged; pass --model/--checkpoint (model=/checkpoint=) explicitly (it is rewritten by vmm index)"
    try:
        data = json.loads(Path(p).read_text())
    except (ValueError, UnicodeDecodeError):
        raise VmmError(damaged) from None
    except OSError as error:
        raise VmmError(f"cannot read {p} ({error.strerror}); check its permissions or pass --model/--checkpoint "
                       "(model=/checkpoint=) explicitly") from None
    if (not isinstance(data, dict) or not all(isinstance(data.get(key), (str, type(None))) for key in
                                              ("model", "checkpoint"))
            or not isinstance(data.get("frames"), (int, type(None))) or isinstance(data.get("frames"), bool)):
        raise VmmError(damaged)
    return data


def _model_for(saved: dict, model: Optional[str], checkpoint: Optional[str]) -> Optional[str]:
    """``model``, or for a checkpoint given alone the model name the library records (``saved``, its model.json): a
    weights file names no architecture, and load_encoder's default (videomamba_m16_25m) refused the moved weights
    of any other model as not fitting it.

    >>> _model_for({"model": "vmm_nano", "checkpoint": "/old/nano.pth"}, None, "/new/nano.pth")
    'vmm_nano'
    """
    recorded = saved.get("model")
    if model is None and checkpoint is not None and recorded not in (None, COLOR_HISTOGRAM) and os.sep not in recorded:
        return recorded  # a name: recorded model folders are absolute paths, and hold their own weights
    return model


def _is_library(path: str) -> bool:
    from index.library import CATALOG_FILE
    return os.path.isfile(os.path.join(path, CATALOG_FILE))


def _library_frames(path: str, frames: Optional[int], checkpoint: Optional[str]) -> Optional[int]:
    """The frame count for an encoder of the library at ``path``: ``frames`` when given; for a checkpoint file
    without it, the library's own frames per clip (its manifest). load_encoder would take the file's own count
    (vmm.factory.checkpoint_frames), and a library indexed before it did recorded ``frames: null`` and holds vectors
    of the model config's count: it was refused as built with another model."""
    if frames is not None or not checkpoint or not Path(checkpoint).is_file():
        return frames
    from index.library import read_manifest_copy
    manifest = read_manifest_copy(path)
    return frames if manifest is None else manifest.num_frames


def _load_recorded_encoder(path: str, saved: dict, device, frames=None, batch_size: int = 8):
    """The encoder model.json names; a model that no longer loads gets a message naming model.json and the fix."""
    try:
        frames = _library_frames(path, frames or saved.get("frames"), saved.get("checkpoint"))
        return load_encoder(saved.get("model"), saved.get("checkpoint"), device, frames, batch_size=batch_size)
    except VmmError as error:
        if saved.get("model") is None and saved.get("checkpoint") is None:
            raise
        recorded = " + ".join(repr(v) for v in (saved.get("model"), saved.get("checkpoint")) if v)
        raise VmmError(f"the model recorded in {os.path.join(path, MODEL_FILE)} ({recorded}) cannot be loaded "
                       f"({error}); pass --model/--checkpoint (model=/checkpoint=) "
                       "with the library's model") from None
