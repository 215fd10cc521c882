"""Bidirectional depthwise conv + SiLU of a bimamba layer in Triton, forward and backward.

One kernel reads the channel-last x (B, L, E) once and writes SiLU(causal conv) for the forward direction
and SiLU(anti-causal conv, mirrored taps) for the backward one, which is what the official code gets from
``xz.flip`` and two causal-conv launches. The backward is two kernels: the pre-activation gradients (with
dw, dbias) and the transposed taps. :func:`conv1d_bidir_silu_ref` is the PyTorch reference.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from vmm.ops._triton import (HAS_TRITON, check_float_tensors, check_rows, check_runs_here, check_shapes,
                             fast_sigmoid, interpreting, is_available, on_device_of, tl, triton)

__all__ = ["conv1d_bidir_silu", "conv1d_bidir_silu_ref", "is_available"]

if HAS_TRITON:

    @triton.jit
    def _conv_tile(L, E, BLOCK_L: tl.constexpr, BLOCK_E: tl.constexpr):
        """A conv program's sequence (64-bit: b * L * 2E passes 2^31 at 64 frames from batch 75), rows,
        channels, channel mask and (row, channel) mask; grid (L, E, B)."""
        b = tl.program_id(2).to(tl.int64)
        offs_l = tl.program_id(0) * BLOCK_L + tl.arange(0, BLOCK_L)
        offs_e = tl.program_id(1) * BLOCK_E + tl.arange(0, BLOCK_E)
        mask_e = offs_e < E
        return b, offs_l, offs_e, mask_e, (offs_l < L)[:, None] & mask_e[None, :]

    @triton.jit
    def _conv_pre(x_base, w_ptr, bias_ptr, offs_l, offs_e, mask_e, L, E, s_xl,
                  K: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_E: tl.constexpr):
        """Pre-activations of both conv directions for rows offs_l: causal taps read x[t - (K-1) + k],
        the anti-causal ones (mirrored) x[t + (K-1) - k]."""
        pre_f = tl.zeros([BLOCK_L, BLOCK_E], tl.float32)
        pre_b = tl.zeros([BLOCK_L, BLOCK_E], tl.float32)
        if HAS_BIAS:
            pre_f += tl.load(bias_ptr + offs_e, mask=mask_e, other=0.0)[None, :]
            pre_b += tl.load(bias_ptr + E + offs_e, mask=mask_e, other=0.0)[None, :]
        for k in tl.static_range(K):
            w_f = tl.load(w_ptr + offs_e * K + k, mask=mask_e, other=0.0)
            w_b = tl.load(w_ptr + E * K + offs_e * K + k, mask=mask_e, other=0.0)
            t_f = offs_l - (K - 1) + k
            t_b = offs_l + (K - 1) - k
            m_f = ((t_f >= 0) & (t_f < L))[:, None] & mask_e[None, :]
            m_b = (t_b < L)[:, None] & mask_e[None, :]
            pre_f += w_f[None, :] * tl.load(x_base + t_f[:, None] * s_xl + offs_e[None, :], mask=m_f,
                                            other=0.0).to(tl.float32)
            pre_b += w_b[None, :] * tl.load(x_base + t_b[:, None] * s_xl + offs_e[None, :], mask=m_b,
                                            other=0.0).to(tl.float32)
        return pre_f, pre_b

    @triton.jit
    def _conv_bidir_kernel(x_ptr, w_ptr, bias_ptr, of_ptr, ob_ptr, L, E,
                           s_xb, s_xl, s_ob, s_ol,
                           K: tl.constexpr, HAS_BIAS: tl.constexpr,
                           BLOCK_L: tl.constexpr, BLOCK_E: tl.constexpr):
        b, offs_l, offs_e, mask_e, m_o = _conv_tile(L, E, BLOCK_L, BLOCK_E)
        acc_f, acc_b = _conv_pre(x_ptr + b * s_xb, w_ptr, bias_ptr, offs_l, offs_e, mask_e, L, E, s_xl,
                                 K, HAS_BIAS, BLOCK_L, BLOCK_E)
        acc_f = acc_f * tl.sigmoid(acc_f)
        acc_b = acc_b * tl.sigmoid(acc_b)
        o_off = b * s_ob + offs_l[:, None] * s_ol + offs_e[None, :]
        tl.store(of_ptr + o_off, acc_f.to(of_ptr.dtype.element_ty), mask=m_o)
        tl.store(ob_ptr + o_off, acc_b.to(ob_ptr.dtype.element_ty), mask=m_o)

    @triton.jit
    def _conv_row(x_base, t, L, s_xl, offs_e, mask_e):
        return tl.load(x_base + t * s_xl + offs_e, mask=mask_e & (t >= 0) & (t < L), other=0.0).to(tl.float32)

    @triton.jit
    def _rows_program(E, ROWS: tl.constexpr, BLOCK_E: tl.constexpr):
        """A windowed program's sequence (64-bit, as in _conv_tile), first row, channels and channel mask; grid
        (L / ROWS, E, B)."""
        offs_e = tl.program_id(1) * BLOCK_E + tl.arange(0, BLOCK_E)
        return tl.program_id(2).to(tl.int64), tl.program_id(0) * ROWS, offs_e, offs_e < E

    @triton.jit
    def _conv_taps(w_ptr, bias_ptr, offs_e, mask_e, E, HAS_BIAS: tl.constexpr):
        """The 4 taps of each direction (``w_ptr``: (2, E, 4)) and the biases of this program's channels."""
        wf0 = tl.load(w_ptr + offs_e * 4, mask=mask_e, other=0.0)
        wf1 = tl.load(w_ptr + offs_e * 4 + 1, mask=mask_e, other=0.0)
        wf2 = tl.load(w_ptr + offs_e * 4 + 2, mask=mask_e, other=0.0)
        wf3 = tl.load(w_ptr + offs_e * 4 + 3, mask=mask_e, other=0.0)
        wb0 = tl.load(w_ptr + 4 * E + offs_e * 4, mask=mask_e, other=0.0)
        wb1 = tl.load(w_ptr + 4 * E + offs_e * 4 + 1, mask=mask_e, other=0.0)
        wb2 = tl.load(w_ptr + 4 * E + offs_e * 4 + 2, mask=mask_e, other=0.0)
        wb3 = tl.load(w_ptr + 4 * E + offs_e * 4 + 3, mask=mask_e, other=0.0)
        if HAS_BIAS:
            bf = tl.load(bias_ptr + offs_e, mask=mask_e, other=0.0)
            bb = tl.load(bias_ptr + E + offs_e, mask=mask_e, other=0.0)
        else:
            bf = tl.zeros(offs_e.shape, tl.float32)
            bb = tl.zeros(offs_e.shape, tl.float32)
        return wf0, wf1, wf2, wf3, wb0, wb1, wb2, wb3, bf, bb

    @triton.jit
    def _conv_bidir_rows_kernel(x_ptr, w_ptr, bias_ptr, of_ptr, ob_ptr, L, E,
                                s_xb, s_xl, s_ob, s_ol,
                                HAS_BIAS: tl.constexpr, ROWS: tl.constexpr, BLOCK_E: tl.constexpr,
                                FAST: tl.constexpr):
        """The forward of both directions for up to 4 taps (``w_ptr``: (2, E, 4), shorter kernels padded with
        leading zero taps), walking ROWS rows with the last four x rows in registers: each x row is loaded
        once, where the tile kernel loads it once per tap and direction. At row t the window x[t-3..t] gives
        the causal output of row t and the anti-causal one of row t-3."""
        b, l0, offs_e, mask_e = _rows_program(E, ROWS, BLOCK_E)
        wf0, wf1, wf2, wf3, wb0, wb1, wb2, wb3, bf, bb = _conv_taps(w_ptr, bias_ptr, offs_e, mask_e, E, HAS_BIAS)
        x_base = x_ptr + b * s_xb
        o_f = of_ptr + b * s_ob + offs_e
        o_b = ob_ptr + b * s_ob + offs_e
        x0 = _conv_row(x_base, l0 - 3, L, s_xl, offs_e, mask_e)
        x1 = _conv_row(x_base, l0 - 2, L, s_xl, offs_e, mask_e)
        x2 = _conv_row(x_base, l0 - 1, L, s_xl, offs_e, mask_e)
        x3 = _conv_row(x_base, l0, L, s_xl, offs_e, mask_e)
        for s in range(ROWS + 3):
            t = l0 + s
            x4 = _conv_row(x_base, t + 1, L, s_xl, offs_e, mask_e)  # a row ahead: its latency hides behind this one
            pf = bf + wf0 * x0 + wf1 * x1 + wf2 * x2 + wf3 * x3
            pb = bb + wb0 * x3 + wb1 * x2 + wb2 * x1 + wb3 * x0
            yf = pf * fast_sigmoid(pf, FAST)
            yb = pb * fast_sigmoid(pb, FAST)
            tl.store(o_f + t * s_ol, yf.to(of_ptr.dtype.element_ty), mask=mask_e & (s < ROWS) & (t < L))
            tl.store(o_b + (t - 3) * s_ol, yb.to(ob_ptr.dtype.element_ty), mask=mask_e & (s >= 3) & (t - 3 < L))
            x0 = x1
            x1 = x2
            x2 = x3
            x3 = x4

    @triton.jit
    def _dsilu(a):
        sg = tl.sigmoid(a)
        return sg * (1.0 + a * (1.0 - sg))

    @triton.jit
    def _zeros(n: tl.constexpr):
        return tl.zeros([n], tl.float32)

    @triton.jit
    def _conv_bidir_bwd_rows_kernel(x_ptr, w_ptr, bias_ptr, gf_ptr, gb_ptr, dx_ptr, dw_ptr, db_ptr, L, E, K,
                                    s_xb, s_xl, s_gb, s_gl, s_db, s_dl,
                                    HAS_BIAS: tl.constexpr, HAS_DX: tl.constexpr, ROWS: tl.constexpr,
                                    BLOCK_E: tl.constexpr, FAST: tl.constexpr):
        """The whole backward of the windowed forward in one pass over ROWS rows: at row r it recomputes both
        pre-activations from a 7-row window of x, forms gp = g * SiLU'(pre) for both directions, adds this
        program's rows into dw and dbias (registers, one set of atomics at the end), and writes dx of row
        r - 3 from the last 4 forward and the 7 last backward gp values, so gp never goes to memory. Rows of
        the neighbouring programs within 3 (6 for the backward direction's gp) are recomputed, not shared.
        dw_ptr: (2, E, K) with K <= 4 real taps, the last K of the padded 4."""
        b, l0, offs_e, mask_e = _rows_program(E, ROWS, BLOCK_E)
        wf0, wf1, wf2, wf3, wb0, wb1, wb2, wb3, bf, bb = _conv_taps(w_ptr, bias_ptr, offs_e, mask_e, E, HAS_BIAS)
        x_base = x_ptr + b * s_xb
        g_f = gf_ptr + b * s_gb + offs_e
        g_b = gb_ptr + b * s_gb + offs_e
        # x[r-3 .. r+3] for the first row r = l0 - 3; the loop loads x[r+3]
        xm3 = _conv_row(x_base, l0 - 6, L, s_xl, offs_e, mask_e)
        xm2 = _conv_row(x_base, l0 - 5, L, s_xl, offs_e, mask_e)
        xm1 = _conv_row(x_base, l0 - 4, L, s_xl, offs_e, mask_e)
        x0 = _conv_row(x_base, l0 - 3, L, s_xl, offs_e, mask_e)
        xp1 = _conv_row(x_base, l0 - 2, L, s_xl, offs_e, mask_e)
        xp2 = _conv_row(x_base, l0 - 1, L, s_xl, offs_e, mask_e)
        xp3 = _conv_row(x_base, l0, L, s_xl, offs_e, mask_e)
        # gp_f of rows r-1 .. r-3 and gp_b of rows r-1 .. r-6. Each starts as its own zeros: Triton carries a
        # name through the loop only if the body gives it a new value, and "f3 = f2" would look unchanged if
        # both started as one tensor (the interpreter, running plain Python, cannot tell).
        f1, f2, f3 = _zeros(BLOCK_E), _zeros(BLOCK_E), _zeros(BLOCK_E)
        b1, b2, b3 = _zeros(BLOCK_E), _zeros(BLOCK_E), _zeros(BLOCK_E)
        b4, b5, b6 = _zeros(BLOCK_E), _zeros(BLOCK_E), _zeros(BLOCK_E)
        dwf0, dwf1, dwf2, dwf3 = _zeros(BLOCK_E), _zeros(BLOCK_E), _zeros(BLOCK_E), _zeros(BLOCK_E)
        dwb0, dwb1, dwb2, dwb3 = _zeros(BLOCK_E), _zeros(BLOCK_E), _zeros(BLOCK_E), _zeros(BLOCK_E)
        dbf, dbb = _zeros(BLOCK_E), _zeros(BLOCK_E)
        for i in range(ROWS + 6):
            r = l0 - 3 + i
            xp4 = _conv_row(x_base, r + 4, L, s_xl, offs_e, mask_e)  # a row ahead
            m_g = mask_e & (r >= 0) & (r < L)
            ga = tl.load(g_f + r * s_gl, mask=m_g, other=0.0).to(tl.float32)
            gc = tl.load(g_b + r * s_gl, mask=m_g, other=0.0).to(tl.float32)
            pf = bf + wf0 * xm3 + wf1 * xm2 + wf2 * xm1 + wf3 * x0
            pb = bb + wb0 * xp3 + wb1 * xp2 + wb2 * xp1 + wb3 * x0
            sf = fast_sigmoid(pf, FAST)
            sb = fast_sigmoid(pb, FAST)
            f0 = ga * sf * (1.0 + pf * (1.0 - sf))
            b0 = gc * sb * (1.0 + pb * (1.0 - sb))
            own = ((r >= l0) & (r < l0 + ROWS)).to(tl.float32)  # each row's dw terms from one program only
            of = f0 * own
            ob = b0 * own
            dbf += of
            dbb += ob
            dwf0 += of * xm3
            dwf1 += of * xm2
            dwf2 += of * xm1
            dwf3 += of * x0
            dwb0 += ob * xp3
            dwb1 += ob * xp2
            dwb2 += ob * xp1
            dwb3 += ob * x0
            if HAS_DX:
                dx = wf0 * f0 + wf1 * f1 + wf2 * f2 + wf3 * f3 + wb0 * b6 + wb1 * b5 + wb2 * b4 + wb3 * b3
                s = r - 3
                tl.store(dx_ptr + b * s_db + s * s_dl + offs_e, dx.to(dx_ptr.dtype.element_ty),
                         mask=mask_e & (s >= l0) & (s < l0 + ROWS) & (s < L))
            xm3, xm2, xm1, x0, xp1, xp2, xp3 = xm2, xm1, x0, xp1, xp2, xp3, xp4
            f3, f2, f1 = f2, f1, f0
            b6, b5, b4, b3, b2, b1 = b5, b4, b3, b2, b1, b0
        if HAS_BIAS:
            tl.atomic_add(db_ptr + offs_e, dbf, mask=mask_e, sem="relaxed")
            tl.atomic_add(db_ptr + E + offs_e, dbb, mask=mask_e, sem="relaxed")
        # padded tap j holds real tap j - (4 - K)
        _add_tap(dw_ptr, offs_e, mask_e, E, K, 0, dwf0, dwb0)
        _add_tap(dw_ptr, offs_e, mask_e, E, K, 1, dwf1, dwb1)
        _add_tap(dw_ptr, offs_e, mask_e, E, K, 2, dwf2, dwb2)
        _add_tap(dw_ptr, offs_e, mask_e, E, K, 3, dwf3, dwb3)

    @triton.jit
    def _add_tap(dw_ptr, offs_e, mask_e, E, K, j: tl.constexpr, dwf, dwb):
        k = j - (4 - K)
        m = mask_e & (k >= 0)
        tl.atomic_add(dw_ptr + offs_e * K + k, dwf, mask=m, sem="relaxed")
        tl.atomic_add(dw_ptr + E * K + offs_e * K + k, dwb, mask=m, sem="relaxed")

    @triton.jit
    def _conv_bidir_bwd_gp_kernel(x_ptr, w_ptr, bias_ptr, gf_ptr, gb_ptr, gp_ptr, dw_ptr, db_ptr, L, E,
                                  s_xb, s_xl, s_gb, s_gl, s_pd, s_pb,
                                  K: tl.constexpr, KP: tl.constexpr, HAS_BIAS: tl.constexpr,
                                  BLOCK_L: tl.constexpr, BLOCK_E: tl.constexpr, ROW_TILES: tl.constexpr):
        """Backward of the conv kernel, part 1: the pre-activation gradients gp = g * SiLU'(pre) of both
        directions (pre recomputed from x), written in fp32, and dw, dbias. A program walks ROW_TILES tiles of
        rows and sums its dw, dbias terms in registers before one set of atomics: with an atomic per tile, 800
        programs added to each weight and the kernel took 5x the forward's time."""
        b = tl.program_id(2).to(tl.int64)
        offs_e = tl.program_id(1) * BLOCK_E + tl.arange(0, BLOCK_E)
        mask_e = offs_e < E
        x_base = x_ptr + b * s_xb
        taps = tl.arange(0, KP)[:, None]
        dw_f = tl.zeros([KP, BLOCK_E], tl.float32)
        dw_b = tl.zeros([KP, BLOCK_E], tl.float32)
        db_f = tl.zeros([BLOCK_E], tl.float32)
        db_b = tl.zeros([BLOCK_E], tl.float32)
        for i in range(ROW_TILES):
            offs_l = (tl.program_id(0) * ROW_TILES + i) * BLOCK_L + tl.arange(0, BLOCK_L)
            m_o = (offs_l < L)[:, None] & mask_e[None, :]
            pre_f, pre_b = _conv_pre(x_base, w_ptr, bias_ptr, offs_l, offs_e, mask_e, L, E, s_xl,
                                     K, HAS_BIAS, BLOCK_L, BLOCK_E)
            g_off = b * s_gb + offs_l[:, None] * s_gl + offs_e[None, :]
            gp_f = tl.load(gf_ptr + g_off, mask=m_o, other=0.0).to(tl.float32) * _dsilu(pre_f)
            gp_b = tl.load(gb_ptr + g_off, mask=m_o, other=0.0).to(tl.float32) * _dsilu(pre_b)
            p_off = b * s_pb + offs_l[:, None] * E + offs_e[None, :]
            tl.store(gp_ptr + p_off, gp_f, mask=m_o)
            tl.store(gp_ptr + s_pd + p_off, gp_b, mask=m_o)
            db_f += tl.sum(gp_f, axis=0)
            db_b += tl.sum(gp_b, axis=0)
            for k in tl.static_range(K):
                t_f = offs_l - (K - 1) + k
                t_b = offs_l + (K - 1) - k
                m_f = ((t_f >= 0) & (t_f < L))[:, None] & mask_e[None, :]
                m_b = (t_b < L)[:, None] & mask_e[None, :]
                x_f = tl.load(x_base + t_f[:, None] * s_xl + offs_e[None, :], mask=m_f, other=0.0).to(tl.float32)
                x_b = tl.load(x_base + t_b[:, None] * s_xl + offs_e[None, :], mask=m_b, other=0.0).to(tl.float32)
                dw_f += tl.where(taps == k, tl.sum(gp_f * x_f, axis=0)[None, :], 0.0)
                dw_b += tl.where(taps == k, tl.sum(gp_b * x_b, axis=0)[None, :], 0.0)
        if HAS_BIAS:
            tl.atomic_add(db_ptr + offs_e, db_f, mask=mask_e, sem="relaxed")
            tl.atomic_add(db_ptr + E + offs_e, db_b, mask=mask_e, sem="relaxed")
        w_off = offs_e[None, :] * K + taps
        m_w = (taps < K) & mask_e[None, :]
        tl.atomic_add(dw_ptr + w_off, dw_f, mask=m_w, sem="relaxed")
        tl.atomic_add(dw_ptr + E * K + w_off, dw_b, mask=m_w, sem="relaxed")

    @triton.jit
    def _conv_bidir_bwd_dx_kernel(gp_ptr, w_ptr, dx_ptr, L, E, s_pd, s_pb, s_db, s_dl,
                                  K: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_E: tl.constexpr):
        """Part 2: dx[s] = sum_k w_f[k] gp_f[s + K-1-k] + w_b[k] gp_b[s - (K-1) + k] (the taps transposed)."""
        b, offs_l, offs_e, mask_e, m_o = _conv_tile(L, E, BLOCK_L, BLOCK_E)
        base = gp_ptr + b * s_pb
        acc = tl.zeros([BLOCK_L, BLOCK_E], tl.float32)
        for k in tl.static_range(K):
            w_f = tl.load(w_ptr + offs_e * K + k, mask=mask_e, other=0.0)
            w_b = tl.load(w_ptr + E * K + offs_e * K + k, mask=mask_e, other=0.0)
            t_f = offs_l + (K - 1) - k
            t_b = offs_l - (K - 1) + k
            m_f = (t_f < L)[:, None] & mask_e[None, :]
            m_b = ((t_b >= 0) & (t_b < L))[:, None] & mask_e[None, :]
            acc += w_f[None, :] * tl.load(base + t_f[:, None] * E + offs_e[None, :], mask=m_f, other=0.0)
            acc += w_b[None, :] * tl.load(base + s_pd + t_b[:, None] * E + offs_e[None, :], mask=m_b, other=0.0)
        tl.store(dx_ptr + b * s_db + offs_l[:, None] * s_dl + offs_e[None, :], acc.to(dx_ptr.dtype.element_ty),
                 mask=m_o)


# Launch settings (the benchmark sweeps them): rows and channels per program, and its warps.
CONV_BLOCK_L = 32
CONV_BLOCK_E = 128  # (32, 128, 4 warps): 0.43 ms at the encoder shape vs 0.66 for (32, 64) on an H200
CONV_WARPS = 4
CONV_WINDOWED = True  # the forward of kernels up to 4 taps by the windowed kernel (False: the tile kernel)
CONV_ROWS = 64  # the windowed forward: rows walked per program, its channels and warps (H200, encoder shape,
CONV_ROWS_BLOCK_E = 128  # three runs: 0.29-0.35 ms, 256 channels and 2 warps 0.33-0.38, the tile kernel 0.50;
CONV_ROWS_WARPS = 1  # VideoMamba-M 8 frames 608 vs 605 clips/s)
CONV_BWD_ROWS = 256  # the windowed backward (up to 4 taps): rows per program (fewer programs add into each dw)
CONV_BWD_BLOCK_E = 64
CONV_BWD_WARPS = 1
CONV_BWD_ROW_TILES = 4  # row tiles per program of the conv backward, which sums its dw terms before the atomics


def conv_fwd(x: Tensor, w: Tensor, bias: Optional[Tensor], out: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """Both conv directions of x (B, L, E) (stride 1 over E): two new (B, L, E) tensors, or ``out[0]`` and
    ``out[1]`` of a contiguous (2, B, L, E) ``out`` (one operand for both directions' x_proj)."""
    Bsz, L, E = x.shape
    K = w.shape[-1]
    if out is None:
        of = torch.empty((Bsz, L, E), device=x.device, dtype=x.dtype)
        ob = torch.empty_like(of)
    else:
        of, ob = out[0], out[1]
    if CONV_WINDOWED and K <= 4:
        w4 = w if K == 4 else F.pad(w, (4 - K, 0))
        grid = (triton.cdiv(L, CONV_ROWS), triton.cdiv(E, CONV_ROWS_BLOCK_E), Bsz)
        _conv_bidir_rows_kernel[grid](
            x, w4, bias if bias is not None else w, of, ob, L, E,
            x.stride(0), x.stride(1), of.stride(0), of.stride(1),
            HAS_BIAS=bias is not None, ROWS=CONV_ROWS, BLOCK_E=CONV_ROWS_BLOCK_E, FAST=not interpreting(),
            num_warps=CONV_ROWS_WARPS,
        )
        return of, ob
    grid = (triton.cdiv(L, CONV_BLOCK_L), triton.cdiv(E, CONV_BLOCK_E), Bsz)
    _conv_bidir_kernel[grid](
        x, w, bias if bias is not None else w, of, ob, L, E,
        x.stride(0), x.stride(1), of.stride(0), of.stride(1),
        K=K, HAS_BIAS=bias is not None, BLOCK_L=CONV_BLOCK_L, BLOCK_E=CONV_BLOCK_E, num_warps=CONV_WARPS,
    )
    return of, ob


def conv_bwd(x: Tensor, w: Tensor, bias: Optional[Tensor], g_f: Tensor, g_b: Tensor,
             dx: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
    """The conv's weight and bias gradients (fp32); the input gradient is written into ``dx`` (any (B, L, E)
    view with stride 1 over E, for instance one half of a layer's input gradient) unless it is None."""
    Bsz, L, E = x.shape
    K = w.shape[-1]
    g_f, g_b = g_f.contiguous(), g_b.contiguous()
    f32 = dict(device=x.device, dtype=torch.float32)
    dw = torch.zeros((2, E, K), **f32)
    db = torch.zeros((2, E), **f32)
    if CONV_WINDOWED and K <= 4:
        w4 = w if K == 4 else F.pad(w, (4 - K, 0))
        grid = (triton.cdiv(L, CONV_BWD_ROWS), triton.cdiv(E, CONV_BWD_BLOCK_E), Bsz)
        _conv_bidir_bwd_rows_kernel[grid](
            x, w4, bias if bias is not None else w4, g_f, g_b, dx if dx is not None else x, dw, db, L, E, K,
            x.stride(0), x.stride(1), g_f.stride(0), g_f.stride(1),
            dx.stride(0) if dx is not None else 0, dx.stride(1) if dx is not None else 0,
            HAS_BIAS=bias is not None, HAS_DX=dx is not None, ROWS=CONV_BWD_ROWS, BLOCK_E=CONV_BWD_BLOCK_E,
            FAST=not interpreting(), num_warps=CONV_BWD_WARPS,
        )
        return dw, db
    gp = torch.empty((2, Bsz, L, E), **f32)  # pre-activation gradients, both directions
    grid_gp = (triton.cdiv(L, CONV_BLOCK_L * CONV_BWD_ROW_TILES), triton.cdiv(E, CONV_BLOCK_E), Bsz)
    _conv_bidir_bwd_gp_kernel[grid_gp](
        x, w, bias if bias is not None else w, g_f, g_b, gp, dw, db, L, E,
        x.stride(0), x.stride(1), g_f.stride(0), g_f.stride(1), gp.stride(0), gp.stride(1),
        K=K, KP=triton.next_power_of_2(K), HAS_BIAS=bias is not None, BLOCK_L=CONV_BLOCK_L, BLOCK_E=CONV_BLOCK_E,
        ROW_TILES=CONV_BWD_ROW_TILES, num_warps=CONV_WARPS,
    )
    if dx is not None:
        grid = (triton.cdiv(L, CONV_BLOCK_L), triton.cdiv(E, CONV_BLOCK_E), Bsz)
        _conv_bidir_bwd_dx_kernel[grid](
            gp, w, dx, L, E, gp.stride(0), gp.stride(1), dx.stride(0), dx.stride(1),
            K=K, BLOCK_L=CONV_BLOCK_L, BLOCK_E=CONV_BLOCK_E, num_warps=CONV_WARPS,
        )
    return dw, db


class _ConvBidirFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, bias):
        ctx.save_for_backward(x, w, bias)
        return conv_fwd(x, w, bias)

    @staticmethod
    def backward(ctx, g_f, g_b):
        x, w, bias = ctx.saved_tensors
        dx = torch.empty_like(x) if ctx.needs_input_grad[0] else None
        dw, db = conv_bwd(x, w, bias, g_f, g_b, dx)
        return dx, (dw if ctx.needs_input_grad[1] else None), (db if bias is not None and ctx.needs_input_grad[2]
                                                               else None)


def _check_conv_args(fn: str, x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> None:
    """x (B, L, E), weight (2, E, K), bias (2, E) or None: the kernels read them through raw strides, so a
    one-direction (E, K) weight or a (E,) bias was read past its end into garbage output."""
    from vmm.errors import VmmError
    check_float_tensors(fn, {"x": x, "weight": weight, "bias": bias}, optional=("bias",))
    if x.dim() != 3 or weight.dim() != 3 or weight.shape[-1] < 1:
        raise VmmError(f"{fn}: x must be (batch, length, channels) and weight (2, channels, width), got "
                       f"{tuple(x.shape)} and {tuple(weight.shape)}")
    E = x.shape[-1]
    check_shapes(fn, f"for x of shape {tuple(x.shape)}",
                 {"x": (x, x.shape), "weight": (weight, (2, E, weight.shape[-1])), "bias": (bias, (2, E))})


def conv1d_bidir_silu_ref(x: Tensor, w: Tensor, bias: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
    """Reference for the conv kernel on (B, L, E) input, weights (2, E, K), bias (2, E) or None; the same
    argument checks as :func:`conv1d_bidir_silu`.

    >>> yf, yb = conv1d_bidir_silu_ref(torch.randn(2, 7, 8), torch.randn(2, 8, 4), None)
    >>> yf.shape
    torch.Size([2, 7, 8])
    """
    _check_conv_args("conv1d_bidir_silu_ref", x, w, bias)
    K = w.shape[-1]
    xt = x.transpose(1, 2).float()
    E = xt.shape[1]
    bf = bias[0].float() if bias is not None else None
    bb = bias[1].float() if bias is not None else None
    yf = F.conv1d(F.pad(xt, (K - 1, 0)), w[0].float().unsqueeze(1), bf, groups=E)
    yb = F.conv1d(F.pad(xt, (0, K - 1)), w[1].float().flip(-1).unsqueeze(1), bb, groups=E)
    return F.silu(yf).transpose(1, 2).to(x.dtype), F.silu(yb).transpose(1, 2).to(x.dtype)


def conv1d_bidir_silu(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
    """SiLU(causal depthwise conv) and SiLU(anti-causal, mirrored taps) of channel-last x, reading x once.

    ``x``: (B, L, E) with stride 1 over E; ``weight``: (2, E, K) (forward, backward direction);
    ``bias``: (2, E) or None. Returns two (B, L, E) tensors. Example (needs a CUDA GPU)::

        >>> if is_available():
        ...     yf, yb = conv1d_bidir_silu(torch.randn(2, 7, 64, device="cuda"),
        ...                                torch.randn(2, 64, 4, device="cuda"), None)
        ...     assert yf.shape == yb.shape == (2, 7, 64)
    """
    _check_conv_args("conv1d_bidir_silu", x, weight, bias)
    check_runs_here("conv1d_bidir_silu", x, "conv1d_bidir_silu_ref")
    x = check_rows(x)
    with on_device_of(x):
        return _ConvBidirFn.apply(x, weight.float().contiguous(),
                                  None if bias is None else bias.float().contiguous())


