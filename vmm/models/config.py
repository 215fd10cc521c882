"""Typed configs for every vmm model. Serialised as JSON next to checkpoints and libraries."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields
from typing import Any, Optional

from vmm.errors import VmmError


@dataclass
class VideoMambaConfig:
    """VideoMamba encoder (official ``VisionMamba`` / ``PretrainVideoMamba``)."""

    img_size: int = 224
    patch_size: int = 16
    num_frames: int = 8
    tubelet_size: int = 1  # official "kernel_size"; 1 in every released model
    in_chans: int = 3
    embed_dim: int = 192
    depth: int = 24
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    dt_rank: Optional[int] = None  # None -> ceil(embed_dim / 16), as the official "auto"
    norm_eps: float = 1e-5
    drop_rate: float = 0.0  # dropout after the position embeddings (pos_drop)
    drop_path_rate: float = 0.0
    num_classes: int = 400  # classifier head; 0 -> no head
    head_drop_rate: float = 0.0  # official fc_drop_rate
    scan_backend: Optional[str] = None  # None -> fastest available for the device
    grad_checkpointing: bool = False
    # multimodal vision encoder (PretrainVideoMamba) only
    pool_type: str = "cls+avg"
    # "joint": one scan over all frames (VideoMamba). "per_frame": every frame encoded alone as an image (T=1
    # path) - the frame-mean baseline with no temporal modelling; same weights, order of frames irrelevant.
    frame_mode: str = "joint"
    clip_decoder_embed_dim: Optional[int] = None  # None -> embed_dim
    clip_output_dim: int = 512
    clip_return_layer: int = 1

    @property
    def d_inner(self) -> int:
        return self.expand * self.embed_dim

    @property
    def resolved_dt_rank(self) -> int:
        return self.dt_rank if self.dt_rank is not None else math.ceil(self.embed_dim / 16)

    @property
    def grid_size(self) -> int:
        return self.img_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size ** 2


def replace_checked(cfg: Any, overrides: dict, where: str = "model") -> Any:
    """``dataclasses.replace`` that names unknown keys instead of raising a TypeError."""
    names = {f.name for f in fields(cfg)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise VmmError(
            f"unknown {where} option(s) {', '.join(unknown)}; valid options: {', '.join(sorted(names))}"
        )
    return dataclasses.replace(cfg, **overrides)


__all__ = ["VideoMambaConfig", "replace_checked"]
