"""The inner part of one bidirectional Mamba layer ("bimamba v2"), from the split in_proj output to the
gated sum of both directions, before out_proj.

This is the unit a fused GPU kernel replaces, so it takes plain tensors, not modules. The reference composes
PyTorch convs and matmuls with :func:`vmm.ops.selective_scan`. Unlike the official code it never flips the
sequence: the backward direction uses an anti-causal conv (right padding, reversed taps) and a reverse scan,
which is the same function as flip -> causal pipeline -> flip back.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from vmm.ops.selective_scan import causal_conv1d, selective_scan


class DirectionWeights(NamedTuple):
    """The per-direction parameters of a bimamba layer (official names in comments)."""

    conv_weight: Tensor  # conv1d.weight (E, 1, K)
    conv_bias: Optional[Tensor]  # conv1d.bias (E,)
    x_proj_weight: Tensor  # x_proj.weight (R + 2N, E)
    dt_proj_weight: Tensor  # dt_proj.weight (E, R)
    dt_proj_bias: Tensor  # dt_proj.bias (E,), added inside the scan before softplus
    A_log: Tensor  # A_log (E, N); A = -exp(A_log)
    D: Tensor  # D (E,)


def mamba_direction_ref(x: Tensor, z: Optional[Tensor], w: DirectionWeights, reverse: bool,
                        backend: Optional[str] = None) -> Tensor:
    """One direction of the official ``mamba_inner_fn_no_out_proj``: conv, x_proj, dt_proj, scan, gate;
    ``backend`` is the scan's (:func:`vmm.ops.selective_scan`)."""
    N = w.A_log.shape[1]
    R = w.dt_proj_weight.shape[1]
    xc = causal_conv1d(x, w.conv_weight, w.conv_bias, activation="silu", reverse=reverse)  # (B, E, L)
    x_dbl = F.linear(xc.transpose(1, 2), w.x_proj_weight)  # (B, L, R + 2N)
    dt, Bm, Cm = x_dbl.split([R, N, N], dim=-1)
    delta = F.linear(dt, w.dt_proj_weight).transpose(1, 2)  # (B, E, L)
    A = -torch.exp(_at_least_fp32(w.A_log))
    return selective_scan(
        xc, delta, A, Bm.transpose(1, 2), Cm.transpose(1, 2), D=_at_least_fp32(w.D), z=z,
        delta_bias=_at_least_fp32(w.dt_proj_bias), delta_softplus=True, reverse=reverse, backend=backend,
    )


def _at_least_fp32(t: Tensor) -> Tensor:
    # The official .float() lifts bf16 parameters to fp32; it must not drop float64 ones to fp32, which cost a
    # float64 layer (the parity oracle) about 2e-8 relative against the official math.
    return t.to(torch.promote_types(t.dtype, torch.float32))


def bimamba_inner_ref(x: Tensor, z: Tensor, fwd: DirectionWeights, bwd: DirectionWeights,
                      backend: Optional[str] = None) -> Tensor:
    """``SiLU(z) * scan_fwd(x) + SiLU(z) * scan_bwd(x)`` for x, z of shape (B, E, L); returns (B, E, L).

    Each direction is gated on its own and then summed (no halving), the same order of operations as the
    official code, so fp32 results match it to rounding. ``backend`` names the scan backend of
    :func:`vmm.ops.selective_scan` (None: the best for the device); the same arguments as :func:`bimamba_inner`,
    whose fused ``"triton"`` this reference does not run.
    """
    y_f = mamba_direction_ref(x, z, fwd, reverse=False, backend=backend)
    y_b = mamba_direction_ref(x, z, bwd, reverse=True, backend=backend)
    return y_f + y_b


def use_triton(t: Tensor, backend: Optional[str]) -> bool:
    """Whether the fused Triton kernels run on tensor ``t`` under a model's ``scan_backend``: asked for by name
    ("triton") or chosen automatically (None) on a CUDA tensor, and able to run on its device. The layer, the
    add + RMSNorm and the final norm all decide here, so they never disagree; Triton is imported only for a
    CUDA tensor or an explicit "triton".

    >>> use_triton(torch.zeros(1), None), use_triton(torch.zeros(1), "reference")
    (False, False)
    """
    if backend == "triton" or (backend is None and t.is_cuda):
        from vmm.ops._triton import is_available
        return is_available(t.device)
    return False


def layer_backends() -> list[str]:
    """The names a layer's ``backend`` (a model's ``scan_backend``) accepts: the fused ``"triton"`` and every
    selective-scan backend, including those added with :func:`vmm.ops.register_backend`.

    >>> layer_backends()
    ['mamba_ssm', 'reference', 'triton']
    """
    from vmm.ops.selective_scan import _SCAN_BACKENDS
    return sorted({"triton", *_SCAN_BACKENDS})


def bimamba_inner(x: Tensor, z: Tensor, fwd: DirectionWeights, bwd: DirectionWeights,
                  backend: Optional[str] = None) -> Tensor:
    """Dispatch point for a whole bidirectional layer; see :func:`bimamba_inner_ref` for the contract.

    ``backend`` names a scan backend of :func:`vmm.ops.selective_scan` (``"reference"``, ``"mamba_ssm"``) or the
    fused layer backend ``"triton"`` (both directions, conv and gating in two launches, no flip copies);
    ``None`` picks the fastest available for the device: ``triton`` on CUDA when Triton is importable.
    """
    if backend is not None and backend not in layer_backends():
        from vmm.errors import VmmError
        # Checked here, not left to selective_scan: its list of names lacks "triton", the layer backend most
        # likely meant by a misspelt name.
        raise VmmError(f"unknown scan backend {backend!r}; choose one of {', '.join(layer_backends())} or None "
                       f"for automatic choice")
    _check_weights(fwd, bwd)
    fused = use_triton(x, backend)
    why_not = _fused_unsupported(fwd) if fused else None
    if fused and why_not is None:
        from vmm.ops import triton_bimamba
        _log_layer_choice("triton", x)
        return triton_bimamba.bimamba_inner_triton(x, z, fwd, bwd)
    if backend == "triton":
        from vmm.errors import VmmError
        if why_not is not None:
            raise VmmError(f"scan backend 'triton' cannot run a layer with {why_not}; use backend='reference' "
                           f"(a model's scan_backend='reference'), or None for automatic choice")
        reason, fix = _triton_unavailable(x)
        raise VmmError(f"scan backend 'triton': the fused Triton kernels cannot run {reason}; {fix}, or use "
                       f"backend='reference' (a model's scan_backend='reference'), or None for automatic choice")
    if backend is None and x.is_cuda:
        _warn_reference_on_gpu(x, why_not)
    return bimamba_inner_ref(x, z, fwd, bwd, backend=backend)


def _check_weights(fwd: DirectionWeights, bwd: DirectionWeights) -> None:
    """Each direction's projections against its own A_log (E, N) and dt rank R (dt_proj_weight's columns). A
    mismatch failed inside the layer as "split_with_sizes expects split_sizes to sum exactly to ..." or a matmul
    shape error, naming no weight. The input's channel count and the conv weight are causal_conv1d's to check."""
    from vmm.errors import VmmError
    for which, w in (("fwd", fwd), ("bwd", bwd)):
        if not all(isinstance(t, Tensor) for t in (w.A_log, w.dt_proj_weight)) or w.A_log.dim() != 2 or \
                w.dt_proj_weight.dim() != 2:
            continue  # left to selective_scan, which names A and says what it must be
        (E, N), R = w.A_log.shape, w.dt_proj_weight.shape[1]
        expected = {"x_proj_weight": (R + 2 * N, E), "dt_proj_weight": (E, R), "dt_proj_bias": (E,), "D": (E,)}
        for name, shape in expected.items():
            t = getattr(w, name)
            got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            if got != shape:
                raise VmmError(f"bimamba: {which}.{name} must have shape {shape} for A_log of shape {(E, N)} and "
                               f"dt rank {R} (dt_proj_weight's columns), got {got}")


def _check_layer_args(fn: str, xz: Tensor, fwd: DirectionWeights, bwd: DirectionWeights) -> None:
    """The weights (:func:`_check_weights`) and in_proj's output ``xz`` (B, 2E, L) of a layer: shared by
    :func:`bimamba_inner_xz` and the fused kernel's public wrapper, which reads them through raw strides (a (E',)
    D in both directions gave garbage output there, not an error)."""
    _check_weights(fwd, bwd)  # before E is read from fwd.D
    E = fwd.D.shape[0]
    if not isinstance(xz, Tensor) or xz.dim() != 3 or xz.shape[1] != 2 * E:
        from vmm.errors import VmmError
        # Else the halves' shapes surface in an error about the conv weight, for an x the caller never passed.
        got = tuple(xz.shape) if isinstance(xz, Tensor) else type(xz).__name__
        raise VmmError(f"{fn}: xz must be (batch, 2 * channels, length) = (B, {2 * E}, L) for layer weights of "
                       f"{E} channels, got {got}")


def _triton_unavailable(x: Tensor) -> tuple[str, str]:
    from vmm.ops._triton import unavailable_reason
    # None only where is_available was overridden (a test, or a user disabling the kernels by hand).
    return unavailable_reason(x.device) or (f"on {x.device}", "see docs/gpu.md")


def _fused_unsupported(w: DirectionWeights) -> Optional[str]:
    from vmm.ops._triton import unsupported_layer
    return unsupported_layer(w.A_log.shape[-1])


def bimamba_inner_xz(xz: Tensor, fwd: DirectionWeights, bwd: DirectionWeights,
                     backend: Optional[str] = None) -> Tensor:
    """:func:`bimamba_inner` on in_proj's output ``xz`` (B, 2E, L), x its first E channels and z the rest, as a
    layer holds them; returns (B, E, L). The ``triton`` backend takes xz whole, so in training the gradient of
    xz comes back in one piece (no concatenation of the two halves, no transposing copy). Example::

        >>> E, N, R = 8, 16, 1
        >>> w = lambda: DirectionWeights(torch.randn(E, 1, 4), torch.zeros(E), torch.randn(R + 2 * N, E) * 0.1,
        ...                              torch.randn(E, R), torch.zeros(E), torch.zeros(E, N), torch.ones(E))
        >>> bimamba_inner_xz(torch.randn(2, 2 * E, 5), w(), w(), backend="reference").shape
        torch.Size([2, 8, 5])
    """
    _check_layer_args("bimamba_inner_xz", xz, fwd, bwd)
    if use_triton(xz, backend) and _fused_unsupported(fwd) is None:
        from vmm.ops import triton_bimamba
        _log_layer_choice("triton", xz)
        return triton_bimamba._inner_xz_triton(xz, fwd, bwd)
    x, z = xz.chunk(2, dim=1)
    return bimamba_inner(x, z, fwd, bwd, backend=backend)  # the reference path (or its error for "triton")


_logged: set = set()


def _warn_reference_on_gpu(x: Tensor, why_not: Optional[str] = None) -> None:
    # A GPU user expects the fast path; dropping to the reference only at log level INFO would look like a
    # model that is simply slow. Once per device type, like the choice log below.
    if ("reference-on-gpu", x.device.type) in _logged:
        return
    _logged.add(("reference-on-gpu", x.device.type))
    import warnings
    if why_not is not None:  # the GPU and Triton are fine; this layer's shape is what they cannot run
        reason, fix = f"a layer with {why_not}", "use a power-of-two d_state"
    else:
        reason, fix = _triton_unavailable(x)
    warnings.warn(f"vmm: the fused Triton kernels cannot run {reason}; VideoMamba layers run the PyTorch reference "
                  f"scan, many times slower: {fix}, or pass scan_backend='reference' to choose it",
                  RuntimeWarning, stacklevel=3)


def _log_layer_choice(name: str, x: Tensor) -> None:
    if (name, x.device.type) not in _logged:
        _logged.add((name, x.device.type))
        import logging
        logging.getLogger(__name__).info("bimamba_inner: using the fused %s layer kernel on %s", name, x.device)
