"""Classify a video file with a VideoMamba classifier, using the official Kinetics-400 test protocol, or zero-shot
with a video-text model (vmm_nano, videomamba_m16_25m, a ``vmm train`` folder), CLIP style.

Zero-shot: each class name fills prompt templates (``"a video of {}."``); a class's text embedding is the
normalised mean of its prompts' embeddings (CLIP's prompt ensembling), and a view's logits are the cosines of
its video embedding (made as ``vmm index`` makes a clip's vector) with those, divided by the model's learned
``temp``. The views are sampled as below (the K400 frames, not the "middle" ones of ``vmm index``); one crop is the
whole frame resized as the model's own transform does (bicubic to S x S, as ``vmm index``), several are the squares
below, each then seen whole.

The official K400 evaluation (``video_sm``, dataset ``Kinetics_sparse``, mode ``test``; scripts pass
``--short_side_size 224 --test_num_segment 4 --test_num_crop 3``) scores ``clips x crops`` views of a video:

- **Frames** of temporal view ``c`` of ``C`` (``T`` frames per clip, ``n`` frames in the video): with
  ``s = (n - 1) / T``, frame ``i`` is ``min(round(s * i) + int(s / (C + 1) * (c + 1)), n - 1)``
  (``round`` halves to even, as NumPy's). With ``C = 1`` this is one frame near the middle of each of ``T``
  equal segments of the whole video.
- **Resize**: bilinear (no antialiasing, as OpenCV's ``INTER_LINEAR``) so the short side becomes the model's
  ``img_size`` S and the long side ``int(S * long / short)``; values are rounded back to 0..255 like the uint8
  frames the official code crops.
- **Crops**: S x S squares along the long side, starting at ``int(k * (long - S) / (K - 1))`` for crop ``k``
  of ``K``, or at ``int((long - S) / 2)`` when ``K = 1`` (the centre crop). Then ``/255`` and ImageNet
  mean/std.
- **Score**: softmax of each view's logits, averaged over the views.

>>> sample_clip_indices(100, 8)
[6, 18, 31, 43, 56, 68, 80, 93]
>>> crop_starts(298, 224, 3)
[0, 37, 74]
"""
from __future__ import annotations

import glob
import os
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from vmm.errors import VmmError, error_text, is_whole_number, one_line
from vmm.labels import load_labels
from vmm.progress import ProgressBars
from vmm.transforms import _normalise, _resize_uint8

DEFAULT_LABELS = "kinetics400"
# Zero-shot prompts, averaged per class: "a video of" as CLIP's video prompts, the rest of its Kinetics ones
# that name no person (colours or objects read badly in "a video of a person {}").
DEFAULT_TEMPLATES = ("a video of {}.", "a video showing {}.", "an example of {}.", "a demonstration of {}.")
_DECODE_CHUNK_BYTES = 64 << 20  # decoded frames fetched per decord call, at most
_PROMPT_BATCH = 256  # zero-shot prompts per encode_texts call: a step of the progress bar
Labels = Union[None, str, Path, Sequence[str]]


@dataclass(frozen=True)
class ClassifyOptions:
    """How a video becomes views and scores. ``clips=4, crops=3`` is the official K400 test protocol."""

    clips: int = 1  # temporal views (official test_num_segment)
    crops: int = 1  # spatial views along the long side (official test_num_crop)
    top_k: int = 5
    batch_size: int = 4  # views per forward pass
    backend: str = "auto"  # video decoder: "auto" (decord, then PyAV), "decord" or "pyav"

    def check(self) -> None:
        """Raise VmmError naming the first bad option."""
        # Named both ways, as `vmm classify` passes its options straight through: "--top-k 0 (top_k=0)".
        for name in ("clips", "crops", "top_k", "batch_size"):
            value = getattr(self, name)
            if not is_whole_number(value) or value < 1:  # a float or None from Python failed later as a TypeError
                raise VmmError(f"--{name.replace('_', '-')} {value} ({name}={value!r}): must be a whole number >= 1")
        if self.backend not in ("auto", "decord", "pyav"):
            raise VmmError(f"--decoder {self.backend} (backend={self.backend!r}): must be 'auto', 'decord' or "
                           "'pyav'")


def sample_clip_indices(num_video_frames: int, num_frames: int, clip: int = 0, num_clips: int = 1) -> list[int]:
    """Frame indices of temporal view ``clip`` of ``num_clips`` (official ``_get_seq_frames`` in test mode).

    >>> sample_clip_indices(20, 8, clip=0, num_clips=4)
    [0, 2, 5, 7, 10, 12, 14, 17]
    >>> sample_clip_indices(3, 8)
    [0, 0, 0, 1, 1, 1, 2, 2]
    """
    # a bool is no count: True took one frame, a whole float failed in range()
    if not all(map(is_whole_number, (num_video_frames, num_frames, clip, num_clips))) \
            or num_video_frames < 1 or num_frames < 1 or not 0 <= clip < num_clips:
        raise ValueError(f"need whole numbers with frames >= 1 and 0 <= clip < num_clips, got n={num_video_frames}, "
                         f"T={num_frames}, clip={clip}, num_clips={num_clips}")
    segment = max(0.0, (num_video_frames - 1) / num_frames)
    offset = int(segment / (num_clips + 1) * (clip + 1))
    return [min(int(np.round(segment * i)) + offset, num_video_frames - 1) for i in range(num_frames)]


def crop_starts(long_side: int, size: int, num_crops: int) -> list[int]:
    """Offsets of the ``num_crops`` square crops of ``size`` along a side of ``long_side`` pixels.

    >>> crop_starts(42, 32, 1), crop_starts(42, 32, 3)
    ([5], [0, 5, 10])
    """
    if num_crops == 1:
        return [int((long_side - size) / 2)]
    step = (long_side - size) / (num_crops - 1)
    return [int(k * step) for k in range(num_crops)]


def _check_size(size) -> int:
    """``size`` (pixels) as an int, or VmmError: 224.0 or True failed inside torch's interpolate."""
    if not is_whole_number(size) or size < 1:
        raise VmmError(f"size={size!r}: must be a whole number of pixels >= 1, e.g. size=224")
    return int(size)


def resize_short_side(frames: np.ndarray, size: int) -> Tensor:
    """uint8 frames (T, H, W, 3) -> float (T, 3, h, w) with short side ``size``, values rounded to 0..255.

    >>> resize_short_side(np.zeros((2, 48, 64, 3), np.uint8), 32).shape
    torch.Size([2, 3, 32, 42])
    """
    size = _check_size(size)
    h, w = frames.shape[1:3]
    new_h, new_w = (int(size * h / w), size) if w < h else (size, int(size * w / h))
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
    if (new_h, new_w) == (h, w):
        return x
    x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=False)
    return x.round_().clamp_(0, 255)


def make_views(clips: Sequence[np.ndarray], size: int, num_crops: int) -> Tensor:
    """Clips of uint8 frames -> normalised views (len(clips) * num_crops, 3, T, size, size), clip-major.

    >>> make_views([np.zeros((8, 48, 64, 3), np.uint8)] * 4, 32, 3).shape
    torch.Size([12, 3, 8, 32, 32])
    """
    views = []
    for frames in clips:
        x = resize_short_side(frames, size)
        views.extend(_normalise(x[:, :, rows, cols]) for rows, cols in _crop_boxes(*x.shape[-2:], size, num_crops))
    return torch.stack(views)


@dataclass
class K400EvalTransform:
    """The official Kinetics-400 single-view test transform (``Kinetics_sparse`` in mode ``validation``): the short
    side resized to ``size`` (bilinear), then the centre ``size x size`` square; frames as
    :class:`vmm.transforms.EvalTransform` takes them -> (3, T, size, size) float32. What
    ``create_model_and_transforms`` returns for a classifier, and the view ``vmm classify`` scores with one clip and
    one crop (``EvalTransform``'s whole-frame squash is the retrieval models' transform, not the classifiers').

    >>> K400EvalTransform(32)(np.zeros((2, 48, 64, 3), np.uint8)).shape
    torch.Size([3, 2, 32, 32])
    """

    size: int = 224

    def __post_init__(self):
        self.size = _check_size(self.size)

    def __call__(self, frames) -> Tensor:
        from vmm.transforms import as_uint8_frames
        frames = as_uint8_frames(frames)
        frames = frames.numpy(force=True) if isinstance(frames, Tensor) else frames
        return make_views([frames], self.size, 1)[0]


def _crop_boxes(height: int, width: int, size: int, num_crops: int) -> list[tuple[slice, slice]]:
    """(rows, columns) of the :func:`crop_starts` squares of frames ``height x width`` whose short side is ``size``."""
    starts = crop_starts(max(height, width), size, num_crops)
    if height >= width:
        return [(slice(y, y + size), slice(None)) for y in starts]
    return [(slice(None), slice(x, x + size)) for x in starts]


def _short_side_uint8(size: Optional[int]) -> Callable[[np.ndarray], np.ndarray]:
    """One frame (H, W, 3) -> the same resized by :func:`resize_short_side`, back in uint8 (its values are whole)."""
    if size is None:
        return lambda frame: frame
    return lambda frame: resize_short_side(frame[None], size)[0].permute(1, 2, 0).to(torch.uint8).numpy()


def _squashed_uint8(size: int) -> Callable[[np.ndarray], np.ndarray]:
    """One frame (H, W, 3) -> (size, size, 3) uint8, the resize of :class:`vmm.transforms.EvalTransform`: the
    encoder's own transform then finds it at its size and leaves it as it is, so the vector is that of the
    full-size frames (as `vmm index` embeds them) while only small frames are held."""
    size = _check_size(size)

    def squash(frame: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1)[None]
        return _resize_uint8(x, (size, size))[0].permute(1, 2, 0).to(torch.uint8).numpy()
    return squash


def _read_decord(path: str, indices: list[int], info, prepare: Callable[[np.ndarray], np.ndarray]
                 ) -> dict[int, np.ndarray]:
    # info.rotation is always 0 and info.mirrored False here: probing with decord refuses such files (it reads
    # them as stored)
    from index.decode import _ffmpeg_path, import_decord

    decord = import_decord()
    # Fetched in chunks and resized at once: 4 clips of 64 frames of a 4K video are 6 GB as decoded.
    step = max(1, _DECODE_CHUNK_BYTES // (3 * info.width * info.height))
    frames = {}
    try:
        reader = decord.VideoReader(_ffmpeg_path(path), ctx=decord.cpu(0), num_threads=1)
        for first in range(0, len(indices), step):
            chunk = indices[first:first + step]
            frames.update(zip(chunk, map(prepare, reader.get_batch(chunk).asnumpy())))
    except Exception as error:  # decord raises its own DECORDError and RuntimeError
        message = error_text(error)
        # Only --decoder decord shows this ('auto' goes on to PyAV): decord fails on some frame sizes (48 px wide).
        raise VmmError(f"{path}: decord cannot read frames {indices[:4]}...: {message}; use the 'auto' or 'pyav' "
                       "decoder") from None
    return frames


def _read_pyav(path: str, indices: list[int], info, prepare: Callable[[np.ndarray], np.ndarray]
               ) -> dict[int, np.ndarray]:
    import av

    from index.decode import _ffmpeg_path, upright_rgb

    num_video_frames, orientation = info.num_frames, (info.rotation, info.mirrored)
    wanted, found, position, last = set(indices), {}, 0, None
    try:
        with av.open(_ffmpeg_path(path), metadata_errors="ignore") as container:
            stream = container.streams.best("video")
            # every frame at the stream's size, as index.decode's reader and decord give them: a resolution change
            # midway (a TV capture cutting to an advert) made a clip's frames of two sizes that could not stack
            orientation += ((stream.codec_context.width, stream.codec_context.height),)
            for last in container.decode(stream):
                if position in wanted:
                    found[position] = prepare(upright_rgb(last, *orientation))
                position += 1
                if position > indices[-1]:
                    break
    except av.error.FFmpegError as error:
        raise VmmError(f"{path}: decoding failed at frame {position} ({error_text(error)}); "
                       "the file is truncated or corrupt") from None
    missing = [i for i in indices if i not in found]
    # The container may count a few frames more than it holds; more than 10% missing is truncation.
    if missing and (last is None or position < 0.9 * num_video_frames):
        raise VmmError(f"{path}: only {position} of {num_video_frames} frames could be decoded; "
                       "the file is truncated or corrupt")
    final = prepare(upright_rgb(last, *orientation)) if missing else None
    return {i: found.get(i, final) for i in indices}


_FRAME_READERS = {"decord": _read_decord, "pyav": _read_pyav}


def _file_problem(path: str, fix: str = "pass the path of a video file") -> Optional[str]:
    """Why ``path``, named as a video file, cannot be one: a line that names it and ``fix``; None when it may be."""
    from index.discovery import named_video_problem

    if not path:  # Path("") is the working folder, reported as " is not a file"
        return f"the video path is empty (''); {fix}"
    if not os.path.exists(path):
        what = "folder" if path.endswith(("/", os.sep)) else "video"  # 'holiday/' was "video holiday/"
        return f"{what} {path} does not exist; {fix}"
    if not os.path.isfile(path):
        return f"{path} is not a file; {fix}"
    # The indexer's test for text and empty files: FFmpeg opened a JSON file as subtitles ("no video stream in the
    # container (it holds subtitle)") and a text .mp4 as a corrupt container.
    problem = named_video_problem(path)
    return None if problem is None else f"video {path}: {problem}"


def decode_clips(path: Union[str, Path], num_frames: int, num_clips: int = 1,
                 backend: str = "auto", size: Optional[int] = None) -> list[np.ndarray]:
    """The frames of each temporal view: ``num_clips`` uint8 arrays (num_frames, H, W, 3).

    ``size``: resize each frame as it is decoded, short side to ``size`` (:func:`resize_short_side`), so that
    only small frames are held; :func:`make_views` then finds them at their size and leaves them as they are.

    Probes with :func:`index.decode.probe_video`; reads the frames with the decoder that counted them
    (decord, or PyAV when decord cannot open or read the file). Raises VmmError for unreadable files.
    """
    return _decode_clips(path, num_frames, num_clips, backend, _short_side_uint8(size))


def _decode_clips(path: Union[str, Path], num_frames: int, num_clips: int, backend: str,
                  prepare: Callable[[np.ndarray], np.ndarray]) -> list[np.ndarray]:
    """:func:`decode_clips`, each frame passed through ``prepare`` as it is decoded."""
    from index.decode import probe_video

    path = str(path)
    problem = _file_problem(path)
    if problem is not None:
        raise VmmError(problem)
    error: Optional[VmmError] = None
    for name in (["decord", "pyav"] if backend == "auto" else [backend]):
        try:
            info = probe_video(path, backend=name)
            clips = [sample_clip_indices(info.num_frames, num_frames, c, num_clips) for c in range(num_clips)]
            frames = _FRAME_READERS[name](path, sorted({i for clip in clips for i in clip}), info, prepare)
        except VmmError as e:
            error = e
            continue
        return [np.stack([frames[i] for i in clip]) for clip in clips]
    raise error


def read_views(path: Union[str, Path], num_frames: int, size: int, clips: int = 1, crops: int = 1,
               backend: str = "auto") -> Tensor:
    """Decode and preprocess the ``clips x crops`` views of a video: (clips * crops, 3, num_frames, size, size)."""
    ClassifyOptions(clips, crops, backend=backend).check()  # 0 clips or crops ended in torch.stack of no views
    return make_views(decode_clips(path, num_frames, clips, backend, size), size, crops)


def read_clips(path: Union[str, Path], num_frames: int, size: int, clips: int = 1, crops: int = 1,
               backend: str = "auto") -> list[np.ndarray]:
    """The ``clips x crops`` views of a video for a video-text model: uint8 clips (num_frames, size, size, 3),
    clip-major, for :meth:`vmm.embedder.VideoTextEncoder.encode_clips`. One crop is the whole frame resized as the
    model's own transform does (what `vmm index` embeds); several are the squares of :func:`read_views`."""
    ClassifyOptions(clips, crops, backend=backend).check()
    if crops == 1:
        return _decode_clips(path, num_frames, clips, backend, _squashed_uint8(size))
    resized = _decode_clips(path, num_frames, clips, backend, _short_side_uint8(size))
    return [frames[:, rows, cols] for frames in resized for rows, cols in _crop_boxes(*frames.shape[1:3], size, crops)]


def is_video_text_model(model) -> bool:
    """Whether ``model`` is classified zero-shot (a video-text model, or a :class:`VideoTextEncoder` of one)
    rather than by a classification head."""
    from vmm.embedder import VideoTextEncoder
    return isinstance(model, VideoTextEncoder) or (hasattr(model, "encode_video") and hasattr(model, "encode_text"))


def check_templates(templates: Optional[Sequence[str]] = None) -> list[str]:
    """Zero-shot prompt templates: :data:`DEFAULT_TEMPLATES` for None; VmmError for one without ``{}``.

    >>> check_templates("a {} square")
    ['a {} square']
    """
    if templates is None:
        return list(DEFAULT_TEMPLATES)
    if isinstance(templates, str):  # one template, not its characters
        templates = [templates]
    if not isinstance(templates, Iterable):
        raise VmmError(f"templates={templates!r}: pass a list of prompt templates such as ['a video of {{}}.']")
    checked = list(templates)
    for template in checked:
        if not isinstance(template, str) or "{}" not in template:  # "{label}" or "{0}" would be sent as written
            raise VmmError(f"--template {one_line(str(template))!r} (templates): has no {{}} where the class name "
                           "goes; write e.g. 'a video of {}.'")
    if not checked:
        raise VmmError("templates=[]: pass at least one prompt template, e.g. ['a video of {}.'], or None for the "
                       "defaults")
    return checked


@contextmanager
def _eval_mode(model) -> Iterator[None]:
    """``model`` (or a VideoTextEncoder's) in eval mode, then back in the mode it came in, as
    :func:`view_probabilities` leaves a classifier."""
    module = getattr(model, "model", model)
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def _encoder(model, batch_size: int):
    """A :class:`VideoTextEncoder` of ``model`` on the device of its weights (the given one as it is)."""
    from vmm.embedder import VideoTextEncoder
    if isinstance(model, VideoTextEncoder):
        return model
    with _eval_mode(model):  # the encoder puts it in eval mode for good
        return VideoTextEncoder(model, device=next(model.parameters()).device, batch_size=batch_size)


def class_embeddings(encoder, names: Sequence[str], templates: Optional[Sequence[str]] = None,
                     progress: bool = False) -> Tensor:
    """(len(names), dim) unit vectors: for each class, the normalised mean of the text embeddings of its prompts
    (every template with the class name in place of each ``{}``), CLIP's prompt ensembling. ``encoder``: a
    :class:`vmm.embedder.VideoTextEncoder` or a video-text model. ``progress``: a bar on stderr while more than
    one batch of prompts encodes. VmmError for a name with no words the model can read; a warning names the
    names whose prompts the tokenizer makes identical (they always tie).

    >>> import vmm
    >>> model = vmm.create_model("vmm_nano", pretrained="default")
    >>> class_embeddings(model, ["red", "green", "blue"], ["a {} square"]).shape
    torch.Size([3, 256])
    """
    templates = check_templates(templates)
    from vmm.tokenizer import refuse_unordered_texts
    refuse_unordered_texts(names, "names", mappings=False)  # a dict's keys are its names, in its order
    names = [names] if isinstance(names, str) else list(names)  # "red" was three classes, "r", "e" and "d"
    if not names:  # an empty batch ended in "cannot reshape tensor of 0 elements"
        raise VmmError("names=[]: pass the class names to embed, e.g. ['cat', 'dog']")
    encoder = _encoder(encoder, 8)
    texts = _prompts(encoder, names, templates)
    chunks = []
    # A bar drawn for one batch could only jump from empty to full: it shows for more than one
    with _eval_mode(encoder), ProgressBars(progress and len(texts) > _PROMPT_BATCH) as bar:
        advance = bar.task("encoding prompts", len(texts))
        for start in range(0, len(texts), _PROMPT_BATCH):
            chunks.append(encoder.encode_texts(texts[start:start + _PROMPT_BATCH]))
            advance(len(chunks[-1]))
    vectors = torch.from_numpy(np.concatenate(chunks)).view(len(names), len(templates), -1)
    return F.normalize(vectors.mean(1), dim=-1)


def _prompts(encoder, names: list[str], templates: list[str]) -> list[str]:
    """Every template filled with every name, name-major. VmmError for a name the tokenizer reads as no words: its
    prompts would be the templates alone (encode_texts refused that only for the template "{}", and as a search
    "query"). A warning names the names whose prompts become the same tokens (case, accents, punctuation,
    truncation): they tie on every video, whatever it shows."""
    tokenizer, length = encoder.tokenizer, encoder.max_text_len
    decode = getattr(tokenizer, "decode", None)  # a custom tokenizer may lack it: its names go unchecked
    if decode is not None:
        # decode leaves out [UNK] and the other special tokens, as encode_texts does when it looks for words
        wordless = [name for name, ids in zip(names, tokenizer(names, max_length=length)[0]) if not decode(ids).strip()]
        if wordless:
            more = f" (and {len(wordless) - 1} more)" if len(wordless) > 1 else ""
            raise VmmError(f"label {wordless[0]!r}{more} has no words the model can read (punctuation and "
                           "invisible characters are dropped, emoji and symbols are unknown to it), so its prompts "
                           "would be the templates alone; name each class in words")
    texts = [template.replace("{}", name) for name in names for template in templates]
    ids = tokenizer(texts, max_length=length)[0].view(len(names), -1).numpy()
    same: dict[bytes, list[str]] = {}
    for name, row in zip(names, ids):
        same.setdefault(row.tobytes(), []).append(name)
    ties = [group for group in same.values() if len(group) > 1]
    if ties:
        shown = "; ".join(_and([repr(name) for name in group]) for group in ties[:3])
        more = f" (and {len(ties) - 3} more group{'s' if len(ties) > 4 else ''})" if len(ties) > 3 else ""
        warnings.warn(f"labels {shown}{more} give the model the same prompts (it reads them in lower case, without "
                      f"accents or punctuation, and only their first {length} tokens), so they always tie; rename "
                      "them to differ in words", stacklevel=3)
    return texts


def _and(items: list[str]) -> str:
    return f"{', '.join(items[:-1])} and {items[-1]}"


def _temperature(model) -> float:
    """The learned temperature of a video-text model (its training logits are similarity / temp)."""
    temp = getattr(getattr(model, "model", model), "temp", None)  # a VideoTextEncoder's model
    value = float(temp.detach()) if isinstance(temp, Tensor) and temp.numel() == 1 else None
    if value is None or not value > 0:
        raise VmmError(f"model {_model_name(model)} has no positive temperature `temp` (got {temp!r}); zero-shot "
                       "probabilities need a video-text model trained with one, such as vmm_nano")
    return value


@torch.inference_mode()
def zero_shot_probabilities(encoder, clips: Sequence[np.ndarray], classes: Tensor) -> Tensor:
    """Softmax over the classes of each clip's cosines with ``classes`` (:func:`class_embeddings`) divided by the
    model's ``temp``: uint8 clips (T, H, W, 3) -> (len(clips), num_classes) float32. ``encoder``: a
    :class:`vmm.embedder.VideoTextEncoder` or a video-text model."""
    encoder = _encoder(encoder, 8)
    with _eval_mode(encoder):
        video = torch.from_numpy(encoder.encode_clips(clips))
    return (video @ classes.T / _temperature(encoder)).softmax(-1)


def _model_name(model) -> str:
    model = getattr(model, "model", model)  # a VideoTextEncoder's model
    return getattr(model, "model_name", None) or type(model).__name__


def is_classifier(model: nn.Module) -> bool:
    """Whether ``model`` is a VideoMamba classifier: a VideoMamba with a linear classification head (built with
    ``num_classes`` > 0)."""
    from vmm.models.videomamba import VideoMamba
    return isinstance(model, VideoMamba) and isinstance(getattr(model, "head", None), nn.Linear)


def _classifier_head(model: nn.Module) -> nn.Linear:
    """The linear classification head of a VideoMamba classifier; VmmError for any other model."""
    from vmm.models.videomamba import VideoMamba

    if is_classifier(model):
        return model.head
    if is_video_text_model(model):
        what = "it is a video-text model: classify_video and classify_videos score it zero-shot"
    elif isinstance(model, VideoMamba):
        what = "it was built with num_classes=0"
    else:
        what = f"it is a {type(model).__name__}, not a VideoMamba classifier"
    raise VmmError(f"model {_model_name(model)} has no classification head ({what}); classify needs a "
                   "classifier such as videomamba_m16_k400 with its Kinetics-400 checkpoint")


def resolve_labels(model: nn.Module, labels: Labels = None) -> list[str]:
    """Class names for ``model``'s head: ``labels`` (a set name, a file, or a list), else the model's
    ``"labels"`` metadata, else Kinetics-400; VmmError when their number differs from the head size or a name is
    empty or repeated (see :func:`vmm.labels.load_labels`). A video-text model takes any number of names from 2
    (``labels``, else Kinetics-400)."""
    if is_video_text_model(model):
        names = load_labels(DEFAULT_LABELS if labels is None else labels)
        if len(names) < 2:  # a softmax over one class is 1 for any video: "is it a cat?" was always yes
            raise VmmError(f"label set {_label_source(labels)} has one name ({names[0]!r}); zero-shot probabilities "
                           "are a softmax over the labels, so a lone label always gets 1.0: pass at least 2 (e.g. "
                           f"{names[0]!r} and what else the videos may show)")
        return names
    head = _classifier_head(model)
    if labels is None:
        labels = (getattr(model, "model_meta", None) or {}).get("labels") or DEFAULT_LABELS
    names = load_labels(labels)  # a list gets the checks of a file: a repeated name would lose a class in a dict
    source = _label_source(labels)
    if len(names) != head.out_features:
        raise VmmError(f"label set {source} has {len(names)} names but the head of {_model_name(model)} has "
                       f"{head.out_features} classes; pass labels (CLI: --labels FILE) with "
                       f"{head.out_features} names, one per line in head order")
    return names


def _label_source(labels: Labels) -> str:
    return str(labels) if isinstance(labels, (str, Path)) else "the given label list"


def load_classifier(model: Union[str, Path] = "videomamba_m16_k400", checkpoint: Union[str, Path, None] = None, *,
                    frames: Optional[int] = None, model_args: Optional[dict] = None, device=None,
                    defer_weights: bool = False):
    """The model ``vmm classify`` uses, with its weights, for :func:`classify_video` and :func:`classify_videos`.

    ``model``: a classifier name (``videomamba_m16_k400``) with ``checkpoint`` (a .pth/.safetensors file, a
    ``save_pretrained`` folder, ``hf-hub:OpenGVLab/VideoMamba/<file>`` or ``"default"``, the config's official
    file), required: random weights give meaningless labels; a video-text model name (``vmm_nano``), whose
    ``checkpoint`` defaults to its released weights; or a ``save_pretrained`` / ``vmm train`` folder, which holds
    its own weights and takes no ``checkpoint``. A local checkpoint sets the frames, resolution and number of
    classes (an SSv2 file's head has 174), except those that ``frames`` or ``model_args`` (config overrides, dotted
    keys nested as dicts: ``{"vision": {"depth": 2}}``) choose; ``device``: as ``vmm classify --device`` (None:
    cuda when available).

    Everything that can be checked without the weights is checked first (VmmError naming it): an unknown model,
    a missing checkpoint, one of the other kind, a head with no classes. ``defer_weights=True`` returns
    ``(model, load)`` instead: the model built at its final sizes with random weights, and ``load()``, which loads
    the weights, moves the model to ``device`` and returns it (``vmm classify`` decodes the first video between
    the two, so that a bad video is named before a large checkpoint loads).
    """
    from vmm.factory import resolve_device
    from vmm.models.persistence import user_path

    # Else os.fspath's and dict's own errors: load_classifier(None), or model_args=["depth=2"] as --model-arg
    # takes it, ended in a TypeError or "dictionary update sequence element #0 has length 7".
    for name, value in (("model", model), ("checkpoint", checkpoint)):
        if not isinstance(value, (str, os.PathLike)) and (value is not None or name == "model"):
            what = "a model name or folder" if name == "model" else "a weights file or folder"
            raise VmmError(f"{name} must be {what} as a str or pathlib.Path, got {type(value).__name__}")
    if model_args is not None and not isinstance(model_args, dict):
        raise VmmError(f"model_args must be a dict of config overrides, e.g. {{'depth': 2}} or {{'vision': "
                       f"{{'depth': 2}}}} for a video-text model, got {type(model_args).__name__}")
    spec = _ClassifierSpec(user_path(os.fspath(model)), None if checkpoint is None else user_path(os.fspath(checkpoint)),
                           frames, dict(model_args or {}))
    device = resolve_device(device, "device= (--device)")
    net = _build_classifier(spec)
    sizes = None
    if not is_video_text_model(net):
        _classifier_head(net)  # a video-text model has no classifier config to compare the checkpoint with
        sizes = _checkpoint_sizes(spec, net)
        if sizes:  # the file's own frame count, resolution and classes (a ..._f16_res224to384.pth: 16 frames at 384 px)
            net = _build_classifier(spec, sizes)

    def load():
        return _with_weights(spec, net, sizes).to(device)
    return (net, load) if defer_weights else load()


def list_classifiers() -> list[str]:
    """The registered model configs with a classification head (``num_classes`` > 0), which take a checkpoint
    of such a head; the architectures without a config (``videomamba_tiny``) are left out.

    >>> list_classifiers()
    ['videomamba_m16_k400', 'videomamba_s16_k400', 'videomamba_t16_k400']
    """
    from vmm.models.registry import get_model_config, list_models
    found = []
    for name in list_models():
        settings = (get_model_config(name) or {}).get("model") or {}
        if "vision" not in settings and is_whole_number(settings.get("num_classes")) and settings["num_classes"] > 0:
            found.append(name)
    return found


@dataclass(frozen=True)
class _ClassifierSpec:
    """What :func:`load_classifier` was asked for: the model, the checkpoint, the frames and the config
    overrides chosen."""

    model: str
    checkpoint: Optional[str]
    frames: Optional[int]
    model_args: dict


def _checkpoint_path(model, checkpoint: str) -> Path:
    from vmm.factory import HF_PREFIX, HF_REPO, resolve_pretrained
    from vmm.models.persistence import WEIGHTS_NAME, is_pretrained_dir

    if checkpoint == "default":
        hf_file = (model.model_meta.get("pretrained") or {}).get("hf_file")
        if not hf_file:
            raise VmmError(f"model {model.model_name} names no default checkpoint; pass checkpoint= (--checkpoint) "
                           "a weights file")
        checkpoint = f"{HF_PREFIX}{HF_REPO}/{hf_file}"
    if is_pretrained_dir(checkpoint):
        return Path(checkpoint) / WEIGHTS_NAME
    return resolve_pretrained(checkpoint)


def _overrides(spec: _ClassifierSpec, sizes: Optional[dict] = None) -> dict:
    """The config overrides asked for, over the checkpoint's own ``sizes``."""
    from vmm.factory import _is_multimodal, frames_override
    from vmm.models.persistence import is_pretrained_dir
    from vmm.models.registry import merge_overrides

    # A video-text model's frame count is under vision: a top-level num_frames was refused as unknown. Its
    # weights' own count is the default, as in vmm index: a model folder's too (a folder of 4 frames with the
    # name's 8 failed as "--frames 8 ... or leave it out", --frames left out).
    video_text = _is_multimodal(spec.model) and not is_pretrained_dir(spec.model)
    found = _own_frames(_video_text_checkpoint(spec)) if video_text else None
    overrides = merge_overrides(merge_overrides(frames_override(spec.model, found), sizes or {}), spec.model_args)
    return merge_overrides(overrides, frames_override(spec.model, spec.frames))


def _own_frames(checkpoint: str) -> Optional[int]:
    """The frame count a checkpoint file or model folder was made for; None when it does not tell (a hub name)."""
    from vmm.factory import checkpoint_frames, saved_frames
    from vmm.models.persistence import is_pretrained_dir
    return saved_frames(checkpoint) if is_pretrained_dir(checkpoint) else checkpoint_frames(checkpoint)


def _build_classifier(spec: _ClassifierSpec, sizes: Optional[dict] = None):
    """The model asked for: a folder with its weights, a name without them (loaded by :func:`_with_weights`)."""
    import vmm
    from vmm.factory import _frames_error, _is_multimodal
    from vmm.models.persistence import is_pretrained_dir

    video_text = _is_multimodal(spec.model)
    overrides = _overrides(spec, sizes)
    if is_pretrained_dir(spec.model):
        if spec.checkpoint:  # it silently replaced the folder's own weights; vmm encode and search refuse it too
            raise VmmError(f"model= (--model) {spec.model} is a model folder with its own weights; drop checkpoint= "
                           f"(--checkpoint) {spec.checkpoint}, or pass a classifier name (e.g. videomamba_m16_k400) "
                           "as the model with it")
        model, _, _ = vmm.create_model_and_transforms(spec.model, **overrides)
        return model
    if spec.model not in vmm.list_models():  # a typo, not a model that lacks --checkpoint
        raise VmmError(f"model= (--model) {spec.model}: unknown model; "
                       f"{_close_names(spec.model, vmm.list_models())}")
    if video_text:
        checkpoint = _video_text_checkpoint(spec)  # named now, not once a video has decoded
        if _checkpoint_kind(checkpoint) == "classifier":
            raise VmmError(f"checkpoint {checkpoint} is a video classifier's, not a video-text model's; pass it with "
                           "the classifier model= (--model) it was trained as (e.g. videomamba_m16_k400) to use its "
                           "head, or "
                           f"video-text weights for zero-shot labels with {spec.model}")
        # A model folder is loaded exactly (vmm_nano's shipped one too): another frame count failed only once the
        # first video had been decoded at that count.
        saved = _own_frames(checkpoint) if is_pretrained_dir(checkpoint) else None
        if spec.frames is not None and saved is not None and spec.frames != saved:
            raise _frames_error(spec.frames, saved, checkpoint)
    elif not spec.checkpoint:
        raise VmmError(f"checkpoint= (--checkpoint) is required for {spec.model} (random weights give meaningless "
                       "labels); pass the downloaded K400 file, e.g. videomamba_m16_k400_f8_res224.pth, or 'default'")
    model, _, _ = vmm.create_model_and_transforms(spec.model, **overrides)
    return model


def _video_text_checkpoint(spec: _ClassifierSpec) -> str:
    """The weights of a video-text model name: the checkpoint asked for, else (or for 'default') its released
    ones."""
    from vmm.factory import default_pretrained

    checkpoint = (spec.checkpoint if spec.checkpoint not in (None, "default")
                  else default_pretrained(spec.model))
    if checkpoint is None:
        raise VmmError(f"model= (--model) {spec.model} has no released weights and random ones give meaningless "
                       "labels; pass checkpoint= (--checkpoint) a weights file, or a trained model folder (vmm train's "
                       "final/) as the model")
    return checkpoint


def _with_weights(spec: _ClassifierSpec, model, sizes: Optional[dict]):
    """``model`` with the weights of the checkpoint (a video-text model name: its default without one); a model
    folder as it is."""
    import vmm
    from vmm.factory import load_weights
    from vmm.models.persistence import is_pretrained_dir

    if is_pretrained_dir(spec.model):
        return model
    if not is_video_text_model(model):
        return load_weights(model, _checkpoint_path(model, spec.checkpoint))
    checkpoint = _video_text_checkpoint(spec)
    if is_pretrained_dir(checkpoint):  # vmm_nano's shipped folder, a trainable-only export: only a build loads them
        return vmm.create_model(spec.model, pretrained=checkpoint, **_overrides(spec, sizes))
    return load_weights(model, _checkpoint_path(model, checkpoint))


def _checkpoint_sizes(spec: _ClassifierSpec, model) -> Optional[dict]:
    """The checkpoint's frame count, resolution and number of classes, each where the caller did not choose it
    and it differs from the model config's (a chosen size gets the position tables interpolated to it, as
    before): an SSv2 file run as videomamba_m16_k400 has a head of 174 classes, not the config's 400."""
    from vmm.factory import HF_PREFIX, checkpoint_vision_settings
    from vmm.models.persistence import is_pretrained_dir
    chosen = dict(spec.model_args)
    if spec.frames is not None:
        chosen["num_frames"] = spec.frames
    # Local files and folders only, as vmm eval, index and encode: 'default' and hf-hub: names would be fetched
    # here, before the video is checked (a config's "default" file is of the config's own size).
    if not spec.checkpoint or spec.checkpoint == "default" or spec.checkpoint.startswith(HF_PREFIX):
        return None
    kind = _checkpoint_kind(spec.checkpoint)
    if kind == "multimodal":  # loading it failed only once a video had decoded, and named the file's size as the fix
        fix = (f"as model= (--model) {spec.checkpoint}" if is_pretrained_dir(spec.checkpoint)
               else "with a video-text model= (--model) (e.g. videomamba_m16_25m, or the one it was trained as)")
        raise VmmError(f"checkpoint {spec.checkpoint} is a video-text model's, not a classifier's; pass it {fix} for "
                       "zero-shot labels, or a classifier checkpoint such as videomamba_m16_k400_f8_res224.pth")
    # Resolved and sniffed now so that a mistyped path or a damaged file is named before the video is decoded
    # (minutes for a long phone video).
    path = _checkpoint_path(model, spec.checkpoint)
    if not path.is_file():
        return None  # loading it names what is there instead
    found = checkpoint_vision_settings(path)
    if (found.get("num_classes") == 0 or kind == "vision") and "num_classes" not in chosen:
        raise VmmError(f"checkpoint {spec.checkpoint} has no classification head (it holds features only); pass a "
                       "classifier checkpoint such as videomamba_m16_k400_f8_res224.pth")
    cfg = model.cfg
    sizes = {key: found[key] for key in ("num_frames", "img_size", "num_classes")
             if key in found and key not in chosen and found[key] != getattr(cfg, key)}
    return sizes or None


def _checkpoint_kind(checkpoint: Optional[str]) -> Optional[str]:
    """What a local checkpoint file or model folder holds, in vmm.models.checkpoint's words: "multimodal" (a
    video-text model), "classifier" or "vision"; None for a hub name, 'default', or weights whose keys do not tell.
    VmmError for a damaged file."""
    from vmm.factory import HF_PREFIX, _is_multimodal, _tensor_shapes, checkpoint_vision_settings
    from vmm.models.checkpoint import _kind
    from vmm.models.persistence import is_pretrained_dir

    if not checkpoint or checkpoint == "default" or checkpoint.startswith(HF_PREFIX):
        return None
    if is_pretrained_dir(checkpoint):  # a trainable-only export lacks the frozen weights: its config tells
        return "multimodal" if _is_multimodal(checkpoint) else None
    if not Path(checkpoint).is_file():
        return None  # loading it names what is there instead
    checkpoint_vision_settings(checkpoint)  # names a file that is no checkpoint, or a damaged one
    return _kind(_tensor_shapes(Path(checkpoint)))


def _close_names(typed: str, names: list[str]) -> str:
    """Names resembling ``typed``, whole or one '_' part ('tinycls' -> videomamba_tiny), else the models that
    classify: the classifiers and the video-text models with released weights (zero-shot)."""
    from difflib import SequenceMatcher
    from vmm.factory import released_video_text_models
    score = {n: max(SequenceMatcher(None, typed.lower(), p).ratio() for p in [n, *n.split("_")]) for n in names}
    close = sorted((n for n in names if score[n] >= 0.6), key=lambda n: -score[n])[:4]
    if close:
        return f"did you mean {', '.join(close)}?"
    # Naming only the K400 heads hid the zero-shot mode, the one that needs no downloaded checkpoint
    zero_shot = released_video_text_models()
    return (f"classifiers (with --checkpoint): {', '.join(list_classifiers())}; video-text models (zero-shot, any "
            f"--labels): {', '.join(zero_shot)}; or a save_pretrained / vmm train folder")


@torch.inference_mode()
def view_probabilities(model: nn.Module, views: Tensor, batch_size: int = 4) -> Tensor:
    """Softmax of the logits of each view: (V, 3, T, S, S) -> (V, num_classes) float32."""
    ClassifyOptions(batch_size=batch_size).check()  # 0 ended in range()'s "arg 3 must not be zero"
    head = _classifier_head(model)
    if not isinstance(views, Tensor):
        raise VmmError(f"views must be the tensor read_views or make_views returns, got {type(views).__name__}; "
                       "convert it with torch.as_tensor(views)")
    if not len(views):  # torch.cat of no batches raised a bare ValueError
        return torch.zeros((0, head.out_features))
    was_training = model.training
    model.eval()
    param = next(model.parameters())
    try:
        probs = [model(views[i:i + batch_size].to(param.device, param.dtype)).float().softmax(-1).cpu()
                 for i in range(0, len(views), batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(probs)


def top_labels(probabilities: Tensor, labels: Sequence[str], k: int = 5) -> list[tuple[str, float]]:
    """The ``k`` most probable (label, probability) pairs, most probable first.

    >>> top_labels(torch.tensor([0.1, 0.7, 0.2]), ["a", "b", "c"], k=2)
    [('b', 0.699999988079071), ('c', 0.20000000298023224)]
    """
    ClassifyOptions(top_k=k).check()  # -1 ended in torch's "selected index k out of range"
    labels = list(labels)  # a generator has no len()
    probabilities = torch.as_tensor(probabilities)  # NumPy probabilities had no .topk
    if probabilities.shape != (len(labels),):
        # a label per class: fewer labels than classes failed as an IndexError only when a top class had none
        raise VmmError(f"top_labels takes one probability per label, got probabilities of shape "
                       f"{tuple(probabilities.shape)} for {len(labels)} labels; pass the (classes,) row of one video")
    values, indices = probabilities.topk(min(int(k), len(labels)))
    return [(labels[i], float(v)) for v, i in zip(values.tolist(), indices.tolist())]


def classify_video(path: Union[str, Path], model: nn.Module, *, clips: int = 1, crops: int = 1, top_k: int = 5,
                   labels: Labels = None, batch_size: int = 4, backend: str = "auto",
                   templates: Optional[Sequence[str]] = None) -> list[tuple[str, float]]:
    """Top-``top_k`` (label, probability) of a video: softmax per view, averaged over ``clips x crops`` views.

    ``model``: a VideoMamba classifier (e.g. ``videomamba_m16_k400`` with its checkpoint loaded), or a video-text
    model (e.g. ``vmm_nano``; or its :class:`~vmm.embedder.VideoTextEncoder`), scored zero-shot against the labels'
    prompts (``templates``, each with a ``{}`` for the class name; default :data:`DEFAULT_TEMPLATES`); its
    ``num_frames`` and ``img_size`` set the views. ``clips=4, crops=3`` is the official K400 test protocol.
    ``labels``: None (the model's ``"labels"`` metadata, else Kinetics-400), a set name, a file or a list.

    >>> import av, numpy as np, tempfile, os, vmm
    >>> from vmm.classify import classify_video
    >>> path = os.path.join(tempfile.mkdtemp(), "clip.mkv")
    >>> with av.open(path, "w") as out:
    ...     stream = out.add_stream("ffv1", rate=10); stream.width, stream.height = 64, 48
    ...     for t in range(20):
    ...         frame = np.full((48, 64, 3), 12 * t, np.uint8)
    ...         out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
    ...     out.mux(stream.encode())
    >>> model = vmm.create_model("videomamba_tiny", depth=2, num_frames=8, img_size=32, num_classes=400)
    >>> top = classify_video(path, model, clips=4, crops=3)
    >>> len(top), top[0][1] >= top[4][1]
    (5, True)
    """
    options = ClassifyOptions(clips, crops, top_k, batch_size, backend)
    options.check()
    names = resolve_labels(model, labels)
    templates = _templates_for(model, templates)
    views = _view_reader(model, options)(path)  # before the prompts are encoded: a bad video is named at once
    return top_labels(_scorer(model, names, templates, options)(views).mean(0), names, top_k)


def _templates_for(model, templates: Optional[Sequence[str]]) -> Optional[list[str]]:
    """The checked templates of a video-text model; None for a classifier, which refuses any."""
    if is_video_text_model(model):
        return check_templates(templates)
    if templates is not None:  # else silently unused: the user believes the prompts shaped the scores
        raise VmmError(f"templates (--template) are for zero-shot classification with a video-text model; "
                       f"{_model_name(model)} is a classifier, scored by its own head")
    return None


def _view_reader(model, options: ClassifyOptions) -> Callable[[str], Union[Tensor, list[np.ndarray]]]:
    """path -> the model's views of the video: :func:`read_clips` for a video-text model, else :func:`read_views`."""
    read, cfg = read_views, getattr(model, "cfg", None)
    if is_video_text_model(model):
        read, cfg = read_clips, getattr(model, "model", model).cfg.vision
    return lambda path: read(path, cfg.num_frames, cfg.img_size, options.clips, options.crops, options.backend)


def _scorer(model, names: list[str], templates: Optional[list[str]], options: ClassifyOptions, progress: bool = False
            ) -> Callable[[Union[Tensor, list[np.ndarray]]], Tensor]:
    """views -> per-view probabilities (V, len(names)); a video-text model's prompts are encoded here, once
    (``progress``: see :func:`class_embeddings`)."""
    if templates is None:
        return lambda views: view_probabilities(model, views, options.batch_size)
    encoder = _encoder(model, options.batch_size)
    _temperature(encoder)  # named before the prompts are encoded
    classes = class_embeddings(encoder, names, templates, progress)
    return lambda clips: zero_shot_probabilities(encoder, clips, classes)




def find_videos(inputs: Union[str, Path, Iterable[Union[str, Path]]]) -> tuple[list[str], list[tuple[str, str]]]:
    """The video files that ``inputs`` name, and ``(input, message)`` for each one that names none.

    An input is a video file; a folder, searched below as ``vmm index`` searches it (files that are not videos,
    hidden ones and downloads in progress skipped); or a glob such as ``"clips/*.mp4"`` (``**`` for any depth), for
    shells that leave a quoted one unexpanded. ``~`` is expanded. Videos come in the order given, a folder's and a
    glob's sorted by path, each file once however many inputs reach it. A message is one line naming the file and
    the fix: a missing file, a text file, an empty folder.

    >>> import os, tempfile
    >>> root = tempfile.mkdtemp()
    >>> for name, data in (("b.mkv", b"\\x1a\\x45\\xdf\\xa3" + bytes(60)), ("a.mp4", b"\\x00\\x00\\x00\\x18ftypisom"),
    ...                    ("notes.txt", b"a list of clips")):
    ...     _ = open(os.path.join(root, name), "wb").write(data)
    >>> videos, problems = find_videos([root, os.path.join(root, "b.mkv"), os.path.join(root, "gone.mp4")])
    >>> [os.path.basename(v) for v in videos], [message.endswith("does not exist; pass a video file, a folder of "
    ...                                                          "videos or a quoted glob") for _, message in problems]
    (['a.mp4', 'b.mkv'], [True])
    """
    from index.discovery import _path_args, discover

    videos: list[str] = []
    problems: list[tuple[str, str]] = []
    seen: set[tuple[int, int]] = set()

    def add_file(path: str, checked: bool = False) -> None:
        # find_videos takes folders and globs too: "pass the path of a video file" sent a mistyped folder's user
        # looking for a file
        problem = None if checked else _file_problem(path, "pass a video file, a folder of videos or a quoted glob")
        if problem is not None:
            problems.append((path, problem))
            return
        try:
            st = os.stat(path)
        except OSError:  # gone since it was checked: decoding names it
            videos.append(path)
            return
        if (st.st_dev, st.st_ino) not in seen:  # `vmm classify clips clips/a.mp4`, or a link: one result per file
            seen.add((st.st_dev, st.st_ino))
            videos.append(path)

    def add_folder(folder: str) -> None:
        try:
            found = discover([folder])
        except VmmError as error:
            problems.append((folder, str(error)))
            return
        root = os.path.abspath(folder)
        for candidate in found.candidates:  # absolute paths: shown under the folder as the user wrote it
            # discover read each file's first bytes already; read again only to word a problem it found
            add_file(os.path.join(folder, os.path.relpath(candidate.path, root)), checked=candidate.problem is None)
        problems.extend((path, f"{path}: {reason}") for path, reason in found.unreadable)
        if not found.candidates and not found.unreadable:
            problems.append((folder, f"{folder}: no video files in this folder or below; pass a folder of videos"))

    for given in _path_args(inputs, "classify"):
        given = os.path.expanduser(given)
        if not os.path.lexists(given) and glob.escape(given) != given:  # a file named "[intro].mp4" is no pattern
            matches = sorted(glob.glob(given, recursive=True))
            if not matches:
                problems.append((given, f"{given}: no file matches this pattern; check the folder and the pattern"))
        else:
            matches = [given]
        for path in matches:
            (add_folder if os.path.isdir(path) else add_file)(path)
    return videos, problems


@dataclass(frozen=True)
class VideoLabels:
    """One video's result from :func:`classify_videos`."""

    video: str  # the path, as found by find_videos
    top: list[tuple[str, float]]  # (label, probability), most probable first; [] when the video failed
    error: Optional[str] = None  # why the video could not be classified: one line naming it and the fix
    seconds: float = 0.0  # the model's time on the video's views (decoding not included)


def classify_videos(videos: Union[str, Path, Iterable[Union[str, Path]]], model: nn.Module, *, clips: int = 1,
                    crops: int = 1, top_k: int = 5, labels: Labels = None, batch_size: int = 4,
                    backend: str = "auto", templates: Optional[Sequence[str]] = None,
                    load: Optional[Callable[[], nn.Module]] = None, progress: bool = False) -> Iterator[VideoLabels]:
    """:func:`classify_video` for many videos with one model: a :class:`VideoLabels` for each, as it is done.

    ``videos``: files, folders and globs (see :func:`find_videos`). A video that cannot be read gives a result with
    ``error`` set instead of an exception, so the others are still classified; inputs that name no video come
    first. The options, the labels and the model's head are checked here, before any video is read, and a video-text
    model's prompts are encoded here, once for all the videos.

    ``load``: the second item of ``load_classifier(..., defer_weights=True)``, with ``model`` its first (the model
    without its weights). It is called once the first video has been read, as ``vmm classify`` does, so that a bad
    video is named before a large checkpoint loads; the prompts are encoded then too, and the errors of both are
    raised by the iteration. ``progress``: a bar on stderr while the prompts encode (see :func:`class_embeddings`).

    >>> import av, numpy as np, tempfile, os, vmm
    >>> folder = tempfile.mkdtemp()
    >>> for name in ("dark.mkv", "light.mkv"):
    ...     with av.open(os.path.join(folder, name), "w") as out:
    ...         stream = out.add_stream("ffv1", rate=10); stream.width, stream.height = 64, 48
    ...         for t in range(20):
    ...             frame = np.full((48, 64, 3), 40 if name == "dark.mkv" else 220, np.uint8)
    ...             out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
    ...         out.mux(stream.encode())
    >>> _ = open(os.path.join(folder, "broken.mp4"), "wb").write(b"\\x00\\x00\\x00\\x18ftypisom" + bytes(100))
    >>> model = vmm.create_model("videomamba_tiny", depth=2, num_frames=8, img_size=32, num_classes=400)
    >>> for result in classify_videos([folder], model, top_k=3):
    ...     print(os.path.basename(result.video), len(result.top), result.error is not None)
    broken.mp4 0 True
    dark.mkv 3 False
    light.mkv 3 False
    """
    options = ClassifyOptions(clips, crops, top_k, batch_size, backend)
    options.check()
    names = resolve_labels(model, labels)
    templates = _templates_for(model, templates)
    if load is not None and not callable(load):
        raise VmmError(f"load must be the function load_classifier(..., defer_weights=True) returns with the model, "
                       f"got {type(load).__name__}")
    found, problems = find_videos(videos)
    if load is None:
        score = _scorer(model, names, templates, options, progress)
        return _classified(found, problems, model, names, lambda: score, options)
    return _classified(found, problems, model, names, lambda: _scorer(load(), names, templates, options, progress),
                       options)


def _classified(videos: list[str], problems: list[tuple[str, str]], model, names: list[str],
                scorer: Callable[[], Callable[[Union[Tensor, list[np.ndarray]]], Tensor]], options: ClassifyOptions
                ) -> Iterator[VideoLabels]:
    """The results of :func:`classify_videos`; ``scorer()`` gives the scoring function, asked for once the first
    video has been read."""
    for video, error in problems:
        yield VideoLabels(video, [], error)
    score = None
    for video, views, error in _views_or_errors(videos, _view_reader(model, options)):
        if error is not None:
            yield VideoLabels(video, [], error)
            continue
        if score is None:
            score = scorer()
        probabilities, seconds = _mean_probabilities(score, views)
        yield VideoLabels(video, top_labels(probabilities, names, options.top_k), seconds=seconds)


def _views_or_errors(videos: Iterable[str], read: Callable[[str], Union[Tensor, list[np.ndarray]]]
                     ) -> Iterator[tuple[str, Optional[Union[Tensor, list[np.ndarray]]], Optional[str]]]:
    """``(video, views, None)`` for each video that ``read`` (:func:`_view_reader`) reads, ``(video, None, error)``
    for each that it cannot, ``error`` being one line that names the file."""
    for video in videos:
        views, error = None, None
        try:
            views = read(video)
        except VmmError as e:
            error = one_line(str(e))
        except Exception as e:  # a decoder bug on one odd file must cost that file, not the others (as vmm index)
            error = one_line(f"{video}: cannot be decoded ({type(e).__name__}: {error_text(e)}); "
                             "convert it (e.g. ffmpeg -i IN -c:v libx264 OUT.mp4) and try again")
        yield video, views, error


def _mean_probabilities(score: Callable[[Union[Tensor, list[np.ndarray]]], Tensor],
                        views: Union[Tensor, list[np.ndarray]]) -> tuple[Tensor, float]:
    """The probabilities ``score`` gives the views, averaged over them (num_classes,), and the seconds it took."""
    start = time.perf_counter()
    probabilities = score(views).mean(0)
    return probabilities, time.perf_counter() - start
