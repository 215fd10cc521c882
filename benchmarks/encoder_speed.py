"""Encoder and scan throughput on one GPU: our fused Triton path against the official-style VideoMamba data
flow (mamba-ssm selective scan, two launches plus flip copies per layer), per-frame ViT-B/16 and a joint
space-time ViT-B with SDPA. Every baseline runs in the same process as our path.

    python benchmarks/encoder_speed.py --out benchmarks/results            # full run, ~5 min on an H100
    python benchmarks/encoder_speed.py --quick --out /tmp/bench             # smaller batches, fewer repeats

Writes ``encoder_speed.md`` (tables), ``encoder_speed.json`` (every number, ``gpu`` and ``ratios``) and
``encoder_speed.png`` (clips/s against frames; needs matplotlib, not a vmm dependency) to ``--out`` (default
``benchmarks/results``; with ``--quick``, a temporary folder, so a quick run never replaces the recorded results). The official-style baseline needs mamba-ssm's
``selective_scan_cuda`` (``benchmarks/build_mamba_ssm.sh``); causal-conv1d is used when installed, else
PyTorch's conv. Timings: CUDA events, median of the timed repeats after warm-up, bf16 autocast.
"""
from __future__ import annotations

import json
import math
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import cpu_name, output_path, parser, positive_int, positive_seconds, run, write_result  # noqa: E402
from vmm.ops import triton_bimamba, triton_conv  # noqa: E402
from vmm.models.layers import RMSNorm  # noqa: E402
from vmm.ops.bimamba import DirectionWeights  # noqa: E402

try:
    import selective_scan_cuda  # mamba-ssm's compiled kernel, used directly: mamba_ssm/__init__ pulls Mamba-3 deps
except ImportError:
    selective_scan_cuda = None
try:
    from causal_conv1d import causal_conv1d_fn
except ImportError:
    causal_conv1d_fn = None

SIZES = {"ti": (192, 24), "s": (384, 24), "m": (576, 32)}
MODEL_NAMES = {"ti": "videomamba_tiny", "s": "videomamba_small", "m": "videomamba_middle"}


def log(*args):
    print(*args, flush=True)


# ----------------------------------------------------------------------------------------------- timing
def bench(fn: Callable[[], object], warmup: int = 2, min_reps: int = 3, max_reps: int = 50,
          budget_s: float = 2.0) -> float:
    """Median milliseconds per call, timed with CUDA events after warm-up."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    t_start = time.perf_counter()
    while len(times) < max_reps and (len(times) < min_reps or time.perf_counter() - t_start < budget_s):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def peak_mem_gib(fn: Callable[[], object]) -> float:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2 ** 30


# ------------------------------------------------------------------------------------ mamba-ssm baseline
class MambaSelectiveScan(torch.autograd.Function):
    """mamba-ssm's SelectiveScanFn (z given, delta_softplus=True), calling selective_scan_cuda directly."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias):
        out, x, *rest = selective_scan_cuda.fwd(u, delta, A, B, C, D, z, delta_bias, True)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, x, out)
        return rest[0]

    @staticmethod
    def backward(ctx, dout):
        u, delta, A, B, C, D, z, delta_bias, x, out = ctx.saved_tensors
        du, ddelta, dA, dB, dC, dD, ddelta_bias, dz = selective_scan_cuda.bwd(
            u, delta, A, B, C, D, z, delta_bias, dout.contiguous(), x, out, None, True, False)[:8]
        return du, ddelta, dA, dB, dC, dD, dz, ddelta_bias


def mamba_scan(u, delta, A, B, C, D, z, delta_bias):
    """u, delta, z: (B, E, L) contiguous; B, C: (B, N, L)."""
    return MambaSelectiveScan.apply(u, delta, A, B.unsqueeze(1), C.unsqueeze(1), D, z, delta_bias)


# ------------------------------------------------------------------------------------------- encoders
class Mixer(nn.Module):
    """Bimamba v2 with the official names and the official data flow (each direction its own pipeline)."""

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, torch_conv: bool = False):
        super().__init__()
        E, R, N = 2 * d_model, math.ceil(d_model / 16), d_state
        self.torch_conv = torch_conv or causal_conv1d_fn is None
        self.E, self.R, self.N = E, R, N
        self.in_proj = nn.Linear(d_model, 2 * E, bias=False)
        self.out_proj = nn.Linear(E, d_model, bias=False)
        for sfx in ("", "_b"):
            setattr(self, "conv1d" + sfx, nn.Conv1d(E, E, d_conv, groups=E, padding=d_conv - 1))
            setattr(self, "x_proj" + sfx, nn.Linear(E, R + 2 * N, bias=False))
            dt = nn.Linear(R, E, bias=True)
            nn.init.uniform_(dt.weight, -R ** -0.5, R ** -0.5)
            with torch.no_grad():
                dt.bias.copy_(torch.log(torch.expm1(torch.empty(E).uniform_(1e-3, 0.1))))
            setattr(self, "dt_proj" + sfx, dt)
        A_log = torch.log(torch.arange(1, N + 1, dtype=torch.float32)).repeat(E, 1)
        self.A_log = nn.Parameter(A_log.clone())
        self.A_b_log = nn.Parameter(A_log.clone())
        self.D = nn.Parameter(torch.ones(E))
        self.D_b = nn.Parameter(torch.ones(E))

    def weights(self, sfx: str) -> DirectionWeights:
        conv, xp, dt = getattr(self, "conv1d" + sfx), getattr(self, "x_proj" + sfx), getattr(self, "dt_proj" + sfx)
        A_log = self.A_log if sfx == "" else self.A_b_log
        D = self.D if sfx == "" else self.D_b
        return DirectionWeights(conv.weight, conv.bias, xp.weight, dt.weight, dt.bias, A_log, D)

    def forward(self, hidden):  # (B, L, D) -> (B, L, D)
        return self._official(hidden)

    def _official_direction(self, xz, sfx):
        """mamba_inner_fn_no_out_proj of the bundled mamba 1.0.1, op for op."""
        w = self.weights(sfx)
        L = xz.shape[-1]
        x, z = xz.chunk(2, dim=1)
        conv_w = w.conv_weight.squeeze(1)
        if not self.torch_conv:
            xc = causal_conv1d_fn(x, conv_w, w.conv_bias, activation="silu")
        else:
            xc = F.silu(F.conv1d(x, w.conv_weight, w.conv_bias, padding=conv_w.shape[-1] - 1, groups=self.E)[..., :L])
        x_dbl = F.linear(xc.transpose(1, 2).reshape(-1, self.E), w.x_proj_weight)  # ((b l), R + 2N)
        delta = (w.dt_proj_weight @ x_dbl[:, :self.R].t()).view(self.E, -1, L).permute(1, 0, 2)
        Bm = x_dbl[:, self.R:self.R + self.N].view(-1, L, self.N).transpose(1, 2).contiguous()
        Cm = x_dbl[:, self.R + self.N:].view(-1, L, self.N).transpose(1, 2).contiguous()
        A = -torch.exp(w.A_log.float())
        return mamba_scan(xc, delta, A, Bm, Cm, w.D.float(), z, w.dt_proj_bias.float())

    def _official(self, hidden):
        Bsz, L, _ = hidden.shape
        w_in = self.in_proj.weight.to(hidden.dtype) if not torch.is_autocast_enabled() else self.in_proj.weight
        xz = (w_in @ hidden.reshape(-1, hidden.shape[-1]).t()).view(-1, Bsz, L).permute(1, 0, 2)  # b d l
        out = self._official_direction(xz, "")
        out_b = self._official_direction(xz.flip([-1]), "_b")
        return F.linear((out + out_b.flip([-1])).transpose(1, 2), self.out_proj.weight)


class OfficialVideoMamba(nn.Module):
    """The official-style VideoMamba encoder (spec section 2): one CLS, spatial-first tokens, prenorm residual in
    fp32, mamba-ssm's kernels with flip copies, the norm in PyTorch."""

    def __init__(self, dim: int, depth: int, frames: int, torch_conv: bool = False):
        super().__init__()
        self.patch_embed = nn.Conv3d(3, dim, (1, 16, 16), (1, 16, 16))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, 197, dim) * 0.02)
        self.temporal_pos_embedding = nn.Parameter(torch.zeros(1, frames, dim))
        self.mixers = nn.ModuleList([Mixer(dim, torch_conv=torch_conv) for _ in range(depth)])
        # PyTorch add + RMSNorm (the library's reference path of the official fused_add_norm)
        self.norms = nn.ModuleList([RMSNorm(dim) for _ in range(depth)])
        self.norm_f = RMSNorm(dim)

    def forward(self, video):  # (B, 3, T, H, W) -> (B, 1 + T*196, D)
        x = self.patch_embed(video)
        B, D, T, H, W = x.shape
        x = x.permute(0, 2, 3, 4, 1).reshape(B * T, H * W, D)
        x = x + self.pos_embed[:, 1:]
        x = x.view(B, T, H * W, D) + self.temporal_pos_embedding[:, :, None]
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(B, -1, -1)
        hidden = torch.cat([cls.to(x.dtype), x.reshape(B, T * H * W, D)], dim=1)
        residual = None
        for mixer, nw in zip(self.mixers, self.norms):
            normed, residual = nw.add_forward(hidden, residual)
            hidden = mixer(normed)
        out, _ = self.norm_f.add_forward(hidden, residual)
        return out[:, 0]  # the CLS feature, as the official forward_features returns


def official_state_dict(state_dict: dict) -> dict:
    """A ``vmm`` VideoMamba encoder's weights under :class:`OfficialVideoMamba`'s names, so both paths can run the
    same weights (benchmarks/encoder_accuracy.py)."""
    out = {}
    for k, v in state_dict.items():
        k = k.replace("patch_embed.proj.", "patch_embed.")
        k = re.sub(r"^layers\.(\d+)\.mixer\.", r"mixers.\1.", k)
        out[re.sub(r"^layers\.(\d+)\.norm\.", r"norms.\1.", k)] = v
    return out


class JointViT(nn.Module):
    """ViT-B/16 over all T*196 patch tokens + CLS at once (joint space-time attention through SDPA)."""

    def __init__(self, frames: int, dim: int = 768, depth: int = 12, heads: int = 12):
        super().__init__()
        from timm.models.vision_transformer import Block
        self.patch_embed = nn.Conv3d(3, dim, (1, 16, 16), (1, 16, 16))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, 197, dim) * 0.02)
        self.temporal = nn.Parameter(torch.zeros(1, frames, 1, dim))
        self.blocks = nn.Sequential(*[Block(dim, heads, qkv_bias=True) for _ in range(depth)])
        for blk in self.blocks:
            assert getattr(blk.attn, "fused_attn", True), "timm attention must use SDPA"
        self.norm = nn.LayerNorm(dim)

    def forward(self, video):
        x = self.patch_embed(video)
        B, D, T, H, W = x.shape
        x = x.permute(0, 2, 3, 4, 1) .reshape(B, T, H * W, D) + self.pos_embed[:, None, 1:] + self.temporal
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(B, -1, -1)
        x = torch.cat([cls.to(x.dtype), x.reshape(B, T * H * W, D)], 1)
        return self.norm(self.blocks(x))


class PerFrameViT(nn.Module):
    def __init__(self):
        super().__init__()
        import timm
        self.vit = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0)

    def forward(self, video):
        B, C, T, H, W = video.shape
        return self.vit.forward_features(video.transpose(1, 2).reshape(B * T, C, H, W))


# -------------------------------------------------------------------------------------------- sections
def sweep(out: dict, key: str, settings: dict, configs: list, fn: Callable[[], object], prefix: str = "",
          module=triton_bimamba) -> tuple:
    """Time ``fn`` under each config, a tuple of values for the settings (globals of the kernel ``module``) named
    by ``settings`` (setting -> label), then once more under the library's defaults, which are restored: every
    other number of the run is what users get. Each time goes to ``out[key[prefix label=value,...]]``, the
    defaults' time to ``out[key]``; the fastest config is returned (to check the defaults against)."""
    defaults = tuple(getattr(module, name) for name in settings)
    best = None
    for values in configs:
        for name, value in zip(settings, values):
            setattr(module, name, value)
        ms = bench(fn)
        label = prefix + ",".join(f"{lab}={v}" for lab, v in zip(settings.values(), values))
        out[f"{key}[{label}]"] = ms
        log(f"{key}[{label}]: {ms:.3f} ms")
        if best is None or ms < best[0]:
            best = (ms, values)
    for name, value in zip(settings, defaults):
        setattr(module, name, value)
    out[key] = bench(fn)
    log(f"{key} (library defaults {defaults}): {out[key]:.3f} ms; fastest of the sweep {best[1]}: {best[0]:.3f} ms")
    return best[1]


def scan_section(args, res):
    """The scan alone at VideoMamba-M shapes: B=32, E=1152, L=1569, N=16, bf16."""
    Bsz, E, L, N = args.scan_batch, 1152, 1569, 16
    dev, dt = "cuda", torch.bfloat16
    g = torch.Generator(device=dev).manual_seed(0)

    def rnd(*s, scale=1.0):
        return (torch.randn(*s, device=dev, generator=g) * scale)

    # channel-last for ours; (B, E, L) for mamba-ssm: each in its own natural layout.
    u_f, u_b, dt_f, dt_b, z = (rnd(Bsz, L, E).to(dt) for _ in range(5))
    B_f, C_f, B_b, C_b = (rnd(Bsz, L, N).to(dt) for _ in range(4))
    A = -torch.exp(rnd(2, E, N, scale=0.5))
    D, bias = rnd(2, E), rnd(2, E, scale=0.5) - 1.0
    m_u_f, m_u_b, m_dt_f, m_dt_b, m_z = (t.transpose(1, 2).contiguous() for t in (u_f, u_b, dt_f, dt_b, z))
    m_B_f, m_C_f, m_B_b, m_C_b = (t.transpose(1, 2).contiguous() for t in (B_f, C_f, B_b, C_b))
    out = {}

    def ours():
        return triton_bimamba.bimamba_scan(u_f, u_b, dt_f, dt_b, z, B_f, C_f, B_b, C_b, A, D, bias)

    with torch.no_grad():
        # (steps per tile, register cap, SiLU gate in each direction's scan or once in the add, L2 prefetch of the
        # u/dt rows and L1 prefetch of the B/C rows this many steps ahead, channels and warps per program); the
        # library's default is the best of this sweep on an H200 (16-channel blocks, two lanes per channel, were
        # slower in session 3's runs). Repeats on one machine differ by up to 10%, so the default runs twice.
        d = (4, 168, False, 32, 8, 32, 1)
        tile, reg, gate, pf, pfbc, be, nw = sweep(
            out, "ours_bidir_fwd_ms", {"FWD_TILE": "tile", "FWD_MAXNREG": "maxnreg", "FWD_GATE_IN_SCAN": "gate_in_scan",
                                       "FWD_PREFETCH": "prefetch", "FWD_PREFETCH_BC": "prefetch_bc",
                                       "FWD_BLOCK_E": "block_e", "FWD_WARPS": "warps"},
            [d, (4, 168, False, 32, 0, 32, 1), (4, 168, False, 32, 16, 32, 1), (4, 168, False, 0, 8, 32, 1),
             (4, 168, True, 32, 8, 32, 1), (2, 168, False, 32, 8, 32, 1), (8, 168, False, 32, 8, 32, 1),
             (4, 96, False, 32, 8, 32, 1), (4, 128, False, 32, 8, 32, 1), (4, 160, False, 32, 8, 32, 1),
             (4, 168, False, 32, 8, 64, 2), d], ours)
        out["ours_fwd_sweep_fastest"] = {"tile": tile, "maxnreg": reg, "gate_in_scan": gate, "prefetch": pf,
                                         "prefetch_bc": pfbc, "BLOCK_E": be, "num_warps": nw}
        if selective_scan_cuda is not None:
            def m_one():
                return mamba_scan(m_u_f, m_dt_f, A[0], m_B_f, m_C_f, D[0], m_z, bias[0])

            def m_two_noflip():
                return m_one() + mamba_scan(m_u_b, m_dt_b, A[1], m_B_b, m_C_b, D[1], m_z, bias[1])

            def m_two_flips():  # flip-and-rerun: the reverse direction's inputs and its output are flipped
                yb = mamba_scan(m_u_b.flip(-1), m_dt_b.flip(-1), A[1], m_B_b.flip(-1), m_C_b.flip(-1), D[1],
                                m_z.flip(-1), bias[1])
                return m_one() + yb.flip(-1)

            out["mamba_one_dir_fwd_ms"] = bench(m_one)
            out["mamba_bidir_noflip_fwd_ms"] = bench(m_two_noflip)
            out["mamba_bidir_flips_fwd_ms"] = bench(m_two_flips)
            # same function? (both compute the bidirectional gated sum)
            ref = m_two_flips().float().transpose(1, 2)
            got = ours().float()
            out["ours_vs_mamba_rel_err"] = ((got - ref).norm() / ref.norm()).item()

    # forward + backward
    leaves = [t.clone().requires_grad_() for t in (u_f, u_b, dt_f, dt_b, z)]
    gy = rnd(Bsz, L, E).to(dt)

    def ours_fb():
        y = triton_bimamba.bimamba_scan(*leaves, B_f, C_f, B_b, C_b, A, D, bias)
        y.backward(gy)

    # (checkpoint interval, register cap, channels per one-warp program, shuffle reduce-scatter of dB/dC, L2
    # prefetch of the rows two chunks ahead)
    ck, reg, be, shfl, bpf = sweep(out, "ours_bidir_fwdbwd_ms",
                                   {"BWD_CK": "ck", "BWD_MAXNREG": "bwd_maxnreg", "BWD_BLOCK_E": "bwd_block_e",
                                    "BWD_SHFL": "shfl", "BWD_PREFETCH": "bwd_prefetch"},
                                   [(16, None, 32, True, True), (16, None, 32, True, False), (32, None, 32, True, True),
                                    (32, None, 32, False, True), (64, None, 32, True, True),
                                    (32, 128, 32, True, True), (32, None, 16, False, True),
                                    (16, None, 32, True, True), (16, None, 32, True, False)], ours_fb)
    out["ours_bwd_sweep_fastest"] = {"CK": ck, "maxnreg": reg, "BLOCK_E": be, "shfl": shfl, "prefetch": bpf,
                              "num_warps": triton_bimamba.BWD_WARPS}
    if selective_scan_cuda is not None:
        m_leaves = [t.clone().requires_grad_() for t in (m_u_f, m_u_b, m_dt_f, m_dt_b, m_z)]
        m_gy = gy.transpose(1, 2).contiguous()

        def m_fb():
            uf, ub, dtf, dtb, zz = m_leaves
            yb = mamba_scan(ub.flip(-1), dtb.flip(-1), A[1], m_B_b.flip(-1), m_C_b.flip(-1), D[1], zz.flip(-1), bias[1])
            y = mamba_scan(uf, dtf, A[0], m_B_f, m_C_f, D[0], zz, bias[0]) + yb.flip(-1)
            y.backward(m_gy)

        def m_fb_one():
            y = mamba_scan(m_leaves[0], m_leaves[2], A[0], m_B_f, m_C_f, D[0], m_leaves[4], bias[0])
            y.backward(m_gy)

        out["mamba_one_dir_fwdbwd_ms"] = bench(m_fb_one)
        out["mamba_bidir_flips_fwdbwd_ms"] = bench(m_fb)
    # The conv kernel at the encoder's shape (B=64, 8 frames), x a strided view of in_proj's output as in a layer.
    x = rnd(64, L, 2 * E).to(dt)[..., :E]
    w, cb = rnd(2, E, 4, scale=0.5), rnd(2, E, scale=0.2)
    with torch.no_grad():
        # (windowed kernel or the tile kernel, rows per program, channels per program, warps)
        win, rows, be, nw = sweep(out, "conv_fwd_ms", {"CONV_WINDOWED": "windowed", "CONV_ROWS": "rows",
                                                       "CONV_ROWS_BLOCK_E": "block_e", "CONV_ROWS_WARPS": "warps"},
                                  [(False, 0, 0, 0), (True, 32, 128, 1), (True, 64, 128, 1), (True, 128, 128, 1),
                                   (True, 64, 256, 1), (True, 64, 256, 2), (True, 64, 64, 1)],
                                  lambda: triton_conv.conv1d_bidir_silu(x, w, cb), prefix="B=64,", module=triton_conv)
    # its backward at the training shape (B=16)
    xg = rnd(16, L, E).to(dt).requires_grad_()
    gf, gb = rnd(16, L, E).to(dt), rnd(16, L, E).to(dt)
    # (windowed kernels or the tile kernels, rows, channels and warps per windowed backward program)
    bwin, brows, bbe, bnw = sweep(out, "conv_fwdbwd_ms", {"CONV_WINDOWED": "windowed", "CONV_BWD_ROWS": "bwd_rows",
                                                          "CONV_BWD_BLOCK_E": "bwd_block_e",
                                                          "CONV_BWD_WARPS": "bwd_warps"},
                                  [(False, 0, 0, 0), (True, 128, 64, 1), (True, 256, 64, 1), (True, 512, 64, 1),
                                   (True, 256, 32, 1), (True, 256, 128, 2)],
                                  lambda: torch.autograd.backward(triton_conv.conv1d_bidir_silu(xg, w, cb), (gf, gb)),
                                  prefix="B=16,", module=triton_conv)
    out["conv_sweep_fastest"] = {"windowed": win, "rows": rows, "BLOCK_E": be, "num_warps": nw,
                                 "bwd": {"windowed": bwin, "rows": brows, "BLOCK_E": bbe, "num_warps": bnw}}
    del x, xg
    # x_proj + dt_proj of both directions at the encoder's shape (B=64), the rank padded for alignment or not.
    R = 36
    xc2 = rnd(2, 64, L, E).to(dt)  # both directions' conv outputs
    Wx, Wdt = rnd(2, R + 2 * N, E, scale=E ** -0.5).to(dt), rnd(2, E, R, scale=R ** -0.5).to(dt)

    def projections():
        wx, wdt = triton_bimamba._aligned_projections(Wx, Wdt)
        return triton_bimamba._projections(xc2, wx, wdt)

    with torch.no_grad():
        (align,) = sweep(out, "projections_ms", {"PROJ_ALIGN": "align"}, [(8,), (1,)], projections, prefix="B=64,")
    out["projections_sweep_fastest"] = {"align": align}
    del xc2
    for k, v in out.items():
        log(f"  {k}: {v}")
    res["scan"] = {"shape": {"B": Bsz, "E": E, "L": L, "N": N, "dtype": "bf16"}, **out}


def make_video(B, T):
    return torch.randn(B, 3, T, 224, 224, device="cuda", dtype=torch.bfloat16)


def encoder_throughput(model: nn.Module, B: int, T: int, reps_budget: float) -> dict:
    video = make_video(B, T)

    def fwd():
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            return model(video)

    ms = bench(fwd, warmup=1, min_reps=2, max_reps=20, budget_s=reps_budget)
    mem = peak_mem_gib(fwd)
    return {"batch": B, "ms_per_batch": ms, "clips_per_s": B * 1000.0 / ms, "peak_mem_gib": mem}


def encoder_section(args, res):
    rows = res.setdefault("encoders", [])
    quick = {8: 16, 16: 8, 32: 4, 64: 2}
    for T in args.frames:
        B = quick.get(T, 2) if args.quick else args.batch
        cands: list[tuple[str, Callable[[], nn.Module]]] = []
        for size in args.sizes:
            dim, depth = SIZES[size]
            cands.append((f"videomamba_{size}/fused", lambda s=size: vmm_model(s, T)))
            if selective_scan_cuda is not None and (size == "m" or args.official_all):
                cands.append((f"videomamba_{size}/official", lambda d=dim, n=depth: OfficialVideoMamba(d, n, T)))
            if selective_scan_cuda is not None and causal_conv1d_fn is not None and size == "m" and T in (8, 16):
                # the same with PyTorch's conv1d, as the official code runs without causal-conv1d installed
                cands.append((f"videomamba_{size}/official_torch_conv",
                              lambda d=dim, n=depth: OfficialVideoMamba(d, n, T, torch_conv=True)))
        cands.append(("vit_b16/joint_sdpa", lambda: JointViT(T)))
        cands.append(("vit_b16/per_frame", PerFrameViT))
        for name, ctor in cands:
            if time.time() - args.t0 > args.max_wall:
                log(f"skipping {name} T={T}: --max-wall reached")
                continue
            model = None
            try:
                model = ctor().cuda().eval()
                r = encoder_throughput(model, B, T, args.budget)
            except torch.cuda.OutOfMemoryError:
                r = {"batch": B, "error": "out of memory"}
            except Exception as exc:  # a missing optional baseline must not lose the rest of the run
                r = {"batch": B, "error": f"{type(exc).__name__}: {exc}"[:300]}
            finally:
                model = None
                torch.cuda.empty_cache()
            r.update(model=name, frames=T)
            rows.append(r)
            log(f"encoder {name} T={T} B={B}: " + (f"{r['clips_per_s']:.1f} clips/s, {r['peak_mem_gib']:.1f} GiB"
                                                   if "clips_per_s" in r else r["error"]))


def vmm_model(size: str, T: int) -> nn.Module:
    """Our path is the library's own encoder, as users build it: ``vmm.create_model`` with the Triton backend
    (fused layer kernels and the fused add + RMSNorm); it returns the CLS feature."""
    import vmm
    return vmm.create_model(MODEL_NAMES[size], num_frames=T, num_classes=0, scan_backend="triton")


def train_section(args, res):
    """One optimizer-free training step (forward + backward of a mean loss), VideoMamba-M, 8 frames."""
    B, T = (args.train_batch, 8) if not args.quick else (4, 8)
    dim, depth = SIZES["m"]
    out = {"batch": B, "frames": T}
    video = make_video(B, T)
    for impl in ("fused", "official"):
        if impl == "official" and selective_scan_cuda is None:
            continue
        model = (vmm_model("m", T) if impl == "fused" else OfficialVideoMamba(dim, depth, T)).cuda().train()

        def step():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = model(video).float().pow(2).mean()
            loss.backward()

        try:
            ms = bench(step, warmup=1, min_reps=2, max_reps=10, budget_s=args.budget)
            out[impl] = {"ms_per_step": ms, "clips_per_s": B * 1000.0 / ms, "peak_mem_gib": peak_mem_gib(step)}
        except torch.cuda.OutOfMemoryError:
            out[impl] = {"error": "out of memory"}
        log(f"train {impl}: {out[impl]}")
        model = None
        torch.cuda.empty_cache()
    res["train_step"] = out


def profile_section(args, res, out_dir: Path):
    """Where the fused encoder's time goes: torch profiler over one VideoMamba-M forward at 8 frames."""
    from torch.profiler import ProfilerActivity, profile
    B = 64 if not args.quick else 8
    model = vmm_model("m", 8).cuda().eval()
    video = make_video(B, 8)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        model(video)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            model(video)
            torch.cuda.synchronize()
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=14, max_name_column_width=60)
    res["profile_top"] = table
    log(table)
    # The training step (forward + backward, batch 16), where the fused path has the most to gain.
    model = vmm_model("m", 8).cuda().train()
    video = make_video(16 if not args.quick else 4, 8)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(video).float().pow(2).mean()
        loss.backward()
    step()
    torch.cuda.synchronize()
    # CPU activity too, so that the aten op behind each elementwise kernel shows with its CUDA time.
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    table = prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=30, max_name_column_width=60)
    res["profile_train_top"] = table
    log(table)


# ---------------------------------------------------------------------------------------------- output
def find(rows, model, T):
    for r in rows:
        if r["model"] == model and r["frames"] == T and "clips_per_s" in r:
            return r["clips_per_s"]
    return None


def ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def summarize(res):
    rows = res.get("encoders", [])
    s = res.get("scan", {})
    tr = res.get("train_step", {})
    res["ratios"] = {
        "scan_bidir_vs_mamba_ssm": ratio(s.get("mamba_bidir_flips_fwd_ms"), s.get("ours_bidir_fwd_ms")),
        "scan_bidir_vs_mamba_ssm_noflip": ratio(s.get("mamba_bidir_noflip_fwd_ms"), s.get("ours_bidir_fwd_ms")),
        "scan_fwdbwd_vs_mamba_ssm": ratio(s.get("mamba_bidir_flips_fwdbwd_ms"), s.get("ours_bidir_fwdbwd_ms")),
        "encoder_8f_vs_official": ratio(find(rows, "videomamba_m/fused", 8), find(rows, "videomamba_m/official", 8)),
        "encoder_16f_vs_joint_vit": ratio(find(rows, "videomamba_m/fused", 16), find(rows, "vit_b16/joint_sdpa", 16)),
        "encoder_64f_vs_joint_vit": ratio(find(rows, "videomamba_m/fused", 64), find(rows, "vit_b16/joint_sdpa", 64)),
        "train_step_vs_official": ratio(tr.get("fused", {}).get("clips_per_s"),
                                        tr.get("official", {}).get("clips_per_s")),
        "encoder_8f_vs_official_torch_conv": ratio(find(rows, "videomamba_m/fused", 8),
                                                   find(rows, "videomamba_m/official_torch_conv", 8)),
    }
    res["targets"] = {"scan_bidir_vs_mamba_ssm": 3.0, "encoder_8f_vs_official": 5.0, "encoder_16f_vs_joint_vit": 1.0,
                      "encoder_64f_vs_joint_vit": 2.0, "train_step_vs_official": 2.0}


def fmt(x, nd=1):
    return "–" if x is None else f"{x:.{nd}f}"


def write_markdown(res, path: Path):
    gpu = res["gpu"]
    lines = [f"# Encoder speed on {gpu}" + (f" ({res['cpu']})" if res.get("cpu") else ""), "",
             f"torch {res['torch']}, triton {res['triton']}, bf16 autocast, 224x224; "
             f"mamba-ssm kernel: {res['mamba_ssm']}, causal-conv1d: {res['causal_conv1d']}.", ""]
    rows = res.get("encoders", [])
    if rows:
        frames = sorted({r["frames"] for r in rows})
        models = list(dict.fromkeys(r["model"] for r in rows))
        lines += ["## Encoder throughput, clips/s (peak GiB)", "",
                  "| model | " + " | ".join(f"{T} frames" for T in frames) + " |",
                  "|---|" + "---|" * len(frames)]
        for m in models:
            cells = []
            for T in frames:
                r = next((r for r in rows if r["model"] == m and r["frames"] == T), None)
                if r is None:
                    cells.append("")
                elif "clips_per_s" in r:
                    cells.append(f"{r['clips_per_s']:.1f} ({r['peak_mem_gib']:.1f}) b{r['batch']}")
                else:
                    cells.append(r["error"][:40])
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        lines.append("")
    s = res.get("scan")
    if s:
        lines += [f"## Selective scan alone: B={s['shape']['B']}, E={s['shape']['E']}, L={s['shape']['L']}, "
                  f"N={s['shape']['N']}, bf16 (ms)", "", "| variant | ms |", "|---|---|"]
        for k, v in s.items():
            if k.endswith("_ms") or "_ms[" in k:
                lines.append(f"| {k} | {v:.3f} |")
        if "ours_vs_mamba_rel_err" in s:
            lines.append(f"| relative difference ours vs mamba-ssm output | {s['ours_vs_mamba_rel_err']:.2e} |")
        lines.append("")
    tr = res.get("train_step")
    if tr:
        lines += [f"## Training step (fwd+bwd), VideoMamba-M, {tr['frames']} frames, batch {tr['batch']}", "",
                  "| path | ms/step | clips/s | peak GiB |", "|---|---|---|---|"]
        for impl in ("fused", "official"):
            r = tr.get(impl)
            if r and "ms_per_step" in r:
                lines.append(f"| {impl} | {r['ms_per_step']:.1f} | {r['clips_per_s']:.1f} | {r['peak_mem_gib']:.1f} |")
        lines.append("")
    lines += ["## Ratios (target)", "", "| ratio | reached | target |", "|---|---|---|"]
    for k, v in res["ratios"].items():
        t = res["targets"].get(k)
        lines.append(f"| {k} | {fmt(v, 2)} | {fmt(t, 1) if t else ''} |")
    if res.get("profile_top"):
        lines += ["", "## Profile: fused VideoMamba-M forward, 8 frames", "", "```", res["profile_top"], "```"]
    if res.get("profile_train_top"):
        lines += ["", "## Profile: fused VideoMamba-M training step, 8 frames, batch 16", "", "```",
                  res["profile_train_top"], "```"]
    path.write_text("\n".join(lines) + "\n")


def plot(res, path: Path) -> bool:
    """Draws clips/s against frames to ``path``; False, and no file there, when there is nothing to draw or no
    matplotlib (not a vmm dependency): a plot left from an earlier run would not match the new JSON beside it."""
    rows = [r for r in res.get("encoders", []) if "clips_per_s" in r]
    try:
        import matplotlib
    except ImportError:
        if rows:  # after minutes of GPU time this was a traceback in place of the summary
            log(f"no {path.name}: matplotlib is not installed (pip install matplotlib to plot)")
        rows = []
    if not rows:
        path.unlink(missing_ok=True)
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for m in dict.fromkeys(r["model"] for r in rows):
        pts = sorted((r["frames"], r["clips_per_s"]) for r in rows if r["model"] == m)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=m)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(sorted({r["frames"] for r in rows}), [str(t) for t in sorted({r["frames"] for r in rows})])
    ax.set_xlabel("frames (224x224)")
    ax.set_ylabel("clips / s (bf16, inference)")
    ax.set_title(f"Video encoder throughput on {res['gpu']}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True


def main(argv=None):
    p = parser(__file__, __doc__)
    p.add_argument("--out", type=Path, default=None,
                   help="folder for the table, JSON and plot [benchmarks/results; with --quick a temporary folder, so a "
                        "quick run never replaces the recorded results]")
    p.add_argument("--frames", type=positive_int, nargs="+", default=[8, 16, 32, 64])
    p.add_argument("--sizes", nargs="+", default=["m", "s", "ti"], choices=list(SIZES))
    # a misspelt section ("encoder") ran nothing and wrote empty tables over --out
    p.add_argument("--sections", nargs="+", default=["scan", "encoders", "train", "profile"],
                   choices=["scan", "encoders", "train", "profile"])
    # One batch at every length, the 64: at 32 the scan's 2304 programs (VideoMamba-M) are 1.09 waves of an
    # H200's resident slots at the 128-register cap (1.45 at 168), so much of the second wave idles (64 frames, cap
    # 160: 75.5 clips/s at batch 32, 78.5 at 64; the joint ViT-B 47.1 at both)
    p.add_argument("--batch", type=positive_int, default=64, help="encoder batch at every frame count")
    p.add_argument("--scan-batch", type=positive_int, default=32)
    # 32, as every recorded run and the README's training-step row: at 16 the documented commands timed another step
    p.add_argument("--train-batch", type=positive_int, default=32, help="training-step batch [32]")
    p.add_argument("--budget", type=positive_seconds, default=1.5, help="seconds of timed repeats per measurement")
    p.add_argument("--official-all", action="store_true", help="official-style baseline for Ti and S too")
    p.add_argument("--max-wall", type=positive_seconds, default=1e9,
                   help="skip remaining encoder runs after this many s")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    if args.out is None:
        args.out = (Path(tempfile.gettempdir()) / "vmm-encoder-speed-quick" if args.quick
                    else Path(__file__).resolve().parent / "results")
    args.out = output_path(p, args.out, folder=True)
    if not torch.cuda.is_available():
        # a usage error as the other scripts' (one `error:` line, status 2), not a bare line and status 1
        p.error("encoder_speed.py needs a CUDA GPU (torch.cuda.is_available() is False on this host)")
    import triton
    args.out.mkdir(parents=True, exist_ok=True)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    # the CPU too: the official-style path's many small launches make its numbers depend on the host
    res = {"gpu": torch.cuda.get_device_name(), "cpu": cpu_name(), "torch": torch.__version__,
           "triton": triton.__version__,
           "mamba_ssm": "selective_scan_cuda" if selective_scan_cuda is not None else "missing",
           "causal_conv1d": "yes" if causal_conv1d_fn is not None else "no (PyTorch conv)",
           "args": {k: str(v) for k, v in vars(args).items()}}
    log(f"GPU: {res['gpu']}  CPU: {res['cpu']}  torch {res['torch']}  triton {res['triton']}  "
        f"mamba-ssm {res['mamba_ssm']}")
    t0 = args.t0 = time.time()
    if "scan" in args.sections:
        scan_section(args, res)
    if "encoders" in args.sections:
        encoder_section(args, res)
    if "train" in args.sections:
        train_section(args, res)
    if "profile" in args.sections:
        profile_section(args, res, args.out)
    res["wall_s"] = time.time() - t0
    summarize(res)
    write_result(args.out / "encoder_speed.json", json.dumps(res, indent=1))
    write_markdown(res, args.out / "encoder_speed.md")
    plotted = plot(res, args.out / "encoder_speed.png")
    log(json.dumps(res["ratios"], indent=1))
    log(f"wrote {args.out / 'encoder_speed.json'}, .md" + (" and .png" if plotted else ""))


if __name__ == "__main__":
    run(main)
