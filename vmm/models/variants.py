"""Registered VideoMamba variants (uniform names and kwargs, timm style)."""
from __future__ import annotations

from vmm.models.config import VideoMambaConfig, replace_checked
from vmm.models.registry import register_model
from vmm.models.videomamba import VideoMamba, VideoMambaVisionEncoder

_SIZES = {
    "tiny": dict(embed_dim=192, depth=24),
    "small": dict(embed_dim=384, depth=24),
    "middle": dict(embed_dim=576, depth=32),
}


def _classifier(size: str, overrides: dict) -> VideoMamba:
    return VideoMamba(replace_checked(VideoMambaConfig(**_SIZES[size]), overrides))


def _vision_encoder(size: str, overrides: dict) -> VideoMambaVisionEncoder:
    base = VideoMambaConfig(**_SIZES[size], num_classes=0)
    return VideoMambaVisionEncoder(replace_checked(base, overrides))


@register_model
def videomamba_tiny(**overrides) -> VideoMamba:
    """VideoMamba-Ti classifier: d=192, 24 layers (7.0M parameters with the K400 head)."""
    return _classifier("tiny", overrides)


@register_model
def videomamba_small(**overrides) -> VideoMamba:
    """VideoMamba-S classifier: d=384, 24 layers (25.6M parameters with the K400 head)."""
    return _classifier("small", overrides)


@register_model
def videomamba_middle(**overrides) -> VideoMamba:
    """VideoMamba-M classifier: d=576, 32 layers (73.9M parameters with the K400 head)."""
    return _classifier("middle", overrides)


@register_model
def videomamba_tiny_vision(**overrides) -> VideoMambaVisionEncoder:
    """VideoMamba-Ti multimodal vision encoder (``PretrainVideoMamba`` layout: norm, pool_norm, clip_decoder)."""
    return _vision_encoder("tiny", overrides)


@register_model
def videomamba_small_vision(**overrides) -> VideoMambaVisionEncoder:
    """VideoMamba-S multimodal vision encoder."""
    return _vision_encoder("small", overrides)


@register_model
def videomamba_middle_vision(**overrides) -> VideoMambaVisionEncoder:
    """VideoMamba-M multimodal vision encoder (the one inside the official retrieval models)."""
    return _vision_encoder("middle", overrides)
from vmm.models import multimodal as _multimodal  # noqa: F401,E402  (registers videomamba_m16_mm)
