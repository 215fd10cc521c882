"""Thin wrappers over mamba-ssm's CUDA selective scan and causal-conv1d's CUDA conv.

Both packages import their compiled extension unconditionally (``import mamba_ssm`` raises without it), so they
are imported here lazily, on the first CUDA tensor that asks, and a failed import only marks the backend
unavailable. The reverse direction flips the sequence around the kernel, as the official VideoMamba code does.
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
import logging
from typing import Callable, Optional, Union

import torch
from torch import Tensor

log = logging.getLogger(__name__)

_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

MAMBA_SSM_HINT = ("it needs CUDA float32/float16/bfloat16 tensors and mamba-ssm's compiled extension: "
                  "MAMBA_FORCE_BUILD=TRUE pip install --no-build-isolation mamba-ssm (see docs/kernels.md)")
CAUSAL_CONV1D_HINT = ("it needs CUDA float32/float16/bfloat16 tensors and causal-conv1d's compiled extension: "
                      "CAUSAL_CONV1D_FORCE_BUILD=TRUE pip install --no-build-isolation causal-conv1d "
                      "(see docs/kernels.md)")


def _import_or_none(module: str, attr: str) -> Optional[Callable[..., Tensor]]:
    """``module.attr``, or None when the package is missing (logged at DEBUG) or installed but broken (a WARNING,
    since the caller then silently gets the slower reference)."""
    package = module.split(".")[0]
    try:
        return getattr(importlib.import_module(module), attr)
    except Exception as exc:  # ImportError, or OSError/RuntimeError from a broken compiled extension
        if importlib.util.find_spec(package) is None:
            log.debug("%s is not installed; the reference backend is used instead", package)
        else:
            log.warning("%s is installed but cannot be imported (%s: %s); the slower reference backend is used "
                        "instead", package, type(exc).__name__, exc)
        return None


@functools.lru_cache(maxsize=None)
def _load_selective_scan_fn() -> Optional[Callable[..., Tensor]]:
    return _import_or_none("mamba_ssm.ops.selective_scan_interface", "selective_scan_fn")


@functools.lru_cache(maxsize=None)
def _load_causal_conv1d_fn() -> Optional[Callable[..., Tensor]]:
    return _import_or_none("causal_conv1d", "causal_conv1d_fn")


def selective_scan_available(u: Tensor) -> bool:
    """True when mamba-ssm's kernel can run on tensors like ``u`` (CUDA, fp32/fp16/bf16, extension importable).
    A CPU tensor is answered without importing mamba_ssm:

    >>> selective_scan_available(torch.zeros(1, 4, 8))
    False
    """
    return u.is_cuda and u.dtype in _KERNEL_DTYPES and _load_selective_scan_fn() is not None


def causal_conv1d_available(x: Tensor) -> bool:
    """True when causal-conv1d's kernel can run on tensors like ``x`` (CUDA, fp32/fp16/bf16, importable).

    >>> causal_conv1d_available(torch.zeros(1, 4, 8))
    False
    """
    return x.is_cuda and x.dtype in _KERNEL_DTYPES and _load_causal_conv1d_fn() is not None


def selective_scan_mamba_ssm(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor] = None,
                             z: Optional[Tensor] = None, delta_bias: Optional[Tensor] = None,
                             delta_softplus: bool = False, reverse: bool = False,
                             return_last_state: bool = False) -> Union[Tensor, tuple[Tensor, Tensor]]:
    """``selective_scan`` through mamba-ssm's ``selective_scan_fn`` (differentiable, CUDA only).

    The kernel wants u, delta, B, C and z in one dtype and A, D, delta_bias in float32; this casts them.
    ``return_last_state=True`` is passed to the kernel, which returns ``(out, last_state)``, last_state
    (batch, channels, state) in float32. With ``reverse=True`` the flipped forward scan ends at position 0, which is
    the last step of the reverse scan, so its last state is returned unflipped. mamba-ssm's backward ignores the
    gradient of last_state (its docstring says so), so it is returned detached: a loss through it that needs
    gradients must use the reference backend, rather than get silently wrong ones.
    """
    scan = _load_selective_scan_fn()
    if scan is None:
        raise RuntimeError("mamba_ssm is not importable; check selective_scan_available() first")
    dtype = u.dtype
    delta, B, C = delta.to(dtype), B.to(dtype), C.to(dtype)
    z = None if z is None else z.to(dtype)
    A = A.float()
    D = None if D is None else D.float()
    delta_bias = None if delta_bias is None else delta_bias.float()
    if reverse:  # the kernel has no reverse: the forward scan of the flipped sequence, its output flipped back
        u, delta, B, C, z = (None if t is None else t.flip(-1) for t in (u, delta, B, C, z))
    asked = {"return_last_state": True} if return_last_state else {}  # passed only when asked, as before
    result = scan(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus, **asked)
    out, last = result if return_last_state else (result, None)
    if reverse:
        out = out.flip(-1)
    return (out, last.detach()) if return_last_state else out


def causal_conv1d_cuda(x: Tensor, weight: Tensor, bias: Optional[Tensor], activation: Optional[str],
                       reverse: bool) -> Tensor:
    """Depthwise causal conv through causal-conv1d's ``causal_conv1d_fn``; weight is (channels, width)."""
    conv = _load_causal_conv1d_fn()
    if conv is None:
        raise RuntimeError("causal_conv1d is not importable; check causal_conv1d_available() first")
    weight = weight.contiguous()
    bias = None if bias is None else bias.to(weight.dtype).contiguous()
    if not reverse:
        return conv(x, weight, bias, activation=activation)
    return conv(x.flip(-1), weight, bias, activation=activation).flip(-1)
