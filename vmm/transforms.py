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
    t = torch.as_tensor(np.ascontiguousarray(frames)) if isinstance(frames, np.ndarray) else frames
    if t.ndim != 4 or t.shape[-1] != 3:
        raise ValueError(f"frames must be (T, H, W, 3), got {tuple(t.shape)}")
    return t.permute(0, 3, 1, 2)


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
    """Official test transform. ``EvalTransform(224)(frames)`` -> (3, T, 224, 224) float32."""

    size: int = 224

    def __call__(self, frames) -> Tensor:
        return _normalise(_resize_uint8(_as_tchw_uint8(frames), (self.size, self.size)))


@dataclass
class TrainTransform:
    """Official training transform: RandomResizedCrop(size, scale=(0.5, 1), bicubic) + horizontal flip."""

    size: int = 224
    scale: tuple[float, float] = (0.5, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5

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
