"""What the Triton kernels of :mod:`vmm.ops` share: the optional import, the device check and two small
launch helpers. Triton is optional: CPU-only installs use the reference backends."""
from __future__ import annotations

import os
from typing import Optional

import torch
from torch import Tensor

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # pragma: no cover - exercised only without triton
    triton = None
    tl = None
    HAS_TRITON = False

__all__ = ["HAS_TRITON", "is_available", "interpreting", "check_rows", "triton", "tl"]


def is_available(device: Optional[torch.device] = None) -> bool:
    """True when the fused kernels can run on ``device`` (default: the current CUDA device): Triton is
    importable and the device is an NVIDIA GPU of compute capability 7.0 or newer (the kernels use inline
    PTX, so ROCm builds, whose GPUs also show as "cuda", take the reference backends).

    >>> from vmm.ops.triton_bimamba import is_available
    >>> is_available(torch.device("cpu"))
    False
    """
    if not HAS_TRITON or getattr(torch.version, "hip", None) or not torch.cuda.is_available():
        return False
    device = torch.device("cuda") if device is None else torch.device(device)
    if device.type != "cuda":
        return False
    return torch.cuda.get_device_capability(device) >= (7, 0)


def interpreting() -> bool:
    """Whether Triton runs on the CPU interpreter (``TRITON_INTERPRET=1``), which runs no inline PTX."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def check_rows(t: Tensor) -> Tensor:
    """Kernels index the last dim with stride 1; anything else is copied once."""
    return t if t.stride(-1) == 1 else t.contiguous()
