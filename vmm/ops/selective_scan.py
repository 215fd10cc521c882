"""Selective scan (Mamba's S6 recurrence) and the mixer's causal conv, each behind one function with backends.

``selective_scan`` keeps mamba-ssm's argument conventions::

    u, delta, z: (batch, channels, length)     A: (channels, state), real
    B, C: (batch, state, length) or (batch, groups, state, length)      D, delta_bias: (channels,)
    delta' = softplus(delta + delta_bias)      (bias and softplus only when given / asked)
    h_t = exp(delta'_t A) * h_{t-1} + delta'_t B_t u_t        y_t = <h_t, C_t> + D u_t
    out = y * SiLU(z)

With groups, channel e reads B and C of group e // (channels / groups), as in mamba-ssm (channels must be a
multiple of groups). ``reverse=True`` runs the recurrence from the last position to the first, which is what the
backward direction of bimamba needs, without flipping anything. Backends: ``reference`` (pure PyTorch, any device,
float64-capable, differentiable) and ``mamba_ssm`` (the CUDA kernel), plus whatever :func:`register_backend` adds.

``return_last_state=True`` returns ``(out, last_state)`` as mamba-ssm does: the state h after the last step of the
scan, (batch, channels, state), in the compute dtype (float32, or float64 when any input is float64). With
``reverse=True`` the last step is position 0: the state a forward scan of the flipped inputs ends in. The
reference differentiates through it; mamba-ssm's kernel does not (see ``mamba_ssm_backend``).

How the reference is fast on CPU: time is cut into blocks of a few dozen positions whose per-state tensors
(T, batch, channels, state) stay in cache (about 2 MiB each). Per block, the decays exp(delta A) (as exp2, which is ~4x faster than
exp in ATen on CPU) and the inputs delta*u*B are made with a few whole-block ops, the recurrence runs as one
in-place ``addcmul_`` per position over all channels and states, and the C contraction is one batched matmul.
Nothing of size (batch, channels, length, state) is ever allocated. Gradients come from a hand-written backward
that redoes the same blocks in the opposite order, from states saved only at block boundaries.
"""
from __future__ import annotations

import inspect
import logging
import math
from dataclasses import dataclass
from typing import Callable, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from vmm.errors import VmmError
from vmm.ops import mamba_ssm_backend

log = logging.getLogger(__name__)

# Per-block state buffers hold about this many elements (2 MiB in fp32): small enough for L2, large enough that
# the whole-block ops are not dominated by per-op overhead. Measured on a 2-core EPYC (docs/kernels.md).
_BLOCK_ELEMS = 1 << 19
# With gradients, block-boundary states are kept for the backward: at most this many blocks per call.
_MAX_SAVED_BLOCKS = 64
_LOG2E = math.log2(math.e)
# exp2 of an argument below the smallest normal exponent takes a slow path in ATen (about 20x); the true value is
# below 2^-126 (2^-1022), so clamping changes a decay by less than that absolute amount.
_EXP2_FLOOR = {torch.float32: -126.0, torch.float64: -1022.0}


# ----------------------------------------------------------------------------------------------- reference scan

def _compute_dtype(*tensors: Optional[Tensor]) -> torch.dtype:
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


def _time_major(x: Tensor, dtype: torch.dtype) -> Tensor:
    """(batch, X, length) -> contiguous (length, batch, X) in ``dtype``, one copy."""
    out = torch.empty((x.shape[2], x.shape[0], x.shape[1]), dtype=dtype, device=x.device)
    return out.copy_(x.permute(2, 0, 1))


def _batch_major(x: Tensor) -> Tensor:
    """(length, batch, X) -> contiguous (batch, X, length), one copy."""
    return x.permute(1, 2, 0).contiguous()


def _block_len(batch: int, channels: int, state: int, length: int, for_grad: bool) -> int:
    t = max(1, _BLOCK_ELEMS // max(1, batch * channels * state))
    if for_grad:
        t = max(t, math.ceil(length / _MAX_SAVED_BLOCKS))
    return max(1, min(t, length))


@dataclass
class _Prepared:
    """Inputs in time-major compute layout, shared by the forward and backward passes."""

    dlt: Tensor  # (L, Bt, E) delta after bias and softplus
    du: Tensor  # (L, Bt, E) delta * u
    Bt: Tensor  # (L, Bt, G * N)
    Ct: Tensor  # (L, Bt, G * N)
    A: Tensor  # (E, N)
    A2: Tensor  # (E, N) A * log2(e)
    groups: int  # G: channel e reads B and C of group e // (E / G)


def _prepare(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, delta_bias: Optional[Tensor],
             delta_softplus: bool, cdt: torch.dtype) -> tuple[_Prepared, Tensor, Tensor]:
    """Returns the prepared inputs, delta' (batch-major, cdt) and the pre-softplus delta (for the backward)."""
    pre = delta.to(cdt)
    if delta_bias is not None:
        pre = pre + delta_bias.to(cdt).unsqueeze(-1)
    dlt_bm = F.softplus(pre) if delta_softplus else pre
    dlt = _time_major(dlt_bm, cdt)
    du = torch.mul(dlt, u.permute(2, 0, 1).to(cdt), out=torch.empty_like(dlt))
    # In cdt, not through float64: MPS has no float64, so that detour failed every scan there; it was worth at most
    # one float32 ulp of A2.
    A2 = A.to(cdt) * _LOG2E
    Bt, Ct = (_time_major(t.flatten(1, -2), cdt) for t in (B, C))
    return _Prepared(dlt, du, Bt, Ct, A.to(cdt), A2, _groups(B)), dlt_bm, pre


def _groups(B: Tensor) -> int:
    return B.shape[1] if B.dim() == 4 else 1


def _outer(out: Tensor, per_channel: Tensor, per_state: Tensor, groups: int) -> Tensor:
    """out[t, b, e, n] = per_channel[t, b, e] * per_state[t, b, group of e, n], written into ``out``."""
    n, bsz, E, N = out.shape
    shape = (n, bsz, groups, E // groups)
    torch.mul(per_channel.view(*shape, 1), per_state.view(n, bsz, groups, 1, N), out=out.view(*shape, N))
    return out


def _decays(out: Tensor, dlt: Tensor, A2: Tensor, floor: Optional[float]) -> Tensor:
    """out[t, b, e, n] = exp(dlt[t, b, e] * A[e, n]), computed as exp2 with A2 = A * log2(e)."""
    torch.mul(dlt.unsqueeze(-1), A2, out=out)
    if floor is not None:
        out.clamp_(min=floor)
    return out.exp2_()


def _exp2_floor(p: _Prepared) -> Optional[float]:
    """The clamp _decays needs, or None when no exponent of this call can fall below the normal range (the usual
    case; the check is a few reductions over (L, batch, E) instead of a pass over every state)."""
    floor = _EXP2_FLOOR[p.dlt.dtype]
    if p.dlt.numel() == 0 or p.A2.numel() == 0:  # aminmax has no identity; with no states there is no decay
        return None
    if p.dlt.device.type == "meta":  # no values to read (shape inference, FLOP counts): the clamp is always safe
        return floor
    d_lo, d_hi = (v.item() for v in torch.aminmax(p.dlt))
    a_lo, a_hi = (v.item() for v in torch.aminmax(p.A2))
    lowest = min(d_lo * a_lo, d_lo * a_hi, d_hi * a_lo, d_hi * a_hi)
    return floor if not lowest >= floor else None  # NaN-safe: NaN inputs take the clamped path


def _recur(states: list, coefs: list, prevs: list, order: range) -> None:
    """In place, in ``order``: states[t] += coefs[t] * prevs[t]. ``prevs`` are views that alias the neighbouring
    states (or a carry slot), so this is the whole sequential part of a block: one small op per position."""
    for t in order:
        states[t].addcmul_(coefs[t], prevs[t])


def _block_views(buf: Tensor, n: int, reverse: bool) -> tuple[Tensor, Tensor]:
    """A buffer of n + 1 slots holds one block plus a neighbour slot before it in scan order (at 0 for a forward
    scan, at n for a reverse one). Returns (block, neighbour-shifted) views: shifted[t] is the slot one step
    earlier in scan order than block[t]."""
    if reverse:
        return buf[:n], buf[1:n + 1]
    return buf[1:n + 1], buf[:n]


def _scan_forward(p: _Prepared, reverse: bool, block: int,
                  keep_carries: bool) -> tuple[Tensor, Optional[Tensor], Tensor]:
    """The recurrence and C contraction. Returns y (L, Bt, E) without the D and z terms, if asked the state
    entering each block in scan order (n_blocks, Bt, E, N), which the backward starts from, and the state after
    the last step in scan order (Bt, E, N; zeros for an empty sequence), which the loop leaves in its carry."""
    L, Bsz, E = p.dlt.shape
    N, G = p.A2.shape[1], p.groups
    dev, cdt = p.dlt.device, p.dlt.dtype
    y = torch.empty(L, Bsz, E, dtype=cdt, device=dev)
    a_buf = torch.empty(block, Bsz, E, N, dtype=cdt, device=dev)
    h_buf = torch.empty(block + 1, Bsz, E, N, dtype=cdt, device=dev)
    carry = torch.zeros(Bsz, E, N, dtype=cdt, device=dev)
    starts = list(range(0, L, block))
    carries = torch.empty(len(starts), Bsz, E, N, dtype=cdt, device=dev) if keep_carries else None
    floor = _exp2_floor(p)
    for k in (reversed(range(len(starts))) if reverse else range(len(starts))):
        s = starts[k]
        e = min(L, s + block)
        n = e - s
        if carries is not None:
            carries[k].copy_(carry)
        a = _decays(a_buf[:n], p.dlt[s:e], p.A2, floor)
        states, prevs = _block_views(h_buf, n, reverse)
        h_buf[n if reverse else 0].copy_(carry)
        _outer(states, p.du[s:e], p.Bt[s:e], G)
        _recur(states.unbind(0), a.unbind(0), prevs.unbind(0), range(n - 1, -1, -1) if reverse else range(n))
        carry.copy_(states[0] if reverse else states[n - 1])
        # y[t, b, group] = C[t, b, group] @ states[t, b, group]^T, batched over (t, b, group); this orientation is
        # the fast one in MKL.
        nbg = n * Bsz * G
        torch.bmm(p.Ct[s:e].reshape(nbg, 1, N), states.view(nbg, E // G, N).transpose(1, 2),
                  out=y[s:e].view(nbg, 1, E // G))
    return y, carries, carry


def _finish(y_tm: Tensor, u: Tensor, D: Optional[Tensor], z: Optional[Tensor],
            keep_pre_gate: bool) -> tuple[Tensor, Optional[Tensor]]:
    """Adds D*u and the SiLU(z) gate to the time-major y. Returns (output, output before the gate if asked),
    batch-major in y's dtype; the transpose back rides along with the first of these ops."""
    y_bm = y_tm.permute(1, 2, 0)
    out = torch.empty(y_bm.shape, dtype=y_tm.dtype, device=y_tm.device)
    if D is not None:
        torch.addcmul(y_bm, u.to(out.dtype), D.to(out.dtype).unsqueeze(-1), out=out)
    else:
        out.copy_(y_bm)
    if z is None:
        return out, None
    gate = F.silu(z.to(out.dtype))
    if keep_pre_gate:
        return out * gate, out
    return out.mul_(gate), None


def _scan_backward(p: _Prepared, gy: Tensor, carries: Tensor, reverse: bool, block: int,
                   g_last: Optional[Tensor] = None):
    """Gradients of sum(gy * y) + sum(g_last * h_last) for y = scan(...) without D and z, h_last the state after
    the last step in scan order. gy is time-major (L, Bt, E), g_last (Bt, E, N) or None.

    Returns time-major d(delta'), d(u*delta'), dB, dC and dA. The adjoint lambda_t = dL/dh_t obeys the same
    recurrence run the other way: lambda_t = gy_t C_t + a_next lambda_next, where next is one step later in scan
    order. Blocks are visited in reverse scan order; each recomputes its decays and states from its saved entry
    state, runs the adjoint, and turns both into gradients with whole-block ops. g_last enters as the adjoint
    carry one step past the end, with a decay of 1: lambda_last = gy_last C_last + g_last.
    """
    L, Bsz, E = p.dlt.shape
    N, G = p.A2.shape[1], p.groups
    Eg = E // G
    dev, cdt = p.dlt.device, p.dlt.dtype
    g_dlt = torch.empty_like(p.dlt)
    g_du = torch.empty_like(p.du)
    g_B = torch.empty_like(p.Bt)
    g_C = torch.empty_like(p.Ct)
    g_A = torch.zeros(E, N, dtype=cdt, device=dev)
    a_buf = torch.empty(block + 1, Bsz, E, N, dtype=cdt, device=dev)
    h_buf = torch.empty_like(a_buf)
    lam_buf = torch.empty_like(a_buf)
    a_carry = torch.zeros(Bsz, E, N, dtype=cdt, device=dev)  # decay one step later in scan order
    lam_carry = torch.zeros(Bsz, E, N, dtype=cdt, device=dev)  # adjoint one step later in scan order
    if g_last is not None:  # the first a_carry is read only by the adjoint recurrence
        a_carry.fill_(1)
        lam_carry.copy_(g_last)
    starts = list(range(0, L, block))
    floor = _exp2_floor(p)
    for k in (range(len(starts)) if reverse else reversed(range(len(starts)))):
        s = starts[k]
        e = min(L, s + block)
        n = e - s
        nb, nbg = n * Bsz, n * Bsz * G
        # The decays and the adjoint need their neighbour one step LATER in scan order, so their buffers use the
        # opposite direction's layout; the states need the one earlier.
        a, a_next = _block_views(a_buf, n, not reverse)
        a_buf[0 if reverse else n].copy_(a_carry)
        _decays(a, p.dlt[s:e], p.A2, floor)
        states, prevs = _block_views(h_buf, n, reverse)
        h_buf[n if reverse else 0].copy_(carries[k])
        _outer(states, p.du[s:e], p.Bt[s:e], G)
        _recur(states.unbind(0), a.unbind(0), prevs.unbind(0), range(n - 1, -1, -1) if reverse else range(n))
        lam, lam_next = _block_views(lam_buf, n, not reverse)
        lam_buf[0 if reverse else n].copy_(lam_carry)
        _outer(lam, gy[s:e], p.Ct[s:e], G)
        _recur(lam.unbind(0), a_next.unbind(0), lam_next.unbind(0), range(n) if reverse else range(n - 1, -1, -1))
        a_carry.copy_(a[n - 1] if reverse else a[0])
        lam_carry.copy_(lam[n - 1] if reverse else lam[0])
        # dC_t = gy_t . h_t ; dB_t = (delta u)_t . lambda_t ; d(delta u)_t = lambda_t . B_t (sums over the
        # group's channels or over n).
        torch.bmm(gy[s:e].reshape(nbg, 1, Eg), states.reshape(nbg, Eg, N), out=g_C[s:e].view(nbg, 1, N))
        torch.bmm(p.du[s:e].reshape(nbg, 1, Eg), lam.reshape(nbg, Eg, N), out=g_B[s:e].view(nbg, 1, N))
        torch.bmm(p.Bt[s:e].reshape(nbg, 1, N), lam.view(nbg, Eg, N).transpose(1, 2),
                  out=g_du[s:e].view(nbg, 1, Eg))
        # x = delta A enters only through a = exp(x): dL/dx = lambda_t * a_t * h_prev. The states are done with,
        # so this overwrites them (prevs aliases states shifted by one slot).
        gx = prevs.mul_(a).mul_(lam)
        torch.sum(torch.mul(gx, p.A, out=lam), dim=-1, out=g_dlt[s:e])
        g_A.add_(gx.mul_(p.dlt[s:e].unsqueeze(-1)).view(nb, E, N).sum(dim=0))
    return g_dlt, g_du, g_B, g_C, g_A


def _dsilu(z: Tensor) -> Tensor:
    sig = torch.sigmoid(z)
    return sig * (1 + z * (1 - sig))


class _ReferenceScan(torch.autograd.Function):
    """The reference scan with a hand-derived backward (first order only)."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse, return_last_state):
        cdt = _compute_dtype(u, delta, A, B, C, D, z, delta_bias)
        block = _block_len(u.shape[0], u.shape[1], A.shape[1], u.shape[2], for_grad=True)
        p, _, _ = _prepare(u, delta, A, B, C, delta_bias, delta_softplus, cdt)
        y_tm, carries, last = _scan_forward(p, reverse, block, keep_carries=True)
        out, pre_gate = _finish(y_tm, u, D, z, keep_pre_gate=True)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, carries, pre_gate)
        ctx.delta_softplus, ctx.reverse, ctx.block = delta_softplus, reverse, block
        if return_last_state:
            return out.to(u.dtype), last
        return out.to(u.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, g_out, g_last=None):
        u, delta, A, B, C, D, z, delta_bias, carries, pre_gate = ctx.saved_tensors
        cdt = carries.dtype
        p, dlt_bm, pre = _prepare(u, delta, A, B, C, delta_bias, ctx.delta_softplus, cdt)
        g = g_out.to(cdt)
        g_z = None
        if z is not None:
            z_c = z.to(cdt)
            g_z = (g * pre_gate * _dsilu(z_c)).to(z.dtype)
            g = g * F.silu(z_c)
        g_dlt_tm, g_du_tm, g_B_tm, g_C_tm, g_A = _scan_backward(
            p, _time_major(g, cdt), carries, ctx.reverse, ctx.block, None if g_last is None else g_last.to(cdt))
        u_c = u.to(cdt)
        g_du = _batch_major(g_du_tm)
        g_dlt = _batch_major(g_dlt_tm).addcmul_(g_du, u_c)
        g_u = g_du.mul_(dlt_bm)
        g_D = None
        if D is not None:
            g_u.addcmul_(g, D.to(cdt).unsqueeze(-1))
            g_D = (g * u_c).sum(dim=(0, 2)).to(D.dtype)
        g_pre = g_dlt.mul_(torch.sigmoid(pre)) if ctx.delta_softplus else g_dlt
        g_bias = g_pre.sum(dim=(0, 2)).to(delta_bias.dtype) if delta_bias is not None else None
        g_B, g_C = (_batch_major(g).view(t.shape).to(t.dtype) for g, t in ((g_B_tm, B), (g_C_tm, C)))
        return (g_u.to(u.dtype), g_pre.to(delta.dtype), g_A.to(A.dtype), g_B, g_C, g_D, g_z, g_bias, None, None,
                None)


def _check_same_device(op: str, args: dict) -> None:
    """Every tensor of ``args`` on the device of the first. Else "Expected all tensors to be on the same device"
    from deep inside the op, naming no argument, or (a meta weight beside a CPU input) uninitialised output."""
    first, ref = next(iter(args.items()))
    for name, t in args.items():
        if t is not None and t.device != ref.device:
            raise VmmError(f"{op}: {name} is on {t.device} but {first} is on {ref.device}; move it with "
                           f".to({first}.device)")


def _check_scan_args(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
                     z: Optional[Tensor], delta_bias: Optional[Tensor]) -> None:
    # Types first: a None delta or a float D otherwise fails as an AttributeError inside the backend choice
    # or the scan, and an integer u would be scanned in float32 and silently truncated on the way out.
    args = {"u": u, "delta": delta, "A": A, "B": B, "C": C, "D": D, "z": z, "delta_bias": delta_bias}
    for name, t in args.items():
        optional = name in ("D", "z", "delta_bias")
        if t is None and optional:
            continue
        if not isinstance(t, Tensor):
            raise VmmError(f"selective_scan: {name} must be a torch.Tensor{' or None' if optional else ''}, "
                           f"got {type(t).__name__}")
        if name != "A" and not t.is_floating_point():
            raise VmmError(f"selective_scan: {name} must be a real floating-point tensor, got {t.dtype}; "
                           f"convert it with .float()")
    _check_same_device("selective_scan", args)
    if u.dim() != 3:
        raise VmmError(f"selective_scan: u must be (batch, channels, length), got shape {tuple(u.shape)}")
    batch, channels, length = u.shape
    if A.dim() != 2 or A.shape[0] != channels:
        raise VmmError(f"selective_scan: A must be (channels, state) = ({channels}, N), got {tuple(A.shape)}")
    if A.is_complex():
        raise VmmError("selective_scan: A must be real (complex A is not supported); pass -exp(A_log)")
    if not A.is_floating_point():
        raise VmmError(f"selective_scan: A must be a real floating-point tensor, got {A.dtype}; convert it with "
                       f".float()")
    state = A.shape[1]
    groups = _groups(B)
    if groups < 1 or channels % groups:
        raise VmmError(f"selective_scan: B of shape {tuple(B.shape)} has {groups} groups, which must be at least 1 "
                       f"and divide the {channels} channels of u; pass B as (batch, state, length) for one group")
    # The group count comes from B; C follows it, and a 3-D B or C is one group, as in mamba-ssm.
    grouped = (batch, groups, state, length) if groups > 1 else (batch, state, length)
    expected = {"delta": (delta, (batch, channels, length)), "B": (B, grouped), "C": (C, grouped),
                "D": (D, (channels,)), "z": (z, (batch, channels, length)), "delta_bias": (delta_bias, (channels,))}
    for name, (t, shape) in expected.items():
        if t is None or tuple(t.shape) == shape:
            continue
        if name in ("B", "C") and groups == 1 and tuple(t.shape) == (batch, 1, state, length):
            continue  # one group, spelled out
        raise VmmError(f"selective_scan: {name} must have shape {shape} for u of shape {tuple(u.shape)} "
                       f"and A of shape {tuple(A.shape)}, got {tuple(t.shape)}")


def selective_scan_ref(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor] = None,
                       z: Optional[Tensor] = None, delta_bias: Optional[Tensor] = None, delta_softplus: bool = False,
                       reverse: bool = False, return_last_state: bool = False) -> Union[Tensor, tuple[Tensor, Tensor]]:
    """Pure-PyTorch selective scan: any device, float64-capable, differentiable. See the module docstring.

    Computes in float32 (float64 if any input is float64) and returns u's dtype. ``return_last_state=True``
    (pass it by keyword: the tenth positional argument is ``reverse``, not mamba-ssm's ``return_last_state``)
    returns ``(out, last_state)``, last_state (batch, channels, state) in the compute dtype, differentiable: a
    loss through it gets gradients for every input.

    >>> import torch
    >>> u = torch.randn(1, 4, 10); dt = torch.rand(1, 4, 10); A = -torch.rand(4, 16)
    >>> B, C = torch.randn(1, 16, 10), torch.randn(1, 16, 10)
    >>> selective_scan_ref(u, dt, A, B, C, D=torch.ones(4), reverse=True).shape
    torch.Size([1, 4, 10])
    >>> out, last = selective_scan_ref(u, dt, A, B, C, return_last_state=True)
    >>> last.shape, last.dtype
    (torch.Size([1, 4, 16]), torch.float32)
    """
    _check_scan_args(u, delta, A, B, C, D, z, delta_bias)
    tensors = (u, delta, A, B, C, D, z, delta_bias)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        return _ReferenceScan.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse,
                                    bool(return_last_state))
    cdt = _compute_dtype(*tensors)
    block = _block_len(u.shape[0], u.shape[1], A.shape[1], u.shape[2], for_grad=False)
    p, _, _ = _prepare(u, delta, A, B, C, delta_bias, delta_softplus, cdt)
    y_tm, _, last = _scan_forward(p, reverse, block, keep_carries=False)
    out, _ = _finish(y_tm, u, D, z, keep_pre_gate=False)
    if return_last_state:
        return out.to(u.dtype), last
    return out.to(u.dtype)


# ----------------------------------------------------------------------------------------------- backend registry

@dataclass(frozen=True)
class Backend:
    """A kernel for one op. ``available(tensor)`` must be cheap and must not raise."""

    name: str
    fn: Callable[..., Tensor]
    available: Callable[[Tensor], bool]
    priority: int
    install_hint: str


_REFERENCE_HINT = "the reference backend is always available"
_SCAN_BACKENDS: dict[str, Backend] = {
    "reference": Backend("reference", selective_scan_ref, lambda t: True, 0, _REFERENCE_HINT),
    "mamba_ssm": Backend("mamba_ssm", mamba_ssm_backend.selective_scan_mamba_ssm,
                         mamba_ssm_backend.selective_scan_available, 10, mamba_ssm_backend.MAMBA_SSM_HINT),
}
_logged_choices: set[tuple[str, str, str]] = set()


def register_backend(name: str, fn: Callable[..., Tensor], available: Callable[[Tensor], bool], priority: int,
                     install_hint: str = "") -> None:
    """Adds (or replaces) a selective-scan backend.

    ``fn`` takes ``selective_scan``'s arguments except ``backend``; it receives ``return_last_state=True`` only when
    a caller asks for the last state (a ``fn`` without that parameter then gets a VmmError, and keeps working for
    every other call), never ``return_last_state=False``; ``available(u)`` says whether it can run on
    tensors like ``u`` (device, dtype, installed extension) and must be cheap. With ``backend=None`` the available
    backend of highest ``priority`` runs (reference 0, mamba_ssm 10). ``install_hint`` ends the error raised when
    someone asks for it by name where it is unavailable.

    >>> register_backend("ref_copy", selective_scan_ref, available=lambda t: t.is_cpu, priority=-1)
    >>> available_backends("cpu")
    ['reference', 'ref_copy']
    >>> unregister_backend("ref_copy")
    """
    # Checked here because a bad entry breaks every later selective_scan call (the choice sorts and probes all
    # backends), far from the call that added it; and a replaced reference could not be restored.
    if not isinstance(name, str) or not name:
        raise VmmError(f"register_backend: name must be a non-empty string, got {name!r}")
    if name == "reference":
        raise VmmError("register_backend: 'reference' is the built-in fallback and cannot be replaced; register "
                       "the backend under another name")
    if name == "triton":  # a model's scan_backend="triton" runs the fused layer kernels, never this function
        raise VmmError("register_backend: 'triton' names the fused layer kernels of vmm.ops.bimamba, which a model "
                       "runs instead of any scan backend of that name; register the backend under another name")
    for arg, value in (("fn", fn), ("available", available)):
        if not callable(value):
            raise VmmError(f"register_backend: {arg} must be callable, got {type(value).__name__}")
    if not isinstance(priority, int) or isinstance(priority, bool):
        raise VmmError(f"register_backend: priority must be an int (reference 0, mamba_ssm 10), got {priority!r}")
    if not isinstance(install_hint, str):
        raise VmmError(f"register_backend: install_hint must be a string, got {type(install_hint).__name__}")
    _SCAN_BACKENDS[name] = Backend(name, fn, available, priority, install_hint)


def unregister_backend(name: str) -> None:
    """Removes a backend added with :func:`register_backend` (the reference cannot be removed). The built-in
    ``mamba_ssm`` comes back, as it was, with this call:

    >>> from vmm.ops import mamba_ssm_backend
    >>> unregister_backend("mamba_ssm")  # e.g. to time what backend=None picks without it
    >>> register_backend("mamba_ssm", mamba_ssm_backend.selective_scan_mamba_ssm,
    ...                  mamba_ssm_backend.selective_scan_available, 10, mamba_ssm_backend.MAMBA_SSM_HINT)
    """
    if name == "reference":
        raise VmmError("selective_scan: the reference backend cannot be unregistered")
    _SCAN_BACKENDS.pop(name, None)


def available_backends(device: Union[str, torch.device] = "cpu", dtype: torch.dtype = torch.float32) -> list[str]:
    """Names of the selective-scan backends that can run on ``device`` and ``dtype``, best first; empty for a
    device this torch cannot use (``"cuda"`` on a CPU-only machine) and for a dtype no backend takes (integer,
    bool or complex: selective_scan refuses those inputs).

    >>> available_backends("cpu")[-1], available_backends("cpu", torch.int64)
    ('reference', [])
    """
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):  # "gpu" gave [], as if that device were merely absent here
        raise VmmError(f"available_backends: {device!r} is not a device name; pass 'cpu', 'cuda' or 'cuda:N'"
                       ) from None
    if not isinstance(dtype, torch.dtype):  # "float32" was a TypeError from inside torch.empty
        raise VmmError(f"available_backends: dtype must be a torch.dtype such as torch.float32, got {dtype!r}")
    if not dtype.is_floating_point:
        return []
    try:
        probe = torch.empty(0, device=device, dtype=dtype)
    # torch raises these for an absent or unsupported device; ImportError for "hpu" and other out-of-tree devices
    # whose torch module is not installed.
    except (RuntimeError, AssertionError, ImportError):
        return []
    ranked = sorted(_SCAN_BACKENDS.values(), key=lambda b: -b.priority)
    return [b.name for b in ranked if b.available(probe)]


def _log_choice(op: str, name: str, t: Tensor) -> None:
    key = (op, name, t.device.type)
    if key not in _logged_choices:
        _logged_choices.add(key)
        log.info("%s: using backend %r for %s tensors", op, name, t.device.type)


def _resolve_scan_backend(backend: Optional[str], u: Tensor) -> Backend:
    if backend is None:
        for b in sorted(_SCAN_BACKENDS.values(), key=lambda b: -b.priority):
            if b.available(u):
                return b
        return _SCAN_BACKENDS["reference"]
    if not isinstance(backend, str) or backend not in _SCAN_BACKENDS:  # a list was a TypeError (unhashable)
        raise VmmError(f"unknown selective_scan backend {backend!r}; choose one of {sorted(_SCAN_BACKENDS)} "
                       f"or None for automatic choice")
    chosen = _SCAN_BACKENDS[backend]
    if not chosen.available(u):
        # Reached from selective_scan(backend=...) and from a model's layers (create_model(scan_backend=...)):
        # the way out is named in both spellings.
        raise VmmError(f"selective_scan backend {backend!r} is unavailable for {u.device.type} {u.dtype} tensors: "
                       f"{chosen.install_hint or 'see docs/kernels.md'}; or leave it unset (backend=None, or a "
                       "model's scan_backend=None) for the automatic choice")
    return chosen


def _accepts_return_last_state(fn: Callable[..., Tensor]) -> bool:
    """Whether ``fn`` takes a ``return_last_state`` keyword (by name or through ``**kwargs``). A callable whose
    signature cannot be read is given the benefit of the doubt."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return True
    return any(p.kind is p.VAR_KEYWORD or (p.name == "return_last_state" and p.kind is not p.POSITIONAL_ONLY)
               for p in params)


def selective_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor] = None,
                   z: Optional[Tensor] = None, delta_bias: Optional[Tensor] = None, delta_softplus: bool = False,
                   reverse: bool = False, backend: Optional[str] = None,
                   return_last_state: bool = False) -> Union[Tensor, tuple[Tensor, Tensor]]:
    """Selective scan with mamba-ssm's conventions (module docstring), run by ``backend``.

    ``return_last_state=True`` returns ``(out, last_state)`` as mamba-ssm's ``selective_scan_fn`` does (pass it by
    keyword); the chosen backend must accept it, else :class:`vmm.errors.VmmError` names the backend.

    ``backend=None`` picks the best available one for u's device and dtype (CUDA: a registered fused kernel or
    mamba_ssm when importable; otherwise the reference) and logs the choice once. Naming an unavailable backend
    raises :class:`vmm.errors.VmmError` saying how to install it.

    >>> import torch
    >>> u = torch.randn(2, 8, 33); dt = torch.randn(2, 8, 33); A = -torch.rand(8, 16)
    >>> B, C = torch.randn(2, 16, 33), torch.randn(2, 16, 33)
    >>> y = selective_scan(u, dt, A, B, C, D=torch.ones(8), z=torch.randn(2, 8, 33),
    ...                    delta_bias=torch.zeros(8), delta_softplus=True, reverse=True)
    >>> y.shape, y.dtype
    (torch.Size([2, 8, 33]), torch.float32)
    >>> y, last = selective_scan(u, dt, A, B, C, return_last_state=True)
    >>> last.shape
    torch.Size([2, 8, 16])
    """
    # Checked here, not only in the reference: another backend (mamba-ssm's kernel) would fail on a bad shape
    # deep inside its extension, and the choice below already needs u to be a tensor.
    _check_scan_args(u, delta, A, B, C, D, z, delta_bias)
    chosen = _resolve_scan_backend(backend, u)
    _log_choice("selective_scan", chosen.name, u)
    if return_last_state:  # passed only when asked, so backends without the parameter keep working
        if not _accepts_return_last_state(chosen.fn):
            raise VmmError(f"selective_scan backend {chosen.name!r} does not support return_last_state=True (its "
                           f"function takes no return_last_state argument); use backend='reference' or add it")
        return chosen.fn(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus,
                         reverse=reverse, return_last_state=True)
    return chosen.fn(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus,
                     reverse=reverse)


# ----------------------------------------------------------------------------------------------- causal conv1d

def _conv_weight_2d(weight: Tensor) -> Tensor:
    """Accepts the official (E, 1, K) conv1d weight or causal-conv1d's (E, K)."""
    if weight.dim() == 3 and weight.shape[1] == 1:
        return weight[:, 0]
    if weight.dim() != 2:
        raise VmmError(f"causal_conv1d: weight must be (channels, width) or (channels, 1, width), "
                       f"got shape {tuple(weight.shape)}")
    return weight


def _check_conv_args(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    """The 2-D weight, after checks that turn what would be a conv1d error about groups or padded sizes (or an
    AttributeError) into one that names the argument."""
    for name, t in (("x", x), ("weight", weight), ("bias", bias)):
        if not (isinstance(t, Tensor) or (name == "bias" and t is None)):
            raise VmmError(f"causal_conv1d: {name} must be a torch.Tensor{' or None' if name == 'bias' else ''}, "
                           f"got {type(t).__name__}")
    _check_same_device("causal_conv1d", {"x": x, "weight": weight, "bias": bias})
    if x.dim() != 3:
        raise VmmError(f"causal_conv1d: x must be (batch, channels, length), got shape {tuple(x.shape)}")
    # Complex taps would be cast to real with only a torch warning, integer ones silently accepted.
    for name, t in (("x", x), ("weight", weight), ("bias", bias)):
        if t is not None and not t.is_floating_point():
            raise VmmError(f"causal_conv1d: {name} must be a real floating-point tensor, got {t.dtype}; convert "
                           f"it with .float()")
    w = _conv_weight_2d(weight)
    if w.shape[0] != x.shape[1] or w.shape[1] < 1:
        raise VmmError(f"causal_conv1d: weight must be ({x.shape[1]}, width) or ({x.shape[1]}, 1, width) for x "
                       f"of shape {tuple(x.shape)}, got {tuple(weight.shape)}")
    if bias is not None and tuple(bias.shape) != (x.shape[1],):
        raise VmmError(f"causal_conv1d: bias must have shape ({x.shape[1]},) for x of shape {tuple(x.shape)}, "
                       f"got {tuple(bias.shape)}")
    return w


def _check_activation(activation: Optional[str]) -> bool:
    if activation not in (None, "silu", "swish"):
        raise VmmError(f"causal_conv1d: activation must be None, 'silu' or 'swish', got {activation!r}")
    return activation is not None


def causal_conv1d_ref(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, activation: Optional[str] = "silu",
                      reverse: bool = False) -> Tensor:
    """Depthwise causal conv over (batch, channels, length), then SiLU if ``activation``; pure PyTorch.

    out[t] = bias + sum_k weight[k] * x[t - (K-1) + k] (zeros before the start). ``reverse=True`` is the
    anti-causal conv of the backward direction, the same as flip -> causal conv -> flip, without the flips.
    Computes in float32 (float64 for float64 inputs) and returns x's dtype, like the CUDA kernel.

    >>> import torch
    >>> causal_conv1d_ref(torch.ones(1, 2, 5), torch.ones(2, 1, 4), torch.zeros(2), activation=None)[0, 0]
    tensor([1., 2., 3., 4., 4.])
    """
    silu = _check_activation(activation)
    w = _check_conv_args(x, weight, bias)
    channels, width = w.shape
    length = x.shape[-1]
    cdt = _compute_dtype(x, w, bias)
    # conv1d refuses an input shorter than its kernel: an empty sequence gets one more zero of padding and its
    # one output is sliced off again, so the (empty) result stays in the autograd graph of x, weight and bias.
    grow = width - 1 + (length == 0)
    pad = (0, grow) if reverse else (grow, 0)
    taps = w.flip(-1) if reverse else w
    out = F.conv1d(F.pad(x.to(cdt), pad), taps.to(cdt).unsqueeze(1), None if bias is None else bias.to(cdt),
                   groups=channels)[..., :length]
    return (F.silu(out) if silu else out).to(x.dtype)


def causal_conv1d(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, activation: Optional[str] = "silu",
                  reverse: bool = False, backend: Optional[str] = None) -> Tensor:
    """The mixer's depthwise causal conv (+SiLU) with backends ``reference`` and ``causal_conv1d`` (CUDA).

    Same contract as :func:`causal_conv1d_ref`. ``backend=None`` uses causal-conv1d's kernel for CUDA tensors
    when it is installed and the width is 2..4, else the reference. An unavailable named backend raises
    :class:`vmm.errors.VmmError`.

    >>> import torch
    >>> x, w, b = torch.randn(2, 8, 20), torch.randn(8, 1, 4), torch.randn(8)
    >>> torch.allclose(causal_conv1d(x, w, b, reverse=True),
    ...                causal_conv1d(x.flip(-1), w, b).flip(-1), atol=1e-6)
    True
    """
    _check_activation(activation)
    width = _check_conv_args(x, weight, bias).shape[-1]
    cuda_ok = mamba_ssm_backend.causal_conv1d_available(x) and 2 <= width <= 4
    if backend is None:
        backend = "causal_conv1d" if cuda_ok else "reference"
    if backend == "reference":
        _log_choice("causal_conv1d", backend, x)
        return causal_conv1d_ref(x, weight, bias, activation, reverse)
    if backend != "causal_conv1d":
        raise VmmError(f"unknown causal_conv1d backend {backend!r}; choose 'reference', 'causal_conv1d' or None")
    if not cuda_ok:
        raise VmmError(f"causal_conv1d backend 'causal_conv1d' is unavailable for {x.device.type} {x.dtype} tensors "
                       f"of width {width} (it needs width 2..4): {mamba_ssm_backend.CAUSAL_CONV1D_HINT}")
    _log_choice("causal_conv1d", backend, x)
    return mamba_ssm_backend.causal_conv1d_cuda(x, _conv_weight_2d(weight), bias, activation, reverse)
