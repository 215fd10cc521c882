"""The gated sum of both scan directions fused into ``out_proj``: ``((y_f + y_b) * SiLU(z)) @ W.T`` in one
kernel, for inference (no backward).

Without it a layer writes the gated sum (B, L, E) in its own pass and ``out_proj`` reads it back: at
VideoMamba-M's shapes that pass moves four (B, L, E) tensors through memory per layer. Here a program owns
``BLOCK_M`` rows and every output column, so each element of the gated sum is formed once, in registers, and
fed to the tensor cores; the columns are split into two power-of-two accumulators (576 = 512 + 64) because
Triton's blocks are powers of two.
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

from vmm.ops._triton import HAS_TRITON, fast_sigmoid, interpreting, tl, triton

# Rows per program, columns of the gated sum per step, warps, pipeline stages (H200; see docs/gpu.md).
BLOCK_M, BLOCK_K, WARPS, STAGES = 64, 32, 8, 3
MAX_COLUMNS = 640  # the two accumulators of a program take BLOCK_M * columns fp32 registers

if HAS_TRITON:
    @triton.jit
    def _gated_out_proj_kernel(y_ptr, z_ptr, w_ptr, out_ptr, M, E, Dout, s_yd, s_zm, s_wd,
                               BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, N0: tl.constexpr, N1: tl.constexpr,
                               INTERP: tl.constexpr):
        """out[m, :] = ((y[0, m] + y[1, m]) * SiLU(z[m])) @ w.T for rows m of this program; y (2, M, E)
        contiguous, z rows of stride s_zm, w (Dout, E) rows of stride s_wd, out (M, Dout) contiguous.
        Columns [0, N0) go to one accumulator and [N0, N0 + N1) to a second (N1 = 0: none)."""
        offs_m = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
        mask_m = offs_m < M
        n0 = tl.arange(0, N0)
        acc0 = tl.zeros((BLOCK_M, N0), dtype=tl.float32)
        if N1 > 0:
            n1 = N0 + tl.arange(0, N1)
            acc1 = tl.zeros((BLOCK_M, N1), dtype=tl.float32)
        for k in range(0, E, BLOCK_K):
            offs_k = k + tl.arange(0, BLOCK_K)
            mask_k = offs_k < E
            m = mask_m[:, None] & mask_k[None, :]
            row = offs_m[:, None] * E + offs_k[None, :]
            yf = tl.load(y_ptr + row, mask=m, other=0.0).to(tl.float32)
            yb = tl.load(y_ptr + s_yd + row, mask=m, other=0.0).to(tl.float32)
            z = tl.load(z_ptr + offs_m[:, None] * s_zm + offs_k[None, :], mask=m, other=0.0).to(tl.float32)
            # The same arithmetic and rounding as the separate gated-sum pass, so the GEMM sees the same values.
            a = ((yf + yb) * (z * fast_sigmoid(z, not INTERP))).to(w_ptr.dtype.element_ty)
            w0 = tl.load(w_ptr + n0[None, :] * s_wd + offs_k[:, None], mask=mask_k[:, None] & (n0 < Dout)[None, :],
                         other=0.0)
            acc0 = tl.dot(a, w0, acc0)
            if N1 > 0:
                w1 = tl.load(w_ptr + n1[None, :] * s_wd + offs_k[:, None],
                             mask=mask_k[:, None] & (n1 < Dout)[None, :], other=0.0)
                acc1 = tl.dot(a, w1, acc1)
        out_row = out_ptr + offs_m[:, None] * Dout
        tl.store(out_row + n0[None, :], acc0.to(out_ptr.dtype.element_ty), mask=mask_m[:, None] & (n0 < Dout)[None, :])
        if N1 > 0:
            tl.store(out_row + n1[None, :], acc1.to(out_ptr.dtype.element_ty),
                     mask=mask_m[:, None] & (n1 < Dout)[None, :])


def column_split(columns: int) -> Tuple[int, int]:
    """The two accumulator widths for ``columns`` outputs: the largest power of two that fits, then the next
    power of two covering the rest (0 when none is left).

    >>> column_split(576), column_split(384), column_split(192), column_split(512)
    ((512, 64), (256, 128), (128, 64), (512, 0))
    """
    n0 = 1 << (columns.bit_length() - 1)
    rest = columns - n0
    return n0, (0 if rest == 0 else max(16, 1 << (rest - 1).bit_length()))


def supports(columns: int) -> bool:
    """Whether :func:`gated_out_proj` takes an output of ``columns`` (VideoMamba-Ti/S/M: 192/384/576)."""
    return 16 <= columns <= MAX_COLUMNS


def gated_out_proj(y2: Tensor, z: Tensor, weight: Tensor) -> Tensor:
    """``((y2[0] + y2[1]) * SiLU(z)) @ weight.T``: y2 (2, B, L, E) contiguous, z (B, L, E) with stride 1 over E
    and rows of one stride (such as the second half of a channel-last ``in_proj`` output), weight (D, E) in
    y2's dtype; returns (B, L, D) in that dtype. No autograd. Example (needs a CUDA GPU)::

        >>> from vmm.ops._triton import is_available
        >>> if is_available():
        ...     y2, z = torch.randn(2, 2, 9, 64, device="cuda"), torch.randn(2, 9, 64, device="cuda")
        ...     w = torch.randn(48, 64, device="cuda")
        ...     ref = ((y2[0] + y2[1]) * torch.nn.functional.silu(z)) @ w.t()
        ...     assert torch.allclose(gated_out_proj(y2, z, w), ref, rtol=1e-2, atol=1e-2)
    """
    _, Bsz, L, E = y2.shape
    D = weight.shape[0]
    if not supports(D):
        raise ValueError(f"gated_out_proj takes 16 to {MAX_COLUMNS} output columns, got {D}")
    if z.stride(-1) != 1 or z.stride(0) != L * z.stride(1):
        raise ValueError("z must have stride 1 over E and rows of one stride")
    if not y2.is_contiguous():
        raise ValueError("y2 must be contiguous")
    weight = weight if weight.stride(-1) == 1 else weight.contiguous()
    out = torch.empty((Bsz, L, D), device=y2.device, dtype=y2.dtype)
    M = Bsz * L
    n0, n1 = column_split(D)
    _gated_out_proj_kernel[(triton.cdiv(M, BLOCK_M),)](
        y2, z, weight, out, M, E, D, y2.stride(0), z.stride(1), weight.stride(0),
        BLOCK_M=BLOCK_M, BLOCK_K=BLOCK_K, N0=n0, N1=n1, INTERP=interpreting(), num_warps=WARPS,
        num_stages=STAGES)
    return out
