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
    """True when the fused kernels can run on ``device`` (CUDA with Triton importable).

    >>> from vmm.ops.triton_bimamba import is_available
    >>> isinstance(is_available(torch.device("cpu")), bool)
    True
    """
    if not HAS_TRITON:
        return False
    if device is None:
        return torch.cuda.is_available()
    return torch.device(device).type == "cuda"


def interpreting() -> bool:
    """Whether Triton runs on the CPU interpreter (``TRITON_INTERPRET=1``), which runs no inline PTX."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def check_rows(t: Tensor) -> Tensor:
    """Kernels index the last dim with stride 1; anything else is copied once."""
    return t if t.stride(-1) == 1 else t.contiguous()
