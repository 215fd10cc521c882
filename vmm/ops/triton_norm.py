"""Residual add + RMSNorm in Triton, forward and backward: the official block's ``fused_add_norm`` with
``residual_in_fp32``."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from vmm.ops._triton import HAS_TRITON, check_runs_here, is_available, on_device_of, tl, triton
from vmm.ops.norm import _check_add_rmsnorm_args

__all__ = ["add_rmsnorm", "is_available"]

if HAS_TRITON:

    @triton.jit
    def _add_rmsnorm_kernel(h_ptr, r_ptr, w_ptr, out_ptr, rout_ptr, D, eps,
                            HAS_RESIDUAL: tl.constexpr, BLOCK_D: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        offs = tl.arange(0, BLOCK_D)
        m = offs < D
        r = tl.load(h_ptr + row * D + offs, mask=m, other=0.0).to(tl.float32)
        if HAS_RESIDUAL:
            r += tl.load(r_ptr + row * D + offs, mask=m, other=0.0)
        tl.store(rout_ptr + row * D + offs, r, mask=m)
        rstd = 1.0 / tl.sqrt(tl.sum(r * r, axis=0) / D + eps)
        w = tl.load(w_ptr + offs, mask=m, other=0.0).to(tl.float32)
        tl.store(out_ptr + row * D + offs, (r * rstd * w).to(out_ptr.dtype.element_ty), mask=m)

    @triton.jit
    def _add_rmsnorm_bwd_kernel(r_ptr, w_ptr, g_ptr, gres_ptr, gh_ptr, gr_ptr, dw_ptr, n_rows, D, eps,
                                HAS_RESIDUAL: tl.constexpr, HAS_GRES: tl.constexpr, ROWS: tl.constexpr,
                                BLOCK_D: tl.constexpr):
        """Backward of :func:`_add_rmsnorm_kernel` for ROWS rows: the gradient of the summed residual r (fp32,
        plus the incoming residual gradient) in hidden's dtype and, with a residual input, in fp32; this
        program's share of dweight goes to row program_id of dw (summed by the caller)."""
        pid = tl.program_id(0)
        offs = tl.arange(0, BLOCK_D)
        m = offs < D
        w = tl.load(w_ptr + offs, mask=m, other=0.0).to(tl.float32)
        dw = tl.zeros([BLOCK_D], tl.float32)
        for i in range(ROWS):
            row = pid * ROWS + i
            mr = m & (row < n_rows)
            base = row.to(tl.int64) * D + offs
            r = tl.load(r_ptr + base, mask=mr, other=0.0)
            g = tl.load(g_ptr + base, mask=mr, other=0.0).to(tl.float32)
            rstd = 1.0 / tl.sqrt(tl.sum(r * r, axis=0) / D + eps)
            gw = g * w
            # d/dr of r * rstd(r): rstd * (gw - r * rstd^2 * mean(gw * r))
            gr = rstd * (gw - r * (rstd * rstd) * (tl.sum(gw * r, axis=0) / D))
            if HAS_GRES:
                gr += tl.load(gres_ptr + base, mask=mr, other=0.0)
            tl.store(gh_ptr + base, gr.to(gh_ptr.dtype.element_ty), mask=mr)
            if HAS_RESIDUAL:
                tl.store(gr_ptr + base, gr, mask=mr)
            dw += g * r * rstd
        tl.store(dw_ptr + pid * D + offs, dw, mask=m)


ADD_RMSNORM_BWD_ROWS = 32  # rows per backward program: its dweight partial is one row of a small buffer


def _row_launch(D: int) -> dict:
    """A whole row of D per program, in both kernels."""
    return {"BLOCK_D": triton.next_power_of_2(D), "num_warps": 4 if D <= 1024 else 8}


class _AddRMSNormFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, residual, weight, eps):
        shape = hidden.shape
        D = shape[-1]
        h2 = hidden.reshape(-1, D)
        r2 = residual.reshape(-1, D) if residual is not None else None
        out = torch.empty_like(h2)
        r_out = torch.empty(h2.shape, device=h2.device, dtype=torch.float32)
        _add_rmsnorm_kernel[(h2.shape[0],)](
            h2, r2 if r2 is not None else r_out, weight, out, r_out, D, eps,
            HAS_RESIDUAL=r2 is not None, **_row_launch(D))
        ctx.save_for_backward(r_out, weight)
        ctx.eps = eps
        ctx.has_residual = residual is not None
        return out.view(shape), r_out.view(shape)

    @staticmethod
    def backward(ctx, g_out, g_res):
        r, weight = ctx.saved_tensors  # r: (rows, D) fp32, the summed residual
        n_rows, D = r.shape
        g2 = g_out.reshape(n_rows, D)
        g2 = g2 if g2.is_contiguous() else g2.contiguous()
        gres = g_res.reshape(n_rows, D).float().contiguous() if g_res is not None else None
        gh = torch.empty((n_rows, D), device=r.device, dtype=g_out.dtype)
        gr = torch.empty_like(r) if ctx.has_residual else gh
        n_prog = triton.cdiv(n_rows, ADD_RMSNORM_BWD_ROWS)
        dw = torch.empty((n_prog, D), device=r.device, dtype=torch.float32)
        _add_rmsnorm_bwd_kernel[(n_prog,)](
            r, weight, g2, gres if gres is not None else r, gh, gr, dw, n_rows, D, ctx.eps,
            HAS_RESIDUAL=ctx.has_residual, HAS_GRES=gres is not None, ROWS=ADD_RMSNORM_BWD_ROWS, **_row_launch(D))
        g_w = dw.sum(0).to(weight.dtype) if ctx.needs_input_grad[2] else None
        return gh.view(g_out.shape), (gr.view(g_out.shape) if ctx.has_residual else None), g_w, None


def add_rmsnorm(hidden: Tensor, residual: Optional[Tensor], weight: Tensor, eps: float = 1e-5
                ) -> Tuple[Tensor, Tensor]:
    """Fused ``residual = residual + hidden`` (fp32) and ``RMSNorm(residual) * weight`` (hidden's dtype).

    The official block's "fused_add_norm" with ``residual_in_fp32``; ``residual=None`` starts the stream.
    Returns ``(normed, residual)``; contiguous (..., D) inputs. :func:`vmm.ops.norm.add_rmsnorm_ref` is its
    PyTorch twin (same arguments, same checks). Example (needs a CUDA GPU)::

        >>> if is_available():
        ...     h = torch.randn(2, 5, 64, device="cuda", dtype=torch.bfloat16)
        ...     y, r = add_rmsnorm(h, None, torch.ones(64, device="cuda"))
        ...     assert y.dtype == torch.bfloat16 and r.dtype == torch.float32
    """
    _check_add_rmsnorm_args("add_rmsnorm", hidden, residual, weight)
    check_runs_here("add_rmsnorm", hidden, "vmm.ops.norm.add_rmsnorm_ref")
    with on_device_of(hidden):
        return _AddRMSNormFn.apply(hidden.contiguous(), None if residual is None else residual.contiguous(),
                                   weight.contiguous(), eps)
