"""AdamW parameter groups (the official no-decay rule or a wider one), freezing, and the warmup + cosine schedule."""
from __future__ import annotations

import fnmatch
import math
import re
from typing import Iterable

import torch
import torch.nn as nn

from vmm.errors import VmmError
from vmm.training.config import NO_DECAY_RULES

# Embedding tables that are positions, not features (2-D, so only their names can tell).
_NO_DECAY_SUFFIXES = ("position_embeddings.weight", "token_type_embeddings.weight", "pos_embed",
                      "temporal_pos_embedding", "cls_token", "class_embedding")


def no_weight_decay_names(module: nn.Module, rule: str = "official") -> set[str]:
    """Names of trainable parameters that get no weight decay.

    ``"official"`` is what the official pretraining does: its ``create_optimizer`` asks the model for a
    ``no_weight_decay()`` list, which neither ``UMT_VIDEOMAMBA`` nor its DDP wrapper has, so only 1-D parameters
    (norm weights, biases, Mamba's ``D``) and names ending in ``.bias`` skip decay; ``temp``, ``A_log`` and the
    position tables are decayed.
    ``"extended"`` also spares the scalar ``temp``, parameters tagged ``_no_weight_decay`` (Mamba's
    ``A_log``), every name a submodule lists in ``no_weight_decay()`` (VideoMamba's position tables and CLS)
    and BERT/CLIP position and type embeddings, as timm-style training does.

    >>> import vmm
    >>> m = vmm.create_model("videomamba_tiny_vision", depth=1, num_frames=2, img_size=32)
    >>> sorted(n for n in no_weight_decay_names(m) if "mixer" in n)[:2]
    ['layers.0.mixer.D', 'layers.0.mixer.D_b']
    >>> sorted(n for n in no_weight_decay_names(m, "extended") if "mixer" in n)[:2]
    ['layers.0.mixer.A_b_log', 'layers.0.mixer.A_log']
    """
    if rule not in NO_DECAY_RULES:
        raise VmmError(f"optim.no_decay must be one of {', '.join(NO_DECAY_RULES)}, got {rule!r}")
    names = {n for n, p in module.named_parameters() if p.ndim == 1 or n.endswith(".bias")}
    if rule == "official":
        return names
    for prefix, sub in module.named_modules():
        listed = getattr(sub, "no_weight_decay", None)
        if callable(listed):
            names |= {f"{prefix}.{n}" if prefix else n for n in listed()}
    for name, p in module.named_parameters():
        if p.ndim == 0 or getattr(p, "_no_weight_decay", False) or name.endswith(_NO_DECAY_SUFFIXES):
            names.add(name)
    return names


def param_groups(module: nn.Module, weight_decay: float, rule: str = "official") -> list[dict]:
    """Two AdamW groups over the trainable parameters: with and without weight decay (see
    :func:`no_weight_decay_names` for ``rule``)."""
    skip = no_weight_decay_names(module, rule)
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if p.requires_grad:
            (no_decay if name in skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay, "name": "decay"},
            {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"}]


def build_optimizer(module: nn.Module, lr: float, weight_decay: float, betas, eps: float,
                    no_decay: str = "official") -> torch.optim.AdamW:
    return torch.optim.AdamW(param_groups(module, weight_decay, no_decay), lr=lr, betas=tuple(betas), eps=eps)


def set_hyperparameters(optimizer: torch.optim.Optimizer, weight_decay: float, betas, eps: float) -> None:
    """Give the groups of :func:`build_optimizer` these settings again.

    ``load_state_dict`` (a resume) brings back the saved run's weight decay, betas and eps along with the moments,
    so a resume with other ``optim`` settings went on with the old ones while saying it used the command's.

    >>> import vmm
    >>> m = vmm.create_model("videomamba_tiny_vision", depth=1, num_frames=2, img_size=32)
    >>> opt = build_optimizer(m, 1e-3, 0.05, (0.9, 0.999), 1e-8)
    >>> set_hyperparameters(opt, 0.1, (0.9, 0.98), 1e-6)
    >>> [(g["weight_decay"], g["betas"], g["eps"]) for g in opt.param_groups]
    [(0.1, (0.9, 0.98), 1e-06), (0.0, (0.9, 0.98), 1e-06)]
    """
    for group in optimizer.param_groups:
        group.update(weight_decay=weight_decay if group["name"] == "decay" else 0.0, betas=tuple(betas), eps=eps)


def _pattern_regex(pattern: str) -> re.Pattern:
    """``text_encoder.encoder.layer.0-3`` -> regex matching that prefix with 0..3 in the range slot."""
    parts = []
    for part in pattern.split("."):
        m = re.fullmatch(r"(\d+)-(\d+)", part)
        if m:
            lo, hi = int(m.group(1)), int(m.group(2))
            parts.append("(?:" + "|".join(str(i) for i in range(lo, hi + 1)) + ")")
        else:
            parts.append(fnmatch.translate(part).replace(r"\Z", "").replace("(?s:", "(?:"))
    return re.compile(r"\.".join(parts) + r"(?:\..*)?$")


def freeze(module: nn.Module, patterns: Iterable[str]) -> list[str]:
    """Set ``requires_grad=False`` on parameters under each pattern; returns the frozen names.

    A pattern is a dotted name prefix; a component ``a-b`` matches the integers a..b and shell wildcards
    work (``text_encoder.encoder.layer.0-3``, ``vision_encoder.layers.*.norm``). A pattern that matches
    nothing is an error naming it.

    >>> import vmm
    >>> m = vmm.create_model("videomamba_tiny_vision", depth=3, num_frames=2, img_size=32)
    >>> len(freeze(m, ["layers.0-1"])) == 2 * len(list(m.layers[0].parameters()))
    True
    """
    patterns = [str(p) for p in patterns]
    frozen = []
    names = [n for n, _ in module.named_parameters()]
    params = dict(module.named_parameters())
    for pattern in patterns:
        rx = _pattern_regex(pattern)
        hit = [n for n in names if rx.match(n)]
        if not hit:
            example = ", ".join(sorted({n.rsplit(".", 2)[0] for n in names})[:4])
            raise VmmError(f"freeze pattern {pattern!r} matches no parameter (names look like {example}, ...)")
        for n in hit:
            params[n].requires_grad_(False)
        frozen += hit
    if params and not any(p.requires_grad for p in params.values()):
        # Otherwise the first backward failed with a traceback ("element 0 of tensors does not require grad").
        raise VmmError(f"freeze patterns {patterns} freeze every parameter, so nothing would "
                       f"train; freeze only part of the model (e.g. text_encoder.encoder.layer.0-3)")
    return sorted(set(frozen))


def lr_factor(step: int, total_steps: int, warmup_steps: float, min_ratio: float) -> float:
    """Linear warmup from 0, then a half cosine from 1 to 0, both floored at ``min_ratio`` (step counts from 0).

    The official schedule (``get_cosine_schedule_with_warmup`` of the UMT/VideoMamba multi-modality code, with
    ``min_lr_multi``) clips the curve at the floor rather than rescaling it: the first step already runs at
    ``min_ratio`` times the learning rate, and the cosine reaches the floor at about 94% of the run with 0.01.
    ``warmup_steps`` may be fractional, as the official ``steps_per_epoch * warmup_epochs`` is: the warmup ends
    at the first whole step past it, and the cosine starts from that fraction (a warmup under one step divides
    by 1, as the official ``max(1, num_warmup_steps)`` does).

    >>> [round(lr_factor(s, 10, 2, 0.0), 3) for s in (0, 1, 2, 6, 10)]
    [0.0, 0.5, 1.0, 0.5, 0.0]
    >>> [round(lr_factor(s, 10, 2, 0.1), 3) for s in (0, 1, 2, 6, 10)]
    [0.1, 0.5, 1.0, 0.5, 0.1]
    >>> [round(lr_factor(s, 10, 1.4, 0.0), 3) for s in (0, 1, 2)]
    [0.0, 0.714, 0.988]
    """
    if step < warmup_steps:
        return max(min_ratio, step / max(1, warmup_steps))
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return max(min_ratio, 0.5 * (1 + math.cos(math.pi * progress)))
