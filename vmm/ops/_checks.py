"""Argument checks shared by the Triton kernel wrappers and their PyTorch twins (:mod:`vmm.ops.norm`), so that a
twin says the same as its kernel. No Triton here: a CPU model uses them without importing it."""
from __future__ import annotations

import torch  # noqa: F401 - the examples use it
from torch import Tensor

__all__ = ["check_float_tensors", "check_shapes"]


def check_float_tensors(fn: str, named: dict, optional: tuple = ()) -> None:
    """A one-line VmmError unless each of ``named`` (name -> value) is a real floating-point tensor, or None where
    its name is in ``optional``. The kernels read their arguments through raw pointers, so a wrong one was read
    as whatever lay there, without any error.

    >>> check_float_tensors("add_rmsnorm", {"hidden": torch.zeros(2), "residual": None}, optional=("residual",))
    """
    from vmm.errors import VmmError
    for name, t in named.items():
        if t is None and name in optional:
            continue
        if not isinstance(t, Tensor) or not t.is_floating_point():
            got = t.dtype if isinstance(t, Tensor) else type(t).__name__
            raise VmmError(f"{fn}: {name} must be a real floating-point torch.Tensor"
                           f"{' or None' if name in optional else ''}, got {got}")


def check_shapes(fn: str, context: str, expected: dict) -> None:
    """A one-line VmmError unless each tensor of ``expected`` (name -> (tensor or None, shape)) has its shape and
    the first one's device; ``context`` ends the shape message (what the shapes were derived from). The kernels
    index through raw strides: a wrong shape was read out of bounds and gave garbage, not an error.

    >>> check_shapes("conv1d_bidir_silu", "for x of shape (2, 7, 8)", {"weight": (torch.zeros(2, 8, 4), (2, 8, 4))})
    """
    from vmm.errors import VmmError
    first, (ref, _) = next(iter(expected.items()))
    for name, (t, shape) in expected.items():
        if t is None:
            continue
        if tuple(t.shape) != tuple(shape):
            raise VmmError(f"{fn}: {name} must have shape {tuple(shape)} {context}, got {tuple(t.shape)}")
        if t.device != ref.device:
            raise VmmError(f"{fn}: {name} is on {t.device} but {first} is on {ref.device}; move it with "
                           f".to({first}.device)")
