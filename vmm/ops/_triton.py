"""What the Triton kernels of :mod:`vmm.ops` share: the optional import, the device check, two small
launch helpers and two math helpers; the argument checks they share with their PyTorch twins live in
:mod:`vmm.ops._checks`. Triton is optional: CPU-only installs use the reference backends."""
from __future__ import annotations

import contextlib
import os
from typing import Optional, Tuple

import torch
from torch import Tensor

from vmm.ops._checks import check_float_tensors, check_shapes

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # pragma: no cover - exercised only without triton
    triton = None
    tl = None
    HAS_TRITON = False

if HAS_TRITON:
    # FAST is False under the interpreter, which runs no inline PTX.
    @triton.jit
    def fast_exp(x, FAST: tl.constexpr):
        """e^x. FAST: one flush-to-zero ex2.approx, where tl.exp also rescales around 2^-126 (5 instructions
        instead of 2; a result below 1e-38 is 0 either way, to fp32 accuracy)."""
        if FAST:
            return tl.inline_asm_elementwise("ex2.approx.ftz.f32 $0, $1;", "=f,f", [x * 1.4426950408889634],
                                             dtype=tl.float32, is_pure=True, pack=1)
        else:
            return tl.exp(x)

    @triton.jit
    def fast_sigmoid(x, FAST: tl.constexpr):
        """1 / (1 + e^-x). FAST: rcp.approx (1 ulp), where tl.sigmoid's division adds range checks."""
        if FAST:
            return tl.inline_asm_elementwise("rcp.approx.ftz.f32 $0, $1;", "=f,f", [1.0 + fast_exp(-x, FAST)],
                                             dtype=tl.float32, is_pure=True, pack=1)
        else:
            return tl.sigmoid(x)


__all__ = ["HAS_TRITON", "is_available", "unavailable_reason", "unsupported_layer", "interpreting", "check_rows",
           "check_runs_here", "check_float_tensors", "check_shapes", "on_device_of", "fast_exp", "fast_sigmoid",
           "triton", "tl"]


def on_device_of(t: Tensor):
    """A context in which kernels for ``t`` launch on t's GPU. Triton launches on the current device, so a model
    on cuda:1 while cuda:0 is current (a second rank that never called ``torch.cuda.set_device``, or
    ``device="cuda:1"``) failed with "Pointer argument cannot be accessed from Triton". Backward passes need no
    guard: autograd runs them with the tensors' device current.

    >>> with on_device_of(torch.zeros(1)):  # a CPU tensor (the interpreter): nothing to switch
    ...     pass
    """
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def is_available(device: Optional[torch.device] = None) -> bool:
    """True when the fused kernels can run on ``device`` (default: the current CUDA device): Triton is
    importable and the device is an NVIDIA GPU of compute capability 7.0 or newer (the kernels use inline
    PTX, so ROCm builds, whose GPUs also show as "cuda", take the reference backends).

    >>> from vmm.ops.triton_bimamba import is_available
    >>> is_available(torch.device("cpu"))
    False
    """
    return unavailable_reason(device) is None


def unavailable_reason(device: Optional[torch.device] = None) -> Optional[Tuple[str, str]]:
    """Why the fused kernels cannot run on ``device``, as ``(reason, fix)``, or None where they can: the
    warning and the error of :mod:`vmm.ops.bimamba` name the one cause that applies (telling someone on a
    ROCm build or an sm_61 GPU to install a Triton they already have sends them in a circle).

    >>> unavailable_reason(torch.device("cpu"))[0]
    'on cpu (they need an NVIDIA GPU of compute capability 7.0+)'
    """
    if getattr(torch.version, "hip", None):
        return ("on a ROCm build of PyTorch (they use NVIDIA inline PTX)", "use an NVIDIA GPU")
    device = torch.device("cuda") if device is None else torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return (f"on {device} (they need an NVIDIA GPU of compute capability 7.0+)", "run on an NVIDIA GPU")
    capability = torch.cuda.get_device_capability(device)
    if capability < (7, 0):
        return (f"on {device}, of compute capability {capability[0]}.{capability[1]} (they need 7.0+)",
                "use a GPU of compute capability 7.0+")
    if not HAS_TRITON:
        return (f"on {device} without the triton package", "install triton (pip install triton)")
    return None


def unsupported_layer(d_state: int) -> Optional[str]:
    """Why the fused bimamba kernels cannot run a layer of this ``d_state``, or None when they can: they hold
    the states in a ``tl.arange(0, d_state)`` block, which Triton only builds for a power of two (any other
    d_state failed to compile, deep inside Triton, on the first clip).

    >>> unsupported_layer(16) is None, unsupported_layer(12)
    (True, 'd_state=12 (the fused kernels need a power of two)')
    """
    if d_state < 1 or d_state & (d_state - 1):
        return f"d_state={d_state} (the fused kernels need a power of two)"
    return None


def interpreting() -> bool:
    """Whether Triton runs on the CPU interpreter (``TRITON_INTERPRET=1``), which runs no inline PTX. Read as
    Triton reads it: "false", "off" or "no" mean no, where any value but "0" once told the kernels yes (slow
    interpreter paths on a GPU, and on a CPU a launch failing with "0 active drivers")."""
    knobs = getattr(triton, "knobs", None)  # Triton's own parsing, where this Triton has it
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on", "y")


def check_runs_here(fn: str, t: Tensor, reference: str) -> None:
    """Raises a one-line VmmError naming ``reference`` where the public kernel wrapper ``fn`` cannot launch on
    ``t``: CPU tensors run only in Triton's interpreter (else the launch failed with "0 active drivers" from deep
    inside Triton), and nothing runs without the triton package (an AttributeError on None). Other devices are
    left to the launch (tests drive the wrappers on meta tensors).

    >>> check_runs_here("add_rmsnorm", torch.zeros(1, device="meta"), "RMSNorm.add_forward")
    """
    from vmm.errors import VmmError
    if not HAS_TRITON:
        raise VmmError(f"{fn}: the fused Triton kernels need the triton package (pip install triton), or use "
                       f"{reference}")
    if t.device.type == "cpu" and not interpreting():
        reason, fix = unavailable_reason(t.device)
        raise VmmError(f"{fn}: the fused Triton kernels cannot run {reason}; {fix} (or set TRITON_INTERPRET=1 "
                       f"before importing triton), or use {reference}")


def check_rows(t: Tensor) -> Tensor:
    """Kernels index the last dim with stride 1; anything else is copied once."""
    return t if t.stride(-1) == 1 else t.contiguous()
