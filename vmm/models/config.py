"""Typed configs for every vmm model. Serialised as JSON next to checkpoints and libraries."""
from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, fields
from typing import Any, Optional, get_args, get_type_hints

from vmm.errors import VmmError, is_whole_number
from vmm.models.registry import close_match

# More frames than any released model uses (64) by far; beyond this a clip's tokens exhaust memory instead of
# giving a result.
MAX_FRAMES = 1024
# Whole-number fields whose valid range is not "1 or more" (same name, same range in every config).
POOL_TYPES = ("cls+avg", "cls", "avg", "cls_cat_avg")
FRAME_MODES = ("joint", "per_frame")
INT_RANGES = {"num_frames": (1, MAX_FRAMES), "num_classes": (0, None), "fusion_layer": (0, None),
              "pad_token_id": (0, None)}


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
    pool_type: str = "cls+avg"  # official pool_type: "cls+avg", "cls", "avg" or "cls_cat_avg"
    # Official vision_encoder.keep_temporal, which encode_vision passes at eval: True pools each frame
    # (B, T, D), False pools the whole clip (B, 1, D), and the ITC then averages over that one "frame".
    keep_temporal: bool = True
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

    def conflict(self) -> Optional[str]:
        """The first fields that do not fit together, with the fix; None when they all do."""
        if self.img_size < self.patch_size:  # a grid of zero patches builds, then fails on the first clip
            return (f"img_size={self.img_size} is smaller than patch_size={self.patch_size}; "
                    f"pass img_size >= {self.patch_size}")
        if self.img_size % self.patch_size:  # the patchify conv would silently drop the right and bottom border
            lower = self.img_size - self.img_size % self.patch_size
            return (f"img_size={self.img_size} is not a multiple of patch_size={self.patch_size}; pass img_size="
                    f"{lower} or {lower + self.patch_size}")
        if self.num_frames < self.tubelet_size:
            return (f"num_frames={self.num_frames} is fewer than tubelet_size={self.tubelet_size}; "
                    f"pass num_frames >= {self.tubelet_size}")
        if self.num_frames % self.tubelet_size:  # the last frames would be dropped without a word
            lower = self.num_frames - self.num_frames % self.tubelet_size
            return (f"num_frames={self.num_frames} is not a multiple of tubelet_size={self.tubelet_size}; pass "
                    f"num_frames={lower} or {lower + self.tubelet_size}")
        if self.pool_type not in POOL_TYPES:  # else it fails only after the whole stack has run on a clip
            return f"pool_type={self.pool_type!r} is not an official pool type; pass one of {', '.join(POOL_TYPES)}"
        if self.frame_mode not in FRAME_MODES:  # else a training run fails on its first batch
            return f"frame_mode={self.frame_mode!r} is not supported; pass one of {', '.join(FRAME_MODES)}"
        if self.frame_mode == "per_frame" and self.tubelet_size != 1:  # else a bare conv error on the first clip
            return (f"frame_mode='per_frame' encodes every frame alone, which a tubelet of tubelet_size="
                    f"{self.tubelet_size} frames cannot patchify; pass tubelet_size=1 or frame_mode='joint'")
        if self.clip_return_layer != 1:
            # With more than one returned layer the official student targets mix normalised and raw
            # residuals in a way the spec does not describe; refusing beats silently computing something else.
            return (f"clip_return_layer={self.clip_return_layer} is not supported (only the official 1, "
                    "the raw residual entering the final norm); pass clip_return_layer=1")
        # else it fails on the first clip, after a training run has started
        return scan_backend_problem(self.scan_backend)


def scan_backend_problem(backend: Optional[str]) -> Optional[str]:
    """Why ``backend`` is not a layer's scan backend, or None (None itself picks the fastest for the device).

    >>> scan_backend_problem("Triton")  # doctest: +ELLIPSIS
    "scan_backend='Triton' is not a scan backend; pass one of mamba_ssm, reference, triton or leave it unset..."
    """
    if backend is None:
        return None
    from vmm.ops.bimamba import layer_backends
    names = layer_backends()
    if backend not in names:
        return (f"scan_backend={backend!r} is not a scan backend; pass one of {', '.join(names)} or leave it unset "
                "(the fastest for the device)")
    return None


def _field_problem(name: str, value: Any, hint: Any) -> Optional[str]:
    if type(None) in get_args(hint):  # Optional[X]
        if value is None:
            return None
        hint = next(a for a in get_args(hint) if a is not type(None))
    if hint is int:
        low, high = INT_RANGES.get(name, (1, None))
        if not is_whole_number(value) or value < low or (high is not None and value > high):
            return f"{name} must be a whole number " + (f">= {low}" if high is None else f"from {low} to {high}")
    elif hint is float:
        # Drop rates and probabilities are fractions; eps and the temperature sit under a division.
        rate = name.endswith(("_rate", "_prob"))
        if (isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value)
                or not (0 <= value < 1 if rate else value > 0)):
            return f"{name} must be a number " + (">= 0 and < 1" if rate else "> 0")
    elif hint is bool and not isinstance(value, bool):
        return f"{name} must be True or False"
    elif hint is str and not isinstance(value, str):
        return f"{name} must be a string"
    return None


def check_config(cfg: Any, where: str = "model") -> None:
    """Refuse a field of the wrong type or range, or fields that do not fit together, naming them.

    Built anyway, such a model fails later with a tensor error from deep inside torch, or (depth=0,
    img_size < patch_size) only on its first input. Numbers are stored as plain int/float, as JSON writes them.

    >>> check_config(VideoMambaConfig(depth=0))
    Traceback (most recent call last):
    ...
    vmm.errors.VmmError: depth=0: depth must be a whole number >= 1
    """
    prefix = "" if where == "model" else f"{where} "
    hints = get_type_hints(type(cfg))
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        problem = _field_problem(f.name, value, hints[f.name])
        if problem:
            raise VmmError(f"{prefix}{f.name}={value!r}: {problem}")
        if isinstance(value, numbers.Number) and not isinstance(value, bool):
            setattr(cfg, f.name, float(value) if hints[f.name] is float else int(value))
    conflict = cfg.conflict() if hasattr(cfg, "conflict") else None
    if conflict:
        raise VmmError(prefix + conflict)


def _close_option(cfg: Any, key: str, value: Any) -> Optional[str]:
    """The option of ``cfg`` that the unknown ``key`` probably means, written as it is passed (``'num_frames'``,
    or ``vision=dict(num_frames=8)`` for a field of a nested section, as a multimodal model's frame count is), or
    None."""
    if key in ("dtype", "torch_dtype"):  # transformers' spelling; close_match offered 'pool_type' for torch_dtype
        return f"precision={value!r} (an argument of create_model / from_pretrained, not a model option)"
    close = close_match(key, [f.name for f in fields(cfg)])
    if close:
        return repr(close)
    for f in fields(cfg):
        section = getattr(cfg, f.name)
        if dataclasses.is_dataclass(section):
            close = close_match(key, [g.name for g in fields(section)])
            if close:
                return f"{f.name}=dict({close}={value!r})"
    return None


def replace_checked(cfg: Any, overrides: dict, where: str = "model") -> Any:
    """``dataclasses.replace``, then :func:`check_config`; unknown keys are named instead of a TypeError, with
    the option each one probably means.

    >>> replace_checked(VideoMambaConfig(), {"num_frame": 8})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    vmm.errors.VmmError: unknown model option(s) num_frame; valid options: ...; did you mean 'num_frames'?
    """
    names = {f.name for f in fields(cfg)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        # The list of valid options alone left the reader to spot num_frame's missing "s" among 24 names.
        hints = {k: _close_option(cfg, k, overrides[k]) for k in unknown}
        hints = {k: h for k, h in hints.items() if h}
        mean = (next(iter(hints.values())) if len(unknown) == 1 and hints
                else ", ".join(f"{h} for {k}" for k, h in hints.items()))
        raise VmmError(
            f"unknown {where} option(s) {', '.join(unknown)}; valid options: {', '.join(sorted(names))}"
            + (f"; did you mean {mean}?" if mean else "")
        )
    new = dataclasses.replace(cfg, **overrides)
    check_config(new, where)
    return new


__all__ = ["VideoMambaConfig", "check_config", "replace_checked"]
