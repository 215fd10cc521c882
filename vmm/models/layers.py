"""Building blocks of VideoMamba: RMSNorm, drop path, the bidirectional Mamba mixer and its residual block.

Parameter names follow the official checkpoints (``mixer.in_proj``, ``mixer.conv1d_b``, ``mixer.A_b_log``...).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
from torch import Tensor

from vmm.ops.bimamba import DirectionWeights, bimamba_inner_xz, use_triton
from vmm.ops.norm import _rms_norm, add_rmsnorm_ref


class RMSNorm(nn.Module):
    """y = x * rsqrt(mean(x^2) + eps) * w, computed in fp32 (as the official Triton kernel), no bias."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor, out_dtype: Optional[torch.dtype] = None) -> Tensor:
        return _rms_norm(x, self.weight, self.eps, out_dtype)

    def add_forward(self, hidden: Tensor, residual: Optional[Tensor],
                    backend: Optional[str] = "reference") -> tuple[Tensor, Tensor]:
        """``residual = residual + hidden`` in fp32 (``hidden`` alone when ``residual`` is None), then this norm
        of it in ``hidden``'s dtype; returns ``(normed, residual)``, the official ``fused_add_norm``.

        ``backend`` is the model's scan backend: where the fused Triton kernels run for it
        (:func:`vmm.ops.bimamba.use_triton`), this is one Triton kernel, forward and backward; otherwise, and on
        CPU, its PyTorch twin :func:`vmm.ops.norm.add_rmsnorm_ref`::

            >>> norm = RMSNorm(8)
            >>> normed, residual = norm.add_forward(torch.randn(2, 3, 8), None)
            >>> normed.shape, residual.dtype
            (torch.Size([2, 3, 8]), torch.float32)
        """
        if use_triton(hidden, backend):
            from vmm.ops import triton_norm
            return triton_norm.add_rmsnorm(hidden, residual, self.weight, self.eps)
        return add_rmsnorm_ref(hidden, residual, self.weight, self.eps)


class DropPath(nn.Module):
    """Stochastic depth per sample; identity in eval mode or with p == 0."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class BiMambaMixer(nn.Module):
    """Bidirectional Mamba ("bimamba v2"): shared in/out projections, separate per-direction SSM parameters.

    out = out_proj(SiLU(z) * S6_fwd(x) + SiLU(z) * S6_bwd(x)), a plain sum (the official code does not halve).
    """

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 dt_rank: Optional[int] = None, scan_backend: Optional[str] = None):
        super().__init__()
        self.d_model, self.d_state, self.d_conv = d_model, d_state, d_conv
        self.d_inner = E = expand * d_model
        self.dt_rank = R = dt_rank if dt_rank is not None else math.ceil(d_model / 16)
        self.scan_backend = scan_backend
        # Raw parameters first, then modules: the official state_dict order.
        A = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(E, 1)  # S4D-real init
        self.A_log = nn.Parameter(torch.log(A))
        self.D = nn.Parameter(torch.ones(E))
        self.A_b_log = nn.Parameter(torch.log(A.clone()))
        self.D_b = nn.Parameter(torch.ones(E))
        for p in (self.A_log, self.D, self.A_b_log, self.D_b):
            p._no_weight_decay = True
        self.in_proj = nn.Linear(d_model, 2 * E, bias=False)
        self.conv1d = nn.Conv1d(E, E, d_conv, groups=E, padding=d_conv - 1, bias=True)
        self.x_proj = nn.Linear(E, R + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(R, E, bias=True)
        self.conv1d_b = nn.Conv1d(E, E, d_conv, groups=E, padding=d_conv - 1, bias=True)
        self.x_proj_b = nn.Linear(E, R + 2 * d_state, bias=False)
        self.dt_proj_b = nn.Linear(R, E, bias=True)
        self.out_proj = nn.Linear(E, d_model, bias=False)

    def direction_weights(self, backward: bool) -> DirectionWeights:
        s = "_b" if backward else ""
        conv = getattr(self, "conv1d" + s)
        dt = getattr(self, "dt_proj" + s)
        return DirectionWeights(conv.weight, conv.bias, getattr(self, "x_proj" + s).weight, dt.weight, dt.bias,
                                getattr(self, "A_b_log" if backward else "A_log"), getattr(self, "D" + s))

    def forward(self, hidden: Tensor) -> Tensor:  # (B, L, D) -> (B, L, D)
        xz = self.in_proj(hidden).transpose(1, 2)  # (B, 2E, L)
        y = bimamba_inner_xz(xz, self.direction_weights(False), self.direction_weights(True),
                             backend=self.scan_backend)
        return self.out_proj(y.transpose(1, 2))


class MambaBlock(nn.Module):
    """Add -> RMSNorm -> mixer, with the residual stream kept in fp32 (official fused_add_norm, prenorm)."""

    def __init__(self, d_model: int, mixer: BiMambaMixer, drop_path: float = 0.0, eps: float = 1e-5):
        super().__init__()
        self.mixer = mixer
        self.norm = RMSNorm(d_model, eps=eps)
        self.drop_path = DropPath(drop_path)

    def forward(self, hidden: Tensor, residual: Optional[Tensor]) -> tuple[Tensor, Tensor]:
        # Block 0 gets no drop path: its "hidden" is the embedding itself (official behaviour).
        if residual is not None:
            hidden = self.drop_path(hidden)
        normed, residual = self.norm.add_forward(hidden, residual, backend=self.mixer.scan_backend)
        return self.mixer(normed), residual


def init_videomamba_weights(model: nn.Module, depth: int) -> None:
    """The official initialisation, in the official order (spec section 2.4).

    ViT-style init of every Linear (trunc normal 0.02, zero bias) overwrites the Mamba dt init, so dt_proj
    biases end up exactly 0 as in the released code; then every out_proj is re-drawn kaiming-uniform / sqrt(depth).
    """
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    for m in model.modules():
        if isinstance(m, BiMambaMixer):
            nn.init.kaiming_uniform_(m.out_proj.weight, a=math.sqrt(5))
            with torch.no_grad():
                m.out_proj.weight /= math.sqrt(depth)
