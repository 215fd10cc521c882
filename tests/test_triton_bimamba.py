"""The fused Triton bimamba layer against the PyTorch reference, forward and gradients.

The CPU test runs the real kernels through Triton's interpreter in a subprocess (TRITON_INTERPRET must be
set before triton is imported), so the kernel logic is checked in CI without a GPU. The CUDA tests run
the compiled kernels on the device machine.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import vmm.ops.bimamba as bimamba
from vmm.ops.bimamba import DirectionWeights, bimamba_inner_ref

REPO = Path(__file__).resolve().parents[1]
triton = pytest.importorskip("triton")
from vmm.ops import triton_bimamba, triton_conv  # noqa: E402  (after the importorskip)


def make_layer(Bsz, E, L, N=16, R=4, dtype=torch.float32, device="cpu", seed=0):
    """Random layer weights and a channel-last xz, like ``in_proj(u).transpose(1, 2)``.

    Scales keep softplus(dt) spread over ~[0.1, 3] and A over several decades, as in trained models.
    """
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0, shift=0.0):
        t = torch.randn(*shape, generator=g) * scale + shift
        return t.to(device=device, dtype=dtype).requires_grad_()

    def direction():
        return DirectionWeights(
            conv_weight=rnd(E, 1, 4, scale=0.5), conv_bias=rnd(E, scale=0.2),
            x_proj_weight=rnd(R + 2 * N, E, scale=E ** -0.5), dt_proj_weight=rnd(E, R, scale=R ** -0.5),
            dt_proj_bias=rnd(E, scale=0.5, shift=-0.5), A_log=rnd(E, N, scale=1.0), D=rnd(E))

    xz = rnd(Bsz, L, 2 * E)
    return xz, direction(), direction()


def split(xz):
    E = xz.shape[-1] // 2
    xzt = xz.transpose(1, 2)
    return xzt[:, :E], xzt[:, E:]


def rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def selective_scan_float64(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                           reverse=False, backend=None):
    """The reference recurrence evaluated in float64 (the library reference computes in float32), so that
    gradient sums with cancellation measure the kernel's error and not the reference's own rounding."""
    u, delta = u.double(), delta.double()
    if delta_bias is not None:
        delta = delta + delta_bias.double()[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    dA = torch.exp(delta[..., None] * A.double()[:, None, :])  # (B, E, L, N)
    dBu = (delta * u)[..., None] * B.double().transpose(1, 2)[:, None]
    h = u.new_zeros(dA[:, :, 0].shape)
    ys = [None] * u.shape[-1]
    for t in (reversed(range(u.shape[-1])) if reverse else range(u.shape[-1])):
        h = dA[:, :, t] * h + dBu[:, :, t]
        ys[t] = (h * C.double()[:, None, :, t]).sum(-1)
    y = torch.stack(ys, -1) + u * D.double()[:, None]
    return y * F.silu(z.double())


def check_against_reference(xz, wf, wb, tol):
    """Forward and all gradients of the Triton layer vs ``bimamba_inner_ref`` in float64 on the same values.

    The forward is also compared with the library reference as it is (float32 scan).
    """
    y = triton_bimamba.bimamba_inner_xz_triton(xz.transpose(1, 2), wf, wb)  # as a layer calls it
    leaves = [xz, *wf, *wb]
    ref_leaves = [t.detach().double().cpu().requires_grad_() for t in leaves]
    xr, zr = split(ref_leaves[0])
    wfr, wbr = DirectionWeights(*ref_leaves[1:8]), DirectionWeights(*ref_leaves[8:])
    with torch.no_grad():
        y_lib = bimamba_inner_ref(xr.float(), zr.float(), DirectionWeights(*[t.float() for t in wfr]),
                                  DirectionWeights(*[t.float() for t in wbr]))
    library_scan = bimamba.selective_scan
    bimamba.selective_scan = selective_scan_float64
    try:
        y_ref = bimamba_inner_ref(xr, zr, wfr, wbr)
    finally:
        bimamba.selective_scan = library_scan
    assert torch.isfinite(y).all()
    errors = {"out": rel(y.cpu(), y_ref), "out_vs_library_reference": rel(y.cpu(), y_lib)}
    gout = torch.randn(y_ref.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    grads = torch.autograd.grad(y, leaves, gout.to(device=y.device, dtype=y.dtype))
    grads_ref = torch.autograd.grad(y_ref, ref_leaves, gout)
    names = ["xz"] + [f"fwd.{n}" for n in DirectionWeights._fields] + [f"bwd.{n}" for n in DirectionWeights._fields]
    for name, a, b in zip(names, grads, grads_ref):
        errors[name] = rel(a.cpu(), b)
    bad = {k: v for k, v in errors.items() if not v <= tol}
    assert not bad, f"relative errors over {tol}: {bad}"
    return errors


INTERPRETER_SCRIPT = textwrap.dedent("""
    import json, sys, torch
    sys.path.insert(0, sys.argv[1])
    sys.path.insert(0, sys.argv[1] + "/tests")
    from vmm.ops import triton_bimamba, triton_conv, triton_norm
    from vmm.ops.norm import add_rmsnorm_ref
    from test_triton_bimamba import make_layer, check_against_reference, rel
    triton_bimamba.BWD_CK = 4  # several checkpoint chunks even on short sequences
    triton_conv.CONV_BLOCK_L = 4  # several conv programs along L, each walking two row tiles in the backward
    triton_conv.CONV_BWD_ROW_TILES = 2
    triton_conv.CONV_ROWS = 4  # several windowed conv programs along L, forward and backward
    triton_conv.CONV_BWD_ROWS = 4
    results = {}
    for Bsz, E, L in [(2, 40, 13), (1, 32, 8), (3, 36, 1)]:
        xz, wf, wb = make_layer(Bsz, E, L, seed=L)
        results[f"{Bsz}x{E}x{L}"] = check_against_reference(xz, wf, wb, tol=1e-5)
    # d_state 4: the backward's plain dB/dC sums (the shuffle reduce-scatter needs d_state 16), odd rank
    xz, wf, wb = make_layer(2, 33, 6, N=4, R=3, seed=4)
    results["2x33x6/N4"] = check_against_reference(xz, wf, wb, tol=1e-5)
    triton_bimamba.FWD_TILE = 0  # the step-at-a-time forward too
    xz, wf, wb = make_layer(1, 40, 11, seed=11)
    results["1x40x11/tile0"] = check_against_reference(xz, wf, wb, tol=1e-5)
    triton_bimamba.FWD_GATE_IN_SCAN = True  # each direction gates its own output, both forward forms
    for tile in (0, 4):
        triton_bimamba.FWD_TILE = tile
        xz, wf, wb = make_layer(2, 40, 9, seed=9)
        results[f"2x40x9/tile{tile}/gate_in_scan"] = check_against_reference(xz, wf, wb, tol=1e-5)
    # add + RMSNorm, forward and backward (rows not a multiple of the backward's rows per program), with
    # and without an incoming residual; both outputs get a gradient, as inside a stack of blocks.
    triton_norm.ADD_RMSNORM_BWD_ROWS = 4
    errs = {}
    for with_res in (True, False):
        h, r, w = (torch.randn(*s, dtype=torch.float64).requires_grad_() for s in ((3, 5, 48), (3, 5, 48), (48,)))
        args = (h.float(), r.float() if with_res else None, w.float())
        y, r2 = triton_norm.add_rmsnorm(*args)
        yr, rr = add_rmsnorm_ref(*args)
        gy, gr = torch.randn(3, 5, 48, dtype=torch.float64), torch.randn(3, 5, 48, dtype=torch.float64)
        leaves = [h, w] + ([r] if with_res else [])
        got = torch.autograd.grad((y.double() * gy).sum() + (r2.double() * gr).sum(), leaves)
        want = torch.autograd.grad((yr.double() * gy).sum() + (rr.double() * gr).sum(), leaves)
        tag = "res" if with_res else "nores"
        errs.update({f"out_{tag}": rel(y, yr), f"residual_{tag}": rel(r2, rr)})
        errs.update({f"grad{i}_{tag}": rel(a, b) for i, (a, b) in enumerate(zip(got, want))})
    # A strided weight (every other column of a wider tensor) was read as if contiguous: wrong, no error.
    h, w_wide = torch.randn(3, 5, 48), torch.randn(48, 2)
    errs["out_strided_weight"] = rel(triton_norm.add_rmsnorm(h, None, w_wide[:, 0])[0],
                                     triton_norm.add_rmsnorm(h, None, w_wide[:, 0].contiguous())[0])
    results["add_rmsnorm"] = errs
    # The conv on its own: the windowed kernels (2 and 4 taps, the shorter padded) and the tile kernels
    # (5 taps), both directions, forward and the x, weight and bias gradients, against PyTorch's conv1d in
    # float64.
    errs = {}
    for K in (2, 4, 5):
        x, w, bias = (torch.randn(*s, dtype=torch.float64).requires_grad_() for s in ((2, 9, 40), (2, 40, K), (2, 40)))
        got = triton_conv.conv1d_bidir_silu(x.float(), w.float(), bias.float())
        want = triton_conv.conv1d_bidir_silu_ref(x, w, bias)
        errs.update({f"k{K}_{d}": rel(a, b) for d, a, b in zip("fb", got, want)})
        gf, gb = torch.randn(2, 9, 40, dtype=torch.float64), torch.randn(2, 9, 40, dtype=torch.float64)
        g_got = torch.autograd.grad(got, (x, w, bias), (gf.float(), gb.float()))
        g_want = torch.autograd.grad(want, (x, w, bias), (gf, gb))
        errs.update({f"k{K}_grad_{n}": rel(a, b) for n, a, b in zip(("x", "w", "bias"), g_got, g_want)})
    results["conv"] = errs
    print(json.dumps(results))
""")


TRITON_VERSION = tuple(int(x) for x in triton.__version__.split(".")[:2])


def run_in_interpreter(tmp_path, script_text: str):
    """Run ``script_text`` (given the repository's path) under TRITON_INTERPRET=1 with no GPU visible, in a process
    of its own (the interpreter is chosen when triton is imported); what its last stdout line says, as JSON."""
    script = tmp_path / "interp.py"
    script.write_text(script_text)
    env = dict(os.environ, TRITON_INTERPRET="1", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, str(script), str(REPO)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-8000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(TRITON_VERSION < (3, 7), reason="Triton 3.6's interpreter cannot loop over a scalar passed "
                    "into a nested @jit function (CI's Triton is newer)")
def test_kernels_match_reference_in_triton_interpreter(tmp_path):
    """CPU: the real kernels through TRITON_INTERPRET=1; odd/1-step/chunk-multiple lengths, masked channels."""
    results = run_in_interpreter(tmp_path, INTERPRETER_SCRIPT)
    assert set(results) == {"2x40x13", "1x32x8", "3x36x1", "2x33x6/N4", "1x40x11/tile0", "2x40x9/tile0/gate_in_scan",
                            "2x40x9/tile4/gate_in_scan", "add_rmsnorm", "conv"}
    norm_errors = results.pop("add_rmsnorm")
    assert len(norm_errors) == 10 and max(norm_errors.values()) <= 1e-6, norm_errors
    conv_errors = results.pop("conv")
    assert len(conv_errors) == 15 and max(conv_errors.values()) <= 1e-6, conv_errors
    for errors in results.values():
        assert len(errors) == 17 and max(errors.values()) <= 1e-5


def make_scan_args(Bsz, L, E, N, seed=0, dtype=torch.float32):
    """The twelve arguments of ``bimamba_scan`` in float64-exact values, as leaves that require grad."""
    g = torch.Generator().manual_seed(seed)
    shapes = [(Bsz, L, E)] * 5 + [(Bsz, L, N)] * 4 + [(2, E, N), (2, E), (2, E)]
    args = [torch.randn(*s, generator=g, dtype=torch.float64) for s in shapes]
    args[9] = -args[9].exp()  # A = -exp(A_log)
    return [a.to(dtype).requires_grad_() for a in args]


BIMAMBA_SCAN_SCRIPT = textwrap.dedent("""
    import json, sys, torch
    sys.path.insert(0, sys.argv[1])
    sys.path.insert(0, sys.argv[1] + "/tests")
    from vmm.ops import triton_bimamba
    from test_triton_bimamba import make_scan_args, rel
    triton_bimamba.BWD_CK = 4  # several checkpoint chunks
    errors = {}
    for Bsz, L, E, N in [(2, 7, 32, 4), (1, 1, 40, 16)]:
        args = make_scan_args(Bsz, L, E, N, seed=L)
        y = triton_bimamba.bimamba_scan(*args)
        ref_args = [a.detach().double().requires_grad_() for a in args]
        y_ref = triton_bimamba.bimamba_scan_ref(*ref_args)
        g = torch.randn(y_ref.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        got = torch.autograd.grad(y, args, g.float())
        want = torch.autograd.grad(y_ref, ref_args, g)
        errors[f"{Bsz}x{L}x{E}x{N}/out"] = rel(y, y_ref)
        errors.update({f"{Bsz}x{L}x{E}x{N}/grad{i}": rel(a, b) for i, (a, b) in enumerate(zip(got, want))})
    print(json.dumps(errors))
""")


@pytest.mark.skipif(TRITON_VERSION < (3, 7), reason="Triton 3.6's interpreter cannot loop over a scalar passed "
                    "into a nested @jit function (CI's Triton is newer)")
def test_bimamba_scan_matches_its_reference_in_triton_interpreter(tmp_path):
    """The public two-direction scan had no reference twin and no test; its output and all twelve gradients
    against bimamba_scan_ref in float64, masked channels and a one-step sequence included."""
    errors = run_in_interpreter(tmp_path, BIMAMBA_SCAN_SCRIPT)
    assert len(errors) == 26 and max(errors.values()) <= 1e-5, errors


EMPTY_LAYER_SCRIPT = textwrap.dedent("""
    import json, sys, torch
    sys.path.insert(0, sys.argv[1])
    sys.path.insert(0, sys.argv[1] + "/tests")
    from vmm.ops import triton_bimamba
    from vmm.ops.bimamba import DirectionWeights
    from test_triton_bimamba import make_layer
    results = {}
    for name, (Bsz, L) in {"no clips": (0, 8), "no tokens": (2, 0)}.items():
        xz, wf, wb = make_layer(2, 32, 8, seed=1)
        xz = xz[:Bsz, :L].detach().transpose(1, 2).requires_grad_()
        y = triton_bimamba.bimamba_inner_xz_triton(xz, wf, wb)
        grads = torch.autograd.grad(y.sum(), [xz, *wf, *wb])
        results[name] = {"out": list(y.shape), "grad_xz": list(grads[0].shape),
                         "grads_zero": all(not g.any() for g in grads)}
    print(json.dumps(results))
""")


@pytest.mark.skipif(TRITON_VERSION < (3, 7), reason="Triton 3.6's interpreter cannot loop over a scalar passed "
                    "into a nested @jit function (CI's Triton is newer)")
def test_the_fused_layer_takes_an_empty_batch_in_triton_interpreter(tmp_path):
    """The reference layer encodes 0 clips (or 0 tokens) to an empty result, but the fused one, the default on a
    GPU, failed in its forward and backward with "cannot reshape tensor of 0 elements" (a view's -1)."""
    results = run_in_interpreter(tmp_path, EMPTY_LAYER_SCRIPT)
    assert results == {"no clips": {"out": [0, 32, 8], "grad_xz": [0, 64, 8], "grads_zero": True},
                       "no tokens": {"out": [2, 32, 0], "grad_xz": [2, 64, 0], "grads_zero": True}}


def test_bimamba_scan_ref_is_both_directions_of_the_float64_loop():
    args = [a.detach().double() for a in make_scan_args(2, 9, 6, 3, seed=2)]
    u_f, u_b, dt_f, dt_b, z, B_f, C_f, B_b, C_b = (a.mT for a in args[:9])  # to (batch, channels, length)
    A, D, bias = args[9:]
    want = (selective_scan_float64(u_f, dt_f, A[0], B_f, C_f, D[0], z, bias[0], True)
            + selective_scan_float64(u_b, dt_b, A[1], B_b, C_b, D[1], z, bias[1], True, reverse=True))
    assert rel(triton_bimamba.bimamba_scan_ref(*args), want.mT) < 1e-12


def test_docstring_examples_run():
    import doctest
    result = doctest.testmod(triton_bimamba)
    assert result.failed == 0 and result.attempted >= 5
    from vmm.ops import _checks, _triton, norm, triton_norm
    for module in (_checks, _triton, norm, triton_conv, triton_norm):
        assert doctest.testmod(module).failed == 0


@pytest.mark.parametrize("index,bad,message", [
    (10, (6,), "bimamba_scan: D must have shape (2, 6) for u_f of shape (2, 9, 6) and A of shape (2, 6, 4), got (6,)"),
    (1, (2, 9, 7), "u_b must have shape (2, 9, 6)"),
    (5, (2, 8, 4), "B_f must have shape (2, 9, 4)"),
    (9, (6, 4), "u_f must be (batch, length, channels) and A (2, channels, state), got (2, 9, 6) and (6, 4)"),
    (4, None, "z must be a real floating-point torch.Tensor, got NoneType"),
    (8, "meta", "C_b is on meta but u_f is on cpu; move it with .to(u_f.device)"),
])
def test_bimamba_scan_arguments_are_checked_in_one_line(index, bad, message):
    """The kernel reads through raw strides: a (E,) D or a u_b with one channel more ran without any error,
    reading out of bounds."""
    from vmm.errors import VmmError
    args = [a.detach() for a in make_scan_args(2, 9, 6, 4)]
    args[index] = args[index].to("meta") if bad == "meta" else None if bad is None else torch.randn(bad)
    for fn in (triton_bimamba.bimamba_scan, triton_bimamba.bimamba_scan_ref):
        with pytest.raises(VmmError) as err:
            fn(*args)
        text = str(err.value)
        assert message.replace("bimamba_scan:", f"{fn.__name__}:") in text and "\n" not in text


@pytest.mark.parametrize("call,message", [
    (lambda f: f(torch.randn(2, 7, 8), torch.randn(8, 4), None),
     "x must be (batch, length, channels) and weight (2, channels, width), got (2, 7, 8) and (8, 4)"),
    (lambda f: f(torch.randn(2, 7, 8), torch.randn(2, 6, 4), None),
     "weight must have shape (2, 8, 4) for x of shape (2, 7, 8), got (2, 6, 4)"),
    (lambda f: f(torch.randn(2, 7, 8), torch.randn(2, 8, 4), torch.randn(8)),
     "bias must have shape (2, 8) for x of shape (2, 7, 8), got (8,)"),
    (lambda f: f(torch.randn(2, 7, 8), torch.randn(2, 8, 4), torch.randn(2, 8, device="meta")),
     "bias is on meta but x is on cpu; move it with .to(x.device)"),
    (lambda f: f(torch.randn(2, 7, 8), torch.ones(2, 8, 4, dtype=torch.int64), None),
     "weight must be a real floating-point torch.Tensor, got torch.int64"),
])
def test_conv_wrapper_arguments_are_checked_in_one_line(call, message):
    """The kernels read x, weight and bias through raw strides: a one-direction (E, K) weight, a weight of other
    channels or a (E,) bias ran without an error and returned garbage (values of 1e16 under the interpreter),
    read past the tensors' ends. The reference takes the same arguments and says the same."""
    from vmm.errors import VmmError
    for fn in (triton_conv.conv1d_bidir_silu, triton_conv.conv1d_bidir_silu_ref):
        with pytest.raises(VmmError) as err:
            call(fn)
        assert str(err.value) == f"{fn.__name__}: {message}"


@pytest.mark.parametrize("residual,weight,message", [
    ((1, 5, 64), (64,), "residual must have shape (2, 5, 64) for hidden of shape (2, 5, 64), got (1, 5, 64)"),
    ((5, 2, 64), (64,), "residual must have shape (2, 5, 64) for hidden of shape (2, 5, 64), got (5, 2, 64)"),
    (None, (32,), "weight must have shape (64,) for hidden of shape (2, 5, 64), got (32,)"),
    (None, None, "weight must be a real floating-point torch.Tensor, got NoneType"),
])
def test_add_rmsnorm_arguments_are_checked_in_one_line(residual, weight, message):
    """A residual that PyTorch would broadcast, or one of the same size in another shape, and a short weight were
    read row by row through raw pointers: no error, wrong numbers."""
    from vmm.errors import VmmError
    from vmm.ops import triton_norm
    with pytest.raises(VmmError) as err:
        triton_norm.add_rmsnorm(torch.randn(2, 5, 64), None if residual is None else torch.randn(residual),
                                None if weight is None else torch.ones(weight))
    assert str(err.value) == f"add_rmsnorm: {message}"


@pytest.mark.parametrize("which,name,bad,message", [
    ("both", "D", (5,), "bimamba: fwd.D must have shape (8,) for A_log of shape (8, 16) and dt rank 1"),
    ("both", "dt_proj_bias", (5,), "bimamba: fwd.dt_proj_bias must have shape (8,)"),
    ("bwd", "x_proj_weight", (33, 7), "bimamba: bwd.x_proj_weight must have shape (33, 8)"),
    (None, None, None, "bimamba_inner_xz_triton: xz must be (batch, 2 * channels, length) = (B, 16, L) for layer "
                       "weights of 8 channels, got (1, 12, 5)"),
])
def test_the_fused_layer_wrapper_checks_its_weights_like_the_layer(which, name, bad, message):
    """bimamba_inner_xz checked the weights before the fused kernels, but their public wrapper did not: a (5,) D
    in both directions of an 8-channel layer passed torch.stack and was read past its end (outputs of 1e19 under
    the interpreter)."""
    from vmm.errors import VmmError
    xz, wf, wb = make_layer(1, 8, 5, R=1)
    xzt = xz.detach().transpose(1, 2)
    if which is None:
        xzt = xzt[:, :12]
    if which in ("both", "bwd"):
        wb = wb._replace(**{name: torch.randn(bad)})
    if which == "both":
        wf = wf._replace(**{name: torch.randn(bad)})
    with pytest.raises(VmmError) as err:
        triton_bimamba.bimamba_inner_xz_triton(xzt, wf, wb)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_the_fused_layer_on_halves_names_a_z_that_does_not_fit_x():
    """bimamba_inner_triton(x, z) with a z of another length failed in torch.cat ("Sizes of tensors must match"),
    where the reference says which argument is wrong."""
    from vmm.errors import VmmError
    _, wf, wb = make_layer(1, 8, 5, R=1)
    with pytest.raises(VmmError, match=r"^bimamba_inner_triton: x and z must both be \(batch, channels, length\), "
                                       r"of one shape; got \(2, 8, 11\) and \(2, 8, 9\)$"):
        triton_bimamba.bimamba_inner_triton(torch.randn(2, 8, 11), torch.randn(2, 8, 9), wf, wb)


def test_fused_wrappers_on_cpu_without_the_interpreter_are_one_line_errors(monkeypatch):
    """They failed with Triton's "0 active drivers" from deep inside the launch."""
    from vmm.errors import VmmError
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    xz, wf, wb = make_layer(1, 8, 5, R=1)
    from vmm.ops import _triton, triton_norm
    calls = {"bimamba_scan_ref": lambda: triton_bimamba.bimamba_scan(*make_scan_args(1, 5, 8, 16)),
             "backend='reference'": lambda: triton_bimamba.bimamba_inner_xz_triton(xz.transpose(1, 2), wf, wb),
             # these two still failed that way
             "conv1d_bidir_silu_ref": lambda: triton_conv.conv1d_bidir_silu(torch.randn(2, 7, 64),
                                                                            torch.randn(2, 64, 4), None),
             "add_rmsnorm_ref": lambda: triton_norm.add_rmsnorm(torch.randn(2, 5, 64), None, torch.ones(64))}
    for fix, call in calls.items():
        with pytest.raises(VmmError, match="cannot run on cpu .*TRITON_INTERPRET=1") as err:
            call()
        assert fix in str(err.value) and "\n" not in str(err.value)
    # Triton reads "false" as no interpreter: the launch still failed with "0 active drivers" here.
    monkeypatch.setenv("TRITON_INTERPRET", "false")
    with pytest.raises(VmmError, match="cannot run on cpu .*TRITON_INTERPRET=1"):
        triton_conv.conv1d_bidir_silu(torch.randn(2, 7, 64), torch.randn(2, 64, 4), None)
    # Without triton installed, even the interpreter has nothing to run: was an AttributeError on None.
    monkeypatch.setattr(_triton, "HAS_TRITON", False)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    for fix, call in calls.items():
        with pytest.raises(VmmError, match="need the triton package \\(pip install triton\\), or use") as err:
            call()
        assert fix in str(err.value) and "\n" not in str(err.value)


@pytest.mark.cuda
@pytest.mark.parametrize("Bsz,E,L", [(2, 72, 1), (3, 64, 37), (2, 96, 257), (1, 160, 1000)])
def test_cuda_fp32_matches_reference(Bsz, E, L):
    xz, wf, wb = make_layer(Bsz, E, L, device="cuda", seed=E + L)
    check_against_reference(xz, wf, wb, tol=1e-5)


@pytest.mark.cuda
@pytest.mark.parametrize("tile,gate_in_scan,prefetch,prefetch_bc",
                         [(0, False, 0, 0), (2, False, 0, 8), (8, False, 0, 0), (16, False, 0, 16), (4, True, 0, 8),
                          (0, True, 0, 0), (4, False, 16, 4), (2, True, 32, 32), (4, False, 32, 0)])
def test_cuda_forward_variants_match_reference(tile, gate_in_scan, prefetch, prefetch_bc, monkeypatch):
    """The step-at-a-time and 2-, 8- and 16-step-tile forward kernels (the default tile is 4), the SiLU gate
    applied inside each direction's scan instead of once in the add, and the L2 (u, dt) and L1 (B, C)
    prefetches of the rows ahead, on and off."""
    monkeypatch.setattr(triton_bimamba, "FWD_TILE", tile)
    monkeypatch.setattr(triton_bimamba, "FWD_GATE_IN_SCAN", gate_in_scan)
    monkeypatch.setattr(triton_bimamba, "FWD_PREFETCH", prefetch)
    monkeypatch.setattr(triton_bimamba, "FWD_PREFETCH_BC", prefetch_bc)
    xz, wf, wb = make_layer(2, 96, 77, device="cuda", seed=tile)
    check_against_reference(xz, wf, wb, tol=1e-5)
    xz, wf, wb = make_layer(2, 128, 197, dtype=torch.bfloat16, device="cuda", seed=tile)
    check_against_reference(xz, wf, wb, tol=1e-2)


@pytest.mark.cuda
@pytest.mark.parametrize("block_e", [8, 16, 64])
def test_cuda_channel_blocks_match_reference(block_e, monkeypatch):
    """Other channel blocks per program (lanes split over states below 32) in the forward and backward."""
    monkeypatch.setattr(triton_bimamba, "FWD_BLOCK_E", block_e)
    monkeypatch.setattr(triton_bimamba, "BWD_BLOCK_E", block_e)
    xz, wf, wb = make_layer(2, 72, 101, device="cuda", seed=block_e)
    check_against_reference(xz, wf, wb, tol=1e-5)


@pytest.mark.cuda
@pytest.mark.parametrize("Bsz,E,L", [(2, 128, 197), (2, 192, 1569)])
def test_cuda_bf16_matches_reference(Bsz, E, L):
    xz, wf, wb = make_layer(Bsz, E, L, dtype=torch.bfloat16, device="cuda", seed=E)
    check_against_reference(xz, wf, wb, tol=1e-2)


@pytest.mark.cuda
def test_cuda_scan_writes_every_output_and_is_deterministic_forward():
    """Poisoned output buffers are fully overwritten, and two forward runs agree bit for bit."""
    xz, wf, wb = make_layer(2, 96, 131, device="cuda", seed=3)
    x, z = split(xz)
    with torch.no_grad():
        y1 = triton_bimamba.bimamba_inner_triton(x, z, wf, wb)
        torch.cuda.empty_cache()
        poison = torch.full((1 << 22,), float("nan"), device="cuda")  # recycled memory now holds NaN
        del poison
        y2 = triton_bimamba.bimamba_inner_triton(x, z, wf, wb)
    assert torch.isfinite(y2).all()
    assert torch.equal(y1, y2)


@pytest.mark.cuda
@pytest.mark.parametrize("K,L,E,dtype", [(4, 50, 96, torch.float32), (4, 1569, 1152, torch.bfloat16),
                                         (4, 600, 200, torch.float32), (3, 130, 300, torch.float32),
                                         (2, 7, 40, torch.float32), (5, 70, 96, torch.float32)])
def test_cuda_conv_kernel_matches_torch(K, L, E, dtype):
    """The windowed kernels (up to 4 taps; rows and channels not multiples of their blocks, several backward
    programs along L at L=600) and the tile kernels (5 taps) against PyTorch's conv1d, both directions, forward
    and the x, weight and bias gradients (these against float64)."""
    x = torch.randn(2, L, E, device="cuda").to(dtype).requires_grad_()
    w = torch.randn(2, E, K, device="cuda", requires_grad=True)
    b = torch.randn(2, E, device="cuda", requires_grad=True)
    yf, yb = triton_conv.conv1d_bidir_silu(x, w, b)
    rf, rb = triton_conv.conv1d_bidir_silu_ref(x, w, b)
    tol = 1e-6 if dtype == torch.float32 else 1e-2
    assert rel(yf.float(), rf.float()) < tol and rel(yb.float(), rb.float()) < tol
    gf, gb = torch.randn_like(yf), torch.randn_like(yb)
    got = torch.autograd.grad((yf, yb), (x, w, b), (gf, gb))
    leaves64 = [t.detach().double().requires_grad_() for t in (x, w, b)]
    want = torch.autograd.grad(triton_conv.conv1d_bidir_silu_ref(*leaves64), leaves64, (gf.double(), gb.double()))
    tol_grad = 1e-5 if dtype == torch.float32 else 1e-2
    for name, g1, g2 in zip(("x", "w", "bias"), got, want):
        assert rel(g1, g2) < tol_grad, name


@pytest.mark.cuda
def test_cuda_library_model_fused_path_matches_reference():
    """vmm's own model on CUDA: the automatic (fused Triton layer and add + RMSNorm) path against the reference
    backend, outputs and every parameter gradient, with drop path on (same random masks on both paths)."""
    import vmm
    model = vmm.create_model("videomamba_tiny", depth=3, num_frames=2, img_size=32, num_classes=4,
                             drop_path_rate=0.2).cuda().train()
    video = torch.randn(2, 3, 2, 32, 32, device="cuda")
    results = {}
    for backend in (None, "reference"):
        model.set_scan_backend(backend)
        model.zero_grad()
        torch.manual_seed(0)
        out = model(video)
        out.pow(2).sum().backward()
        results[backend] = (out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                                           if p.grad is not None})
    (y, g), (y_ref, g_ref) = results[None], results["reference"]
    assert rel(y, y_ref) < 1e-4
    assert g.keys() == g_ref.keys() and len(g) > 30
    bad = {n: rel(g[n], g_ref[n]) for n in g if not rel(g[n], g_ref[n]) < 1e-3}
    assert not bad, bad


@pytest.mark.cuda
def test_cuda_patch_embed_gemm_matches_conv():
    """On CUDA the patch embedding runs as one GEMM over patches; it must equal the official Conv3d."""
    import vmm
    model = vmm.create_model("videomamba_tiny", depth=1, num_frames=4, num_classes=0).cuda()
    x = torch.randn(2, 3, 4, 224, 224, device="cuda")
    proj = model.patch_embed.proj
    with torch.no_grad():  # the reference in float64: cuDNN may run a float32 conv in TF32
        got = model.patch_embed(x)
        want = F.conv3d(x.double(), proj.weight.double(), proj.bias.double(), stride=proj.stride)
    assert got.shape == want.shape and rel(got, want) < 1e-5


def test_kernel_sass_tool_reads_the_kernels(tmp_path):
    """benchmarks/kernel_sass.py compiles the scan and windowed conv kernels for sm_90 on this CPU machine,
    finds their loops, and reports what each loop carries: the check the interpreter cannot make (it runs
    plain Python, where a loop keeps every name)."""
    env = dict(os.environ, TRITON_CACHE_DIR=str(tmp_path))
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "kernel_sass.py")], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    fwd, rest = proc.stdout.split("_bimamba_bwd_kernel")
    bwd, conv_fwd, conv_bwd = rest.split("_conv_bidir_")
    # Under the register cap the forward keeps at most a value or two on the stack (tile 4 at 96 registers: one
    # store and one load per 4 steps); a cap that spills the states shows as a stack of 64 bytes or more.
    assert "_bimamba_fwd_kernel" in fwd and int(re.search(r"registers, stack (\d+) bytes", fwd).group(1)) <= 16
    counts = [[int(n) for n in re.findall(r"loop L_x_\d+: (\d+) instructions", part)]
              for part in (fwd, bwd, conv_fwd, conv_bwd)]
    assert [len(c) for c in counts] == [2, 6, 1, 1]  # scans: one loop per direction, three per direction
    assert "MUFU" in fwd and "SHFL" in bwd  # exp2 in the forward; the shuffle reduce-scatter in the backward
    assert "stack 0 bytes" in conv_fwd and "stack 0 bytes" in conv_bwd
    # The windowed conv backward carries its 7 x rows, 3 + 6 gp values, 8 dw and 2 dbias sums; the forward its
    # 4 x rows. Fewer means a window shift was dropped from the loop.
    assert "loops carry [4] values" in conv_fwd and "loops carry [26] values" in conv_bwd


@pytest.mark.parametrize("value,interprets", [("1", True), ("true", True), ("on", True), ("0", False),
                                              ("false", False), ("off", False), ("", False)])
def test_the_interpreter_switch_is_read_as_triton_reads_it(monkeypatch, value, interprets):
    """Any value but "0" counted as interpreting, so TRITON_INTERPRET=false gave a GPU the kernels' slow
    interpreter paths while Triton compiled for it."""
    from vmm.ops import _triton
    monkeypatch.setenv("TRITON_INTERPRET", value)
    assert _triton.interpreting() is interprets
    if hasattr(triton, "knobs"):  # Triton 3.4+: its own reading
        assert triton.knobs.runtime.interpret is interprets


def test_forward_keeps_state_checkpoints_only_when_a_backward_can_follow():
    """Inference (no_grad, or inputs without grad) must not pay for the backward's checkpoints, although
    ``ctx.needs_input_grad`` is True under no_grad for parameters."""
    w = torch.zeros(3, requires_grad=True)
    x = torch.zeros(3)
    assert triton_bimamba._builds_graph(x, w, None)
    assert not triton_bimamba._builds_graph(x, None)
    with torch.no_grad():
        assert not triton_bimamba._builds_graph(x, w)
    with torch.inference_mode():
        assert not triton_bimamba._builds_graph(x, w)


def test_fused_kernels_available_only_on_nvidia_gpus_that_run_them(monkeypatch):
    """CPU devices, GPUs older than sm_70 and ROCm builds (whose devices are also "cuda") take the reference
    backends instead of failing at the first kernel compile."""
    from vmm.ops import _triton
    assert not _triton.is_available(torch.device("cpu"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.version, "hip", None, raising=False)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert _triton.is_available(torch.device("cuda:0")) and _triton.is_available()
    assert not _triton.is_available(torch.device("cpu"))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (6, 1))
    assert not _triton.is_available(torch.device("cuda:0"))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(torch.version, "hip", "6.2")
    assert not _triton.is_available(torch.device("cuda:0"))


def test_asking_for_triton_where_it_cannot_run_is_a_one_line_error():
    """backend="triton" on a CPU tensor (or without Triton / an NVIDIA GPU): a VmmError naming the fix, from the
    layer entry the model uses and from the split-halves one, and the norm quietly stays in PyTorch."""
    from vmm.errors import VmmError
    from vmm.models.layers import RMSNorm
    xz, wf, wb = make_layer(1, 8, 5, R=1)
    for call in (lambda: bimamba.bimamba_inner_xz(xz.transpose(1, 2), wf, wb, backend="triton"),
                 lambda: bimamba.bimamba_inner(*split(xz), wf, wb, backend="triton")):
        with pytest.raises(VmmError) as err:
            call()
        message = str(err.value)
        assert "\n" not in message and "backend='reference'" in message and "NVIDIA GPU" in message
    normed, residual = RMSNorm(16).add_forward(xz, None, backend="triton")
    assert normed.shape == xz.shape and residual.dtype == torch.float32


def test_a_d_state_the_fused_kernels_cannot_build_takes_the_reference(monkeypatch):
    """The kernels hold the states in a tl.arange(0, d_state) block, which Triton builds only for a power of
    two: a model with d_state 12 failed on its first GPU clip with a Triton compile error. Now the automatic
    choice runs such a layer with the reference, and asking for "triton" by name is a one-line error."""
    from vmm.errors import VmmError
    from vmm.ops import _triton
    xz, wf, wb = make_layer(1, 8, 5, N=12, R=1)
    xzt = xz.detach().transpose(1, 2)
    want = bimamba.bimamba_inner_xz(xzt, wf, wb, backend="reference")
    monkeypatch.setattr(bimamba, "use_triton", lambda t, backend: True)  # as on a CUDA tensor with Triton
    assert torch.equal(bimamba.bimamba_inner_xz(xzt, wf, wb), want)
    assert torch.equal(bimamba.bimamba_inner(*split(xz.detach()), wf, wb), want)
    monkeypatch.setattr(_triton, "is_available", lambda device=None: True)
    for call in (lambda: bimamba.bimamba_inner_xz(xzt, wf, wb, backend="triton"),
                 lambda: triton_bimamba.bimamba_inner_xz_triton(xzt, wf, wb)):
        with pytest.raises(VmmError, match="d_state=12 \\(the fused kernels need a power of two\\)") as err:
            call()
        assert "\n" not in str(err.value)
    assert [_triton.unsupported_layer(n) is None for n in (1, 2, 16, 64, 0, 3, 24)] == [True] * 4 + [False] * 3
    monkeypatch.setattr(bimamba, "_logged", set())
    with pytest.warns(RuntimeWarning, match="cannot run a layer with d_state=12 .*use a power-of-two d_state"):
        bimamba._warn_reference_on_gpu(xzt, _triton.unsupported_layer(12))  # what a CUDA tensor gets


def test_the_fused_kernels_name_the_one_reason_they_cannot_run(monkeypatch):
    """The warning on a GPU told everyone to "install triton", also those who had it on a ROCm build or an sm_61
    GPU, where installing it changes nothing. Each cause now has its own reason and fix, in the warning and in
    the error for backend="triton"."""
    import types
    import warnings

    from vmm.errors import VmmError
    from vmm.ops import _triton
    cuda = torch.device("cuda:0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.version, "hip", None, raising=False)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert _triton.unavailable_reason(cuda) is None
    cases = [("get_device_capability", lambda device=None: (6, 1), "compute capability 6.1 (they need 7.0+)",
              "use a GPU of compute capability 7.0+"),
             ("hip", "6.2", "ROCm build", "use an NVIDIA GPU"),
             ("HAS_TRITON", False, "without the triton package", "pip install triton")]
    for name, value, reason, fix in cases:
        with monkeypatch.context() as patch:
            patch.setattr(_triton if name == "HAS_TRITON" else torch.version if name == "hip" else torch.cuda,
                          name, value)
            assert not _triton.is_available(cuda)
            assert reason in _triton.unavailable_reason(cuda)[0] and fix in _triton.unavailable_reason(cuda)[1]
            patch.setattr(bimamba, "_logged", set())
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                bimamba._warn_reference_on_gpu(types.SimpleNamespace(device=cuda))  # what a CUDA tensor gets
            message = str(caught[0].message)
            assert reason in message and fix in message and "\n" not in message
            assert ("pip install triton" in message) == (name == "HAS_TRITON")
    xz, wf, wb = make_layer(1, 8, 5, R=1)
    with pytest.raises(VmmError, match=r"cannot run on cpu \(they need an NVIDIA GPU .*backend='reference'") as err:
        bimamba.bimamba_inner_xz(xz.detach().transpose(1, 2), wf, wb, backend="triton")
    assert "pip install triton" not in str(err.value)  # triton is installed here: the CPU is the reason


def test_a_misspelt_backend_lists_every_layer_backend():
    """A model's scan_backend set by hand ("Triton") reached selective_scan, whose list of names left out
    "triton", the one the user most likely meant."""
    from vmm.errors import VmmError
    xz, wf, wb = make_layer(1, 8, 5, R=1)
    xzt = xz.detach().transpose(1, 2)
    for call in (lambda: bimamba.bimamba_inner_xz(xzt, wf, wb, backend="Triton"),
                 lambda: bimamba.bimamba_inner(*split(xz.detach()), wf, wb, backend="Triton")):
        with pytest.raises(VmmError, match=r"^unknown scan backend 'Triton'; choose one of mamba_ssm, reference, "
                                           r"triton or None for automatic choice$"):
            call()


def _reference_path_warnings(device, backend, monkeypatch):
    import warnings
    from vmm.ops import _triton, bimamba
    monkeypatch.setattr(bimamba, "_logged", set())
    monkeypatch.setattr(_triton, "is_available", lambda device=None: False)  # as without triton
    xz, wf, wb = make_layer(1, 16, 9, device=device, seed=0)
    x, z = xz.detach().transpose(1, 2).chunk(2, dim=1)  # (B, E, L) each
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            bimamba.bimamba_inner(x, z, wf, wb, backend=backend)
    return [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]


def test_reference_scan_on_the_cpu_is_no_warning(monkeypatch):
    assert _reference_path_warnings("cpu", None, monkeypatch) == []


@pytest.mark.cuda
def test_a_gpu_without_the_fused_kernels_is_warned_once(monkeypatch):
    caught = _reference_path_warnings("cuda", None, monkeypatch)
    assert len(caught) == 1 and "run the PyTorch reference scan" in caught[0]
    assert _reference_path_warnings("cuda", "reference", monkeypatch) == []  # chosen by name: no surprise


@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_kernels_run_on_the_tensors_gpu_not_the_current_one():
    """Layer, conv and add + RMSNorm on cuda:1 while cuda:0 is current (a rank that never called set_device),
    forward and backward, give what they give on cuda:0 (to float rounding: the backward sums with atomics)."""
    from vmm.ops import triton_norm

    results = {}
    for device in ("cuda:0", "cuda:1"):
        torch.cuda.set_device(0)
        xz, wf, wb = make_layer(2, 64, 37, device=device, seed=3)
        y = triton_bimamba.bimamba_inner_xz_triton(xz.transpose(1, 2), wf, wb)
        h = torch.randn(2, 37, 64, generator=torch.Generator().manual_seed(4)).to(device).requires_grad_()
        normed, residual = triton_norm.add_rmsnorm(h, None, torch.ones(64, device=device))
        yf, yb = triton_conv.conv1d_bidir_silu(h, torch.randn(2, 64, 4, generator=torch.Generator().manual_seed(5))
                                               .to(device), None)
        loss = y.square().sum() + normed.sum() + residual.sum() + (yf * yb).sum()
        grads = torch.autograd.grad(loss, [xz, h, *wf])
        results[device] = [t.detach().cpu() for t in (y, normed, yf, yb, *grads)]
        assert torch.cuda.current_device() == 0
    for a, b in zip(results["cuda:0"], results["cuda:1"]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
