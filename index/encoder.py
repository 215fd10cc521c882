"""What the indexer needs from a video model, and a small real model that satisfies it.

Any object with the attributes and the method of :class:`ClipEncoder` can fill a
library: the VideoMamba model plugs in the same way as :class:`ColorHistogramEncoder`.
The library pins ``name``, ``weights_hash``, ``dim``, ``num_frames`` and
``preprocessing`` in its manifest, so vectors from two different models never mix.

>>> import numpy as np
>>> encoder = ColorHistogramEncoder()
>>> red = np.zeros((8, 32, 32, 3), np.uint8); red[..., 0] = 255
>>> vectors = encoder.encode_clips([red])
>>> vectors.shape == (1, encoder.dim), round(float(np.linalg.norm(vectors[0])), 5)
(True, 1.0)
"""
from __future__ import annotations

import hashlib
import json
from typing import Protocol, runtime_checkable

import numpy as np

from vmm.errors import is_whole_number


@runtime_checkable
class ClipEncoder(Protocol):
    """A video model as the indexer sees it: clips of uint8 frames in, unit vectors out."""

    name: str  # model name, e.g. "videomamba-m16-25m"
    weights_hash: str  # hash of the weights, so a retrained model is a different model
    dim: int  # embedding dimension
    num_frames: int  # frames per clip the model expects
    preprocessing: dict  # resize, interpolation, mean/std, sampling: whatever changes the vectors

    def encode_clips(self, clips: list[np.ndarray]) -> np.ndarray:
        """Embed clips, each uint8 (T, H, W, 3); return (N, dim) float32 with L2-normalised rows."""
        ...


class ColorHistogramEncoder:
    """Deterministic, dependency-free clip embedder: colour statistics plus motion.

    Per clip it concatenates, each block averaged over frames:

    * a joint RGB histogram with ``bins`` levels per channel (what colours are there),
    * mean and standard deviation per channel,
    * the mean colour of each cell of a ``grid`` x ``grid`` layout (where colours are),
    * the mean absolute difference between consecutive frames per channel and its
      spatial spread (how much moves),

    then L2-normalises. It is a real, if simple, baseline for colour/motion search and
    the reference encoder of the indexer tests: a red clip is nearest to a red query.

    >>> enc = ColorHistogramEncoder(bins=4, grid=2)
    >>> enc.dim
    86
    """

    def __init__(self, num_frames: int = 8, bins: int = 4, grid: int = 2, max_side: int = 64):
        least = {"num_frames": 1, "bins": 2, "grid": 1, "max_side": 4}
        for name, value in zip(least, (num_frames, bins, grid, max_side)):
            # bins=2.5 gave a fractional dim (37.625) and failed at the first clip
            if not is_whole_number(value) or value < least[name]:
                raise ValueError(f"ColorHistogramEncoder needs {name} a whole number >= {least[name]}, got {value!r}")
        # plain ints: a NumPy integer has no JSON form, and the configuration is hashed as JSON below
        self.num_frames, self.bins, self.grid, self.max_side = int(num_frames), int(bins), int(grid), int(max_side)
        self.name = "color-histogram"
        self.dim = self.bins**3 + 3 + 3 + 3 * self.grid**2 + 4
        self.preprocessing = {
            "sampling": "middle",
            "num_frames": self.num_frames,
            "spatial": f"stride-subsample to <= {self.max_side} px per side",
            "bins": self.bins,
            "grid": self.grid,
            "version": 1,
        }
        # No learned weights: the configuration is the model, so it is what gets hashed.
        config = json.dumps({"name": self.name, **self.preprocessing}, sort_keys=True)
        self.weights_hash = "cfg-" + hashlib.blake2b(config.encode(), digest_size=8).hexdigest()

    def encode_clips(self, clips: list[np.ndarray]) -> np.ndarray:
        """Embed each (T, H, W, 3) uint8 clip; returns (N, dim) float32, unit rows."""
        out = np.empty((len(clips), self.dim), np.float32)
        for row, clip in enumerate(clips):
            out[row] = self._encode_one(clip)
        return out

    def _encode_one(self, clip: np.ndarray) -> np.ndarray:
        clip = np.asarray(clip)
        if clip.ndim != 4 or clip.shape[-1] != 3 or clip.dtype != np.uint8:
            raise ValueError(f"expected a uint8 clip of shape (T, H, W, 3), got {clip.dtype} {clip.shape}")
        t, h, w, _ = clip.shape
        if not t * h * w:  # its statistics would be 0/0: a NaN vector
            raise ValueError(f"expected a clip with frames and pixels, got an empty one of shape {clip.shape}")
        # Plain striding keeps it exact and fast; colour statistics barely change.
        step = max(1, -(-max(h, w) // self.max_side))
        frames = clip[:, ::step, ::step].astype(np.float32) / 255.0

        levels = np.minimum((frames * self.bins).astype(np.int64), self.bins - 1)
        codes = (levels[..., 0] * self.bins + levels[..., 1]) * self.bins + levels[..., 2]
        hist = np.bincount(codes.ravel(), minlength=self.bins**3).astype(np.float32)
        hist /= codes.size

        mean = frames.mean(axis=(0, 1, 2))
        std = frames.std(axis=(1, 2)).mean(axis=0)

        cells = []
        for rows in np.array_split(np.arange(frames.shape[1]), self.grid):
            for cols in np.array_split(np.arange(frames.shape[2]), self.grid):
                cell = frames[:, rows][:, :, cols] if rows.size and cols.size else frames[:, :1, :1]
                cells.append(cell.mean(axis=(0, 1, 2)))
        layout = np.concatenate(cells)

        if t > 1:
            diff = np.abs(np.diff(frames, axis=0))
            motion = np.append(diff.mean(axis=(0, 1, 2)), diff.mean(axis=-1).std())
        else:
            motion = np.zeros(4, np.float32)

        vector = np.concatenate([hist, mean, std, layout, motion]).astype(np.float32)
        norm = float(np.linalg.norm(vector))
        return vector / norm if norm > 0 else vector
