"""Classify a video file with a VideoMamba classifier, using the official Kinetics-400 test protocol.

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
from vmm.transforms import IMAGENET_MEAN, IMAGENET_STD

DEFAULT_LABELS = "kinetics400"
_DECODE_CHUNK_BYTES = 64 << 20  # decoded frames fetched per decord call, at most
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
    if num_video_frames < 1 or num_frames < 1 or not 0 <= clip < num_clips:
        raise ValueError(f"need frames >= 1 and 0 <= clip < num_clips, got n={num_video_frames}, "
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


def resize_short_side(frames: np.ndarray, size: int) -> Tensor:
    """uint8 frames (T, H, W, 3) -> float (T, 3, h, w) with short side ``size``, values rounded to 0..255.

    >>> resize_short_side(np.zeros((2, 48, 64, 3), np.uint8), 32).shape
    torch.Size([2, 3, 32, 42])
    """
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
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    views = []
    for frames in clips:
        x = resize_short_side(frames, size)
        h, w = x.shape[-2:]
        for start in crop_starts(max(h, w), size, num_crops):
            crop = x[:, :, start:start + size, :] if h >= w else x[:, :, :, start:start + size]
            views.append(((crop / 255.0 - mean) / std).permute(1, 0, 2, 3))
    return torch.stack(views)


def _short_side_uint8(size: Optional[int]) -> Callable[[np.ndarray], np.ndarray]:
    """One frame (H, W, 3) -> the same resized by :func:`resize_short_side`, back in uint8 (its values are whole)."""
    if size is None:
        return lambda frame: frame
    return lambda frame: resize_short_side(frame[None], size)[0].permute(1, 2, 0).to(torch.uint8).numpy()


def _read_decord(path: str, indices: list[int], info, prepare: Callable[[np.ndarray], np.ndarray]
                 ) -> dict[int, np.ndarray]:
    # info.rotation is always 0 and info.mirrored False here: probing with decord refuses such files (it reads
    # them as stored)
    from index.decode import import_decord

    decord = import_decord()
    # Fetched in chunks and resized at once: 4 clips of 64 frames of a 4K video are 6 GB as decoded.
    step = max(1, _DECODE_CHUNK_BYTES // (3 * info.width * info.height))
    frames = {}
    try:
        reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
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

    from index.decode import upright_rgb

    num_video_frames, orientation = info.num_frames, (info.rotation, info.mirrored)
    wanted, found, position, last = set(indices), {}, 0, None
    try:
        with av.open(path, metadata_errors="ignore") as container:
            for last in container.decode(container.streams.best("video")):
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


def _file_problem(path: str) -> Optional[str]:
    """Why ``path``, named as a video file, cannot be one: a line that names it and the fix; None when it may be."""
    from index.discovery import named_video_problem

    if not path:  # Path("") is the working folder, reported as " is not a file"
        return "the video path is empty (''); pass the path of a video file"
    if not os.path.exists(path):
        return f"video {path} does not exist; pass the path of a video file"
    if not os.path.isfile(path):
        return f"{path} is not a file; pass the path of a video file"
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
            frames = _FRAME_READERS[name](path, sorted({i for clip in clips for i in clip}), info,
                                          _short_side_uint8(size))
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


def _model_name(model: nn.Module) -> str:
    return getattr(model, "model_name", None) or type(model).__name__


def _classifier_head(model: nn.Module) -> nn.Linear:
    """The linear classification head of a VideoMamba classifier; VmmError for any other model."""
    from vmm.models.videomamba import VideoMamba

    head = getattr(model, "head", None)
    if isinstance(model, VideoMamba) and isinstance(head, nn.Linear):
        return head
    if hasattr(model, "encode_text"):
        what = "it is a video-text model, for vmm index/search/eval"
    elif isinstance(model, VideoMamba):
        what = "it was built with num_classes=0"
    else:
        what = f"it is a {type(model).__name__}, not a VideoMamba classifier"
    raise VmmError(f"model {_model_name(model)} has no classification head ({what}); classify needs a "
                   "classifier such as videomamba_m16_k400 with its Kinetics-400 checkpoint")


def resolve_labels(model: nn.Module, labels: Labels = None) -> list[str]:
    """Class names for ``model``'s head: ``labels`` (a set name, a file, or a list), else the model's
    ``"labels"`` metadata, else Kinetics-400; VmmError when their number differs from the head size or a name is
    empty or repeated (see :func:`vmm.labels.load_labels`)."""
    head = _classifier_head(model)
    if labels is None:
        labels = (getattr(model, "model_meta", None) or {}).get("labels") or DEFAULT_LABELS
    names = load_labels(labels)  # a list gets the checks of a file: a repeated name would lose a class in a dict
    source = str(labels) if isinstance(labels, (str, Path)) else "the given label list"
    if len(names) != head.out_features:
        raise VmmError(f"label set {source} has {len(names)} names but the head of {_model_name(model)} has "
                       f"{head.out_features} classes; pass labels (CLI: --labels FILE) with "
                       f"{head.out_features} names, one per line in head order")
    return names


@torch.inference_mode()
def view_probabilities(model: nn.Module, views: Tensor, batch_size: int = 4) -> Tensor:
    """Softmax of the logits of each view: (V, 3, T, S, S) -> (V, num_classes) float32."""
    ClassifyOptions(batch_size=batch_size).check()  # 0 ended in range()'s "arg 3 must not be zero"
    _classifier_head(model)
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
    values, indices = probabilities.topk(min(k, len(labels)))
    return [(labels[i], float(v)) for v, i in zip(values.tolist(), indices.tolist())]


def classify_video(path: Union[str, Path], model: nn.Module, *, clips: int = 1, crops: int = 1, top_k: int = 5,
                   labels: Labels = None, batch_size: int = 4, backend: str = "auto") -> list[tuple[str, float]]:
    """Top-``top_k`` (label, probability) of a video: softmax per view, averaged over ``clips x crops`` views.

    ``model``: a VideoMamba classifier (e.g. ``videomamba_m16_k400`` with its checkpoint loaded); its
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
    cfg = model.cfg
    views = read_views(path, cfg.num_frames, cfg.img_size, clips, crops, backend)
    return top_labels(view_probabilities(model, views, batch_size).mean(0), names, top_k)


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
    >>> [os.path.basename(v) for v in videos], [message.endswith("does not exist; pass the path of a video file")
    ...                                          for _, message in problems]
    (['a.mp4', 'b.mkv'], [True])
    """
    from index.discovery import _path_args, discover

    videos: list[str] = []
    problems: list[tuple[str, str]] = []
    seen: set[tuple[int, int]] = set()

    def add_file(path: str, checked: bool = False) -> None:
        problem = None if checked else _file_problem(path)
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
                    backend: str = "auto") -> Iterator[VideoLabels]:
    """:func:`classify_video` for many videos with one model: a :class:`VideoLabels` for each, as it is done.

    ``videos``: files, folders and globs (see :func:`find_videos`). A video that cannot be read gives a result with
    ``error`` set instead of an exception, so the others are still classified; inputs that name no video come
    first. The options, the labels and the model's head are checked here, before any video is read.

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
    found, problems = find_videos(videos)
    return _classified(found, problems, model, names, options)


def _classified(videos: list[str], problems: list[tuple[str, str]], model: nn.Module, names: list[str],
                options: ClassifyOptions) -> Iterator[VideoLabels]:
    for video, error in problems:
        yield VideoLabels(video, [], error)
    for video, views, error in _views_or_errors(videos, model, options):
        if error is not None:
            yield VideoLabels(video, [], error)
            continue
        probabilities, seconds = _mean_probabilities(model, views, options.batch_size)
        yield VideoLabels(video, top_labels(probabilities, names, options.top_k), seconds=seconds)


def _views_or_errors(videos: Iterable[str], model: nn.Module, options: ClassifyOptions
                    ) -> Iterator[tuple[str, Optional[Tensor], Optional[str]]]:
    """``(video, views, None)`` for each video that :func:`read_views` reads for ``model``, ``(video, None, error)``
    for each that it cannot, ``error`` being one line that names the file."""
    cfg = model.cfg
    for video in videos:
        views, error = None, None
        try:
            views = read_views(video, cfg.num_frames, cfg.img_size, options.clips, options.crops, options.backend)
        except VmmError as e:
            error = one_line(str(e))
        except Exception as e:  # a decoder bug on one odd file must cost that file, not the others (as vmm index)
            error = one_line(f"{video}: cannot be decoded ({type(e).__name__}: {error_text(e)}); "
                             "convert it (e.g. ffmpeg -i IN -c:v libx264 OUT.mp4) and try again")
        yield video, views, error


def _mean_probabilities(model: nn.Module, views: Tensor, batch_size: int = 4) -> tuple[Tensor, float]:
    """The softmax averaged over ``views`` (num_classes,), and the seconds the model took."""
    start = time.perf_counter()
    probabilities = view_probabilities(model, views, batch_size).mean(0)
    return probabilities, time.perf_counter() - start
