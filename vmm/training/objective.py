"""The module the optimizer trains: the model plus the distillation projection, forward = weighted losses.

Every loss is computed inside ``forward`` so data-parallel wrappers see one forward per step. Teachers are
not part of it: they are frozen, run before the forward, and their outputs come in as arguments.
"""
from __future__ import annotations

from typing import Optional

import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from vmm.training import losses
from vmm.training.config import LossSection


class PretrainObjective(nn.Module):
    """``forward(video, input_ids, attention_mask, sample_id, ...) -> {"loss": total, "vtc": ..., ...}``.

    ``mask`` (B, 1 + T*P) marks masked video tokens for the masked stage; ``clip_targets`` (B, N_vis, D) are
    the CLIP teacher's tokens at the visible positions; ``distill_targets`` (B, D_teacher) the pooled features
    of a smaller VideoMamba. ``rank``/``world`` size the contrastive all-gather.

    >>> import torch, vmm
    >>> from vmm.training.config import LossSection
    >>> model = vmm.create_model("vmm_nano", vision=dict(depth=2, img_size=32, num_frames=2),
    ...                          text=dict(init_from=None, num_hidden_layers=2, fusion_layer=1, mlm_head=True))
    >>> objective = PretrainObjective(model, LossSection(), mask_token_id=103, special_ids=(0, 101))
    >>> ids = torch.tensor([[101, 2023, 2003, 102], [101, 3231, 102, 0]])
    >>> out = objective(torch.randn(2, 3, 2, 32, 32), ids, (ids != 0).long(), sample_id=torch.tensor([0, 1]))
    >>> sorted(out), bool(out["loss"] == out["vtc"] + out["vtm"] + out["mlm"])
    (['loss', 'mlm', 'vtc', 'vtm'], True)
    """

    def __init__(self, model: nn.Module, loss: LossSection, mask_token_id: int, special_ids: tuple[int, ...],
                 distill_dim: Optional[int] = None):
        super().__init__()
        self.model = model
        self.weights = {k: getattr(loss, k) for k in ("vtc", "vtm", "mlm", "uta", "distill")}
        self.mlm_prob = loss.mlm_prob
        self.distill_type = loss.distill_type
        self.mask_token_id = mask_token_id
        self.special_ids = tuple(special_ids)
        self.distill_proj = None
        if distill_dim is not None and loss.distill > 0:
            self.distill_proj = nn.Linear(model.cfg.vision.embed_dim, distill_dim)
            nn.init.trunc_normal_(self.distill_proj.weight, std=0.02)
            nn.init.zeros_(self.distill_proj.bias)

    def forward(self, video: Tensor, input_ids: Tensor, attention_mask: Tensor, sample_id: Tensor,
                mask: Optional[Tensor] = None, clip_targets: Optional[Tensor] = None,
                distill_targets: Optional[Tensor] = None, rank: int = 0, world: int = 1) -> dict[str, Tensor]:
        m, w = self.model, self.weights
        # The config's keep_temporal, as the official encode_vision passes it (a token mask forces one vector).
        x_vis, pooled, x_clip = m.vision_encoder(video, mask=mask, keep_temporal=m.cfg.vision.keep_temporal)
        video_emb = F.normalize(m.vision_proj(pooled).float(), dim=-1)  # (B, T or 1, E)
        text_hidden = m.text_encoder.forward_text(input_ids, attention_mask)
        text_emb = F.normalize(m.text_proj(text_hidden[:, 0]).float(), dim=-1)
        out: dict[str, Tensor] = {}
        if w["vtc"] > 0:
            out["vtc"] = losses.vtc_loss(video_emb, text_emb, sample_id, m.temp, rank, world)
        if w["vtm"] > 0:
            out["vtm"] = losses.vtm_loss(m, x_vis, text_hidden, attention_mask, video_emb.detach(),
                                         text_emb.detach(), sample_id, m.temp.detach())
        if w["mlm"] > 0:
            out["mlm"] = losses.mlm_loss(m, input_ids, attention_mask, x_vis, self.mlm_prob, self.mask_token_id,
                                         self.special_ids)
        if w["uta"] > 0 and clip_targets is not None:
            out["uta"] = losses.uta_loss(x_clip, clip_targets)
        if w["distill"] > 0 and distill_targets is not None:
            student = self.distill_proj(pooled.float().mean(1))
            out["distill"] = losses.distill_loss(student, distill_targets, self.distill_type)
        out["loss"] = sum(w[k] * v for k, v in out.items())
        return out
