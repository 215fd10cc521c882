"""Zero-shot video-text retrieval evaluation, end to end, with the official protocol.

:func:`evaluate` runs what the official ``exp_zs`` evaluation runs, and reports three rows:

- ``emb``: ITC only. Per-frame video embeddings (8 frames, "middle" sampling, DiDeMo: first
  30 s; bicubic squash to the model's size) against text embeddings: mean over frames of
  the per-frame cosine.
- ``rerank``: the top-k of every query by ITC (both directions) re-scored by the ITM head;
  the ITM logit replaces the score (the published numbers are this row).
- ``index``: what a video library returns. Each video is stored as one vector, the
  L2-normalised mean of its per-frame embeddings, in a FAISS index (exact ``IndexFlatIP``
  or an IVF index); texts rank videos by inner product, and videos rank texts through an
  index of the text embeddings. ANN recall@10 against exact search is reported.

Decoding runs in worker processes (:class:`index.pool.DecodePool`) while the model
encodes; under ``torchrun`` / ``accelerate launch`` each rank encodes a strided shard of
videos and texts, rank 0 gathers them and does the rest (other ranks return ``None``).
The ``index`` row is scored by :mod:`retrieval.index_metrics`; :mod:`retrieval.report` builds and writes the report.

>>> from retrieval.evaluate import EvalConfig
>>> EvalConfig("msrvtt", "msrvtt_ret_test1k.json", "MSRVTT/videos/all").rerank_k
128
"""
from __future__ import annotations

import contextlib
import math
import numbers
import os
import queue
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import torch
from torch import Tensor

from retrieval.annotations import (RetrievalDataset, extension_hint, folder_hint, get_protocol,
                                   load_retrieval_dataset)
from retrieval.index_metrics import check_index_options, index_metrics
from retrieval.metrics import chunked_similarity, retrieval_metrics
from retrieval.paper_numbers import checkpoint_corpus
from retrieval.report import atomic_write, build_report, check_outputs, format_markdown, write_json, write_markdown
from retrieval.rerank import rerank_topk
from vmm.errors import VmmError, is_whole_number, out_of_memory
from vmm.progress import ProgressBars

DEFAULT_CHECKPOINT = "hf-hub:OpenGVLab/VideoMamba/videomamba_m16_25M_f8_res224.pth"
MISSING_HINT = ("point videos= (--videos) at the folder that holds them or pass allow_missing=True (--allow-missing) "
                "to evaluate without them")


_EMPTY_FIX = {"annotations": "the annotation file (e.g. msrvtt_ret_test1k.json)",
              "videos": "the folder of the dataset's videos",
              "model": "a model name such as videomamba_m16_25m or a model folder, or leave it out",
              "checkpoint": "a weights file, or leave it out"}


@dataclass
class EvalConfig:
    """Everything that decides what :func:`evaluate` measures and how fast.

    ``checkpoint=None`` uses the weights of a ``save_pretrained`` folder given as ``model``,
    or the official file named in a registered model's config (``"default"``).
    ``frames=None`` takes a model folder's or checkpoint file's own frame count, else the dataset protocol's
    ``num_frames`` (8 for every official dataset; a custom :class:`DatasetProtocol` may set another).
    ``batch_size`` is videos per encoder batch; ``text_batch_size`` (official 256) and
    ``itm_batch_size`` (pairs per ITM forward; official 32, any value gives the same
    scores) only change speed. ``sim_chunk`` is videos per ITC block (None: automatic).
    ``index`` is ``"flat"`` (exact) or ``"ivf"`` (``nlist``/``nprobe``, automatic if None).
    """

    dataset: str
    annotations: str | Path
    videos: str | Path
    model: str | Path = "videomamba_m16_25m"
    checkpoint: Optional[str | Path] = None
    frames: Optional[int] = None
    rerank_k: int = 128
    batch_size: int = 16
    text_batch_size: int = 256
    itm_batch_size: int = 128
    allow_missing: bool = False
    device: str = "auto"
    precision: str = "auto"  # "auto" (bf16 on CUDA, fp32 on CPU), "bf16" or "fp32"
    workers: int = 4
    decode_timeout: float = 120.0
    index: str = "flat"
    nlist: Optional[int] = None
    nprobe: Optional[int] = None
    sim_chunk: Optional[int] = None
    progress: bool = False

    def check(self) -> None:
        """Raise VmmError naming the first bad option (as the field and its ``vmm eval`` flag).

        Files are not looked at here; :func:`evaluate` checks them next.

        >>> EvalConfig("msrvtt", "msrvtt_ret_test1k.json", "MSRVTT/videos/all", rerank_k=0).check()
        Traceback (most recent call last):
        vmm.errors.VmmError: rerank_k (--rerank-k) must be a whole number >= 1, got 0
        """
        get_protocol(self.dataset)
        for name in ("annotations", "videos", "model", "checkpoint"):
            value = getattr(self, name)
            if not isinstance(value, (str, os.PathLike)) and (value is not None or name != "checkpoint"):
                raise VmmError(f"{_option(name)} must be a str or pathlib.Path, got {type(value).__name__}")
            if value is not None and not os.fspath(value).strip():  # Path("") is the working folder
                raise VmmError(f"{_option(name)} is empty; pass {_EMPTY_FIX[name]}")
        # Wrong types failed later as a TypeError (rerank_k="5") or deep in the encoder (frames=4.0).
        for name in _COUNTS:
            value = getattr(self, name)
            if not (_whole(value, 1) or (value is None and name in ("frames", "sim_chunk"))):
                raise VmmError(f"{_option(name)} must be a whole number >= 1, got {value!r}")
        if not _whole(self.workers, 0):
            raise VmmError(f"{_option('workers')} must be a whole number >= 0 (0 decodes in the main process), "
                           f"got {self.workers!r}")
        for name in ("allow_missing", "progress"):
            if not isinstance(getattr(self, name), bool):  # allow_missing="no" would be true
                raise VmmError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise VmmError(f"{_option('precision')} must be auto, bf16 or fp32, got {self.precision!r}")
        # 0 or NaN would time out every decode and blame good videos as unreadable.
        timeout = self.decode_timeout
        if not (isinstance(timeout, numbers.Real) and not isinstance(timeout, bool) and timeout > 0):
            raise VmmError(f"{_option('decode_timeout')} must be a number of seconds > 0, got {timeout!r}")
        check_index_options(self.index, self.nlist, self.nprobe,
                            name={"kind": "index (--index)", "nlist": _option("nlist"), "nprobe": _option("nprobe")})
        _check_device(self.device)


_COUNTS = ("frames", "rerank_k", "batch_size", "text_batch_size", "itm_batch_size", "sim_chunk")  # whole numbers >= 1


def _option(name: str) -> str:
    """A field of EvalConfig with the vmm eval flag that sets it: the same check serves both."""
    return f"{name} (--{name.replace('_', '-')})"


def _whole(value, least: int) -> bool:
    return is_whole_number(value) and value >= least


def _check_device(device: str) -> None:
    """Refuse anything but auto, cpu, cuda, cuda:N here, before torch turns it into a traceback mid-run."""
    if device in ("auto", "cpu", "cuda"):
        return
    try:
        parsed = torch.device(device) if isinstance(device, str) else None  # torch.device(5) is cuda:5
    except (RuntimeError, ValueError, TypeError):
        parsed = None
    if parsed is None or parsed.type != "cuda":
        raise VmmError(f"{_option('device')} {device!r} is not a device this evaluation runs on; pass auto, cpu, "
                       "cuda or cuda:N")


@dataclass
class EvalResult:
    """The report (JSON-ready dict) plus the score matrices behind it.

    ``itc`` is (V, T); ``i2t`` (V, T) and ``t2i`` (T, V) are the re-ranked matrices; all
    float32 on the CPU, over the evaluated videos and texts of ``dataset``.
    """

    report: dict
    itc: Tensor
    i2t: Tensor
    t2i: Tensor
    dataset: RetrievalDataset

    def markdown(self) -> str:
        return format_markdown(self.report)

    def save_scores(self, path: str | Path) -> Path:
        """Write itc, i2t, t2i, txt2vid and video paths to an ``.npz`` file (atomically)."""
        arrays = dict(itc=self.itc.numpy(), i2t=self.i2t.numpy(), t2i=self.t2i.numpy(),
                      txt2vid=np.asarray(self.dataset.txt2vid, dtype=np.int64),
                      videos=np.asarray([str(p) for p in self.dataset.videos]))
        return atomic_write(Path(path), lambda f: np.savez(f, **arrays), binary=True)


# ---------------------------------------------------------------------------------------------- runtime
@dataclass
class _Runtime:
    device: torch.device
    dtype: torch.dtype  # model weights and activations
    rank: int = 0
    world: int = 1
    owns_group: bool = False  # we initialised torch.distributed, so we tear it down

    @property
    def comm_device(self) -> torch.device:
        return self.device if self.device.type == "cuda" else torch.device("cpu")

    def autocast(self):
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def describe(self) -> str:
        name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu"
        kind = self.device.type if self.device.type == "cpu" else f"cuda ({name})"
        return kind + (f" x {self.world} processes" if self.world > 1 else "")


def _start_runtime(config: EvalConfig) -> _Runtime:
    import torch.distributed as dist
    from index.distributed import launch_info
    from vmm.factory import resolve_device
    # LOCAL_RANK, else the rank within its node: every rank took cuda:0 where a launcher did not set it
    launch = launch_info()
    world = launch.world_size
    device = resolve_device(config.device, _option("device"))  # auto, a visible GPU and its index, as every command checks them
    if device.type == "cuda" and world > 1:
        count = torch.cuda.device_count()
        local_rank, guessed = launch.local_rank, not os.environ.get("LOCAL_RANK", "").strip()
        if guessed and count == 1:
            # Without LOCAL_RANK the rank within one machine is a guess: a process per machine, or a GPU bound to
            # each process (srun --gpus-per-task=1), sees one GPU, its own, and was refused where it ran before.
            local_rank = 0
        if local_rank >= count:  # NCCL refuses two ranks on one GPU; beyond them set_device failed raw
            raise VmmError(f"process {launch.rank} of {world} (local rank {local_rank}"
                           f"{', as LOCAL_RANK is not set' if guessed else ''}) has no GPU of its own: "
                           f"{count} {'is' if count == 1 else 'are'} visible on its machine; launch at most {count} "
                           f"process{'es' * (count > 1)} per machine (torchrun --nproc_per_node {count})"
                           f"{', set LOCAL_RANK' if guessed else ''}, or pass {_option('device')} cpu")
        device = torch.device("cuda", local_rank)
    elif device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if device.type == "cuda":
        torch.cuda.set_device(device)
    precision = config.precision
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    runtime = _Runtime(device, torch.bfloat16 if precision == "bf16" else torch.float32)
    if world > 1:
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
            runtime.owns_group = True
        runtime.rank, runtime.world = dist.get_rank(), dist.get_world_size()
    return runtime


def _stop_runtime(runtime: _Runtime) -> None:
    if runtime.owns_group:
        import torch.distributed as dist
        dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------- model
def _load_eval_model(config: EvalConfig, device: torch.device | str = "cpu",
                    dtype: torch.dtype = torch.float32):
    """(model, eval transform, tokenizer, model name, checkpoint) ready for evaluation.

    >>> # model, transform, tokenizer, name, ckpt = _load_eval_model(EvalConfig("msrvtt", "a.json", "videos"))
    """
    import vmm
    from vmm.factory import default_pretrained, saved_frames
    from vmm.models.persistence import is_pretrained_dir
    model_arg, checkpoint = config.model, config.checkpoint
    is_dir = is_pretrained_dir(model_arg)
    if is_dir and checkpoint is not None:
        raise VmmError(f"model (--model) {model_arg} is a model folder with its own weights; drop checkpoint "
                       "(--checkpoint), or pass a registered model name (e.g. videomamba_m16_25m) with it")
    if not is_dir and Path(str(model_arg)).exists():
        raise VmmError(f"model (--model) {model_arg} is not a vmm model folder (needs config.json and "
                       "model.safetensors, or a trainable-only export); pass a registered model name or a "
                       "save_pretrained folder")
    from vmm.models.registry import get_model_config

    def video_text_models() -> str:  # for the messages only: it reads every model config
        return ", ".join(m for m in vmm.list_models() if (get_model_config(m) or {}).get("architecture", m)
                         == "videomamba_m16_mm" and m != "videomamba_m16_mm")
    if not is_dir and str(model_arg) not in vmm.list_models():
        # A misspelt name or a folder that is not there was told it "has no official weights file", and sent to
        # --checkpoint, which cannot help.
        raise VmmError(f"model (--model) {model_arg} is neither a registered model nor a model folder; use one of "
                       f"{video_text_models()}, or the path of a save_pretrained folder")
    if not is_dir:
        arch = (get_model_config(str(model_arg)) or {}).get("architecture", str(model_arg))
        if arch != "videomamba_m16_mm":
            raise VmmError(f"model (--model) {model_arg} is not a video-text model; use one of "
                           f"{video_text_models()}")
    if is_dir:
        model, _, transform = vmm.create_model_and_transforms(model_arg)
    else:
        # Random weights are never evaluated: no checkpoint means the official file of the model config.
        # Loading a checkpoint interpolates the temporal position table to the requested frame count,
        # but weights from a model folder (e.g. the shipped vmm_nano) load strictly, so their frame count must match.
        weights = checkpoint if checkpoint is not None else default_pretrained(str(model_arg))
        if weights is None:  # the factory's own message names its Python argument (pretrained=)
            raise VmmError(f"model (--model) {model_arg} has no official weights file; pass one with checkpoint "
                           f"(--checkpoint PATH), or a save_pretrained folder as the model")
        saved = saved_frames(weights) if is_pretrained_dir(weights) else None
        if saved is not None and saved != config.frames:
            raise VmmError(f"--frames {config.frames} (frames={config.frames}): the weights of {model_arg} ({weights}) "
                           f"were saved for {saved} frames; pass --frames {saved} (frames={saved})")
        try:
            model, _, transform = vmm.create_model_and_transforms(
                model_arg, pretrained="default" if checkpoint is None else checkpoint,
                vision={"num_frames": config.frames})
        except RuntimeError as e:
            if "size mismatch" not in str(e):
                raise
            raise VmmError(f"model (--model) {model_arg} with frames (--frames) {config.frames}: the weights "
                           f"{weights or 'of the model'} do not fit ({str(e).strip().splitlines()[-1].strip()}); "
                           "pass the frame count and model they were saved for") from None
    vision = getattr(model.cfg, "vision", None)
    if vision is None or not hasattr(model, "itm_logits"):
        raise VmmError(f"model (--model) {model_arg} is not a video-text model (it has no text tower and ITM head)")
    if vision.num_frames != config.frames:
        raise VmmError(f"--frames {config.frames} (frames={config.frames}): the model in {model_arg} was saved for "
                       f"{vision.num_frames} frames; pass --frames {vision.num_frames} (frames={vision.num_frames})")
    protocol = get_protocol(config.dataset)
    if model.cfg.text.max_position_embeddings < protocol.max_text_len:
        raise VmmError(f"{protocol.name} needs texts of {protocol.max_text_len} tokens but the model's text tower "
                       f"has {model.cfg.text.max_position_embeddings} positions; use a model with more")
    tokenizer = vmm.get_tokenizer(str(model_arg))
    model = model.to(device=device, dtype=dtype).eval()
    name = getattr(model, "model_name", None) or str(model_arg)
    source = None if is_dir else str(getattr(model, "pretrained_source", checkpoint))
    return model, transform, tokenizer, name, source


# ---------------------------------------------------------------------------------------------- features
@dataclass
class TextFeatures:
    """Unit text embeddings (N, E) float32, text-only hidden states (N, L, H) for ITM, masks (N, L)."""

    emb: Tensor
    hidden: Tensor
    mask: Tensor


@dataclass
class VideoFeatures:
    """Unit per-frame embeddings (N, F, E) float32, patch tokens (N, F*P, D) for ITM, failures by row."""

    frames: Tensor
    tokens: Tensor
    failures: dict[int, str] = field(default_factory=dict)


@torch.inference_mode()
def _encode_texts(model, tokenizer, texts: list[str], max_len: int, batch_size: int, runtime: _Runtime,
                 progress=None) -> TextFeatures:
    """Encode texts in batches: CLS embeddings for ITC, hidden states and masks for ITM (kept on the CPU)."""
    if texts:
        # The test-set texts went through pre_text when loaded; the official code does not clean them twice.
        ids, mask = tokenizer(texts, max_length=max_len, clean=False)
    else:  # an empty shard (more ranks than texts) still takes part in the gather
        ids = mask = torch.zeros(0, max_len, dtype=torch.long)
    emb = torch.empty(len(texts), model.cfg.embed_dim)
    hidden = torch.empty(len(texts), max_len, model.cfg.text.hidden_size, dtype=runtime.dtype)
    for start in range(0, len(texts), batch_size):
        stop = min(start + batch_size, len(texts))
        with runtime.autocast():
            e, h = model.encode_text(ids[start:stop].to(runtime.device), mask[start:stop].to(runtime.device),
                                     return_hidden=True)
        emb[start:stop] = e.float().cpu()
        hidden[start:stop] = h.to(runtime.dtype).cpu()
        if progress:
            progress(stop - start)
    return TextFeatures(emb, hidden, mask)


def _decoded_batches(pool, transform, batch_size: int, failures: dict[int, str],
                     stop: threading.Event) -> Iterator[tuple[list[int], Tensor]]:
    """Batches of (row indices, transformed clips) from a running DecodePool, prepared in a thread.

    The thread pulls decoded frames and applies the transform while the caller's model runs,
    so decoding, resizing and encoding overlap. Failed files land in ``failures``.
    """
    out: queue.Queue = queue.Queue(maxsize=2)

    def put(item) -> None:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def produce() -> None:
        rows: list[int] = []
        clips: list[Tensor] = []
        try:
            while pool.pending() and not stop.is_set():
                event = pool.get(timeout=0.2)
                if event is None:
                    continue
                kind, key, payload = event
                if kind == "clip":
                    rows.append(key)
                    clips.append(transform(payload.frames))
                elif kind == "failed":
                    failures[key] = payload
                if len(rows) == batch_size:
                    put((rows, torch.stack(clips)))
                    rows, clips = [], []
            if rows:
                put((rows, torch.stack(clips)))
            put(None)
        except BaseException as error:  # surfaced in the consumer
            put(error)

    thread = threading.Thread(target=produce, name="vmm-eval-frames", daemon=True)
    thread.start()
    try:
        while True:
            item = out.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()


@torch.inference_mode()
def _encode_videos(model, transform, paths: list[Path], decode_options, batch_size: int, runtime: _Runtime,
                  workers: int = 4, decode_timeout: float = 120.0, stop_on_failure: bool = False,
                  progress=None) -> VideoFeatures:
    """Decode (in worker processes) and encode videos; one row per path, zeros where decoding failed.

    With ``stop_on_failure`` the model stops encoding after the first failure, but decoding
    continues so that every unreadable file is found and listed in one run.
    """
    from index.pool import DecodePool
    n = len(paths)
    # keep_temporal=False or pool_type="cls" pool a whole clip into one vector, not one per frame
    frames_emb = torch.zeros(n, model.pooled_per_clip(decode_options.num_frames), model.cfg.embed_dim)
    tokens: Optional[Tensor] = None
    failures: dict[int, str] = {}
    stop = threading.Event()
    with DecodePool(decode_options, workers=workers, timeout=decode_timeout, prefetch=2 * batch_size) as pool:
        for row, path in enumerate(paths):
            pool.submit(row, str(path))
        batches = _decoded_batches(pool, transform, batch_size, failures, stop)
        try:
            for rows, clips in batches:
                if not (stop_on_failure and failures):
                    with runtime.autocast():
                        emb, vis = model.encode_video(clips.to(runtime.device, runtime.dtype, non_blocking=True),
                                                      per_frame=True, return_tokens=True)
                    if tokens is None:
                        tokens = torch.zeros(n, *vis.shape[1:], dtype=runtime.dtype)
                    index = torch.as_tensor(rows)
                    frames_emb[index] = emb.float().cpu()
                    tokens[index] = vis.to(runtime.dtype).cpu()
                if progress:
                    progress(len(rows), note=f"{len(failures)} unreadable" if failures else "")
        finally:
            batches.close()  # stops the frame thread before the pool goes away, also on errors
        if progress and failures:
            progress(0, note=f"{len(failures)} unreadable")
    if tokens is None:  # nothing decoded here: the shape still has to be right for gathering
        vision = model.cfg.vision
        side = vision.img_size // vision.patch_size
        tubelets = decode_options.num_frames // vision.tubelet_size  # one token grid per tubelet, not per frame
        tokens = torch.zeros(n, tubelets * side * side, vision.embed_dim, dtype=runtime.dtype)
    return VideoFeatures(frames_emb, tokens, failures)


# ---------------------------------------------------------------------------------------------- distributed
def _gather_rows(shard: Tensor, total: int, runtime: _Runtime, chunk_bytes: int = 64 << 20) -> Optional[Tensor]:
    """Rank r holds global rows r, r + W, r + 2W, ...; rank 0 gets all ``total`` rows in order (others: None).

    Sent in fixed-size chunks (padded shards) so memory stays bounded, as raw bytes: every dtype
    travels bit-exactly over every backend (NCCL has no int16, gloo no bfloat16 everywhere).
    """
    import torch.distributed as dist
    if runtime.world == 1:
        return shard
    world, rank = runtime.world, runtime.rank
    max_rows = math.ceil(total / world)
    dtype, row_shape = shard.dtype, shard.shape[1:]
    wire = shard.contiguous().view(torch.uint8) if shard.ndim > 1 else shard.contiguous()
    wire_shape = wire.shape[1:]
    row_bytes = max(1, int(np.prod(wire_shape)) * wire.element_size())
    rows_per_chunk = max(1, chunk_bytes // row_bytes)
    out = torch.empty((total, *wire_shape), dtype=wire.dtype) if rank == 0 else None
    for start in range(0, max_rows, rows_per_chunk):
        count = min(rows_per_chunk, max_rows - start)
        piece = torch.zeros((count, *wire_shape), dtype=wire.dtype, device=runtime.comm_device)
        mine = wire[start:start + count]
        piece[:len(mine)] = mine.to(runtime.comm_device)
        parts = [torch.empty_like(piece) for _ in range(world)] if rank == 0 else None
        dist.gather(piece, parts, dst=0)
        if rank == 0:
            local = torch.arange(start, start + count)
            for r, part in enumerate(parts):
                rows = r + local * world
                valid = rows < total
                out[rows[valid]] = part[valid].cpu()
    if out is None:
        return None
    return out.view(dtype).reshape(total, *row_shape) if shard.ndim > 1 else out


def _gather_objects(obj: Any, runtime: _Runtime) -> list:
    import torch.distributed as dist
    if runtime.world == 1:
        return [obj]
    gathered: list = [None] * runtime.world
    dist.all_gather_object(gathered, obj)
    return gathered


# ---------------------------------------------------------------------------------------------- drops
def _drop_videos(dataset: RetrievalDataset, bad: set[int]) -> tuple[RetrievalDataset, list[int], list[int]]:
    """The dataset without videos ``bad`` and their texts; also the kept video and text rows."""
    keep_videos = [v for v in range(len(dataset.videos)) if v not in bad]
    new_index = {v: i for i, v in enumerate(keep_videos)}
    keep_texts = [t for t, v in enumerate(dataset.txt2vid) if v in new_index]
    new_text = {t: i for i, t in enumerate(keep_texts)}
    subset = replace(
        dataset,
        videos=[dataset.videos[v] for v in keep_videos],
        texts=[dataset.texts[t] for t in keep_texts],
        txt2vid=[new_index[dataset.txt2vid[t]] for t in keep_texts],
        vid2txt=[[new_text[t] for t in dataset.vid2txt[v]] for v in keep_videos],
        missing=list(dataset.missing) + [dataset.videos[v] for v in sorted(bad)],
    )
    return subset, keep_videos, keep_texts


def _failure_error(failures: dict[int, str], dataset: RetrievalDataset) -> VmmError:
    first = sorted(failures)[:3]
    shown = "; ".join(f"{dataset.videos[v]}: {failures[v]}" for v in first)
    more = f" (and {len(failures) - len(first)} more)" if len(failures) > len(first) else ""
    return VmmError(f"{len(failures)} of {len(dataset.videos)} videos cannot be decoded: {shown}{more}; "
                    "re-download them or pass allow_missing=True (--allow-missing) to evaluate without them")


# ---------------------------------------------------------------------------------------------- scoring
def _place(tensor: Tensor, device: torch.device, share: float = 0.4) -> Tensor:
    """Move to the GPU when it takes less than ``share`` of the free memory; else keep it on the CPU."""
    if device.type != "cuda":
        return tensor
    free, _ = torch.cuda.mem_get_info(device)
    return tensor.to(device) if tensor.numel() * tensor.element_size() < share * free else tensor


def _itm_scorer(model, video_tokens: Tensor, text: TextFeatures, direction: str, runtime: _Runtime):
    """``score_pairs(query, candidates)`` for :func:`rerank_topk`: ITM match logits of paired rows.

    ``v2t``: one video against candidate texts; ``t2v``: one text against candidate videos.
    Each call is one batch through ``model.itm_logits`` (fusion layers + ITM head).
    """
    device = runtime.device

    @torch.inference_mode()
    def score(query: int, candidates: Tensor) -> Tensor:
        n = len(candidates)
        if direction == "v2t":
            c = candidates.to(text.hidden.device)
            hidden, mask = text.hidden[c].to(device), text.mask[c].to(device)
            vis = video_tokens[query:query + 1].to(device).expand(n, -1, -1)
        else:
            vis = video_tokens[candidates.to(video_tokens.device)].to(device)
            hidden = text.hidden[query:query + 1].to(device).expand(n, -1, -1)
            mask = text.mask[query:query + 1].to(device).expand(n, -1)
        with runtime.autocast():
            return model.itm_logits(vis, hidden, mask)[:, 1].float()
    return score


def _sized_by(option: str, config: EvalConfig, doing: str, run):
    """``run()``, its running out of memory one line naming ``option``, the batch size of this phase: the command's
    own line named --batch-size and --frames whatever ran out (a re-rank needs a smaller --itm-batch-size, and
    --frames must fit the model), and the benchmark scripts ended in a CUDA traceback."""
    from vmm.errors import sized_by
    return sized_by(run, lambda what: f"out of memory {doing} ({what}); pass a smaller {_option(option)} than "
                                      f"{getattr(config, option)}, or free memory (other programs, another job on "
                                      "the GPU)")


# ---------------------------------------------------------------------------------------------- main entry
def evaluate(config: EvalConfig) -> Optional[EvalResult]:
    """Run the official zero-shot evaluation; returns the result on rank 0 (None on other ranks).

    >>> # result = evaluate(EvalConfig("msrvtt", "msrvtt_ret_test1k.json", "MSRVTT/videos/all"))
    >>> # print(result.markdown())
    """
    config.check()
    # NumPy integers pass the check (a sweep over np.arange), but the report keeps them and json.dumps refuses them:
    # the run ended in a TypeError instead of its report file.
    config = replace(config, **{name: int(getattr(config, name)) for name in (*_COUNTS, "workers", "nlist", "nprobe")
                                if getattr(config, name) is not None})
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    protocol = get_protocol(config.dataset)
    if config.frames is None:
        config = replace(config, frames=default_frames(config.model, config.checkpoint,
                                                       protocol.num_frames))
    dataset = load_retrieval_dataset(config.annotations, config.videos, protocol, allow_missing=config.allow_missing,
                                     missing_hint=MISSING_HINT)
    listed = len(dataset.videos) + len(dataset.missing)
    if not dataset.videos:
        hint = (extension_hint(dataset.missing[0], config.videos) or folder_hint(dataset.missing[0], config.videos)
                or "point videos= (--videos) at the folder that holds them")
        raise VmmError(f"none of the {listed} videos of {config.annotations} exist in {config.videos}; {hint}")
    runtime = _start_runtime(config)
    try:
        return _evaluate(config, dataset, protocol, listed, runtime, timings, t_start)
    finally:
        _stop_runtime(runtime)


def _evaluate(config, dataset, protocol, listed, runtime, timings, t_start) -> Optional[EvalResult]:
    from index.decode import DecodeOptions
    tick = time.perf_counter()
    model, transform, tokenizer, model_name, checkpoint = _load_eval_model(config, runtime.device, runtime.dtype)
    timings["load_model"] = time.perf_counter() - tick
    world, rank = runtime.world, runtime.rank
    my_videos = list(range(rank, len(dataset.videos), world))
    my_texts = list(range(rank, len(dataset.texts), world))
    decode_options = DecodeOptions(num_frames=config.frames, window=math.inf, max_seconds=protocol.trim_seconds)

    with ProgressBars(config.progress and rank == 0) as progress:
        tick = time.perf_counter()
        text = _sized_by("text_batch_size", config, "encoding the texts", lambda: _encode_texts(
            model, tokenizer, [dataset.texts[t] for t in my_texts], protocol.max_text_len, config.text_batch_size,
            runtime, progress.task("texts", len(my_texts))))
        timings["texts"] = time.perf_counter() - tick
        tick = time.perf_counter()
        video = _sized_by("batch_size", config, "encoding the videos", lambda: _encode_videos(
            model, transform, [dataset.videos[v] for v in my_videos], decode_options, config.batch_size, runtime,
            config.workers, config.decode_timeout, stop_on_failure=not config.allow_missing,
            progress=progress.task("videos (decode+encode)", len(my_videos))))
        timings["videos"] = time.perf_counter() - tick

        tick = time.perf_counter()
        failures = {r + row * world: reason  # shard row -> dataset row
                    for r, part in enumerate(_gather_objects(video.failures, runtime)) for row, reason in part.items()}
        frames = _gather_rows(video.frames, len(dataset.videos), runtime)
        tokens = _gather_rows(video.tokens, len(dataset.videos), runtime)
        text_emb = _gather_rows(text.emb, len(dataset.texts), runtime)
        text_hidden = _gather_rows(text.hidden, len(dataset.texts), runtime)
        text_mask = _gather_rows(text.mask, len(dataset.texts), runtime)
        timings["gather"] = time.perf_counter() - tick
        if rank != 0:
            return None

        missing = [{"video": str(p), "reason": "file not found"} for p in dataset.missing]
        if failures:
            if not config.allow_missing:
                raise _failure_error(failures, dataset)
            missing += [{"video": str(dataset.videos[v]), "reason": failures[v]} for v in sorted(failures)]
            dataset, keep_v, keep_t = _drop_videos(dataset, set(failures))
            if not dataset.videos:
                raise VmmError(f"none of the {listed} videos of {config.annotations} could be decoded")
            frames, tokens = frames[keep_v], tokens[keep_v]
            text_emb, text_hidden, text_mask = text_emb[keep_t], text_hidden[keep_t], text_mask[keep_t]
        text = TextFeatures(text_emb, text_hidden, text_mask)

        tick = time.perf_counter()
        # The official get_sim runs inside the eval's autocast: in bf16 its einsum rounds every score to bf16, and
        # those rounded scores (their ties) decide the emb row and the ITM shortlist. fp32 keeps full precision.
        with runtime.autocast():
            itc = chunked_similarity(frames.to(runtime.device), text_emb.to(runtime.device), chunk=config.sim_chunk)
        rows = {"emb": retrieval_metrics(itc, itc.T, dataset.txt2vid, dataset.vid2txt)}
        timings["itc"] = time.perf_counter() - tick

        tick = time.perf_counter()
        text = TextFeatures(text.emb, _place(text.hidden, runtime.device), _place(text.mask, runtime.device))
        tokens = _place(tokens, runtime.device)
        k = config.rerank_k
        n_v, n_t = len(dataset.videos), len(dataset.texts)
        v2t_bar = progress.task(f"re-rank v2t (top {min(k, n_t)})", n_v)
        i2t = _sized_by("itm_batch_size", config, "re-ranking", lambda: rerank_topk(
            itc, k, _itm_scorer(model, tokens, text, "v2t", runtime), config.itm_batch_size, "v2t",
            progress=lambda done, total: v2t_bar(completed=done)))
        t2v_bar = progress.task(f"re-rank t2v (top {min(k, n_v)})", n_t)
        t2i = _sized_by("itm_batch_size", config, "re-ranking", lambda: rerank_topk(
            itc, k, _itm_scorer(model, tokens, text, "t2v", runtime), config.itm_batch_size, "t2v",
            progress=lambda done, total: t2v_bar(completed=done)))
        rows["rerank"] = retrieval_metrics(i2t, t2i, dataset.txt2vid, dataset.vid2txt)
        timings["rerank"] = time.perf_counter() - tick

    tick = time.perf_counter()
    rows["index"] = index_metrics(frames, text_emb, dataset.txt2vid, config.index, config.nlist, config.nprobe)
    timings["index"] = time.perf_counter() - tick

    report = build_report(config, dataset, protocol, listed, missing, rows, model, model_name, checkpoint,
                          runtime, timings, time.perf_counter() - t_start)
    return EvalResult(report, itc.float().cpu(), i2t.cpu(), t2i.cpu(), dataset)


def default_model_for(checkpoint: str | Path) -> str:
    """The registered model matching an official checkpoint name (the 25M model otherwise).

    >>> default_model_for("hf-hub:OpenGVLab/VideoMamba/videomamba_m16_5M_f8_res224.pth")
    'videomamba_m16_5m'
    """
    corpus = checkpoint_corpus(str(checkpoint))
    return f"videomamba_m16_{corpus.lower()}" if corpus else "videomamba_m16_25m"


def default_frames(model: str | Path, checkpoint: Optional[str | Path], protocol_frames: int = 8) -> int:
    """The frame count to evaluate when none is given: a model folder's own (its weights fit no other), else a
    checkpoint file's (its temporal table's length; 8 for the released files), else the dataset protocol's
    ``num_frames`` (8 for every official dataset).

    >>> default_frames("videomamba_m16_25m", None)
    8
    >>> default_frames("videomamba_m16_25m", "weights.pth", protocol_frames=4)  # no such file: the protocol's
    4
    """
    import vmm
    from vmm.factory import checkpoint_frames, default_pretrained, saved_frames
    from vmm.models.persistence import is_pretrained_dir
    weights = model if is_pretrained_dir(model) else checkpoint
    if weights is None and str(model) in vmm.list_models():
        weights = default_pretrained(str(model))
    if weights and is_pretrained_dir(weights):
        return saved_frames(weights) or protocol_frames
    return checkpoint_frames(weights) or protocol_frames


def _default_workers() -> int:
    """Decoder processes per rank when ``--workers`` is not given: the CPUs this process may use, as ``vmm index``
    counts them (its affinity mask and a container's CPU quota) and shares them among a node's ranks, at most 8.
    os.cpu_count() is the host's: a container limited to 2 cores of a 64-core host started 8 decoders, and each of
    8 ranks on a 16-core node 8 more."""
    from index.distributed import launch_info
    from index.ingest import usable_cpus
    return max(1, min(8, usable_cpus() // launch_info().local_world_size))


def benchmark_main(dataset: str, argv: Optional[list[str]] = None) -> int:
    """Command line of ``benchmarks/retrieval_<dataset>.py``: reproduce a published row and print the table.

    Writes ``benchmarks/results/retrieval_<dataset>.{json,md}`` unless told otherwise.

    >>> # benchmark_main("msrvtt", ["--annotations", "msrvtt_ret_test1k.json", "--videos", "MSRVTT/videos/all"])
    """
    import sys
    protocol = get_protocol(dataset)
    results = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
    from vmm.errors import OneLineArgumentParser
    p = OneLineArgumentParser(prog=f"python benchmarks/retrieval_{dataset}.py",
                              description=f"Reproduce the published zero-shot {dataset} retrieval numbers of "
                                          f"VideoMamba-M ({protocol.annotation_file}).")
    p.add_argument("--annotations", required=True, help=f"the official {protocol.annotation_file}")
    p.add_argument("--videos", required=True, help="folder the annotation's video paths are relative to")
    p.add_argument("--checkpoint", default=None,
                   help=f"weights [the --model's official file; without --model {DEFAULT_CHECKPOINT}]")
    p.add_argument("--model", default=None,
                   help="registered model name or save_pretrained folder [the one matching --checkpoint, "
                        "else videomamba_m16_25m]")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N [auto]")
    p.add_argument("--workers", type=int, default=None,
                   help="decoder processes per rank [the CPUs this process may use, shared among a node's ranks, "
                        "at most 8]")
    p.add_argument("--batch-size", type=int, default=16, help="videos per encoder batch")
    # the other sizes an out-of-memory error may name (they change speed and memory only, never a score)
    p.add_argument("--text-batch-size", type=int, default=256, help="texts per encoder batch [256]")
    p.add_argument("--itm-batch-size", type=int, default=128, help="(video, text) pairs per ITM batch [128]")
    p.add_argument("--allow-missing", action="store_true", help="evaluate without missing or unreadable videos")
    p.add_argument("--json", default=str(results / f"retrieval_{dataset}.json"), help="report [%(default)s]")
    p.add_argument("--markdown", default=str(results / f"retrieval_{dataset}.md"), help="table [%(default)s]")
    args = p.parse_args(argv)
    # A fixed default checkpoint loaded the 25M weights into any --model (--model videomamba_m16_5m was compared
    # with the 5M row on 25M weights) and refused model folders: without --checkpoint the model brings its own.
    # `is not None`: an empty --model "$MODEL" (unset) is named by check, where it evaluated videomamba_m16_25m
    model = args.model if args.model is not None else (default_model_for(args.checkpoint) if args.checkpoint
                                                       else "videomamba_m16_25m")
    try:
        # --workers 64 on a laptop started 64 decoder processes, which vmm eval refuses with this check
        from vmm.cli import _check_parallelism
        _check_parallelism(args)
        config = EvalConfig(dataset, args.annotations, args.videos, model=model, checkpoint=args.checkpoint,
                            frames=default_frames(model, args.checkpoint), batch_size=args.batch_size,
                            text_batch_size=args.text_batch_size, itm_batch_size=args.itm_batch_size,
                            allow_missing=args.allow_missing, device=args.device,
                            workers=_default_workers() if args.workers is None else args.workers,
                            progress=sys.stderr.isatty())
        config.check()
        check_outputs({"--json": args.json, "--markdown": args.markdown}, config)
        result = evaluate(config)
        if result is None:
            return 0
        print(result.markdown())  # first, so a failing write loses no numbers
        write_json(result.report, args.json)
        write_markdown(result.report, args.markdown)
    except VmmError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # as vmm eval: one line and the shell's status for Ctrl-C, not a traceback
        print("interrupted", file=sys.stderr)
        return 130
    except (MemoryError, RuntimeError) as error:
        # Outside the batched phases (loading the model onto a GPU another job fills, the similarity matrix, the
        # re-rank's tokens) no batch size helps; vmm eval says so in one line, the scripts ended in a CUDA traceback.
        what = out_of_memory(error)
        if what is None:
            raise
        print(f"error: out of memory ({what}); free memory (other programs, another job on the GPU)", file=sys.stderr)
        return 2
    print(f"\nwrote {args.json} and {args.markdown}")
    return 0
