"""Frame preprocessing, exactly as the official pipeline: uint8 frames in, normalised (3, T, S, S) float out.

Eval: bicubic squash resize of the uint8 frames to S x S (aspect ratio not kept, no crop; antialias off,
which is what torchvision did for tensors in the official environment), then /255 and ImageNet mean/std.
Train: one RandomResizedCrop(S, scale 0.5-1, bicubic) and one horizontal flip shared by all frames of a clip.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from vmm.errors import is_whole_number

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _as_tchw_uint8(frames: Union[np.ndarray, Tensor, Sequence]) -> Tensor:
    """(T, H, W, 3) uint8 (decoder layout), or a list of (H, W, 3) frames or PIL images -> (T, 3, H, W) uint8
    tensor."""
    if isinstance(frames, (list, tuple)):  # PIL images as RGB, as open_clip's preprocess converts them
        frames = np.stack([np.asarray(f.convert("RGB") if hasattr(f, "convert") else f) for f in frames])
    if not isinstance(frames, (np.ndarray, Tensor)):
        raise ValueError(f"frames must be a (T, H, W, 3) uint8 array or tensor, or a list of frames, got "
                         f"{type(frames).__name__}")
    if isinstance(frames, np.ndarray):
        # a read-only array (np.load with mmap_mode="r") is copied: torch wraps it with a UserWarning about writes
        frames = np.ascontiguousarray(frames) if frames.flags.writeable else np.array(frames, order="C")
    t = torch.as_tensor(frames)
    if t.ndim != 4 or t.shape[-1] != 3:
        raise ValueError(f"frames must be (T, H, W, 3), got {tuple(t.shape)}")
    if not t.numel():  # else the resize fails with "Input and output sizes should be greater than 0"
        raise ValueError(f"frames of shape {tuple(t.shape)} are empty; a clip needs frames of at least 1 x 1 pixels")
    if t.dtype != torch.uint8:  # every value is read as 0-255: 0-1 floats came out a near-black clip, silently
        raise ValueError(f"frames are {str(t.dtype).removeprefix('torch.')}, not uint8 (0-255); convert 0-1 floats "
                         "with (frames * 255).round().astype(np.uint8)")
    return t.permute(0, 3, 1, 2)


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
        rng = rng or random
        x = _as_tchw_uint8(frames)
        top, left, ch, cw = self.crop_box(x.shape[2], x.shape[3], rng)
        x = _resize_uint8(x[:, :, top:top + ch, left:left + cw], (self.size, self.size))
        if rng.random() < self.flip_p:
            x = x.flip(-1)
        return _normalise(x)
