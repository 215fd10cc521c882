"""Frame preprocessing, exactly as the official pipeline: uint8 frames in, normalised (3, T, S, S) float out.

Eval: bicubic squash resize of the uint8 frames to S x S (aspect ratio not kept, no crop; antialias off,
which is what torchvision did for tensors in the official environment), then /255 and ImageNet mean/std.
Train: one RandomResizedCrop(S, scale 0.5-1, bicubic) and one horizontal flip shared by all frames of a clip.
"""
from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass
from collections.abc import Iterator
from typing import Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from vmm.errors import VmmError, is_whole_number

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class FramesError(VmmError, ValueError):
    """Frames that are no uint8 RGB clip: a VmmError (one line, with the fix) that callers of the transforms may
    still catch as the ValueError they raised before."""


def decode_hint(num_frames: Optional[int] = None) -> str:
    """The expression that decodes a video file into one clip, as the evaluation samples it (for messages).

    >>> decode_hint(8)
    'index.decode_video(path, num_frames=8, window=math.inf)[1][0].frames'
    """
    count = f"num_frames={num_frames}, " if num_frames else ""
    return f"index.decode_video(path, {count}window=math.inf)[1][0].frames"


def _stacked(frames: Sequence, name: str) -> np.ndarray:
    """A list of frames (arrays, tensors, PIL images as RGB, as open_clip's preprocess converts them) as one array."""
    arrays = []
    for i, frame in enumerate(frames):
        array = (frame.numpy(force=True) if isinstance(frame, Tensor)
                 else _pil_rgb(frame, f"frame {i} of {name}") if hasattr(frame, "convert") else np.asarray(frame))
        if array.dtype.kind not in "biuf":  # None, a file name: numpy's "object" or "<U5" named no fix
            raise FramesError(f"frame {i} of {name} is {type(frame).__name__}, not an image; give frames as "
                              f"(height, width, 3) uint8 arrays or PIL images")
        if arrays and array.shape != arrays[0].shape:  # numpy's "inhomogeneous shape" named no frame
            (h0, w0), (h, w) = arrays[0].shape[:2], array.shape[:2]
            if (h, w) == (h0, w0):
                raise FramesError(f"frame {i} of {name} has shape {array.shape}, frame 0 {arrays[0].shape}; give "
                                  "every frame as RGB (height, width, 3)")
            raise FramesError(f"frame {i} of {name} is {h} x {w} pixels (height x width), frame 0 {h0} x {w0}; "
                              f"resize the frames to one size, e.g. with PIL: image.resize(({w0}, {h0}))")
        arrays.append(array)
    return np.stack(arrays)


def _pil_rgb(image, what: str) -> np.ndarray:
    """A PIL image as an (H, W, 3) array, as convert("RGB") makes it; FramesError for one whose file is closed, or
    whose samples are wider than 8 bits."""
    try:
        image.load()
    except (AssertionError, ValueError) as error:
        # `with Image.open(path) as image: frames.append(image)` closes the file before PIL reads the pixels, which it
        # reads only when they are first used: a bare AssertionError, or "Operation on closed image" after close()
        if not (isinstance(error, AssertionError) or "closed" in str(error)):
            raise
        raise FramesError(f"{what} is a closed PIL image: its file was closed before the pixels were read, or "
                          "close() dropped them; read them with image.load() inside `with Image.open(path) as image:`, "
                          "and do not call image.close() before use") from None
    if _is_wide_pil(image):
        # convert("RGB") clips such samples to 0-255 rather than scaling them: a 16-bit PNG (mode "I;16") came out a
        # white clip, a float TIFF in 0-1 (mode "F") a black one, without a word
        fix = _dtype_fix(np.asarray(image), "np.asarray(image)", False)
        raise FramesError(f"{what} is a PIL image of mode {image.mode!r}, more than 8 bits a sample, which "
                          f"convert('RGB') clips; pass Image.fromarray(x) of 8-bit x: {fix}")
    return np.asarray(image.convert("RGB"))


def _is_wide_pil(image) -> bool:
    """Whether a PIL image holds samples wider than 8 bits: 32-bit integers ("I"), 16-bit ("I;16", "I;16B", ...) or
    floats ("F")."""
    return image.mode in ("I", "F") or image.mode.startswith("I;")


def _shape_fix(shape: tuple, var: str, tensor: bool) -> str:
    """How to make an array of ``shape`` (T, H, W, 3), for the message that refuses it."""
    if len(shape) == 4 and shape[-1] == 1:
        grey = f"{var}.repeat(1, 1, 1, 3)" if tensor else f"np.repeat({var}, 3, axis=-1)"
        return f"repeat grey frames as RGB: {grey}"
    if len(shape) == 4 and shape[-1] == 4:  # what PIL's convert("RGB") does with RGBA
        return f"drop the alpha channel: {var}[..., :3]"
    if len(shape) == 4 and shape[1] in (1, 3, 4):
        return f"put the channels last: {var}.{'permute' if tensor else 'transpose'}(0, 2, 3, 1)"
    if len(shape) == 3 and shape[-1] == 3:
        return f"for one frame (an image), make it a clip: {var}[None]"
    if len(shape) == 3:
        grey = f"{var}[..., None].repeat(1, 1, 1, 3)" if tensor else f"np.repeat({var}[..., None], 3, axis=-1)"
        return f"for grey frames, repeat them as RGB: {grey}"
    if len(shape) == 5 and shape[-1] == 3:  # (N, T, H, W, 3), as a DataLoader batches clips
        return f"that is a batch of {shape[0]} clips: give one clip at a time, e.g. {var}[0]"
    return "give decoded RGB frames"


def _dtype_fix(frames, var: str, tensor: bool) -> str:
    """How to make ``frames`` (not uint8) the 0-255 uint8 frames they stand for, judged by their values."""
    to_uint8 = ".to(torch.uint8)" if tensor else ".astype(np.uint8)"
    if tensor:
        dtype = frames.dtype
        kind = "b" if dtype == torch.bool else "c" if dtype.is_complex else "f" if dtype.is_floating_point else "i"
    else:
        kind = frames.dtype.kind
    if kind == "b":
        return f"convert: {var}{to_uint8} * 255"
    if kind not in "iuf":  # complex, object, time
        return "give decoded RGB frames"
    values = frames.double() if tensor else frames.astype(np.float64)  # torch has no min of uint16 or float8
    lo, hi = values.min().item(), values.max().item()
    if math.isnan(lo) or math.isnan(hi):
        return "NaN values; give decoded frames"
    floating = kind == "f"
    if floating and 0 <= lo and hi <= 1:
        return f"values in 0-1, convert: ({var} * 255).round(){to_uint8}"
    if 0 <= lo and hi <= 255:
        return f"values in 0-255, convert: {var}{'.round()' if floating else ''}{to_uint8}"
    if lo >= 0 and not floating:  # 10 or 16 bits a sample
        high_bits = f"({var}.int() // 257)" if tensor else f"({var} // 257)"  # torch cannot divide uint16
        return f"values up to {hi:g}: scale to 0-255 first, e.g. for 16 bits: {high_bits}{to_uint8}"
    # ImageNet-normalised frames, or another library's scale
    return f"values from {lo:g} to {hi:g}: give the decoded frames, before any normalisation"


def as_uint8_frames(frames, name: str = "frames", num_frames: Optional[int] = None) -> Union[np.ndarray, Tensor]:
    """``frames`` as (T, H, W, 3) uint8: an array or tensor as it is, a list (or a generator) of frames (arrays,
    tensors or PIL images) stacked; anything else raises :class:`FramesError` naming ``name`` and the fix (for a
    file name, the decoding of ``num_frames`` frames).

    Checked, never guessed: float frames in 0-1 were read as 0-255 and came out a near-black clip without a word,
    and integers of another width may hold 10 or 16 bits.

    >>> as_uint8_frames([np.zeros((4, 6, 3), np.uint8)] * 2).shape
    (2, 4, 6, 3)
    >>> as_uint8_frames(np.full((2, 4, 6, 3), 200, np.int64), "clip 0")
    Traceback (most recent call last):
    ...
    vmm.transforms.FramesError: clip 0 is int64, not uint8 (0-255); values in 0-255, convert: clip.astype(np.uint8)
    """
    is_, has, var = ("are", "have", "frames") if name == "frames" else ("is", "has", "clip")
    if isinstance(frames, (str, bytes, os.PathLike)):
        raise FramesError(f"{name} {is_} a file name ({os.fsdecode(frames)!r}), not decoded frames; decode the video "
                          f"first: {decode_hint(num_frames)}")
    if isinstance(frames, Iterator):  # a generator or map() of frames, read once, was "not image data"
        frames = list(frames)
    if isinstance(frames, (list, tuple)):
        if not frames:  # np.stack's "need at least one array to stack"
            raise FramesError(f"{name} {is_} an empty list; a clip needs at least one frame")
        frames, var = _stacked(frames, name), f"np.stack({var})"
    elif hasattr(frames, "convert"):  # one PIL image
        raise FramesError(f"{name} {is_} one image, not a clip; pass [image], a clip of one frame")
    elif not isinstance(frames, (np.ndarray, Tensor)):
        array = np.asarray(frames)
        if array.dtype.kind not in "biuf":
            raise FramesError(f"{name} {is_} {type(frames).__name__}, not image data; give a (frames, height, width, "
                              "3) uint8 array or tensor, or a list of frames")
        frames = array
    tensor, shape = isinstance(frames, Tensor), tuple(frames.shape)
    if len(shape) != 4 or shape[-1] != 3:
        raise FramesError(f"{name} {has} shape {shape}, not (frames, height, width, 3); "
                          f"{_shape_fix(shape, var, tensor)}")
    if not math.prod(shape):  # else the resize fails with "Input and output sizes should be greater than 0"
        raise FramesError(f"{name} of shape {shape} {is_} empty; a clip needs frames of at least 1 x 1 pixels")
    if frames.dtype not in (np.uint8, torch.uint8):
        raise FramesError(f"{name} {is_} {str(frames.dtype).removeprefix('torch.')}, not uint8 (0-255); "
                          f"{_dtype_fix(frames, var, tensor)}")
    return frames


def _as_tchw_uint8(frames) -> Tensor:
    """Frames :func:`as_uint8_frames` takes -> (T, 3, H, W) uint8 tensor."""
    frames = as_uint8_frames(frames)
    if isinstance(frames, np.ndarray):
        # a read-only array (np.load with mmap_mode="r") is copied: torch wraps it with a UserWarning about writes
        frames = np.ascontiguousarray(frames) if frames.flags.writeable else np.array(frames, order="C")
    return torch.as_tensor(frames).permute(0, 3, 1, 2)


def _checked_size(transform) -> int:
    # Checked when built: a float or string size (read from a config) failed at the first clip with torch's
    # "expected size to be one of int or Tuple[int]...".
    size = transform.size
    if not is_whole_number(size) or size < 1:
        raise ValueError(f"{type(transform).__name__} size={size!r}: must be a whole number of pixels >= 1, "
                         f"e.g. {type(transform).__name__}(224)")
    return int(size)


def _resize_uint8(x: Tensor, size: tuple[int, int]) -> Tensor:
    # torchvision's uint8 bicubic: compute in float, round, clamp to [0, 255].
    y = F.interpolate(x.float(), size=size, mode="bicubic", align_corners=False, antialias=False)
    return y.round_().clamp_(0, 255)


def _normalise(x: Tensor) -> Tensor:  # (T, 3, H, W) float in [0, 255] -> (3, T, H, W)
    mean = x.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = x.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return ((x / 255.0 - mean) / std).permute(1, 0, 2, 3).contiguous()


@dataclass
class EvalTransform:
    """Official test transform: uint8 frames (T, H, W, 3) -> (3, T, size, size) float32.

    >>> import numpy as np
    >>> x = EvalTransform(224)(np.zeros((8, 240, 320, 3), dtype=np.uint8))  # 8 black frames
    >>> x.shape, [round(v, 4) for v in x[:, 0, 0, 0].tolist()]  # black is -mean / std per channel
    (torch.Size([3, 8, 224, 224]), [-2.1179, -2.0357, -1.8044])
    """

    size: int = 224

    def __post_init__(self):
        self.size = _checked_size(self)

    def __call__(self, frames) -> Tensor:
        return _normalise(_resize_uint8(_as_tchw_uint8(frames), (self.size, self.size)))


def _checked_rng(rng):
    """``rng`` (a random.Random), or the random module for None. Checked: rng=0 (falsy) was taken for None, so a
    seeded call drew other crops every time, and a NumPy Generator or another seed failed with an AttributeError
    (no ``randint`` / ``uniform``)."""
    if rng is None:
        return random
    if not isinstance(rng, random.Random) and rng is not random:
        raise ValueError(f"TrainTransform rng={rng!r}: must be a random.Random, e.g. rng=random.Random(0), or None "
                         "for the random module's own generator")
    return rng


@dataclass
class TrainTransform:
    """Official training transform: RandomResizedCrop(size, scale=(0.5, 1), bicubic) + horizontal flip, one draw
    for all frames of the clip.

    >>> import numpy as np, random
    >>> TrainTransform(224)(np.zeros((8, 240, 320, 3), dtype=np.uint8), rng=random.Random(0)).shape
    torch.Size([3, 8, 224, 224])
    """

    size: int = 224
    scale: tuple[float, float] = (0.5, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5

    def __post_init__(self):
        self.size = _checked_size(self)

    def crop_box(self, h: int, w: int, rng: random.Random) -> tuple[int, int, int, int]:
        rng = _checked_rng(rng)
        area = h * w
        log_r = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = area * rng.uniform(*self.scale)
            aspect = math.exp(rng.uniform(*log_r))
            cw, ch = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
            if 0 < cw <= w and 0 < ch <= h:
                return rng.randint(0, h - ch), rng.randint(0, w - cw), ch, cw
        # Ten misses (about one 16:9 frame in six at scale 0.5-1): torchvision's fallback, the whole frame
        # clamped to the nearest allowed aspect ratio, centred.
        if w / h < min(self.ratio):
            cw, ch = w, int(round(w / min(self.ratio)))
        elif w / h > max(self.ratio):
            cw, ch = int(round(h * max(self.ratio))), h
        else:
            cw, ch = w, h
        return (h - ch) // 2, (w - cw) // 2, ch, cw

    def __call__(self, frames, rng: random.Random | None = None) -> Tensor:
        rng = _checked_rng(rng)
        x = _as_tchw_uint8(frames)
        top, left, ch, cw = self.crop_box(x.shape[2], x.shape[3], rng)
        x = _resize_uint8(x[:, :, top:top + ch, left:left + cw], (self.size, self.size))
        if rng.random() < self.flip_p:
            x = x.flip(-1)
        return _normalise(x)
