"""Frozen teachers: the CLIP ViT-B/16 of unmasked-token alignment (UTA) and a smaller VideoMamba.

The CLIP teacher follows the official ``clip_b16`` with ``clip_return_cls=True``: frames go through the
visual tower one by one (the Conv3d (1,16,16) patchify equals a per-frame Conv2d); the output is the last
block's tokens before ``ln_post``, projected by ``proj``, with the per-frame CLS averaged over frames, then
L2-normalised; it also returns the last layer's CLS->patch attention (mean over heads), which decides the
visible tokens. It takes the student's ImageNet-normalised pixels as they are, as the official teacher does
(``renormalize=True`` maps them to CLIP's statistics first). It runs at the student's resolution (the position
table is resized on load) so both have the same patch grid.
"""
from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from vmm.errors import VmmError
from vmm.transforms import IMAGENET_MEAN, IMAGENET_STD

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def resolve_clip_weights(model_name: str, weights: Optional[str]) -> Optional[Path]:
    """A local weights file, or the cached/downloaded file of an open_clip pretrained tag ("openai").

    Offline and not cached: a one-line :class:`VmmError` saying which file to download and how to pass it.
    ``None`` means random weights (tests only).
    """
    if weights is None:
        return None
    path = Path(weights).expanduser()
    if path.suffix or os.sep in weights or path.exists():
        if not path.is_file():
            what = "is a folder (a hub download?), not a file" if path.is_dir() else "not found"
            raise VmmError(f"teacher.clip_weights: CLIP teacher weights file {path} {what}; pass an existing "
                           f"open_clip/OpenAI state dict (.bin/.pt/.safetensors) or the tag 'openai' when online")
        return path
    import open_clip
    cfg = open_clip.get_pretrained_cfg(model_name, weights)
    if not cfg:
        tags = ", ".join(t for m, t in open_clip.list_pretrained() if m == model_name) or "none"
        raise VmmError(f"teacher.clip_weights: {weights!r} is neither a file nor an open_clip tag of "
                       f"{model_name} (tags: {tags})")
    repo, filename = os.path.split(cfg.get("hf_hub", ""))  # "org/model/" -> ("org/model", "")
    try:
        from huggingface_hub import try_to_load_from_cache
        for name in [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]:
            cached = try_to_load_from_cache(repo, name) if repo else None
            if isinstance(cached, str):
                return Path(cached)
    except ImportError:
        pass
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false") or \
        os.environ.get("TRANSFORMERS_OFFLINE", "0") not in ("0", "", "false")
    hint = (f"download https://huggingface.co/{repo} (open_clip_model.safetensors) and pass "
            f"teacher.clip_weights=/path/to/open_clip_model.safetensors")
    if offline:
        raise VmmError(f"teacher.clip_weights={weights!r}: the {model_name} weights are not in the local cache "
                       f"and the hub is offline; {hint}")
    try:
        target = open_clip.pretrained.download_pretrained(cfg)
    except Exception as e:
        raise VmmError(f"teacher.clip_weights={weights!r}: could not download the {model_name} weights "
                       f"({type(e).__name__}); {hint}") from None
    if not target:
        raise VmmError(f"teacher.clip_weights={weights!r}: open_clip gave no file for {model_name}; {hint}")
    return Path(target)


def _read_visual_state_dict(path: Path) -> dict[str, Tensor]:
    """Visual-tower tensors of a CLIP file: open_clip/OpenAI state dicts, visual-only dicts, an official VideoMamba
    multimodal checkpoint (its ``clip_teacher.*``), or OpenAI's original TorchScript archive (what open_clip
    downloads when the Hugging Face hub is not available)."""
    from vmm.errors import CheckpointError
    from vmm.models.checkpoint import read_checkpoint
    try:
        sd = read_checkpoint(path)
    except CheckpointError:
        try:
            sd = torch.jit.load(str(path), map_location="cpu").state_dict()
        except Exception:
            raise VmmError(f"teacher.clip_weights: {path} is neither a state dict nor a TorchScript CLIP "
                           f"archive; pass open_clip_model.safetensors of {path.stem}") from None
    # An official VideoMamba multimodal checkpoint carries its frozen teacher as clip_teacher.* (OpenAI names,
    # patchify as a Conv3d with one frame): resuming pretraining from it keeps that teacher.
    official = {k[len("clip_teacher."):]: v for k, v in sd.items() if k.startswith("clip_teacher.")}
    if official:
        if official.get("conv1.weight") is not None and official["conv1.weight"].ndim == 5:
            official["conv1.weight"] = official["conv1.weight"][:, :, 0]
        return official
    visual = {k[len("visual."):]: v for k, v in sd.items() if k.startswith("visual.")}
    return visual or sd


class ClipTeacher(nn.Module):
    """Frozen open_clip visual tower returning UTA targets and CLS attention.

    ``forward(video)`` with ImageNet-normalised (B, 3, T, H, W) -> ``tokens`` (B, 1 + T*P, D): averaged CLS
    then every frame's patches in the student's spatial-first order, unit length; ``attn`` (B, T, P).
    """

    def __init__(self, model_name: str = "ViT-B-16", image_size: int = 224, weights: Optional[Path] = None,
                 quick_gelu: bool = True, overrides: Optional[dict] = None, renormalize: bool = False,
                 device: Optional[str] = None):
        super().__init__()
        import open_clip
        kwargs = dict(overrides or {})
        if "vision_cfg" in kwargs:
            kwargs["vision_cfg"] = {**kwargs["vision_cfg"], "image_size": image_size}
        if device is not None:  # "meta": a weightless copy, so start-up checks see its sizes in milliseconds
            kwargs["device"] = device
        logging.disable(logging.WARNING)  # open_clip warns that pretrained=None means random weights
        try:
            with torch.device(device) if device is not None else contextlib.nullcontext():
                clip = open_clip.create_model(model_name, pretrained=None, force_image_size=image_size,
                                              force_quick_gelu=quick_gelu, **kwargs)
        except (RuntimeError, TypeError, ValueError, KeyError) as e:  # unknown name, a bad clip_overrides key
            first = (str(e).strip().splitlines() or [type(e).__name__])[0].split(" Available:")[0]
            given = f" with teacher.clip_overrides keys {sorted(overrides)}" if overrides else ""
            raise VmmError(f"teacher.clip_model={model_name!r}{given}: open_clip cannot build it ({first[:160]}); "
                           f"pass an open_clip ViT name such as ViT-B-16 and options its model takes") from None
        finally:
            logging.disable(logging.NOTSET)
        self.visual = clip.visual
        del clip
        blocks = getattr(getattr(self.visual, "transformer", None), "resblocks", None)
        if blocks is None or not isinstance(getattr(blocks[-1], "attn", None), nn.MultiheadAttention) \
                or getattr(self.visual, "proj", None) is None:
            raise VmmError(f"teacher.clip_model={model_name}: only plain open_clip ViTs (MultiheadAttention blocks "
                           f"and a proj) can be UTA teachers")
        # forward() uses the embedding step and the batch-first blocks of open_clip >= 2.32; older releases
        # (which pyproject's >= 2.24 admits) have neither and failed at the first step with an AttributeError.
        if not hasattr(self.visual, "_embeds") or not getattr(self.visual.transformer, "batch_first", False):
            have = getattr(open_clip, "__version__", "an older one")
            raise VmmError(f"loss.uta: the CLIP teacher needs open_clip_torch >= 2.32, this environment has {have}; "
                           f"pip install -U 'open_clip_torch>=2.32'")
        if weights is not None:
            self._load(weights)
        self.patch_size = self.visual.patch_size[0]
        self.output_dim = self.visual.proj.shape[1]
        self.renormalize = renormalize
        if renormalize:
            scale = torch.tensor(IMAGENET_STD) / torch.tensor(CLIP_STD)
            shift = (torch.tensor(IMAGENET_MEAN) - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
            self.register_buffer("renorm_scale", scale.view(1, 3, 1, 1, 1), persistent=False)
            self.register_buffer("renorm_shift", shift.view(1, 3, 1, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def _load(self, path: Path) -> None:
        from open_clip.model import resize_pos_embed
        sd = {"visual." + k: v for k, v in _read_visual_state_dict(path).items()}
        # The official clip.load_state_dict resizes with plain bicubic; open_clip's default antialias=True
        # uses another cubic kernel (a=-0.5), which changes the table even when upsampling.
        resize_pos_embed(sd, SimpleNamespace(visual=self.visual), antialias=False)
        sd = {k[len("visual."):]: v for k, v in sd.items()}
        try:
            self.visual.load_state_dict(sd, strict=True)
        except RuntimeError as e:
            raise VmmError(f"teacher.clip_weights: {path} does not fit open_clip {type(self.visual).__name__} "
                           f"({str(e).splitlines()[0][:160]}); pass weights of teacher.clip_model") from None

    def train(self, mode: bool = True) -> "ClipTeacher":
        return super().train(False)  # always frozen

    @torch.no_grad()
    def forward(self, video: Tensor) -> tuple[Tensor, Tensor]:
        B, C, T, H, W = video.shape
        x = video.to(self.renorm_scale.dtype) * self.renorm_scale + self.renorm_shift if self.renormalize else video
        x = x.to(self.visual.conv1.weight.dtype).transpose(1, 2).reshape(B * T, C, H, W)
        x = self.visual._embeds(x)  # conv1, CLS, position table, ln_pre -> (BT, 1 + P, width)
        blocks = self.visual.transformer.resblocks
        for block in blocks[:-1]:
            x = block(x)
        last = blocks[-1]
        h = last.ln_1(x)
        out, attn = last.attn(h, h, h, need_weights=True, average_attn_weights=True)
        x = x + last.ls_1(out)
        x = x + last.ls_2(last.mlp(last.ln_2(x)))
        x = x @ self.visual.proj  # (BT, 1 + P, D), no ln_post (official clip_return_cls path)
        P = x.shape[1] - 1
        cls = x[:, 0].reshape(B, T, -1).mean(1, keepdim=True)
        tokens = torch.cat([cls, x[:, 1:].reshape(B, T * P, -1)], dim=1)
        return F.normalize(tokens.float(), dim=-1), attn[:, 0, 1:].reshape(B, T, P).float()


def attention_guided_mask(attn: Tensor, mask_ratio: float) -> Tensor:
    """Visible patches per frame drawn without replacement with probability proportional to ``attn``.

    ``attn`` (B, T, P) -> mask (B, 1 + T*P) bool, True = masked; the CLS slot is always visible; every frame
    keeps ``P - int(P * mask_ratio)`` patches (40 of 196 at 0.8, 98 at 0.5).

    >>> m = attention_guided_mask(torch.rand(2, 8, 196), 0.8)
    >>> m.shape, int((~m[0, 1:]).sum())
    (torch.Size([2, 1569]), 320)
    """
    B, T, P = attn.shape
    n_visible = P - int(P * mask_ratio)
    weights = attn.reshape(B * T, P).float().clamp_min(1e-12)
    visible = torch.multinomial(weights, n_visible, replacement=False)
    mask = torch.ones(B * T, P, dtype=torch.bool, device=attn.device)
    mask.scatter_(1, visible, False)
    cls = torch.zeros(B, 1, dtype=torch.bool, device=attn.device)
    return torch.cat([cls, mask.reshape(B, T * P)], dim=1)


class VideoMambaTeacher(nn.Module):
    """A frozen (smaller) vmm vision encoder for self-distillation; ``forward`` -> frame-averaged pooled (B, D)."""

    def __init__(self, directory: str):
        super().__init__()
        import vmm
        model = vmm.from_pretrained(directory)
        encoder = getattr(model, "vision_encoder", model)
        from vmm.models.videomamba import VideoMambaVisionEncoder
        if not isinstance(encoder, VideoMambaVisionEncoder):
            raise VmmError(f"teacher.distill_model: {directory} holds a {type(model).__name__}, not a multimodal "
                           f"VideoMamba model or vision encoder")
        self.encoder = encoder
        self.embed_dim = encoder.cfg.embed_dim
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "VideoMambaTeacher":
        return super().train(False)

    @torch.no_grad()
    def forward(self, video: Tensor) -> Tensor:
        _, pooled, _ = self.encoder(video, keep_temporal=True)
        return pooled.float().mean(1)
