"""Residual add + RMSNorm in plain PyTorch: the twin of the fused :func:`vmm.ops.triton_norm.add_rmsnorm`, with
its arguments and its argument checks, and what a model runs wherever that kernel does not. It imports no Triton,
so a model on a CPU never does."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from vmm.ops._checks import check_float_tensors, check_shapes

__all__ = ["add_rmsnorm_ref"]


def _check_add_rmsnorm_args(fn: str, hidden: Tensor, residual: Optional[Tensor], weight: Tensor) -> None:
    """What :func:`add_rmsnorm_ref` and the fused ``add_rmsnorm`` both refuse, in one line naming the argument."""
    check_float_tensors(fn, {"hidden": hidden, "residual": residual, "weight": weight}, optional=("residual",))
    # The kernel reads residual row by row and weight as D contiguous values: a residual that would broadcast
    # or a strided weight gave wrong numbers without an error.
    check_shapes(fn, f"for hidden of shape {tuple(hidden.shape)}",
                 {"hidden": (hidden, hidden.shape), "residual": (residual, hidden.shape),
                  "weight": (weight, hidden.shape[-1:])})


def _rms_norm(x: Tensor, weight: Tensor, eps: float, out_dtype: Optional[torch.dtype] = None) -> Tensor:
    """``x * rsqrt(mean(x^2) + eps) * weight`` in fp32 (as the official Triton kernel), returned in ``out_dtype``
    (default: x's); :class:`vmm.models.layers.RMSNorm` and :func:`add_rmsnorm_ref` share it."""
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * weight.float()
    return y.to(out_dtype or x.dtype)


def add_rmsnorm_ref(hidden: Tensor, residual: Optional[Tensor], weight: Tensor, eps: float = 1e-5
                    ) -> Tuple[Tensor, Tensor]:
    """``residual = residual + hidden`` in fp32 (``hidden`` alone when ``residual`` is None), then
    ``RMSNorm(residual) * weight`` in hidden's dtype; returns ``(normed, residual)``. The same contract and
    argument checks as the fused :func:`vmm.ops.triton_norm.add_rmsnorm`, on any device::

        >>> h = torch.randn(2, 8, dtype=torch.bfloat16)
        >>> y, r = add_rmsnorm_ref(h, None, torch.ones(8))
        >>> y.dtype, r.dtype
        (torch.bfloat16, torch.float32)
        >>> add_rmsnorm_ref(h, r, torch.ones(4))
        Traceback (most recent call last):
        vmm.errors.VmmError: add_rmsnorm_ref: weight must have shape (8,) for hidden of shape (2, 8), got (4,)
    """
    _check_add_rmsnorm_args("add_rmsnorm_ref", hidden, residual, weight)
    residual = hidden.float() if residual is None else residual + hidden.float()
    return _rms_norm(residual, weight, eps, out_dtype=hidden.dtype), residual
