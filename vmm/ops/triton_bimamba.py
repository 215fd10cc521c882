"""Fused bidirectional Mamba layer ("bimamba v2") in Triton: the ``triton`` backend of
:func:`vmm.ops.bimamba.bimamba_inner_xz` (and :func:`vmm.ops.bimamba.bimamba_inner`).

The official code runs each direction as its own pipeline and materialises ``xz.flip`` and ``out_b.flip``.
Here the backward direction reads the sequence by reversed index instead, and a layer costs:

1. one conv kernel (:mod:`vmm.ops.triton_conv`) that reads x once and writes SiLU(causal conv) and
   SiLU(anti-causal conv) for both directions;
2. x_proj and dt_proj, each one batched cuBLAS GEMM for both directions;
3. one scan launch for both directions (a program per channel block, sequence and direction):
   softplus(delta + bias), exp(delta * A), the N-state recurrence and the D skip; each direction writes its
   output and one pass computes (y_f + y_b) * SiLU(z).

Everything works in a channel-last layout, (B, L, E) with E contiguous, which is what ``in_proj(u)``
produces: one program owns a block of channels of one sequence and direction, so the B/C rows of a time
step are loaded once per block of channels (not once per channel) and every load of u, delta, z is a
coalesced row. The scan is a sequential loop over L with the (BLOCK_E, N) state in registers (one channel
per lane, its N states in that lane's registers); inputs arrive in tiles of FWD_TILE steps loaded a tile
ahead, with L2 prefetches further ahead.

The backward pass (for training) recomputes the states: the forward, when a backward can follow, keeps the
state every ``BWD_CK`` steps; the backward walks chunks from the end, recomputes each chunk's per-step
states from its checkpoint into a program-private scratch block and runs the adjoint recurrence backwards
through them, each step's rows loaded one step ahead. dB/dC are summed over the block of channels by a
shuffle reduce-scatter and added across blocks with atomics, as are dA, dD and the dt bias. The whole
layer is one autograd node (:class:`_BiMambaInnerFn`), so the gradient of xz comes back in one piece.

Numerics: fp32 arithmetic throughout. Each direction's output is rounded to the I/O dtype before the gated
sum; the reference gates each direction first, rounds, then adds, which FWD_GATE_IN_SCAN = True reproduces
(in bf16 the two orders differ by about one rounding, 3e-3 relative; fp32 is unaffected).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from vmm.errors import VmmError
from vmm.ops._triton import (HAS_TRITON, check_float_tensors, check_rows, check_runs_here, check_shapes, fast_exp,
                             fast_sigmoid, interpreting, is_available, on_device_of, tl, triton, unsupported_layer)
from vmm.ops.bimamba import _check_layer_args
from vmm.ops.triton_conv import conv_bwd, conv_fwd

__all__ = ["is_available", "bimamba_inner_xz_triton", "bimamba_inner_triton", "bimamba_scan", "bimamba_scan_ref",
           "HAS_TRITON"]

if HAS_TRITON:

    @triton.jit
    def _dot_cols(h, c, y, W: tl.constexpr):
        """y + sum_n h[:, n] c[:, n] over W columns as one multiply-add chain. Each lane holds whole rows, so
        the even/odd column splits are register picks; tl.sum's tree cost W/2 - 1 more instructions a row."""
        if W == 1:
            return tl.fma(tl.reshape(h, [h.shape[0]]), tl.reshape(c, [c.shape[0]]), y)
        else:
            h0, h1 = tl.split(tl.reshape(h, [h.shape[0], W // 2, 2]))
            c0, c1 = tl.split(tl.reshape(c, [c.shape[0], W // 2, 2]))
            return _dot_cols(h1, c1, _dot_cols(h0, c0, y, W // 2), W // 2)

    @triton.jit
    def _softplus(x, FAST: tl.constexpr):
        """torch's softplus (threshold 20), log1p(exp(x)).

        FAST (compiled kernels): the hardware log2 where log1p(e) >= 0.12 (x >= -2), so its 2^-22 absolute
        error stays below 2e-6 relative, and the series e - e^2/2 + ... (8 terms, < 2e-8 relative) below: a
        third of the instructions of libdevice's log, which this loop ran once per channel and step. Else
        (the interpreter): log(u) * e / (u - 1), accurate when e is tiny."""
        e = fast_exp(x, FAST)
        u = 1.0 + e
        if FAST:
            lg = tl.inline_asm_elementwise("lg2.approx.ftz.f32 $0, $1;", "=f,f", [u], dtype=tl.float32,
                                           is_pure=True, pack=1) * 0.6931471805599453
            series = e * (1.0 + e * (-0.5 + e * (0.3333333333333333 + e * (-0.25 + e * (
                0.2 + e * (-0.16666666666666666 + e * (0.14285714285714285 - e * 0.125)))))))
            lp = tl.where(x < -2.0, series, lg)
        else:
            lp = tl.where(u == 1.0, e, tl.log(u) * (e / (u - 1.0)))
        return tl.where(x > 20.0, x, lp)

    @triton.jit
    def _scan_direction_fwd(u_ptr, dt_ptr, z_ptr, b_ptr, c_ptr, out_ptr, ck_ptr,
                            A2, Dv, bias, offs_e, mask_e, offs_n, L, sE,
                            s_ul, s_zl, s_bl, s_ol,
                            REVERSE: tl.constexpr, SAVE: tl.constexpr, GATE: tl.constexpr,
                            CK: tl.constexpr, N: tl.constexpr, BLOCK_E: tl.constexpr, INTERP: tl.constexpr):
        """One direction's recurrence over the whole sequence, one step at a time; step s reads position
        L-1-s when REVERSE. SAVE keeps the state before every CK-th step in ck for the backward pass (slot 0,
        the zero state, is never written). GATE: the output is multiplied by SiLU(z) here (else the add of
        both directions does it, once).
        """
        # Inputs of step s+2 are loaded during step s: two steps of slack hide the load latency. Loads past
        # the end re-read the last position (clamped, so no mask is needed) and are never used.
        u0, dt0, b0, z0, c0 = _load_step(u_ptr, dt_ptr, z_ptr, b_ptr, c_ptr, 0, L, offs_e, mask_e,
                                         offs_n, s_ul, s_zl, s_bl, REVERSE, GATE)
        u1, dt1, b1, z1, c1 = _load_step(u_ptr, dt_ptr, z_ptr, b_ptr, c_ptr, 1, L, offs_e, mask_e,
                                         offs_n, s_ul, s_zl, s_bl, REVERSE, GATE)
        h = tl.zeros([BLOCK_E, N], tl.float32)
        for s in range(L):
            u2, dt2, b2, z2, c2 = _load_step(u_ptr, dt_ptr, z_ptr, b_ptr, c_ptr, s + 2, L, offs_e,
                                             mask_e, offs_n, s_ul, s_zl, s_bl, REVERSE, GATE)
            if REVERSE:
                p = L - 1 - s
            else:
                p = s
            u = u0.to(tl.float32)
            delta = _softplus(dt0.to(tl.float32) + bias, not INTERP)
            h = tl.exp2(delta[:, None] * A2) * h + (delta * u)[:, None] * b0.to(tl.float32)[None, :]
            y = _dot_cols(h, tl.broadcast_to(c0.to(tl.float32)[None, :], (BLOCK_E, N)), Dv * u, N)
            if GATE:
                z = z0.to(tl.float32)
                y = y * (z * fast_sigmoid(z, not INTERP))
            tl.store(out_ptr + p * s_ol + offs_e, y.to(out_ptr.dtype.element_ty), mask=mask_e)
            if SAVE:
                _save_checkpoint(ck_ptr, h, s + 1, L, offs_e, mask_e, offs_n, sE, CK, N)
            u0, dt0, b0, z0, c0 = u1, dt1, b1, z1, c1
            u1, dt1, b1, z1, c1 = u2, dt2, b2, z2, c2

    @triton.jit
    def _save_checkpoint(ck_ptr, h, s, L, offs_e, mask_e, offs_n, sE, CK: tl.constexpr, N: tl.constexpr):
        """Keep h, the state before step s, in slot s // CK when s is a multiple of CK inside the sequence."""
        if s % CK == 0:
            tl.store(ck_ptr + (s // CK) * N * sE + offs_n[None, :] * sE + offs_e[:, None], h,
                     mask=mask_e[:, None] & (s < L))

    @triton.jit
    def _load_step(u_ptr, dt_ptr, z_ptr, b_ptr, c_ptr, s, L, offs_e, mask_e, offs_n,
                   s_ul, s_zl, s_bl, REVERSE: tl.constexpr, GATE: tl.constexpr):
        """Raw inputs of scan step s (clamped to the sequence); z only when the scan gates."""
        if REVERSE:
            p = tl.maximum(L - 1 - s, 0)
        else:
            p = tl.minimum(s, L - 1)
        u = tl.load(u_ptr + p * s_ul + offs_e, mask=mask_e, other=0.0)
        dt = tl.load(dt_ptr + p * s_ul + offs_e, mask=mask_e, other=0.0)
        bv = tl.load(b_ptr + p * s_bl + offs_n)
        if GATE:
            z = tl.load(z_ptr + p * s_zl + offs_e, mask=mask_e, other=0.0)
        else:
            z = u
        cv = tl.load(c_ptr + p * s_bl + offs_n)
        return u, dt, bv, z, cv

    @triton.jit
    def _tile_rows(ptr, c0, L, s_l, rows, offs_e, mask_e, REVERSE: tl.constexpr):
        """The (T, BLOCK_E) tile of rows for scan steps c0 .. c0+T-1 (zeros past the end)."""
        s = c0 + rows
        if REVERSE:
            p = L - 1 - s
        else:
            p = s
        m = (s < L)[:, None] & mask_e[None, :]
        return tl.load(ptr + p[:, None] * s_l + offs_e[None, :], mask=m, other=0.0)

    @triton.jit
    def _row(tile, rows, t: tl.constexpr):
        # Row t of a tile whose rows sit in each thread's registers: the max against -inf folds away,
        # so this is a register pick, not arithmetic.
        return tl.max(tl.where(rows[:, None] == t, tile, float("-inf")), axis=0)

    @triton.jit
    def _prefetch_rows(ptr, s0, L, s_l, offs_e, REVERSE: tl.constexpr, T: tl.constexpr):
        """Ask L2 for the rows of steps s0 .. s0+T-1 of this program's channels (lane l asks for row s0 + l % T;
        a row of 32 channels is one 64-byte piece of a line): a hint, so the loads of those steps find L2 instead
        of DRAM."""
        s = tl.minimum(s0 + tl.arange(0, offs_e.shape[0]) % T, L - 1)
        if REVERSE:
            p = L - 1 - s
        else:
            p = s
        tl.inline_asm_elementwise("prefetch.global.L2 [$1];\n\tmov.u32 $0, 0;", "=r,l",
                                  [ptr + p * s_l + tl.min(offs_e, axis=0)], dtype=tl.int32, is_pure=False, pack=1)

    @triton.jit
    def _prefetch_bc_rows(b_ptr, s0, L, s_bl, lanes, REVERSE: tl.constexpr, T: tl.constexpr, N: tl.constexpr,
                          L1: tl.constexpr):
        """Ask L1 (else L2) for the B and C rows (2N values from b_ptr) of steps s0 .. s0+T-1: lane l asks for
        row s0 + l % T at its first or last value, as a row may straddle two lines. Every program of a sequence
        reads these rows, each on its own SM, so without this each step's B/C loads wait out an L2 hit."""
        s = tl.minimum(s0 + lanes % T, L - 1)
        if REVERSE:
            p = L - 1 - s
        else:
            p = s
        ptr = b_ptr + p * s_bl + ((lanes // T) % 2) * (2 * N - 1)
        if L1:
            tl.inline_asm_elementwise("prefetch.global.L1 [$1];\n\tmov.u32 $0, 0;", "=r,l", [ptr],
                                      dtype=tl.int32, is_pure=False, pack=1)
        else:
            tl.inline_asm_elementwise("prefetch.global.L2 [$1];\n\tmov.u32 $0, 0;", "=r,l", [ptr],
                                      dtype=tl.int32, is_pure=False, pack=1)

    @triton.jit
    def _scan_direction_fwd_tiled(u_ptr, dt_ptr, z_ptr, b_ptr, c_ptr, out_ptr, ck_ptr,
                                  A2, Dv, bias, offs_e, mask_e, offs_n, L, sE,
                                  s_ul, s_zl, s_bl, s_ol,
                                  REVERSE: tl.constexpr, T: tl.constexpr, SAVE: tl.constexpr, GATE: tl.constexpr,
                                  CK: tl.constexpr, PF: tl.constexpr, PFBC: tl.constexpr,
                                  N: tl.constexpr, BLOCK_E: tl.constexpr, INTERP: tl.constexpr):
        """Inference form of :func:`_scan_direction_fwd`: T steps at a time. A chunk's u, dt (and z when GATE)
        arrive as (T, BLOCK_E) tiles loaded one chunk ahead, with L2 prefetches of the u and dt rows PF steps
        further when PF > 0; its outputs leave as one tile store, and no store sits between the unrolled steps,
        so their B/C loads issue early."""
        rows = tl.arange(0, T)
        U = _tile_rows(u_ptr, 0, L, s_ul, rows, offs_e, mask_e, REVERSE)
        DT = _tile_rows(dt_ptr, 0, L, s_ul, rows, offs_e, mask_e, REVERSE)
        Z = _tile_rows(z_ptr, 0, L, s_zl, rows, offs_e, mask_e, REVERSE) if GATE else U
        h = tl.zeros([BLOCK_E, N], tl.float32)
        for c0 in range(0, L, T):
            U1 = _tile_rows(u_ptr, c0 + T, L, s_ul, rows, offs_e, mask_e, REVERSE)
            DT1 = _tile_rows(dt_ptr, c0 + T, L, s_ul, rows, offs_e, mask_e, REVERSE)
            Z1 = _tile_rows(z_ptr, c0 + T, L, s_zl, rows, offs_e, mask_e, REVERSE) if GATE else U1
            if PF > 0 and not INTERP:
                _prefetch_rows(u_ptr, c0 + T + PF, L, s_ul, offs_e, REVERSE, T)
                _prefetch_rows(dt_ptr, c0 + T + PF, L, s_ul, offs_e, REVERSE, T)
            if PFBC > 0 and not INTERP:
                _prefetch_bc_rows(b_ptr, c0 + T + PFBC, L, s_bl, tl.arange(0, BLOCK_E), REVERSE, T, N, True)
            Uf = U.to(tl.float32)
            Delta = _softplus(DT.to(tl.float32) + bias[None, :], not INTERP)
            Y = tl.zeros([T, BLOCK_E], tl.float32)
            for t in tl.static_range(T):
                if REVERSE:
                    p = tl.maximum(L - 1 - (c0 + t), 0)
                else:
                    p = tl.minimum(c0 + t, L - 1)
                bv = tl.load(b_ptr + p * s_bl + offs_n)
                cv = tl.load(c_ptr + p * s_bl + offs_n)
                u = _row(Uf, rows, t)
                delta = _row(Delta, rows, t)
                h = tl.exp2(delta[:, None] * A2) * h + (delta * u)[:, None] * bv[None, :]
                y = _dot_cols(h, tl.broadcast_to(cv[None, :], (BLOCK_E, N)), Dv * u, N)
                Y = tl.where(rows[:, None] == t, y[None, :], Y)
            if GATE:
                Zf = Z.to(tl.float32)
                Y = Y * (Zf * fast_sigmoid(Zf, not INTERP))
            Y = Y.to(out_ptr.dtype.element_ty)
            s = c0 + rows
            if REVERSE:
                po = L - 1 - s
            else:
                po = s
            tl.store(out_ptr + po[:, None] * s_ol + offs_e[None, :], Y, mask=(s < L)[:, None] & mask_e[None, :])
            if SAVE:  # CK is a multiple of T, so chunk ends are the only candidate slots
                _save_checkpoint(ck_ptr, h, c0 + T, L, offs_e, mask_e, offs_n, sE, CK, N)
            U = U1
            DT = DT1
            Z = Z1

    @triton.jit
    def _fwd_direction(u_ptr, dt_ptr, z_ptr, b_ptr, c_ptr, out_ptr, ck_ptr, A2, Dv, bias, offs_e, mask_e, offs_n,
                       L, sE, s_ul, s_zl, s_bl, s_ol,
                       REVERSE: tl.constexpr, N: tl.constexpr, BLOCK_E: tl.constexpr,
                       TILE: tl.constexpr, SAVE: tl.constexpr, GATE: tl.constexpr, CK: tl.constexpr,
                       PF: tl.constexpr, PFBC: tl.constexpr, INTERP: tl.constexpr):
        if TILE > 0:
            _scan_direction_fwd_tiled(u_ptr, dt_ptr, z_ptr, b_ptr, c_ptr, out_ptr, ck_ptr, A2, Dv, bias, offs_e,
                                      mask_e, offs_n, L, sE, s_ul, s_zl, s_bl, s_ol,
                                      REVERSE=REVERSE, T=TILE, SAVE=SAVE, GATE=GATE, CK=CK, PF=PF, PFBC=PFBC, N=N,
                                      BLOCK_E=BLOCK_E, INTERP=INTERP)
        else:
            _scan_direction_fwd(u_ptr, dt_ptr, z_ptr, b_ptr, c_ptr, out_ptr, ck_ptr, A2, Dv, bias, offs_e, mask_e,
                                offs_n, L, sE, s_ul, s_zl, s_bl, s_ol,
                                REVERSE=REVERSE, SAVE=SAVE, GATE=GATE, CK=CK, N=N, BLOCK_E=BLOCK_E, INTERP=INTERP)

    # sE (= E) must not be specialised as a multiple of 16: that keeps (N, E)-major tiles at one element per
    # thread with the 32 lanes over channels and all N states in registers (no shuffles, no layout converts).
    # The row strides are not specialised either, for the same reason on (T, BLOCK_E) tiles.
    @triton.jit(do_not_specialize=["sE", "s_ul", "s_zl", "s_ol"])
    def _bimamba_fwd_kernel(uf_ptr, ub_ptr, dtf_ptr, dtb_ptr, z_ptr, bf_ptr, bb_ptr,
                            A_ptr, D_ptr, bias_ptr, out_ptr, ck_ptr,
                            L, E, sE, NCK, s_ub, s_ul, s_zb, s_zl, s_bfb, s_bfl, s_bbb, s_bbl, s_ob, s_ol, s_od,
                            N: tl.constexpr, BLOCK_E: tl.constexpr, TILE: tl.constexpr,
                            SAVE: tl.constexpr, GATE: tl.constexpr, CK: tl.constexpr, PF: tl.constexpr,
                            PFBC: tl.constexpr, INTERP: tl.constexpr):
        """One program per (channel block, sequence, direction): program_id(2) is the direction, and each
        writes its own output (s_od apart). Running the two directions one after the other in one program,
        the second adding to the first's output, was twice as slow: the loop is latency-bound and wants
        programs; interleaving them a tiled chunk of each at a time was 9-15% slower (150-170 registers, so
        fewer resident warps than the independent work it adds). SAVE (training) keeps every CK-th state in ck
        for the backward pass, so that it does not rerun the whole recurrence first.

        The two outputs are added (and gated, unless GATE) by one pass afterwards. Adding them here instead, in
        the program of a pair that finishes second (a counter per pair, after a fence), was slower: 1.42 against
        1.36 ms (H200, B=32), as that pass competes with the scans for issue slots."""
        pid_e = tl.program_id(0)
        b = tl.program_id(1).to(tl.int64)  # b * (L * 2E) passes 2^31 at 64 frames from batch 75
        d = tl.program_id(2)
        offs_e = pid_e * BLOCK_E + tl.arange(0, BLOCK_E)
        mask_e = offs_e < E
        offs_n = tl.arange(0, N)
        a_off = offs_n[None, :] * sE + offs_e[:, None]  # (N, E)-major: lanes run over channels
        A2 = tl.load(A_ptr + d * N * sE + a_off, mask=mask_e[:, None], other=0.0) * 1.4426950408889634
        Dv = tl.load(D_ptr + d * E + offs_e, mask=mask_e, other=0.0)
        bias = tl.load(bias_ptr + d * E + offs_e, mask=mask_e, other=0.0)
        ck = ck_ptr + (d * tl.num_programs(1) + b).to(tl.int64) * NCK * N * sE
        if d == 0:
            _fwd_direction(uf_ptr + b * s_ub, dtf_ptr + b * s_ub, z_ptr + b * s_zb, bf_ptr + b * s_bfb,
                           bf_ptr + b * s_bfb + N, out_ptr + b * s_ob, ck, A2, Dv, bias, offs_e, mask_e, offs_n,
                           L, sE, s_ul, s_zl, s_bfl, s_ol, REVERSE=False, N=N, BLOCK_E=BLOCK_E, TILE=TILE,
                           SAVE=SAVE, GATE=GATE, CK=CK, PF=PF, PFBC=PFBC, INTERP=INTERP)
        else:
            _fwd_direction(ub_ptr + b * s_ub, dtb_ptr + b * s_ub, z_ptr + b * s_zb, bb_ptr + b * s_bbb,
                           bb_ptr + b * s_bbb + N, out_ptr + s_od + b * s_ob, ck, A2, Dv, bias, offs_e, mask_e,
                           offs_n, L, sE, s_ul, s_zl, s_bbl, s_ol, REVERSE=True, N=N, BLOCK_E=BLOCK_E, TILE=TILE,
                           SAVE=SAVE, GATE=GATE, CK=CK, PF=PF, PFBC=PFBC, INTERP=INTERP)

    @triton.jit
    def _gated_sum_kernel(y_ptr, z_ptr, out_ptr, L, E, s_yd, s_zb, s_zl,
                          BLOCK_L: tl.constexpr, BLOCK_E: tl.constexpr, INTERP: tl.constexpr):
        """out = (y_f + y_b) * SiLU(z), the two ungated outputs rounded to the I/O dtype as the scan wrote them;
        y: (2, B, L, E) and out (B, L, E) contiguous, z any (B, L, E) view with stride 1 over E."""
        b = tl.program_id(2).to(tl.int64)  # sequence offsets in 64 bits, as in the scan kernels
        offs_l = tl.program_id(0) * BLOCK_L + tl.arange(0, BLOCK_L)
        offs_e = tl.program_id(1) * BLOCK_E + tl.arange(0, BLOCK_E)
        m = (offs_l < L)[:, None] & (offs_e < E)[None, :]
        off = offs_l[:, None] * E + offs_e[None, :]
        seq = b * L * E
        yf = tl.load(y_ptr + seq + off, mask=m, other=0.0).to(tl.float32)
        yb = tl.load(y_ptr + s_yd + seq + off, mask=m, other=0.0).to(tl.float32)
        z = tl.load(z_ptr + b * s_zb + offs_l[:, None] * s_zl + offs_e[None, :], mask=m, other=0.0).to(tl.float32)
        y = (yf + yb) * (z * fast_sigmoid(z, not INTERP))
        tl.store(out_ptr + seq + off, y.to(out_ptr.dtype.element_ty), mask=m)

    @triton.jit
    def _step_position(s, L, mask_e, REVERSE: tl.constexpr):
        """The row of scan step s (position L-1-s when REVERSE), whether it exists, and the channel mask."""
        valid = s < L
        if REVERSE:
            p = L - 1 - s
        else:
            p = s
        return p, valid, mask_e & valid

    @triton.jit
    def _bwd_rows(u_ptr, dt_ptr, b_ptr, s, L, offs_e, mask_e, offs_n, n_true, s_ul, s_bl, REVERSE: tl.constexpr):
        """u and dt (fp32) and the B row of scan step s; zeros past the end of the sequence."""
        p, valid, m = _step_position(s, L, mask_e, REVERSE)
        u = tl.load(u_ptr + p * s_ul + offs_e, mask=m, other=0.0).to(tl.float32)
        dt = tl.load(dt_ptr + p * s_ul + offs_e, mask=m, other=0.0).to(tl.float32)
        bv = tl.load(b_ptr + p * s_bl + offs_n, mask=n_true & valid, other=0.0).to(tl.float32)
        return u, dt, bv

    @triton.jit
    def _bwd_adjoint_rows(z_ptr, g_ptr, c_ptr, scr_ptr, s, j, L, offs_e, mask_e, offs_n, n_true, scr_tile,
                          s_ul, s_zl, s_bl, REVERSE: tl.constexpr, N: tl.constexpr, BLOCK_E: tl.constexpr):
        """What the adjoint step s needs beyond :func:`_bwd_rows`: z, the output gradient g, the C row and the
        state before the step (scratch slot j)."""
        p, valid, m = _step_position(s, L, mask_e, REVERSE)
        z = tl.load(z_ptr + p * s_zl + offs_e, mask=m, other=0.0).to(tl.float32)
        g = tl.load(g_ptr + p * s_ul + offs_e, mask=m, other=0.0).to(tl.float32)
        cv = tl.load(c_ptr + p * s_bl + offs_n, mask=n_true & valid, other=0.0).to(tl.float32)
        h_prev = tl.load(scr_ptr + j * N * BLOCK_E + scr_tile)
        return z, g, cv, h_prev

    @triton.jit
    def _shfl_xor(x, lane, OFF: tl.constexpr, INTERP: tl.constexpr):
        """Row l receives row (l ^ OFF) of x (32, V): with one row per lane, a warp-wide butterfly exchange.
        The interpreter, which runs no PTX, gathers the rows instead."""
        if INTERP:
            return tl.gather(x, (lane ^ OFF) + tl.zeros(x.shape, tl.int32), 0)
        else:
            xi = x.to(tl.int32, bitcast=True)
            yi = tl.inline_asm_elementwise("shfl.sync.bfly.b32 $0, $1, $2, 31, -1;", "=r,r,r",
                                           [xi, tl.full(xi.shape, OFF, tl.int32)], dtype=tl.int32, is_pure=True,
                                           pack=1)
            return yi.to(tl.float32, bitcast=True)

    @triton.jit
    def _fold(x, lane, OFF: tl.constexpr, INTERP: tl.constexpr):
        """One reduce-scatter round over lanes: x (32, V) -> (32, V/2). Lanes with bit OFF set keep the odd
        elements and hand the even ones to their partner, which does the opposite; each adds what it gets."""
        lo, hi = tl.split(tl.reshape(x, [x.shape[0], x.shape[1] // 2, 2]))
        up = (lane & OFF) != 0
        return tl.where(up, hi, lo) + _shfl_xor(tl.where(up, lo, hi), lane, OFF, INTERP)

    @triton.jit
    def _add_bc_rows(dB_ptr, dC_ptr, dB_row, dC_row, p, valid, offs_n, n_true, s_bl,
                     SHFL: tl.constexpr, INTERP: tl.constexpr, BLOCK_E: tl.constexpr, N: tl.constexpr):
        """Add one step's dB and dC rows, summed over this program's channels, to the global ones.

        dB_row, dC_row: (BLOCK_E, N) per-channel terms. With SHFL (32 channels, one per lane, N = 16) the 32
        sums are a reduce-scatter: five butterfly rounds leave lane l with output bitreverse(l), 31 shuffles
        and one 32-lane atomic, where two tree sums cost 160 shuffles and the sums land on every lane."""
        if SHFL:
            lane = tl.arange(0, BLOCK_E)[:, None]
            x = tl.reshape(tl.join(dB_row, dC_row), [BLOCK_E, 2 * N])  # element 2n + (0: B, 1: C)
            for r in tl.static_range(5):
                x = _fold(x, lane, 16 >> r, INTERP)
            ln = tl.arange(0, BLOCK_E)
            n = ((ln & 1) << 3) | ((ln & 2) << 1) | ((ln & 4) >> 1) | ((ln & 8) >> 3)
            to_c = (ln & 16) != 0
            ptr = tl.where(to_c, dC_ptr + p * s_bl + n, dB_ptr + p * s_bl + n)
            tl.atomic_add(ptr, tl.reshape(x, [BLOCK_E]), mask=valid, sem="relaxed")
        else:
            tl.atomic_add(dB_ptr + p * s_bl + offs_n, tl.sum(dB_row, axis=0), mask=n_true & valid, sem="relaxed")
            tl.atomic_add(dC_ptr + p * s_bl + offs_n, tl.sum(dC_row, axis=0), mask=n_true & valid, sem="relaxed")

    @triton.jit
    def _scan_direction_bwd(u_ptr, dt_ptr, z_ptr, g_ptr, b_ptr, c_ptr, ck_ptr, scr_ptr,
                            du_ptr, ddt_ptr, dz_ptr, dB_ptr, dC_ptr, dA_ptr, dD_ptr, dbias_ptr,
                            A, Dv, bias, offs_e, mask_e, offs_n, L, sE, NCK,
                            s_ul, s_zl, s_bl,
                            REVERSE: tl.constexpr, CK: tl.constexpr, N: tl.constexpr, BLOCK_E: tl.constexpr,
                            SHFL: tl.constexpr, PF: tl.constexpr, INTERP: tl.constexpr):
        A2 = A * 1.4426950408889634
        n_true = offs_n < N
        tile = offs_n[None, :] * sE + offs_e[:, None]  # (N, E)-major, like A and the checkpoints
        # This program's own scratch, (CK, N, BLOCK_E): slot offsets are constants, so the 16 loads or stores of
        # a step share one address (immediate offsets), no masks (padded channels hold zeros, unused).
        scr_tile = offs_n[None, :] * BLOCK_E + tl.arange(0, BLOCK_E)[:, None]
        dh_prop = tl.zeros([BLOCK_E, N], tl.float32)  # a_{s+1} * dh_{s+1}, carried backwards
        dA_acc = tl.zeros([BLOCK_E, N], tl.float32)
        dD_acc = tl.zeros([BLOCK_E], tl.float32)
        dbias_acc = tl.zeros([BLOCK_E], tl.float32)
        for i in range(NCK):
            c = NCK - 1 - i
            s0 = c * CK
            h = tl.load(ck_ptr + c * N * sE + tile, mask=mask_e[:, None] & (c > 0), other=0.0)
            # Pass 1: this chunk's per-step states into scratch, from the forward's checkpoint. Each step's rows
            # are loaded one step ahead (here and in pass 2): a load waited for in the step that uses it left
            # the loop latency-bound.
            u_n, dt_n, bv_n = _bwd_rows(u_ptr, dt_ptr, b_ptr, s0, L, offs_e, mask_e, offs_n, n_true, s_ul, s_bl,
                                        REVERSE)
            for j in range(CK):
                u = u_n
                dt = dt_n
                bv = bv_n
                u_n, dt_n, bv_n = _bwd_rows(u_ptr, dt_ptr, b_ptr, s0 + j + 1, L, offs_e, mask_e, offs_n, n_true,
                                            s_ul, s_bl, REVERSE)
                delta = _softplus(dt + bias, not INTERP)
                tl.store(scr_ptr + j * N * BLOCK_E + scr_tile, h)  # the state before step s
                h = tl.exp2(delta[:, None] * A2) * h + (delta * u)[:, None] * bv[None, :]
            tl.debug_barrier()
            # Pass 2: the adjoint recurrence, last step of the chunk first.
            u_n, dt_n, bv_n = _bwd_rows(u_ptr, dt_ptr, b_ptr, s0 + CK - 1, L, offs_e, mask_e, offs_n, n_true,
                                        s_ul, s_bl, REVERSE)
            z_n, g_n, cv_n, hp_n = _bwd_adjoint_rows(z_ptr, g_ptr, c_ptr, scr_ptr, s0 + CK - 1, CK - 1, L, offs_e,
                                                     mask_e, offs_n, n_true, scr_tile, s_ul, s_zl, s_bl,
                                                     REVERSE, N, BLOCK_E)
            for jj in range(CK):
                j = CK - 1 - jj
                p, valid, m = _step_position(s0 + j, L, mask_e, REVERSE)
                u = u_n
                dt = dt_n
                bv = bv_n
                z = z_n
                g = g_n
                cv = cv_n
                h_prev = hp_n
                jn = tl.maximum(j - 1, 0)  # the next step down; at the chunk's first step a harmless re-read
                u_n, dt_n, bv_n = _bwd_rows(u_ptr, dt_ptr, b_ptr, s0 + jn, L, offs_e, mask_e, offs_n, n_true,
                                            s_ul, s_bl, REVERSE)
                z_n, g_n, cv_n, hp_n = _bwd_adjoint_rows(z_ptr, g_ptr, c_ptr, scr_ptr, s0 + jn, jn, L, offs_e,
                                                         mask_e, offs_n, n_true, scr_tile, s_ul, s_zl, s_bl,
                                                         REVERSE, N, BLOCK_E)
                xb = dt + bias
                delta = _softplus(xb, not INTERP)
                a = tl.exp2(delta[:, None] * A2)
                zs = fast_sigmoid(z, not INTERP)
                dy = g * z * zs
                dh = dh_prop + dy[:, None] * cv[None, :]
                du_ = delta * u
                hb = a * h_prev  # not h - delta*u*B, which cancels when a is small
                h = hb + du_[:, None] * bv[None, :]
                # dA = dh delta hb and ddelta = sum(dh (B u + A hb)), sharing q = dh hb and sum(dh B) with du.
                q = dh * hb
                dA_acc += q * delta[:, None]
                s_b = tl.sum(dh * bv[None, :], axis=1)
                ddelta = s_b * u + tl.sum(q * A2, axis=1) * 0.6931471805599453  # A = A2 ln 2
                du = s_b * delta + dy * Dv
                # tl.sum here, not _dot_cols: at 255 registers the chains made the step longer (510 -> 549 SASS)
                y = tl.sum(h * cv[None, :], axis=1) + Dv * u
                dz = g * y * zs * (1.0 + z * (1.0 - zs))
                ddt = ddelta * fast_sigmoid(xb, not INTERP)
                dD_acc += dy * u
                dbias_acc += tl.where(m, ddt, 0.0)
                tl.store(du_ptr + p * s_ul + offs_e, du.to(du_ptr.dtype.element_ty), mask=m)
                tl.store(ddt_ptr + p * s_ul + offs_e, ddt.to(ddt_ptr.dtype.element_ty), mask=m)
                tl.store(dz_ptr + p * s_ul + offs_e, dz.to(dz_ptr.dtype.element_ty), mask=m)
                _add_bc_rows(dB_ptr, dC_ptr, dh * du_[:, None], h * dy[:, None], p, valid, offs_n, n_true, s_bl,
                             SHFL, INTERP, BLOCK_E, N)
                dh_prop = a * dh
            tl.debug_barrier()
            if PF and not INTERP:  # the rows of the chunk after next into L2: its first loads come from DRAM otherwise
                sn = tl.maximum(s0 - 2 * CK, 0)
                _prefetch_rows(u_ptr, sn, L, s_ul, offs_e, REVERSE, CK)
                _prefetch_rows(dt_ptr, sn, L, s_ul, offs_e, REVERSE, CK)
                _prefetch_rows(z_ptr, sn, L, s_zl, offs_e, REVERSE, CK)
                _prefetch_rows(g_ptr, sn, L, s_ul, offs_e, REVERSE, CK)
                _prefetch_bc_rows(b_ptr, sn, L, s_bl, tl.arange(0, BLOCK_E), REVERSE, CK, N, False)
        tl.atomic_add(dA_ptr + tile, dA_acc, mask=mask_e[:, None], sem="relaxed")
        tl.atomic_add(dD_ptr + offs_e, dD_acc, mask=mask_e, sem="relaxed")
        tl.atomic_add(dbias_ptr + offs_e, dbias_acc, mask=mask_e, sem="relaxed")

    @triton.jit(do_not_specialize=["sE", "scr_pad"])
    def _bimamba_bwd_kernel(uf_ptr, ub_ptr, dtf_ptr, dtb_ptr, z_ptr, g_ptr, bf_ptr, bb_ptr,
                            A_ptr, D_ptr, bias_ptr, ck_ptr, scr_ptr,
                            duf_ptr, dub_ptr, ddtf_ptr, ddtb_ptr, dz_ptr, dB_ptr,
                            dA_ptr, dD_ptr, dbias_ptr,
                            L, E, sE, NCK, s_ub, s_ul, s_zb, s_zl, s_bfb, s_bfl, s_bbb, s_bbl, s_dzd, scr_pad,
                            N: tl.constexpr, CK: tl.constexpr, BLOCK_E: tl.constexpr, SHFL: tl.constexpr,
                            PF: tl.constexpr, INTERP: tl.constexpr):
        pid_e = tl.program_id(0)
        b = tl.program_id(1).to(tl.int64)  # b * (L * 2E) passes 2^31 at 64 frames from batch 75
        d = tl.program_id(2)
        B = tl.num_programs(1)
        offs_e = pid_e * BLOCK_E + tl.arange(0, BLOCK_E)
        mask_e = offs_e < E
        offs_n = tl.arange(0, N)
        a_off = offs_n[None, :] * sE + offs_e[:, None]
        A = tl.load(A_ptr + d * N * sE + a_off, mask=mask_e[:, None], other=0.0)
        Dv = tl.load(D_ptr + d * E + offs_e, mask=mask_e, other=0.0)
        bias = tl.load(bias_ptr + d * E + offs_e, mask=mask_e, other=0.0)
        ck = ck_ptr + (d * B + b).to(tl.int64) * NCK * N * sE
        # scr_pad (0, never specialised) hides the scratch's alignment from the compiler, which would otherwise
        # vectorise its rows over channels and convert every tile to and from the lanes-over-channels layout.
        scr = scr_ptr + ((d * B + b) * tl.num_programs(0) + pid_e).to(tl.int64) * CK * N * BLOCK_E + scr_pad
        # [B | C] rows: C sits N past B, so both rows of a step load from one address (immediate offsets).
        dBC = (d * B + b).to(tl.int64) * s_bfb  # d(B|C) has the layout of B|C
        if d == 0:
            _scan_direction_bwd(uf_ptr + b * s_ub, dtf_ptr + b * s_ub, z_ptr + b * s_zb, g_ptr + b * s_ub,
                                bf_ptr + b * s_bfb, bf_ptr + b * s_bfb + N, ck, scr,
                                duf_ptr + b * s_ub, ddtf_ptr + b * s_ub, dz_ptr + b * s_ub,
                                dB_ptr + dBC, dB_ptr + dBC + N, dA_ptr, dD_ptr, dbias_ptr,
                                A, Dv, bias, offs_e, mask_e, offs_n, L, sE, NCK, s_ul, s_zl, s_bfl,
                                REVERSE=False, CK=CK, N=N, BLOCK_E=BLOCK_E, SHFL=SHFL, PF=PF,
                                INTERP=INTERP)
        else:
            _scan_direction_bwd(ub_ptr + b * s_ub, dtb_ptr + b * s_ub, z_ptr + b * s_zb, g_ptr + b * s_ub,
                                bb_ptr + b * s_bbb, bb_ptr + b * s_bbb + N, ck, scr,
                                dub_ptr + b * s_ub, ddtb_ptr + b * s_ub, dz_ptr + s_dzd + b * s_ub,
                                dB_ptr + dBC, dB_ptr + dBC + N, dA_ptr + N * sE, dD_ptr + E, dbias_ptr + E,
                                A, Dv, bias, offs_e, mask_e, offs_n, L, sE, NCK, s_ul, s_zl, s_bbl,
                                REVERSE=True, CK=CK, N=N, BLOCK_E=BLOCK_E, SHFL=SHFL, PF=PF,
                                INTERP=INTERP)

# Launch settings; one warp per 32 channels keeps enough programs resident to hide the per-step latency.
FWD_BLOCK_E = 32
FWD_WARPS = 1
FWD_TILE = 4  # steps per chunk of tile loads in the forward kernel (4: 1.18-1.20 vs 1.23-1.24 ms for 2); 0 = one
# step at a time
# SiLU(z) applied by each direction's scan and the outputs added (True: the reference's rounding, each direction
# rounded after its gate), or once in the add (False: 2 of the 20 MUFU operations of a scan step saved)
FWD_GATE_IN_SCAN = False
# Tiled forward: L1 prefetch of the B/C rows this many steps past the next tile; 0 = none. Every channel block
# of a sequence reads the same rows from its own SM, so each step's B/C loads were L2 hits the warps waited on
# (ncu: 47% of stall cycles): VideoMamba-M 8 frames 605 vs 561 clips/s on an H200 (16 steps: 606).
FWD_PREFETCH_BC = 8
FWD_PREFETCH = 32  # tiled forward: L2 prefetch of the u and dt rows this many steps past the next tile; 0 = none
# (tile 4 on one H200: 1.24 ms with it, 1.40-1.43 without; on another tile 4 without was already 1.18-1.20)
FWD_MAXNREG = 168  # a register cap: resident warps for this latency-bound loop. H200, before the B/C prefetch:
# 1.64 vs 2.55 ms uncapped at 96; with it, 128 over 96 (scan at B=64 1.92 vs 2.02-2.17 ms); then 168 (12 warps an
# SM; no stack at any cap from 112 up) over 112, 128, 144 and 160 at every shape tried, ABAB in one run: B=32/64 x
# L=1569/3137/12545 the scan 1-5% faster than 128 and 0.5-1% than 160 (B=32 at 64 frames 7.97 ms; 8.39 at 128,
# 8.01 at 160)
# The backward asks L2 for the rows (u, dt, z, g, B/C) of the chunk after next as it ends a chunk: training step
# at batch 32 350 vs 356 ms (H200). Asked for at a chunk's start instead, the reverse direction's adjoint step
# took 40 more instructions (register moves; benchmarks/kernel_sass.py).
BWD_PREFETCH = True
BWD_BLOCK_E = 32
BWD_WARPS = 1
# The forward keeps every BWD_CK-th state for the backward (a multiple of FWD_TILE): at 16, fwd+bwd 9.4 ms vs
# 10.2 at 32 (H200), for 15 MB a layer and clip at 8 frames.
BWD_CK = 16
BWD_SHFL = True  # dB/dC rows summed over channels by a shuffle reduce-scatter (N = 16, 32-channel blocks)
PROJ_ALIGN = 8  # x_proj/dt_proj rank padded to a multiple of this (see _aligned_projections); 1 = none
BWD_MAXNREG = None  # with the loads one step ahead a cap spills: 25.4 ms fwd+bwd at 96 vs 13.9 uncapped (H200)


def _builds_graph(*tensors) -> bool:
    """Whether a backward can follow: only then does the forward keep state checkpoints. Inside
    ``Function.forward`` neither grad mode nor ``ctx.needs_input_grad`` tells (the latter is True under
    ``torch.no_grad()`` for inputs that require grad), so the caller asks."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _launch_fwd(uf, ub, dtf, dtb, z, bcf, bcb, A, D, bias, ck_interval: int = 0) -> Tuple[Tensor, Optional[Tensor]]:
    """The summed output and, when ``ck_interval`` > 0, the (2, B, L / interval, N, E) fp32 checkpoints."""
    Bsz, L, E = uf.shape
    N = A.shape[1]
    # Each direction writes its own (B, L, E), gated or not (FWD_GATE_IN_SCAN), and one pass adds them.
    out = torch.empty((2, Bsz, L, E), device=uf.device, dtype=uf.dtype)
    save = ck_interval > 0
    if save and FWD_TILE and ck_interval % FWD_TILE:
        raise ValueError(f"BWD_CK={ck_interval} must be a multiple of FWD_TILE={FWD_TILE}")
    nck = triton.cdiv(L, ck_interval) if save else 1
    ck = torch.empty((2, Bsz, nck, N, E), device=uf.device, dtype=torch.float32) if save else out
    grid = (triton.cdiv(E, FWD_BLOCK_E), Bsz, 2)
    _bimamba_fwd_kernel[grid](
        uf, ub, dtf, dtb, z, bcf, bcb, A, D, bias, out, ck,
        L, E, E, nck, uf.stride(0), uf.stride(1), z.stride(0), z.stride(1),
        bcf.stride(0), bcf.stride(1), bcb.stride(0), bcb.stride(1), out.stride(1), out.stride(2), out.stride(0),
        N=N, BLOCK_E=FWD_BLOCK_E, TILE=FWD_TILE, SAVE=save, GATE=FWD_GATE_IN_SCAN, CK=max(ck_interval, 1),
        PF=FWD_PREFETCH, PFBC=FWD_PREFETCH_BC, INTERP=interpreting(), num_warps=FWD_WARPS,
        **({"maxnreg": FWD_MAXNREG} if FWD_MAXNREG else {}),
    )
    if FWD_GATE_IN_SCAN:
        return torch.add(out[0], out[1]), (ck if save else None)
    total = torch.empty((Bsz, L, E), device=uf.device, dtype=uf.dtype)
    _gated_sum_kernel[(triton.cdiv(L, 16), triton.cdiv(E, 256), Bsz)](
        out, z, total, L, E, out.stride(0), z.stride(0), z.stride(1),
        BLOCK_L=16, BLOCK_E=256, INTERP=interpreting(), num_warps=4)
    return total, (ck if save else None)


def _bwd_shfl(N: int) -> bool:
    """Whether the backward sums dB/dC with the shuffle reduce-scatter: it needs one warp of 32 channels (one
    per lane) and 2N = 32 outputs a step."""
    return BWD_SHFL and N == 16 and BWD_BLOCK_E == 32 and BWD_WARPS == 1


def _launch_bwd(g, uf, ub, dtf, dtb, z, bcf, bcb, A, D, bias, ck, ck_interval: int, dz_out=None):
    """Every gradient of the scan; dz (the two directions' terms summed) goes into ``dz_out`` when given."""
    Bsz, L, E = uf.shape
    N = A.shape[1]
    dev = uf.device
    n_eb = triton.cdiv(E, BWD_BLOCK_E)
    nck = ck.shape[2]
    f32 = dict(device=dev, dtype=torch.float32)
    scratch = torch.empty((2, Bsz, n_eb, ck_interval, N, BWD_BLOCK_E), **f32)  # one block per program
    du_f, du_b = torch.empty_like(uf), torch.empty_like(ub)
    ddt_f, ddt_b = torch.empty_like(dtf), torch.empty_like(dtb)
    dz = torch.empty((2, Bsz, L, E), device=dev, dtype=z.dtype)  # per direction, summed below
    dbc = torch.zeros((2, Bsz, L, 2 * N), **f32)  # per direction, the layout of B|C
    dA = torch.zeros((2, N, E), **f32)
    dD = torch.zeros((2, E), **f32)
    dbias = torch.zeros((2, E), **f32)
    grid = (n_eb, Bsz, 2)
    _bimamba_bwd_kernel[grid](
        uf, ub, dtf, dtb, z, g, bcf, bcb, A, D, bias, ck, scratch,
        du_f, du_b, ddt_f, ddt_b, dz, dbc, dA, dD, dbias,
        L, E, E, nck, uf.stride(0), uf.stride(1), z.stride(0), z.stride(1),
        bcf.stride(0), bcf.stride(1), bcb.stride(0), bcb.stride(1), dz.stride(0), 0,
        N=N, CK=ck_interval, BLOCK_E=BWD_BLOCK_E, num_warps=BWD_WARPS,
        SHFL=_bwd_shfl(N), PF=BWD_PREFETCH, INTERP=interpreting(),
        **({"maxnreg": BWD_MAXNREG} if BWD_MAXNREG else {}),
    )
    return du_f, du_b, ddt_f, ddt_b, torch.add(dz[0], dz[1], out=dz_out), dbc, dA, dD, dbias


class _BiScanFn(torch.autograd.Function):
    """uf, ub, dtf, dtb, z: (B, L, E); bcf, bcb: (B, L, 2N) fp32 contiguous ([B | C], so a time step's
    B and C rows are two aligned 64-byte vector loads); A: (2, N, E); D, bias: (2, E) fp32."""

    @staticmethod
    def forward(ctx, uf, ub, dtf, dtb, z, bcf, bcb, A, D, bias, training):
        ctx.ck_interval = BWD_CK if training else 0
        out, ck = _launch_fwd(uf, ub, dtf, dtb, z, bcf, bcb, A, D, bias, ctx.ck_interval)
        ctx.save_for_backward(uf, ub, dtf, dtb, z, bcf, bcb, A, D, bias, ck)
        return out

    @staticmethod
    def backward(ctx, g):
        uf, ub, dtf, dtb, z, bcf, bcb, A, D, bias, ck = ctx.saved_tensors
        du_f, du_b, ddt_f, ddt_b, dz, dbc, dA, dD, dbias = _launch_bwd(
            g.contiguous(), uf, ub, dtf, dtb, z, bcf, bcb, A, D, bias, ck, ctx.ck_interval)
        return du_f, du_b, ddt_f, ddt_b, dz, dbc[0], dbc[1], dA, dD, dbias, None


def _scan_bc(u_f, u_b, dt_f, dt_b, z, bc_f, bc_b, A, D, delta_bias) -> Tensor:
    """:func:`bimamba_scan` with B and C already side by side: ``bc_*`` (B, L, 2N) = [B | C]."""
    uf, ub = u_f.contiguous(), u_b.contiguous()
    dtf = dt_f if dt_f.stride() == uf.stride() else dt_f.contiguous()
    dtb = dt_b if dt_b.stride() == uf.stride() else dt_b.contiguous()
    z = check_rows(z)
    bcf = bc_f.float().contiguous()
    bcb = bc_b.float().contiguous()
    A_ne = A.float().transpose(1, 2).contiguous()  # (2, N, E): the kernels' lanes run over channels
    D, delta_bias = D.float().contiguous(), delta_bias.float().contiguous()
    with on_device_of(uf):
        return _BiScanFn.apply(uf, ub, dtf, dtb, z, bcf, bcb, A_ne, D, delta_bias,
                               _builds_graph(uf, ub, dtf, dtb, z, bcf, bcb, A_ne, D, delta_bias))


def bimamba_scan(u_f: Tensor, u_b: Tensor, dt_f: Tensor, dt_b: Tensor, z: Tensor,
                 B_f: Tensor, C_f: Tensor, B_b: Tensor, C_b: Tensor,
                 A: Tensor, D: Tensor, delta_bias: Tensor) -> Tensor:
    """Both directions of the selective scan in one launch, channel-last.

    ``u_*``, ``dt_*`` (raw delta, before bias and softplus) and ``z``: (B, L, E); ``B_*``, ``C_*``: (B, L, N);
    ``A``: (2, E, N) (already ``-exp(A_log)``), ``D`` and ``delta_bias``: (2, E); index 0 is the forward
    direction, 1 the backward one, which reads position L-1-s at step s. Returns (B, L, E)::

        y = SiLU(z) * (scan_fwd(u_f) + D_f u_f) + SiLU(z) * (scan_bwd(u_b) + D_b u_b)

    Differentiable in every argument. Example (needs a CUDA GPU)::

        >>> if is_available():
        ...     t = lambda *s: torch.randn(*s, device="cuda")
        ...     y = bimamba_scan(t(1, 9, 32), t(1, 9, 32), t(1, 9, 32), t(1, 9, 32), t(1, 9, 32),
        ...                      t(1, 9, 16), t(1, 9, 16), t(1, 9, 16), t(1, 9, 16),
        ...                      -t(2, 32, 16).exp(), t(2, 32), t(2, 32))
        ...     assert y.shape == (1, 9, 32)
    """
    _check_bimamba_scan_args("bimamba_scan", u_f, u_b, dt_f, dt_b, z, B_f, C_f, B_b, C_b, A, D, delta_bias)
    _check_d_state(A.shape[-1])
    check_runs_here("bimamba_scan", u_f, "bimamba_scan_ref")
    return _scan_bc(u_f, u_b, dt_f, dt_b, z, torch.cat([B_f, C_f], -1), torch.cat([B_b, C_b], -1),
                    A, D, delta_bias)


def bimamba_scan_ref(u_f: Tensor, u_b: Tensor, dt_f: Tensor, dt_b: Tensor, z: Tensor,
                     B_f: Tensor, C_f: Tensor, B_b: Tensor, C_b: Tensor,
                     A: Tensor, D: Tensor, delta_bias: Tensor) -> Tensor:
    """:func:`bimamba_scan` in plain PyTorch (two :func:`vmm.ops.selective_scan_ref` calls, any device and
    d_state), with the same arguments and result: the oracle the kernel is tested against.

    >>> t = lambda *s: torch.randn(*s)
    >>> bimamba_scan_ref(t(1, 9, 32), t(1, 9, 32), t(1, 9, 32), t(1, 9, 32), t(1, 9, 32),
    ...                  t(1, 9, 16), t(1, 9, 16), t(1, 9, 16), t(1, 9, 16),
    ...                  -t(2, 32, 16).exp(), t(2, 32), t(2, 32)).shape
    torch.Size([1, 9, 32])
    """
    from vmm.ops.selective_scan import selective_scan_ref
    _check_bimamba_scan_args("bimamba_scan_ref", u_f, u_b, dt_f, dt_b, z, B_f, C_f, B_b, C_b, A, D, delta_bias)
    # .mT: channel-last (B, L, X) <-> selective_scan's (B, X, L), as views
    y = [selective_scan_ref(u.mT, dt.mT, A[d], Bm.mT, Cm.mT, D[d], z.mT, delta_bias[d], delta_softplus=True,
                            reverse=d == 1)
         for d, (u, dt, Bm, Cm) in enumerate(((u_f, dt_f, B_f, C_f), (u_b, dt_b, B_b, C_b)))]
    return (y[0] + y[1]).mT


def _check_bimamba_scan_args(fn: str, *tensors: Tensor) -> None:
    """Shapes, types and devices of :func:`bimamba_scan`'s arguments. The kernel reads them through raw strides,
    so a wrong channel count or a (E,) D was read out of bounds without any error."""
    names = ("u_f", "u_b", "dt_f", "dt_b", "z", "B_f", "C_f", "B_b", "C_b", "A", "D", "delta_bias")
    check_float_tensors(fn, dict(zip(names, tensors)))
    u_f, A = tensors[0], tensors[9]
    if u_f.dim() != 3 or A.dim() != 3 or A.shape[:2] != (2, u_f.shape[-1]):
        raise VmmError(f"{fn}: u_f must be (batch, length, channels) and A (2, channels, state), got "
                       f"{tuple(u_f.shape)} and {tuple(A.shape)}")
    Bsz, L, E = u_f.shape
    expected = [(Bsz, L, E)] * 5 + [(Bsz, L, A.shape[-1])] * 4 + [tuple(A.shape), (2, E), (2, E)]
    check_shapes(fn, f"for u_f of shape {tuple(u_f.shape)} and A of shape {tuple(A.shape)}",
                 {name: (t, shape) for name, t, shape in zip(names, tensors, expected)})


def _check_d_state(d_state: int) -> None:
    why_not = unsupported_layer(d_state)
    if why_not is not None:  # else a Triton compile error about arange, from deep inside the launch
        raise VmmError(f"the fused Triton bimamba kernels cannot run a layer with {why_not}; use "
                       f"vmm.ops.bimamba.bimamba_inner_xz, which runs such a layer with the reference backend")


def _aligned_projections(x_proj_w: Tensor, dt_proj_w: Tensor) -> Tuple[Tensor, Tensor]:
    """x_proj's rows as [dt rank | zeros | B | C] and dt_proj's columns with zeros, the rank padded to a multiple
    of ``PROJ_ALIGN``: x_dbl rows and the dt GEMM's K then stay 16-byte aligned for bf16, which cuBLAS's
    fast kernels want (VideoMamba-M: R = 36 -> 40, x_dbl 68 -> 72 columns). The results are unchanged."""
    R = dt_proj_w.shape[-1]
    RP = -(-R // PROJ_ALIGN) * PROJ_ALIGN if PROJ_ALIGN > 1 else R
    if RP == R:
        return x_proj_w, dt_proj_w
    pad_x = x_proj_w.new_zeros(*x_proj_w.shape[:-2], RP - R, x_proj_w.shape[-1])
    return (torch.cat([x_proj_w[..., :R, :], pad_x, x_proj_w[..., R:, :]], dim=-2),
            torch.cat([dt_proj_w, dt_proj_w.new_zeros(*dt_proj_w.shape[:-1], RP - R)], dim=-1))


def _projections(xc: Tensor, x_proj_w: Tensor, dt_proj_w: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """x_proj and dt_proj of both directions (weights from :func:`_aligned_projections`, rank R) on the conv
    outputs xc (2, B, L, E): x_dbl (2, B*L, R + 2N), dt (2, B, L, E) and [B | C] (2, B, L, 2N) fp32. Each
    projection is one batched GEMM for both directions: 0.336 against 0.364 ms for two launches each
    (VideoMamba-M, B=64, H200); a Triton kernel for the rank-R dt_proj took 0.34 against cuBLAS's 0.18 ms."""
    x_dbl = torch.bmm(xc.reshape(2, -1, xc.shape[-1]), x_proj_w.transpose(1, 2))
    return (x_dbl, *_from_x_dbl(x_dbl, dt_proj_w, xc.shape))


def _from_x_dbl(x_dbl: Tensor, dt_proj_w: Tensor, shape: torch.Size) -> Tuple[Tensor, Tensor]:
    """dt (``shape``, (2, B, L, E)) and the fp32 [B | C] (2, B, L, 2N) of x_dbl (2, B*L, R + 2N): the
    forward's, and what the backward recomputes from the x_dbl it kept."""
    R = dt_proj_w.shape[-1]
    dt = torch.bmm(x_dbl[..., :R], dt_proj_w.transpose(1, 2)).view(shape)
    # The width spelt out, not -1: with no clips or no tokens there is no size for view to infer.
    return dt, x_dbl[..., R:].float().contiguous().view(*shape[:3], x_dbl.shape[-1] - R)


def _conv_pair(x: Tensor, conv_w: Tensor, conv_b: Optional[Tensor]) -> Tensor:
    """Both conv directions of x (B, L, E) as one contiguous (2, B, L, E) tensor."""
    out = torch.empty((2, *x.shape), device=x.device, dtype=x.dtype)
    conv_fwd(x, conv_w, conv_b, out=out)
    return out


class _BiMambaInnerFn(torch.autograd.Function):
    """The whole inner layer on the channel-last in_proj output xz (B, L, 2E): conv, x_proj, dt_proj, scan.

    One node of the autograd graph, so the backward writes the x and z gradients straight into one (B, L, 2E)
    tensor, which is in_proj's output gradient as its GEMM wants it (through autograd, the halves were
    concatenated and then copied to transpose them: 0.8 ms a layer at batch 16 on an H200). The conv outputs
    and dt are recomputed in the backward instead of kept (two cheap launches for 3 x (B, L, E) of memory).
    Weights are stacked per direction: conv_w (2, E, K), conv_b (2, E) or None, x_proj_w (2, R + 2N, E),
    dt_proj_w (2, E, R), dt_bias (2, E), A_log (2, E, N), D (2, E).
    """

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, xz, conv_w, conv_b, x_proj_w, dt_proj_w, dt_bias, A_log, D, training):
        E = xz.shape[-1] // 2
        xc = _conv_pair(xz[..., :E], conv_w, conv_b)
        Wx, Wdt = _aligned_projections(x_proj_w.to(xz.dtype), dt_proj_w.to(xz.dtype))
        xd, dt, bc = _projections(xc, Wx, Wdt)
        A = -torch.exp(A_log.float()).transpose(1, 2).contiguous()  # (2, N, E): the kernels' lanes run over E
        ctx.ck_interval = BWD_CK if training else 0
        out, ck = _launch_fwd(xc[0], xc[1], dt[0], dt[1], xz[..., E:], bc[0], bc[1], A, D.float().contiguous(),
                              dt_bias.float().contiguous(), ctx.ck_interval)
        ctx.save_for_backward(xz, conv_w, conv_b, x_proj_w, dt_proj_w, dt_bias, A_log, D, xd, ck)
        return out

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, g):
        xz, conv_w, conv_b, x_proj_w, dt_proj_w, dt_bias, A_log, D, xd, ck = ctx.saved_tensors
        E = xz.shape[-1] // 2
        R = dt_proj_w.shape[-1]
        x, z = xz[..., :E], xz[..., E:]
        xc = _conv_pair(x, conv_w, conv_b)  # recomputed
        Wx, Wdt = _aligned_projections(x_proj_w.to(xz.dtype), dt_proj_w.to(xz.dtype))
        RP = Wdt.shape[-1]  # the padded rank
        dt, bc = _from_x_dbl(xd, Wdt, xc.shape)
        A = -torch.exp(A_log.float())  # (2, E, N)
        dxz = torch.empty(xz.shape, device=xz.device, dtype=xz.dtype)
        du_f, du_b, ddt_f, ddt_b, _, dbc, dA, dD, dbias = _launch_bwd(
            g.contiguous(), xc[0], xc[1], dt[0], dt[1], z, bc[0], bc[1], A.transpose(1, 2).contiguous(),
            D.float().contiguous(), dt_bias.float().contiguous(), ck, ctx.ck_interval, dz_out=dxz[..., E:])
        dWx, dWdt, dxc = [], [], []
        for d, (du, ddt) in enumerate(((du_f, ddt_f), (du_b, ddt_b))):
            ddt = ddt.reshape(-1, E)
            dWdt.append(ddt.t() @ xd[d][:, :R])
            # d x_dbl; dbc's width spelt out, as an empty batch leaves view no size to infer
            dxd = torch.cat([ddt @ Wdt[d], dbc[d].reshape(ddt.shape[0], dbc.shape[-1]).to(ddt.dtype)], 1)
            dWx_pad = dxd.t() @ xc[d].reshape(-1, E)
            dWx.append(torch.cat([dWx_pad[:R], dWx_pad[RP:]]) if RP > R else dWx_pad)  # the zero rows drop
            dxc.append(torch.addmm(du.reshape(-1, E), dxd, Wx[d]).view(du.shape))
        dw, db = conv_bwd(x, conv_w, conv_b, dxc[0], dxc[1], dxz[..., :E])
        return (dxz, dw.to(conv_w.dtype), None if conv_b is None else db.to(conv_b.dtype),
                torch.stack(dWx).to(x_proj_w.dtype), torch.stack(dWdt).to(dt_proj_w.dtype), dbias.to(dt_bias.dtype),
                (dA.transpose(1, 2) * A).to(A_log.dtype), dD.to(D.dtype), None)


def bimamba_inner_xz_triton(xz: Tensor, fwd, bwd) -> Tensor:
    """The ``triton`` backend of :func:`vmm.ops.bimamba.bimamba_inner_xz`: the layer's inner part on
    ``xz = in_proj(u).transpose(1, 2)`` (B, 2E, L), x its first E channels and z the rest; returns (B, E, L),
    the same as :func:`vmm.ops.bimamba.bimamba_inner_ref` on ``xz.chunk(2, 1)``.

    Fastest when xz is that transposed view of a channel-last tensor: the result is then a transposed view of a
    (B, L, E) tensor, so ``out_proj(y.transpose(1, 2))`` reads it without a copy, and the gradient of xz comes
    back channel-last in one piece. Example (needs a CUDA GPU)::

        >>> if is_available():
        ...     from vmm.ops.bimamba import DirectionWeights
        ...     E, N, R = 64, 16, 4
        ...     t = lambda *s: torch.randn(*s, device="cuda") * 0.5
        ...     w = lambda: DirectionWeights(t(E, 1, 4), t(E), t(R + 2 * N, E), t(E, R), t(E), t(E, N), t(E))
        ...     y = bimamba_inner_xz_triton(t(2, 11, 2 * E).transpose(1, 2), w(), w())
        ...     assert y.shape == (2, E, 11)
    """
    _check_layer_args("bimamba_inner_xz_triton", xz, fwd, bwd)
    return _inner_xz_triton(xz, fwd, bwd)


def _inner_xz_triton(xz: Tensor, fwd, bwd) -> Tensor:
    """:func:`bimamba_inner_xz_triton` for a caller that has run its argument checks already (the layers, through
    :func:`vmm.ops.bimamba.bimamba_inner_xz`): they cost about 10 us, once per layer and clip batch."""
    _check_d_state(fwd.A_log.shape[-1])
    check_runs_here("bimamba_inner_xz_triton", xz, "vmm.ops.bimamba.bimamba_inner_xz(..., backend='reference')")
    xzl = check_rows(xz.transpose(1, 2))  # (B, L, 2E)
    E = xzl.shape[-1] // 2
    conv_w = torch.stack([fwd.conv_weight.reshape(E, -1), bwd.conv_weight.reshape(E, -1)]).float()
    conv_b = None
    if fwd.conv_bias is not None or bwd.conv_bias is not None:
        zero = torch.zeros(E, device=xzl.device, dtype=torch.float32)
        conv_b = torch.stack([fwd.conv_bias.float() if fwd.conv_bias is not None else zero,
                              bwd.conv_bias.float() if bwd.conv_bias is not None else zero])
    args = (xzl, conv_w, conv_b, torch.stack([fwd.x_proj_weight, bwd.x_proj_weight]),
            torch.stack([fwd.dt_proj_weight, bwd.dt_proj_weight]), torch.stack([fwd.dt_proj_bias, bwd.dt_proj_bias]),
            torch.stack([fwd.A_log, bwd.A_log]), torch.stack([fwd.D, bwd.D]))
    with on_device_of(xz):
        return _BiMambaInnerFn.apply(*args, _builds_graph(*args)).transpose(1, 2)


def bimamba_inner_triton(x: Tensor, z: Tensor, fwd, bwd) -> Tensor:
    """The ``triton`` backend of :func:`vmm.ops.bimamba.bimamba_inner`: same contract as
    :func:`vmm.ops.bimamba.bimamba_inner_ref` (x, z: (B, E, L) -> (B, E, L)). It concatenates x and z (one copy)
    and runs :func:`bimamba_inner_xz_triton`, which layers should call on in_proj's output directly.
    Example (needs a CUDA GPU)::

        >>> if is_available():
        ...     from vmm.ops.bimamba import DirectionWeights
        ...     E, N, R = 64, 16, 4
        ...     t = lambda *s: torch.randn(*s, device="cuda") * 0.5
        ...     w = lambda: DirectionWeights(t(E, 1, 4), t(E), t(R + 2 * N, E), t(E, R), t(E), t(E, N), t(E))
        ...     y = bimamba_inner_triton(t(2, E, 11), t(2, E, 11), w(), w())
        ...     assert y.shape == (2, E, 11)
    """
    if not (isinstance(x, Tensor) and isinstance(z, Tensor)) or x.dim() != 3 or x.shape != z.shape:
        # else torch.cat's "Sizes of tensors must match", where the reference names z
        got = [tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__ for t in (x, z)]
        raise VmmError(f"bimamba_inner_triton: x and z must both be (batch, channels, length), of one shape; got "
                       f"{got[0]} and {got[1]}")
    xz = torch.cat([x.transpose(1, 2), z.transpose(1, 2)], dim=-1).transpose(1, 2)  # channel-last underneath
    return bimamba_inner_xz_triton(xz, fwd, bwd)
