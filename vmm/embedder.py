"""A :class:`VideoTextModel` wrapped for indexing and search: uint8 clips and strings in, unit vectors out.

It satisfies ``index.encoder.ClipEncoder`` (``name``, ``weights_hash``, ``dim``, ``num_frames``,
``preprocessing``, ``encode_clips``) and adds ``encode_texts`` and ``itm_scores_for`` for re-ranking.
On CUDA it runs under bf16 autocast (the official eval precision; fp16 for fp16 weights); on CPU in the weights' dtype.
"""
from __future__ import annotations

import hashlib
import itertools
import math
import os
import sys
import threading
from contextlib import nullcontext
from typing import Iterator, Mapping, Optional, Sequence, Union

import numpy as np
import torch

from vmm._cuda_graph import GraphedVideoForward, HostSyncError
from vmm.errors import VmmError, is_whole_number
from vmm.models.layers import BiMambaMixer
from vmm.tokenizer import Tokenizer, as_texts, check_max_length
from vmm.transforms import IMAGENET_MEAN, IMAGENET_STD, EvalTransform, as_uint8_frames, decode_hint

_PREP_CHUNK_BYTES = 1 << 28  # uint8 frames prepared at once (256 MB: five 1080p clips of 8 frames)
# Texts per forward, the official evaluation's text batch: all in one, the activations of 8000 captions took 3.6 GB
# with vmm_nano on CPU (100k captions of a corpus would need 45).
_TEXT_BATCH = 256


def _state_dict_hash(model: torch.nn.Module) -> str:
    """blake2b over every tensor's name, dtype, shape and bytes: equal iff the weights are equal."""
    h = hashlib.blake2b(digest_size=16)
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


# Vision settings that change the vectors but no weight (so not the weights hash): a model built with
# frame_mode="per_frame" from the released weights is another embedding, whose vectors must not join a library
# of theirs.
_POOLING_FIELDS = ("frame_mode", "pool_type", "keep_temporal", "norm_eps")


def _pooling(vision) -> str:
    """How a clip becomes one vector, for the library's manifest; the settings of :data:`_POOLING_FIELDS` that
    differ from the defaults (the released models') are named, so libraries of those keep the manifest they have."""
    default = type(vision)()
    changed = [f"{name}={getattr(vision, name)!r}" for name in _POOLING_FIELDS
               if getattr(vision, name) != getattr(default, name)]
    return "normalised mean of per-frame embeddings" + (f" ({', '.join(changed)})" if changed else "")


def _checked_clips(clips, caller: str = "encode_clips", num_frames: Optional[int] = None,
                   decode_frames: Optional[int] = None) -> list:
    """``clips`` as a list of (T, H, W, 3) uint8 arrays or tensors (:func:`vmm.transforms.as_uint8_frames` of each),
    or VmmError naming the first clip the model cannot take and the fix.

    Checked before any work: float frames in 0-1 were read as 0-255 and indexed near black without a word; a
    grey, RGBA or channels-first clip failed in the batching without saying which clip; an empty one failed in
    the resize with a bare RuntimeError, and a clip of 0 frames was told to rebuild the model with num_frames=0.
    With ``num_frames`` (a model whose temporal embedding fixes the count), a clip must have that many frames or
    one (an image): any other count was told, without naming the clip, to rebuild the model for it, which would
    give vectors that fit no library of this one. A file name is told to decode ``decode_frames`` (default
    ``num_frames``) frames, as a library's video query does (``retrieval.library.read_query_clip``).
    """
    decode_frames = decode_frames or num_frames
    ndim = getattr(clips, "ndim", None)
    if ndim in (3, 4):  # one clip or frame: its frames (rows) were taken for clips, "got (H, W, 3)"
        what, fix = ("clip", "pass [clip]") if ndim == 4 else ("frame", "for one image, pass [frame[None]]")
        raise VmmError(f"{caller} takes a list of clips (or an (N, T, H, W, 3) array), got one {what} of shape "
                       f"{tuple(clips.shape)}; {fix}")
    if isinstance(clips, (str, bytes, os.PathLike)):
        raise VmmError(f"{caller} takes a list of clips, got a file name ({os.fsdecode(clips)!r}); "
                       f"decode the video first: [{decode_hint(decode_frames)}]")
    if isinstance(clips, Mapping):  # its keys were taken for clips
        raise VmmError(f"{caller} takes a list of clips, got a {type(clips).__name__}; pass list(clips.values())")
    if not hasattr(clips, "__iter__"):
        raise VmmError(f"{caller} takes a list of uint8 clips (T, H, W, 3), got {type(clips).__name__}")
    clips = [as_uint8_frames(clip, f"clip {i}", decode_frames) for i, clip in enumerate(clips)]  # a generator: once
    for i, clip in enumerate(clips):
        if num_frames is not None and clip.shape[0] not in (1, num_frames):
            raise VmmError(f"clip {i} has {clip.shape[0]} frames, but the model takes {num_frames} (or 1, an image); "
                           f"sample them as the official evaluation does: "
                           f"clip[index.sample_middle_indices({clip.shape[0]}, {num_frames})]")
    return clips


def _text_error(message: str, index: int) -> VmmError:
    """A VmmError about text ``index`` of a batch, which it carries as ``text_index``: a caller that read the texts
    from a file (``vmm search --queries``) names the line."""
    error = VmmError(message)
    error.text_index = index
    return error


class VideoTextEncoder:
    """Index-side view of a multimodal model.

    On CUDA, ``encode_clips`` replays a CUDA graph of the video forward for full batches (``batch_size`` clips)
    once that shape has come twice, with the same results bit for bit; ``cuda_graph=False`` keeps every forward
    eager. The graph holds its own activation memory, one forward's worth (VideoMamba-M at batch 32, 8 frames:
    3.4 GiB more reserved on an H200, 6.5 against 3.1 GiB), so a ``batch_size`` chosen near the GPU's limit
    may need ``cuda_graph=False``.

    >>> import numpy as np, vmm
    >>> from vmm.embedder import VideoTextEncoder
    >>> model = vmm.create_model("videomamba_m16_mm", vision=dict(embed_dim=192, depth=1, img_size=32, num_frames=2),
    ...     text=dict(init_from=None, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
    ...     fusion_layer=1, max_position_embeddings=32), embed_dim=16)
    >>> enc = VideoTextEncoder(model, device="cpu")
    >>> enc.encode_clips([np.zeros((2, 40, 40, 3), np.uint8)]).shape, enc.encode_texts(["a red square"]).shape
    ((1, 16), (1, 16))
    """

    def __init__(self, model, device: Optional[Union[str, torch.device]] = None, batch_size: int = 8,
                 max_text_len: Optional[int] = None, tokenizer=None, cuda_graph: bool = True):
        if not hasattr(model, "encode_video") or not hasattr(model, "encode_text"):
            raise VmmError(f"model {getattr(model, 'model_name', type(model).__name__)} is not a video-text model; "
                           f"use a multimodal model such as vmm_nano or videomamba_m16_25m")
        if not is_whole_number(batch_size) or batch_size < 1:
            # 0 failed deep in range(); a negative count returned no vectors at all, without a word
            raise VmmError(f"batch_size must be a whole number >= 1, got {batch_size!r}; e.g. batch_size=8")
        from vmm.factory import resolve_device
        self.device = resolve_device(device, "device= / --device")
        if self.device.type == "cuda" and self.device.index is None:
            # "cuda" is the GPU current now, which is per thread: a search from another thread (a server's worker,
            # whose current GPU is cuda:0) sent its clips and texts to cuda:0 while the model sat on cuda:1.
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.model = model.to(self.device).eval()
        cfg = model.cfg
        self.name = getattr(model, "model_name", None) or "videomamba_m16_mm"
        self.dim = cfg.embed_dim
        self.num_frames = cfg.vision.num_frames
        self.img_size = cfg.vision.img_size
        self.batch_size = int(batch_size)
        self.max_text_len = cfg.max_text_len if max_text_len is None else check_max_length(max_text_len, "max_text_len")
        positions = cfg.text.max_position_embeddings
        if self.max_text_len > positions:
            raise VmmError(f"max_text_len={self.max_text_len} is more than the text tower's {positions} positions; "
                           f"pass max_text_len <= {positions}")
        self.transform = EvalTransform(self.img_size)
        # Frames encoded one by one as images take any count; a joint scan has a temporal embedding per frame.
        self._clip_frames = None if cfg.vision.frame_mode == "per_frame" else self.num_frames
        if tokenizer is None or isinstance(tokenizer, (str, os.PathLike)):  # a vocabulary, as the config names one
            tokenizer = Tokenizer(cfg.tokenizer if tokenizer is None else tokenizer, max_length=self.max_text_len)
        elif not isinstance(tokenizer, Tokenizer):
            # A transformers tokenizer failed at the first text ("too many values to unpack"), and would have
            # skipped the official caption cleaning.
            raise VmmError(f"tokenizer={type(tokenizer).__name__} is not a vmm tokenizer; pass vmm.get_tokenizer(name) "
                           "of the model, or a folder with its vocab.txt")
        self.tokenizer = tokenizer
        self.preprocessing = {"resize": self.img_size, "interp": "bicubic-squash", "antialias": False,
                              "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "sampling": "middle",
                              "frames": self.num_frames, "pooling": _pooling(cfg.vision)}
        self._weights_hash: Optional[str] = None
        self._weights_key: Optional[tuple] = None  # the weights' addresses and versions when last hashed
        self._use_graph = bool(cuda_graph) and self.device.type == "cuda"
        self._graph: Optional[GraphedVideoForward] = None
        self._graph_key: Optional[tuple] = None  # what the graph was captured for: shape, dtype, weights
        self._graph_candidate: Optional[tuple] = None  # a key seen once: captured when it comes again
        self._graph_lock = threading.Lock()  # one replay at a time: the graph's input and output are shared

    @property
    def cuda_graph(self) -> bool:
        """Whether full batches may replay a CUDA graph: asked for, on CUDA, and no capture has failed."""
        return self._use_graph

    @property
    def weights_hash(self) -> str:
        # Hashed again once a weight has changed: training steps and load_state_dict write in place, and a model
        # trained on between two indexing runs kept its first hash, so its vectors joined a library of the old
        # weights. A tensor's version counts its in-place writes (an inference tensor has none: its address only).
        key = tuple((t.data_ptr(), None if t.is_inference() else t._version) for t in self.model.state_dict().values())
        if key != self._weights_key:
            self._weights_hash, self._weights_key = _state_dict_hash(self.model), key
        return self._weights_hash

    def _autocast(self, cache_enabled: bool = True):
        if self.device.type != "cuda":
            return nullcontext()
        # bf16, the official eval precision, unless the weights are fp16 (create_model(precision="fp16")): bf16
        # autocast over fp16 weights failed in torch.cat, which it promotes only to its own dtype.
        half = next(self.model.parameters()).dtype == torch.float16
        return torch.autocast("cuda", dtype=torch.float16 if half else torch.bfloat16, cache_enabled=cache_enabled)

    def _video_batch(self, clips: Sequence) -> torch.Tensor:
        """Checked clips (:func:`_checked_clips`) -> (N, 3, T, S, S) on the device, each exactly ``self.transform``
        of its clip.

        The uint8 frames go to the device before the resize: on a GPU host the CPU resize of 8 full-size frames
        costs more than encoding the clip (benchmarks/indexing.py), and uint8 is 4x less to copy. Clips of one
        shape go together, through pinned memory on a GPU, as one copy and one resize: on an H200, 32 clips of
        8 x 240 x 320 take 12.3 ms instead of 16.2 one by one (the model itself 56 ms), and `vmm index` with
        VideoMamba-M runs at 275 instead of 260 clips/s.
        """
        groups: dict[tuple, list[int]] = {}
        for i, clip in enumerate(clips):
            groups.setdefault(tuple(clip.shape), []).append(i)
        pinned = self.device.type == "cuda"
        out: list = [None] * len(clips)
        for shape, members in groups.items():
            # a bounded number of frames at once: the resize works in float32, 4x the uint8 bytes, on the device
            step = max(1, _PREP_CHUNK_BYTES // math.prod(shape))
            for s in range(0, len(members), step):
                chunk = members[s:s + step]
                host = torch.empty((len(chunk), *shape), dtype=torch.uint8, pin_memory=pinned)
                rows = host.numpy()
                for k, i in enumerate(chunk):
                    # numpy's single-threaded copy: torch's own spreads over OpenMP threads, which wait on
                    # each other behind busy decoder processes (`vmm index` fell from about 190 to 105 clips/s).
                    # A NumPy clip is read where it lies: torch.from_numpy of a read-only one (np.load with
                    # mmap_mode="r") printed a UserWarning about undefined behaviour on writes.
                    clip = clips[i]
                    np.copyto(rows[k], clip.numpy(force=True) if isinstance(clip, torch.Tensor) else clip)
                frames = host.to(self.device, non_blocking=pinned).flatten(0, 1)  # (n T, H, W, 3)
                x = self.transform(frames).unflatten(1, (len(chunk), shape[0])).transpose(0, 1)  # (n, 3, T, S, S)
                for j, i in enumerate(chunk):
                    out[i] = x[j]
        return torch.stack(out)

    def _graphed(self, x: torch.Tensor) -> Optional[GraphedVideoForward]:
        """The CUDA graph for a full batch like ``x``, captured the second time such a batch comes; None: eager."""
        if not self._use_graph or x.shape[0] != self.batch_size:
            return None
        # The graph reads weights by address: a replaced parameter (model.half(), a new tensor assigned) or a
        # switch to training mode means a new key and a new capture; updates in place need none.
        weights = tuple(t.data_ptr() for t in itertools.chain(self.model.parameters(), self.model.buffers()))
        # The layers' scan backends too: after set_scan_backend("reference") the graph replayed the fused kernels,
        # so the vectors of one backend were taken for the other's.
        backends = tuple(m.scan_backend for m in self.model.modules() if isinstance(m, BiMambaMixer))
        key = (tuple(x.shape), x.dtype, x.device, self.model.training, weights, backends)
        if key != self._graph_key:
            self._graph, self._graph_key = None, None
            if key != self._graph_candidate:  # one call of a shape (`vmm encode`, a search) is not worth a capture
                self._graph_candidate = key
                return None
            try:
                self._graph = GraphedVideoForward(self.model, x, self._autocast)
            except Exception as error:  # an op that cannot be captured: eager from now on, as before
                first_line = (str(error).splitlines() or [""])[0][:200]
                reason = first_line if isinstance(error, HostSyncError) else f"{type(error).__name__}: {first_line}"
                print(f"vmm: CUDA graph capture failed ({reason}); encoding without it", file=sys.stderr)
                self._use_graph = False
                return None
            self._graph_key = key
        return self._graph

    def _batches(self, clips: Sequence) -> Iterator[Sequence]:
        """Runs of at most ``batch_size`` consecutive clips of one frame count: an image (one frame, no temporal
        embedding) and clips cannot share a forward, and a batch holding both failed in torch.stack while the
        same clips one by one encoded."""
        start = 0
        while start < len(clips):
            stop, frames = start + 1, len(clips[start])
            while stop < min(len(clips), start + self.batch_size) and len(clips[stop]) == frames:
                stop += 1
            yield clips[start:stop]
            start = stop

    @torch.inference_mode()
    def encode_clips(self, clips: Sequence[np.ndarray], return_tokens: bool = False):
        """uint8 clips (T, H, W, 3) of ``num_frames`` frames (or 1, an image) -> (N, dim) float32 unit vectors (and
        patch tokens with ``return_tokens``). A clip is an array, a tensor or a list of frames (arrays or PIL
        images); other dtypes, layouts and file names are refused with the conversion that fits them."""
        clips = _checked_clips(clips, num_frames=self._clip_frames, decode_frames=self.num_frames)
        mixed = next((i for i, clip in enumerate(clips) if len(clip) != len(clips[0])), None) if return_tokens else None
        if mixed is not None:  # an image has fewer tokens than a clip: torch.cat failed after encoding them all
            raise VmmError(f"return_tokens needs clips of one frame count, got {len(clips[0])} (clip 0) and "
                           f"{len(clips[mixed])} (clip {mixed}); encode images and clips in separate calls")
        out, toks = [], []
        for batch in self._batches(clips):
            x = self._video_batch(batch)
            if not return_tokens and self._use_graph:
                with self._graph_lock:
                    graph = self._graphed(x)
                    if graph is not None:
                        out.append(graph(x))
                        continue
            with self._autocast():
                emb, tokens = self.model.encode_video(x, return_tokens=True)
            out.append(emb.float().cpu())
            if return_tokens:
                toks.append(tokens)
        if return_tokens and not toks:
            # No clips: one empty forward gives the tokens' (0, T*P, D), as encode_texts([], return_hidden=True)
            # gives its hidden states; torch.cat of no tokens raised a bare ValueError.
            x = torch.zeros((0, 3, self.num_frames, self.img_size, self.img_size), device=self.device)
            with self._autocast():
                toks.append(self.model.encode_video(x, return_tokens=True)[1])
        vecs = torch.cat(out).numpy() if out else np.zeros((0, self.dim), np.float32)
        return (vecs, torch.cat(toks)) if return_tokens else vecs

    @torch.inference_mode()
    def encode_texts(self, texts: Union[str, Sequence[str]], return_hidden: bool = False):
        """Strings (one string is one text) -> (N, dim) float32 unit vectors (and (hidden, mask) for ITM with
        ``return_hidden``)."""
        texts = as_texts(texts)
        for i, text in enumerate(texts):
            if not text.strip():  # which one of a batch: one blank caption of thousands is otherwise a hunt
                raise _text_error(f"empty query text{f' (texts[{i}])' if len(texts) > 1 else ''}; give some words to "
                                  "search for", i)
        ids, mask = self.tokenizer(texts, max_length=self.max_text_len)
        # Punctuation alone ("?!", "...") is cleaned away and invisible characters are dropped: the encoder saw
        # [CLS] [SEP] only, and every such query ranked the library the same way, as if it were a match. Emoji
        # alone were the same with [UNK] in between: a word the vocabulary lacks says nothing either.
        special = [getattr(self.tokenizer, f"{name}_token_id", None) for name in ("cls", "sep", "pad", "unk")]
        words = mask.bool() & ~torch.isin(ids, torch.tensor([t for t in special if t is not None], dtype=ids.dtype))
        for i, (text, has_words) in enumerate(zip(texts, words.any(1).tolist())):
            if not has_words:
                # at most 60 characters of it: a line of 5000 "!" was a 5000-character error
                shown = f"{text[:60]!r}{'...' if len(text) > 60 else ''}"
                raise _text_error(f"query {shown}{f' (texts[{i}])' if len(texts) > 1 else ''} has no words "
                                  "(punctuation and invisible characters are dropped; emoji, symbols and characters "
                                  "missing from the model's English vocabulary are unknown to it); give some words to "
                                  "search for", i)
        out, hiddens = [], []
        for s in range(0, max(1, len(texts)), _TEXT_BATCH):  # (max 1: no texts are one empty forward, (0, dim))
            with self._autocast():
                emb, hidden = self.model.encode_text(ids[s:s + _TEXT_BATCH].to(self.device),
                                                     mask[s:s + _TEXT_BATCH].to(self.device), return_hidden=True)
            out.append(emb.float().cpu())
            if return_hidden:
                hiddens.append(hidden)
        vecs = torch.cat(out).numpy()
        return (vecs, torch.cat(hiddens), mask.to(self.device)) if return_hidden else vecs

    @torch.inference_mode()
    def itm_scores_for(self, text: str, clips: Sequence[np.ndarray]) -> np.ndarray:
        """ITM match logits of one text against each clip (the official re-ranking score)."""
        if not isinstance(text, str):  # a list was refused by encode_texts with "pass a list of strings"
            raise VmmError(f"itm_scores_for takes one text (a string), got {type(text).__name__}; call it once per "
                           "text")
        _, hidden, mask = self.encode_texts([text], return_hidden=True)
        clips = _checked_clips(clips, "itm_scores_for", self._clip_frames, self.num_frames)
        scores = []
        for batch in self._batches(clips):
            _, tokens = self.encode_clips(batch, return_tokens=True)
            n = tokens.shape[0]
            with self._autocast():
                logits = self.model.itm_logits(tokens, hidden.expand(n, -1, -1), mask.expand(n, -1))
            scores.append(logits[:, 1].float().cpu())
        return torch.cat(scores).numpy() if scores else np.zeros(0, np.float32)
