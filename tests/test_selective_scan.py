"""The selective scan and causal conv against plain loops written from the equations, their gradients, and the
backend choice. CPU tests use small channel counts; CUDA tests compare the mamba-ssm / causal-conv1d kernels with
the reference and are skipped where those are not installed."""
import importlib.util
import logging

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from vmm.errors import VmmError
from vmm.ops import (available_backends, causal_conv1d, causal_conv1d_ref, register_backend, selective_scan,
                     selective_scan_ref, unregister_backend)

scan_module = importlib.import_module("vmm.ops.selective_scan")
mamba_backend = importlib.import_module("vmm.ops.mamba_ssm_backend")


# ------------------------------------------------------------------------------------------------ oracles

def naive_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, reverse=False,
               return_last_state=False):
    """h_t = exp(delta_t A) h_prev + delta_t B_t u_t; y_t = <h_t, C_t> + D u_t; y *= SiLU(z); float64, one
    position at a time. B and C may have a group dimension (batch, groups, state, length): each channel reads
    its group's row. Differentiable, so its autograd gradients are the gradient oracle. With
    ``return_last_state``, (y, the last h in scan order: position 0 with reverse=True)."""
    u, delta, A, B, C = (t.double() for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.double()[:, None]
    if delta_softplus:
        delta = torch.log1p(torch.exp(delta))
    batch, channels, length = u.shape
    # (batch, channels, state, length): one row of B and C per channel
    B, C = ((t if t.dim() == 4 else t[:, None]) for t in (B, C))
    B, C = (t.repeat_interleave(channels // t.shape[1], dim=1) for t in (B, C))
    h = torch.zeros(batch, channels, A.shape[1], dtype=torch.float64)
    ys = [None] * length
    for t in (reversed(range(length)) if reverse else range(length)):
        decay = torch.exp(delta[:, :, t, None] * A)
        h = decay * h + (delta[:, :, t] * u[:, :, t])[:, :, None] * B[..., t]
        ys[t] = (h * C[..., t]).sum(-1)
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + D.double()[:, None] * u
    if z is not None:
        z = z.double()
        y = y * z * torch.sigmoid(z)
    return (y, h) if return_last_state else y


def naive_conv(x, weight, bias, silu, reverse):
    """out[t] = bias + sum_k w[k] x[t - (K-1) + k] (causal) or w[k] x[t + (K-1) - k] (anti-causal)."""
    x, w = x.double(), weight.reshape(weight.shape[0], -1).double()
    K = w.shape[1]
    L = x.shape[-1]
    out = torch.zeros_like(x) if bias is None else bias.double()[:, None].expand_as(x).clone()
    for t in range(L):
        for k in range(K):
            src = t + (K - 1) - k if reverse else t - (K - 1) + k
            if 0 <= src < L:
                out[:, :, t] += w[:, k] * x[:, :, src]
    return F.silu(out) if silu else out


def rel_err(got, want):
    return ((got.double() - want.double()).abs().max() / want.double().abs().max().clamp_min(1e-30)).item()


def make_inputs(batch, channels, length, state=4, dtype=torch.float64, seed=0, softplus=True):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)

    return dict(
        u=rnd(batch, channels, length),
        # raw delta goes through softplus; without it delta must already be a positive step
        delta=rnd(batch, channels, length, scale=0.5) if softplus else (torch.rand(
            batch, channels, length, generator=g, dtype=torch.float64) * 0.5).to(dtype),
        A=-torch.exp(rnd(channels, state, scale=0.7)).to(dtype),
        B=rnd(batch, state, length),
        C=rnd(batch, state, length),
        D=rnd(channels),
        z=rnd(batch, channels, length),
        delta_bias=rnd(channels, scale=0.3),
    )


OPTION_SETS = {
    "plain": dict(D=False, z=False, delta_bias=False, softplus=False),
    "D_only": dict(D=True, z=False, delta_bias=False, softplus=False),
    "gate_softplus": dict(D=False, z=True, delta_bias=False, softplus=True),
    "all": dict(D=True, z=True, delta_bias=True, softplus=True),
}


def scan_args(inputs, opts):
    kwargs = {k: inputs[k] for k in ("u", "delta", "A", "B", "C")}
    for name in ("D", "z", "delta_bias"):
        kwargs[name] = inputs[name] if opts[name] else None
    kwargs["delta_softplus"] = opts["softplus"]
    return kwargs


@pytest.fixture(params=["default_blocks", "tiny_blocks"])
def block_elems(request, monkeypatch):
    """Tiny blocks make every test cross many block boundaries with a ragged last block."""
    if request.param == "tiny_blocks":
        monkeypatch.setattr(scan_module, "_BLOCK_ELEMS", 50)
    return request.param


# ------------------------------------------------------------------------------------------------ forward

@pytest.mark.parametrize("length", [1, 2, 7, 63, 130])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("options", list(OPTION_SETS))
def test_reference_matches_naive_loop(length, reverse, options, block_elems):
    opts = OPTION_SETS[options]
    inputs = make_inputs(2, 3, length, softplus=opts["softplus"], seed=length)
    want = naive_scan(**scan_args(inputs, opts), reverse=reverse)
    got64 = selective_scan_ref(**scan_args(inputs, opts), reverse=reverse)
    assert got64.dtype == torch.float64
    assert rel_err(got64, want) < 1e-12
    inputs32 = {k: v.float() for k, v in inputs.items()}
    got32 = selective_scan_ref(**scan_args(inputs32, opts), reverse=reverse)
    assert got32.dtype == torch.float32
    assert rel_err(got32, want) < 2e-6


@pytest.mark.parametrize("reverse", [False, True])
def test_full_clip_length_fp32_is_exact_to_1e6(reverse):
    """L = 1569 (8 frames of 196 patches + CLS) with realistic magnitudes: softplus steps up to ~3, A down to -16."""
    g = torch.Generator().manual_seed(7)
    E, N, L = 4, 16, 1569
    u = torch.randn(1, E, L, generator=g)
    delta = torch.randn(1, E, L, generator=g) * 1.5 - 1.0
    A = -torch.arange(1, N + 1, dtype=torch.float32).repeat(E, 1) * torch.rand(E, 1, generator=g).add(0.5)
    B, C = torch.randn(1, N, L, generator=g), torch.randn(1, N, L, generator=g)
    D, z, bias = torch.randn(E, generator=g), torch.randn(1, E, L, generator=g), torch.randn(E, generator=g) * 0.1
    want = naive_scan(u, delta, A, B, C, D, z, bias, True, reverse)
    got = selective_scan_ref(u, delta, A, B, C, D, z, bias, True, reverse)
    assert rel_err(got, want) < 1e-6


def test_reverse_equals_flip_forward_flip(block_elems):
    inputs = make_inputs(2, 5, 130, state=16, dtype=torch.float32, seed=3)
    kw = scan_args(inputs, OPTION_SETS["all"])
    flipped = {k: (v.flip(-1) if k in ("u", "delta", "B", "C", "z") else v) for k, v in kw.items()}
    via_flip = selective_scan_ref(**flipped).flip(-1)
    assert rel_err(selective_scan_ref(**kw, reverse=True), via_flip) < 1e-6


def test_extreme_decays_underflow_to_zero_without_nan():
    """delta*A far below exp's range (state forgotten at once) and tiny decays both match the float64 loop."""
    inputs = make_inputs(1, 3, 40, dtype=torch.float32, softplus=False)
    inputs["delta"] = torch.full_like(inputs["delta"], 30.0)
    inputs["delta"][:, :, ::3] = 1e-3
    inputs["A"] = inputs["A"] * 100
    kw = scan_args(inputs, OPTION_SETS["D_only"])
    got = selective_scan_ref(**kw)
    assert torch.isfinite(got).all()
    assert rel_err(got, naive_scan(**kw)) < 2e-6


def test_low_precision_inputs_compute_in_fp32_and_keep_dtype():
    inputs = make_inputs(2, 4, 50, dtype=torch.float32)
    kw32 = scan_args(inputs, OPTION_SETS["all"])
    want = selective_scan_ref(**kw32)
    for dtype in (torch.bfloat16, torch.float16):
        kw = {k: (v.to(dtype) if torch.is_tensor(v) and k in ("u", "delta", "B", "C", "z") else v)
              for k, v in kw32.items()}
        got = selective_scan_ref(**kw)
        assert got.dtype == dtype
        assert rel_err(got, want) < 3e-2


def test_batches_are_independent():
    inputs = make_inputs(3, 4, 30, dtype=torch.float32)
    kw = scan_args(inputs, OPTION_SETS["all"])
    whole = selective_scan_ref(**kw)
    for b in range(3):
        one = {k: (v[b:b + 1] if torch.is_tensor(v) and v.dim() == 3 else v) for k, v in kw.items()}
        assert torch.allclose(selective_scan_ref(**one), whole[b:b + 1], rtol=1e-5, atol=1e-6)


def test_shape_errors_name_the_argument():
    inputs = make_inputs(2, 3, 10)
    kw = scan_args(inputs, OPTION_SETS["all"])
    kw["B"] = kw["B"][:, :, :5]
    with pytest.raises(VmmError, match="B must have shape"):
        selective_scan_ref(**kw)
    with pytest.raises(VmmError, match="A must be"):
        selective_scan_ref(inputs["u"], inputs["delta"], inputs["A"][:2], inputs["B"], inputs["C"])


@pytest.mark.parametrize("name,value,message", [
    ("delta", None, "delta must be a torch.Tensor, got NoneType"),
    ("D", 1.0, "D must be a torch.Tensor or None, got float"),
    ("u", "numpy", "u must be a torch.Tensor, got ndarray"),
    ("u", "int", "u must be a real floating-point tensor, got torch.int64"),
    ("B", "complex", "B must be a real floating-point tensor, got torch.complex64"),
    ("A", "int", "A must be a real floating-point tensor, got torch.int64"),
    ("B", "meta", "B is on meta but u is on cpu; move it with .to(u.device)"),
    ("delta_bias", "meta", "delta_bias is on meta but u is on cpu"),
])
def test_public_api_refuses_non_tensors_and_non_float_inputs_in_one_line(name, value, message):
    """These were AttributeErrors from inside the backend choice, an integer output truncated from a float32
    scan, complex B cast to real with only a torch warning, or a tensor on another device failing deep inside
    the scan without naming it (meta stands in for a GPU here)."""
    kw = scan_args(make_inputs(2, 3, 6, dtype=torch.float32), OPTION_SETS["all"])
    convert = {"numpy": lambda t: t.numpy(), "int": lambda t: t.long(), "complex": lambda t: t.cfloat(),
               "meta": lambda t: t.to("meta")}
    kw[name] = convert[value](kw[name]) if isinstance(value, str) else value
    for fn in (selective_scan, selective_scan_ref):
        with pytest.raises(VmmError) as err:
            fn(**kw)
        assert message in str(err.value) and "\n" not in str(err.value)


def test_shapes_are_checked_before_any_backend_runs(monkeypatch):
    """A kernel backend (mamba-ssm's) would meet a bad shape deep inside its extension: selective_scan itself
    names the argument, whichever backend is chosen."""
    monkeypatch.setattr(scan_module, "_SCAN_BACKENDS", dict(scan_module._SCAN_BACKENDS))
    calls = []
    register_backend("kernel", lambda *a, **k: calls.append(1), available=lambda t: True, priority=50)
    kw = scan_args(make_inputs(2, 3, 10, dtype=torch.float32), OPTION_SETS["all"])
    for bad in (dict(B=kw["B"][:, :, :5]), dict(delta_bias=kw["delta_bias"][:2]), dict(u=kw["u"][0])):
        with pytest.raises(VmmError, match=f"{next(iter(bad))} must"):
            selective_scan(**{**kw, **bad}, backend="kernel")
    assert calls == []


@pytest.mark.parametrize("reverse", [False, True])
def test_zero_states_leave_the_skip_term(reverse):
    """d_state 0: no recurrence, y = D u (the exp2 range check used to fail on an empty A)."""
    kw = scan_args(make_inputs(2, 3, 7, state=0), OPTION_SETS["D_only"])
    u = kw["u"].clone().requires_grad_(True)
    y = selective_scan(**{**kw, "u": u}, reverse=reverse)
    assert torch.equal(y, kw["D"][:, None] * kw["u"])
    y.sum().backward()
    assert torch.equal(u.grad, kw["D"][:, None].expand_as(u))


# ------------------------------------------------------------------------------------------------ gradients

GRAD_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def scan_grads(fn, inputs, opts, reverse, dtype=torch.float64):
    """Gradients of sum(w * fn(...)) for fixed random weights w, for every input the options pass."""
    leaves = {k: v.detach().to(dtype).clone().requires_grad_(True) for k, v in inputs.items()}
    kw = scan_args(leaves, opts)
    y = fn(**kw, reverse=reverse).double()
    weights = torch.randn(y.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(99))
    (y * weights).sum().backward()
    return {k: leaves[k].grad for k in GRAD_NAMES if kw.get(k, None) is not None}


@pytest.mark.parametrize("length", [1, 7, 130])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("options", ["all", "plain", "D_only"])
def test_gradients_match_naive_autograd(length, reverse, options, block_elems):
    opts = OPTION_SETS[options]
    inputs = make_inputs(2, 3, length, softplus=opts["softplus"], seed=11 + length)
    want = scan_grads(naive_scan, inputs, opts, reverse)
    got64 = scan_grads(selective_scan_ref, inputs, opts, reverse)
    got32 = scan_grads(selective_scan_ref, inputs, opts, reverse, torch.float32)
    assert set(got64) == set(want)
    for name in want:
        assert rel_err(got64[name], want[name]) < 1e-10, name
        assert got32[name].dtype == torch.float32
        assert rel_err(got32[name], want[name]) < 2e-5, name


@pytest.mark.parametrize("groups", [1, 2, 6])
@pytest.mark.parametrize("reverse", [False, True])
def test_grouped_B_and_C_match_the_loop_with_gradients(groups, reverse, block_elems):
    """mamba-ssm's selective_scan_fn takes B and C as (batch, groups, state, length), channel e reading group
    e // (channels / groups); the reference refused that shape."""
    inputs = make_inputs(2, 6, 9, state=3, seed=groups)
    g = torch.Generator().manual_seed(groups)
    inputs["B"], inputs["C"] = (torch.randn(2, groups, 3, 9, generator=g, dtype=torch.float64) for _ in "BC")
    opts = OPTION_SETS["all"]
    got = selective_scan(**scan_args(inputs, opts), reverse=reverse)
    assert rel_err(got, naive_scan(**scan_args(inputs, opts), reverse=reverse)) < 1e-12
    if groups == 1:  # one group spelled out is the 3-D layout
        flat = {**inputs, "B": inputs["B"][:, 0], "C": inputs["C"][:, 0]}
        assert torch.equal(got, selective_scan(**scan_args(flat, opts), reverse=reverse))
    want = scan_grads(naive_scan, inputs, opts, reverse)
    for name, grad in scan_grads(selective_scan_ref, inputs, opts, reverse).items():
        assert grad.shape == inputs[name].shape and rel_err(grad, want[name]) < 1e-10, name


@pytest.mark.parametrize("B_shape,C_shape,message", [
    ((2, 4, 3, 5), (2, 4, 3, 5), "B of shape (2, 4, 3, 5) has 4 groups, which must be at least 1 and divide the 6"),
    ((2, 0, 3, 5), (2, 0, 3, 5), "has 0 groups"),
    ((2, 2, 3, 5), (2, 3, 3, 5), "C must have shape (2, 2, 3, 5)"),
    ((2, 3, 5), (2, 2, 3, 5), "C must have shape (2, 3, 5)"),
])
def test_bad_groups_are_one_line_errors(B_shape, C_shape, message):
    kw = scan_args(make_inputs(2, 6, 5, state=3), OPTION_SETS["plain"])
    with pytest.raises(VmmError) as err:
        selective_scan(**{**kw, "B": torch.randn(B_shape, dtype=torch.float64),
                          "C": torch.randn(C_shape, dtype=torch.float64)})
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("shape", [(2, 3, 0), (0, 3, 4), (2, 0, 4)])
def test_empty_inputs_have_empty_zero_gradients(shape):
    """An empty batch, sequence or channel set used to return a tensor outside the graph, so backward()
    failed with "element 0 of tensors does not require grad"."""
    inputs = make_inputs(*shape)
    opts = OPTION_SETS["all"]
    grads = scan_grads(selective_scan_ref, inputs, opts, reverse=False)
    assert set(grads) == set(GRAD_NAMES)
    for name, grad in grads.items():
        assert grad.shape == inputs[name].shape and not grad.any(), name


@pytest.mark.parametrize("reverse", [False, True])
def test_gradcheck_float64(reverse, monkeypatch):
    monkeypatch.setattr(scan_module, "_BLOCK_ELEMS", 1)  # one position per block: every boundary is exercised
    inputs = make_inputs(2, 3, 5, state=2, seed=5)
    order = GRAD_NAMES
    leaves = tuple(inputs[k].clone().requires_grad_(True) for k in order)

    def fn(*tensors):
        kw = dict(zip(order, tensors))
        return selective_scan_ref(**kw, delta_softplus=True, reverse=reverse)

    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-8, rtol=1e-6)


def test_gradient_for_a_subset_of_inputs_and_no_grad_path_agree():
    inputs = make_inputs(1, 4, 20, dtype=torch.float32)
    kw = scan_args(inputs, OPTION_SETS["all"])
    with torch.no_grad():
        plain = selective_scan_ref(**kw)
    u = kw["u"].clone().requires_grad_(True)
    tracked = selective_scan_ref(**{**kw, "u": u})
    assert torch.equal(tracked.detach(), plain)
    tracked.sum().backward()
    u64 = kw["u"].double().requires_grad_(True)
    naive_scan(**{**kw, "u": u64}).sum().backward()
    assert rel_err(u.grad, u64.grad) < 2e-5


# ------------------------------------------------------------------------------------------------ backends

def test_cpu_uses_reference_and_logs_the_choice_once(caplog, monkeypatch):
    monkeypatch.setattr(scan_module, "_logged_choices", set())
    inputs = make_inputs(1, 2, 6, dtype=torch.float32)
    kw = scan_args(inputs, OPTION_SETS["all"])
    assert available_backends("cpu") == ["reference"]
    if not torch.cuda.is_available():
        assert available_backends("cuda") == []
    with caplog.at_level(logging.INFO, logger="vmm.ops.selective_scan"):
        first = selective_scan(**kw)
        selective_scan(**kw)
    choices = [r.getMessage() for r in caplog.records if "using backend" in r.getMessage()]
    assert choices == ["selective_scan: using backend 'reference' for cpu tensors"]
    assert torch.equal(first, selective_scan_ref(**kw))


def test_unavailable_or_unknown_backend_raises_one_line_vmm_error():
    inputs = make_inputs(1, 2, 6, dtype=torch.float32)
    kw = scan_args(inputs, OPTION_SETS["plain"])
    with pytest.raises(VmmError) as err:
        selective_scan(**kw, backend="mamba_ssm")
    assert "pip install --no-build-isolation mamba-ssm" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(VmmError, match="unknown selective_scan backend 'cuda_magic'"):
        selective_scan(**kw, backend="cuda_magic")
    # a list (say, of backends to try) was "TypeError: unhashable type: 'list'"
    with pytest.raises(VmmError, match=r"unknown selective_scan backend \['reference'\]; choose one of"):
        selective_scan(**kw, backend=["reference"])


def test_registered_backend_is_chosen_by_priority_and_availability(monkeypatch):
    monkeypatch.setattr(scan_module, "_SCAN_BACKENDS", dict(scan_module._SCAN_BACKENDS))
    calls = []

    def spy(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, reverse=False):
        calls.append(reverse)
        return selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse)

    kw = scan_args(make_inputs(1, 2, 6, dtype=torch.float32), OPTION_SETS["plain"])
    register_backend("never", spy, available=lambda t: False, priority=100, install_hint="build the never kernel")
    register_backend("spy", spy, available=lambda t: t.is_cpu, priority=50)
    assert available_backends("cpu") == ["spy", "reference"]
    selective_scan(**kw, reverse=True)
    assert calls == [True]
    with pytest.raises(VmmError, match="build the never kernel"):
        selective_scan(**kw, backend="never")
    unregister_backend("spy")
    selective_scan(**kw)
    assert calls == [True]


@pytest.mark.parametrize("args,message", [
    (("reference", selective_scan_ref, lambda t: True, 5), "'reference' is the built-in fallback and cannot be "
                                                           "replaced"),
    # registered, but a model's scan_backend="triton" ran the fused layer kernels instead (on a CPU: an error)
    (("triton", selective_scan_ref, lambda t: True, 50), "'triton' names the fused layer kernels of vmm.ops.bimamba"),
    (("", selective_scan_ref, lambda t: True, 5), "name must be a non-empty string, got ''"),
    ((3, selective_scan_ref, lambda t: True, 5), "name must be a non-empty string, got 3"),
    (("k", None, lambda t: True, 5), "fn must be callable, got NoneType"),
    (("k", selective_scan_ref, True, 5), "available must be callable, got bool"),
    (("k", selective_scan_ref, lambda t: True, "high"), "priority must be an int (reference 0, mamba_ssm 10), "
                                                        "got 'high'"),
    (("k", selective_scan_ref, lambda t: True, 5, None), "install_hint must be a string, got NoneType"),
])
def test_register_backend_refuses_bad_entries_and_keeps_the_registry(args, message, monkeypatch):
    """Each of these used to register silently and then break every later selective_scan call with a
    TypeError (or replace the reference for good, since it cannot be unregistered)."""
    monkeypatch.setattr(scan_module, "_SCAN_BACKENDS", dict(scan_module._SCAN_BACKENDS))
    before = dict(scan_module._SCAN_BACKENDS)
    with pytest.raises(VmmError) as err:
        register_backend(*args)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert scan_module._SCAN_BACKENDS == before
    kw = scan_args(make_inputs(1, 2, 6, dtype=torch.float32), OPTION_SETS["plain"])
    assert torch.equal(selective_scan(**kw), selective_scan_ref(**kw))


def test_mamba_ssm_wrapper_casts_and_flips_around_the_kernel(monkeypatch):
    """The CUDA kernel wants u, delta, B, C, z in one dtype and A, D, delta_bias in fp32, and has no reverse; a
    stand-in with the kernel's signature checks what the wrapper passes (the real kernel: CUDA tests below)."""
    seen = []

    def kernel(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
        seen.append(tuple(t.dtype for t in (u, delta, B, C, z, A, D, delta_bias)))
        return selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus)

    monkeypatch.setattr(mamba_backend, "_load_selective_scan_fn", lambda: kernel)
    kw = scan_args(make_inputs(2, 4, 30, dtype=torch.float64), OPTION_SETS["all"])
    kw.update(u=kw["u"].bfloat16(), delta=kw["delta"].bfloat16(), z=kw["z"].bfloat16(), B=kw["B"].float(),
              C=kw["C"].float())
    got = mamba_backend.selective_scan_mamba_ssm(**kw, reverse=True)
    assert seen == [(torch.bfloat16,) * 5 + (torch.float32,) * 3]
    cast = {k: (v.bfloat16() if k in ("B", "C") else v.float() if k in ("A", "D", "delta_bias") else v)
            for k, v in kw.items()}
    assert got.dtype == torch.bfloat16
    assert torch.equal(got, selective_scan_ref(**cast, reverse=True))


def test_causal_conv1d_wrapper_flips_around_the_kernel(monkeypatch):
    def kernel(x, weight, bias=None, activation=None):
        assert weight.dim() == 2 and weight.is_contiguous() and bias.dtype == weight.dtype
        return causal_conv1d_ref(x, weight, bias, activation)

    monkeypatch.setattr(mamba_backend, "_load_causal_conv1d_fn", lambda: kernel)
    x, w, b = torch.randn(2, 6, 20), torch.randn(6, 4), torch.randn(6).double()
    got = mamba_backend.causal_conv1d_cuda(x, w, b, "silu", reverse=True)
    assert torch.allclose(got, causal_conv1d_ref(x, w, b.float(), "silu", reverse=True), atol=1e-6)


def test_missing_or_broken_extension_is_unavailable_and_a_broken_one_warns(tmp_path, monkeypatch, caplog):
    broken = tmp_path / "vmm_test_broken_kernels"
    broken.mkdir()
    (broken / "__init__.py").write_text("import vmm_test_compiled_extension_that_is_missing\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with caplog.at_level(logging.DEBUG, logger="vmm.ops.mamba_ssm_backend"):
        assert mamba_backend._import_or_none("vmm_test_broken_kernels", "scan_fn") is None
        assert mamba_backend._import_or_none("vmm_test_not_installed_kernels.ops", "scan_fn") is None
    levels = {r.getMessage().split()[0]: r.levelname for r in caplog.records}
    assert levels == {"vmm_test_broken_kernels": "WARNING", "vmm_test_not_installed_kernels": "DEBUG"}
    assert not mamba_backend.selective_scan_available(torch.zeros(1))  # CPU tensors never import mamba_ssm


def test_docstring_examples_run():
    import doctest
    result = doctest.testmod(scan_module)
    assert result.failed == 0 and result.attempted >= 5
    assert doctest.testmod(mamba_backend).failed == 0
    layer = doctest.testmod(importlib.import_module("vmm.ops.bimamba"))
    assert layer.failed == 0 and layer.attempted >= 5


@pytest.mark.parametrize("channels", [17, 18])
def test_an_xz_that_does_not_fit_the_layer_names_xz(channels):
    """xz of 17 or 18 channels for a layer of 8 failed in causal_conv1d, about an x of 9 channels."""
    from vmm.ops.bimamba import DirectionWeights, bimamba_inner_xz
    E, N = 8, 4
    w = DirectionWeights(torch.randn(E, 1, 4), None, torch.randn(1 + 2 * N, E), torch.randn(E, 1), torch.zeros(E),
                         torch.zeros(E, N), torch.ones(E))
    with pytest.raises(VmmError, match=r"^bimamba_inner_xz: xz must be \(batch, 2 \* channels, length\) = "
                                       rf"\(B, 16, L\) for layer weights of 8 channels, got \(2, {channels}, 5\)$"):
        bimamba_inner_xz(torch.randn(2, channels, 5), w, w, backend="reference")
    assert bimamba_inner_xz(torch.randn(2, 16, 5), w, w, backend="reference").shape == (2, E, 5)


@pytest.mark.parametrize("which,name,shape,expected", [
    ("fwd", "x_proj_weight", (10, 8), "(9, 8)"),   # one row too many: was "split_with_sizes expects ..."
    ("bwd", "x_proj_weight", (9, 7), "(9, 8)"),    # was a matmul error about "batch2" sizes
    ("bwd", "dt_proj_weight", (7, 1), "(8, 1)"),   # was "delta must have shape", for a delta never passed
    ("fwd", "A_log", (8, 3), "(7, 8)"),            # the d_state of A_log, not x_proj's, is the layer's
])
def test_layer_weights_that_do_not_fit_each_other_are_named(which, name, shape, expected):
    from vmm.ops.bimamba import DirectionWeights, bimamba_inner, bimamba_inner_xz
    E, N = 8, 4
    good = DirectionWeights(torch.randn(E, 1, 4), None, torch.randn(1 + 2 * N, E), torch.randn(E, 1),
                            torch.zeros(E), torch.zeros(E, N), torch.ones(E))
    bad = good._replace(**{name: torch.randn(shape)})
    fwd, bwd = (bad, good) if which == "fwd" else (good, bad)
    for call in (lambda: bimamba_inner_xz(torch.randn(2, 2 * E, 5), fwd, bwd),
                 lambda: bimamba_inner(torch.randn(2, E, 5), torch.randn(2, E, 5), fwd, bwd, backend="reference")):
        with pytest.raises(VmmError) as err:
            call()
        text = str(err.value)
        assert text.startswith(f"bimamba: {which}.") and f"must have shape {expected}" in text and "\n" not in text


# ------------------------------------------------------------------------------------------------ causal conv1d

@pytest.mark.parametrize("width", [2, 4])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("silu", [False, True])
def test_causal_conv1d_ref_matches_loop(width, reverse, silu):
    g = torch.Generator().manual_seed(width)
    x = torch.randn(2, 3, 9, generator=g, dtype=torch.float64)
    w = torch.randn(3, 1, width, generator=g, dtype=torch.float64)
    b = torch.randn(3, generator=g, dtype=torch.float64)
    act = "silu" if silu else None
    want = naive_conv(x, w, b, silu, reverse)
    assert rel_err(causal_conv1d_ref(x, w, b, activation=act, reverse=reverse), want) < 1e-12
    assert rel_err(causal_conv1d_ref(x, w[:, 0], None, activation=act, reverse=reverse),
                   naive_conv(x, w, None, silu, reverse)) < 1e-12
    got = causal_conv1d(x.float(), w.float(), b.float(), activation=act, reverse=reverse)
    assert got.dtype == torch.float32 and rel_err(got, want) < 1e-6


def test_causal_conv1d_backend_errors():
    x, w = torch.randn(1, 2, 5), torch.randn(2, 4)
    with pytest.raises(VmmError, match="causal-conv1d"):
        causal_conv1d(x, w, backend="causal_conv1d")
    with pytest.raises(VmmError, match="activation"):
        causal_conv1d(x, w, activation="relu")


def test_causal_conv1d_argument_errors_name_the_argument():
    """Were conv1d's errors about groups and padded sizes (in the padded length), or an unbatched result."""
    x, w, b = torch.randn(2, 4, 6), torch.randn(4, 1, 3), torch.randn(4)
    for fn in (causal_conv1d, causal_conv1d_ref):
        for args, message in (((x[0], w, b), r"x must be \(batch, channels, length\), got shape \(4, 6\)"),
                              ((x, w[:3], b), r"weight must be \(4, width\) or \(4, 1, width\)"),
                              ((x, w, b[:3]), r"bias must have shape \(4,\)"),
                              ((x, w.numpy(), b), "weight must be a torch.Tensor, got ndarray"),
                              ((x.long(), w, b), "x must be a real floating-point tensor"),
                              # were cast to real with only a torch warning / silently accepted
                              ((x, w.cfloat(), b), "weight must be a real floating-point tensor, got "
                                                   "torch.complex64"),
                              ((x, w, b.long()), "bias must be a real floating-point tensor, got torch.int64")):
            with pytest.raises(VmmError, match=message):
                fn(*args)


def test_causal_conv1d_refuses_weights_on_another_device():
    """A weight or bias on another device than x was conv1d's "Expected all tensors to be on the same device",
    naming no argument; a meta one (standing in for a GPU here) even gave uninitialised output without error."""
    x, w, b = torch.ones(1, 2, 5), torch.ones(2, 1, 3), torch.ones(2)
    for fn in (causal_conv1d, causal_conv1d_ref):
        for args, name in (((x, w.to("meta"), b), "weight"), ((x, w, b.to("meta")), "bias")):
            with pytest.raises(VmmError) as err:
                fn(*args, activation=None)
            assert str(err.value) == f"causal_conv1d: {name} is on meta but x is on cpu; move it with .to(x.device)"


@pytest.mark.parametrize("reverse", [False, True])
def test_causal_conv1d_of_an_empty_sequence_is_empty(reverse):
    """The result also stays differentiable: backward() through it used to fail with "element 0 of tensors does
    not require grad"."""
    for width in (1, 4):
        x, w, b = (torch.randn(*s, requires_grad=True) for s in ((2, 4, 0), (4, width), (4,)))
        out = causal_conv1d(x, w, b, reverse=reverse)
        assert out.shape == x.shape and out.dtype == x.dtype
        grads = torch.autograd.grad(out.sum(), (x, w, b))
        assert [g.shape for g in grads] == [x.shape, w.shape, b.shape] and not any(g.any() for g in grads)


def test_float64_mixer_direction_keeps_float64_parameters():
    """A float64 layer (the parity oracle) matched the official math only to ~2e-8: A, D and the dt bias were
    cast down to float32 as the official code casts bf16 ones up."""
    from vmm.ops.bimamba import DirectionWeights, mamba_direction_ref
    g = torch.Generator().manual_seed(3)
    E, N, R, L = 6, 4, 2, 9

    def rnd(*shape, scale=1.0):
        return torch.randn(*shape, generator=g, dtype=torch.float64) * scale

    w = DirectionWeights(rnd(E, 1, 4, scale=0.5), rnd(E, scale=0.2), rnd(R + 2 * N, E, scale=0.4), rnd(E, R),
                         rnd(E, scale=0.5), rnd(E, N), rnd(E))
    x, z = rnd(2, E, L), rnd(2, E, L)
    for reverse in (False, True):
        xc = naive_conv(x, w.conv_weight, w.conv_bias, True, reverse)
        dt, Bm, Cm = F.linear(xc.transpose(1, 2), w.x_proj_weight).split([R, N, N], dim=-1)
        want = naive_scan(xc, F.linear(dt, w.dt_proj_weight).transpose(1, 2), -torch.exp(w.A_log),
                          Bm.transpose(1, 2), Cm.transpose(1, 2), w.D, z, w.dt_proj_bias, True, reverse)
        got = mamba_direction_ref(x, z, w, reverse=reverse)
        assert got.dtype == torch.float64 and rel_err(got, want) < 1e-12


# ------------------------------------------------------------------------------------------------ CUDA kernels

def _cuda_probe():
    return torch.empty(0, device="cuda") if torch.cuda.is_available() else None


needs_mamba_ssm = pytest.mark.skipif(
    not torch.cuda.is_available() or not mamba_backend.selective_scan_available(_cuda_probe()),
    reason="needs CUDA and mamba-ssm's compiled extension")
needs_causal_conv1d = pytest.mark.skipif(
    not torch.cuda.is_available() or not mamba_backend.causal_conv1d_available(_cuda_probe()),
    reason="needs CUDA and causal-conv1d's compiled extension")


@pytest.mark.cuda
@needs_mamba_ssm
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
def test_mamba_ssm_matches_reference(reverse, dtype, tol):
    inputs = make_inputs(2, 64, 1569, state=16, dtype=torch.float32, seed=1)
    kw = scan_args({k: v.cuda() for k, v in inputs.items()}, OPTION_SETS["all"])
    kw = {k: (v.to(dtype) if torch.is_tensor(v) and k in ("u", "delta", "B", "C", "z") else v) for k, v in kw.items()}
    want = selective_scan(**kw, reverse=reverse, backend="reference")
    got = selective_scan(**kw, reverse=reverse, backend="mamba_ssm")
    assert got.dtype == dtype
    assert rel_err(got, want) <= tol
    assert "mamba_ssm" in available_backends("cuda")


@pytest.mark.cuda
@needs_mamba_ssm
@pytest.mark.parametrize("reverse", [False, True])
def test_mamba_ssm_last_state_matches_reference(reverse):
    """The real kernel's return_last_state, through vmm's wrapper (which flips for reverse=True), against the
    reference's state after the last step in scan order."""
    inputs = make_inputs(2, 64, 301, state=16, dtype=torch.float32, seed=3)
    kw = scan_args({k: v.cuda() for k, v in inputs.items()}, OPTION_SETS["all"])
    want, want_last = selective_scan(**kw, reverse=reverse, backend="reference", return_last_state=True)
    got, got_last = selective_scan(**kw, reverse=reverse, backend="mamba_ssm", return_last_state=True)
    assert got_last.shape == want_last.shape == (2, 64, 16) and got_last.dtype == torch.float32
    assert rel_err(got, want) <= 1e-5 and rel_err(got_last, want_last) <= 1e-5


@pytest.mark.cuda
@needs_mamba_ssm
@pytest.mark.parametrize("reverse", [False, True])
def test_mamba_ssm_gradients_match_reference(reverse):
    inputs = make_inputs(2, 16, 300, state=16, dtype=torch.float32, seed=2)
    opts = OPTION_SETS["all"]

    def grads(backend):
        leaves = {k: v.cuda().requires_grad_(True) for k, v in inputs.items()}
        selective_scan(**scan_args(leaves, opts), reverse=reverse, backend=backend).square().sum().backward()
        return {k: leaves[k].grad for k in GRAD_NAMES}

    want, got = grads("reference"), grads("mamba_ssm")
    for name in GRAD_NAMES:
        assert rel_err(got[name], want[name]) < 1e-4, name


@pytest.mark.cuda
@needs_mamba_ssm
@pytest.mark.parametrize("reverse", [False, True])
def test_mamba_ssm_matches_reference_with_grouped_B_and_C(reverse):
    """The group layout (channel e reads group e // (channels / groups)) is mamba-ssm's own, gradients included."""
    inputs = make_inputs(2, 24, 257, state=16, dtype=torch.float32, seed=5)
    g = torch.Generator().manual_seed(6)
    inputs["B"], inputs["C"] = (torch.randn(2, 3, 16, 257, generator=g) for _ in range(2))

    def run(backend):
        leaves = {k: v.cuda().requires_grad_(True) for k, v in inputs.items()}
        y = selective_scan(**scan_args(leaves, OPTION_SETS["all"]), reverse=reverse, backend=backend)
        y.square().sum().backward()
        return y.detach(), {k: leaves[k].grad for k in GRAD_NAMES}

    (want, want_grads), (got, got_grads) = run("reference"), run("mamba_ssm")
    assert rel_err(got, want) <= 1e-5
    for name in GRAD_NAMES:
        assert got_grads[name].shape == inputs[name].shape and rel_err(got_grads[name], want_grads[name]) < 1e-4, name


@pytest.mark.cuda
@needs_causal_conv1d
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
def test_causal_conv1d_cuda_matches_reference(reverse, dtype, tol):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 64, 1569, generator=g).cuda().to(dtype)
    w = torch.randn(64, 1, 4, generator=g).cuda()
    b = torch.randn(64, generator=g).cuda()
    want = causal_conv1d(x, w, b, reverse=reverse, backend="reference")
    got = causal_conv1d(x, w, b, reverse=reverse, backend="causal_conv1d")
    assert got.dtype == dtype and rel_err(got, want) <= tol


def test_a_device_name_torch_does_not_know_is_named_not_taken_for_an_absent_one():
    """available_backends("gpu") returned [], as for a device merely absent here."""
    from vmm.errors import VmmError
    with pytest.raises(VmmError, match=r"^available_backends: 'gpu' is not a device name; pass 'cpu', 'cuda'"):
        available_backends("gpu")
    assert available_backends(torch.device("cpu")) == available_backends("cpu")
    # was "TypeError: empty(): argument 'dtype' must be torch.dtype, not str" from inside torch
    with pytest.raises(VmmError, match=r"^available_backends: dtype must be a torch.dtype such as torch.float32, "
                                       r"got 'float32'$"):
        available_backends("cpu", dtype="float32")


@pytest.mark.parametrize("reverse", [False, True])
def test_the_reference_runs_on_the_meta_device_with_gradients(reverse):
    """The reference, said to run on any device, failed on meta tensors (shape inference, FLOP counting, a model
    built with device="meta") with "Tensor.item() cannot be called on meta tensors": its underflow check reads the
    range of delta * A."""
    cpu = make_inputs(2, 6, 9, state=3, dtype=torch.float32)
    meta = {k: v.to("meta").requires_grad_() for k, v in cpu.items()}
    out, last = selective_scan(**meta, delta_softplus=True, reverse=reverse, return_last_state=True)
    assert (out.shape, last.shape, out.device.type) == ((2, 6, 9), (2, 6, 3), "meta")
    grads = torch.autograd.grad(out.sum() + last.sum(), list(meta.values()))
    assert [g.shape for g in grads] == [t.shape for t in cpu.values()]


class _NoFloat64(TorchDispatchMode):
    """Refuses any op that reads or makes a float64 tensor, as Apple's MPS device does."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if any(isinstance(t, torch.Tensor) and t.dtype == torch.float64 for t in tree_leaves((args, kwargs, out))):
            raise TypeError(f"{func} on float64, which MPS does not have")
        return out


@pytest.mark.parametrize("reverse", [False, True])
def test_float32_inputs_never_touch_float64(reverse):
    """The reference, said to run on any device, made A * log2(e) in float64 from float32 inputs, which failed
    every scan on a Mac's MPS device ("Cannot convert a MPS Tensor to float64 dtype")."""
    inputs = {k: v.requires_grad_() for k, v in make_inputs(2, 6, 9, dtype=torch.float32).items()}
    with _NoFloat64():
        out, last = selective_scan(**inputs, delta_softplus=True, reverse=reverse, return_last_state=True)
        torch.autograd.grad(out.sum() + last.sum(), list(inputs.values()))
        causal_conv1d(inputs["u"], torch.randn(6, 1, 4), torch.randn(6), reverse=reverse)


def test_devices_and_dtypes_nothing_runs_on_list_no_backend():
    """available_backends("hpu") raised ModuleNotFoundError (torch imports torch.hpu, absent here) instead of
    answering []; integer, bool and complex dtypes listed the reference, which refuses such inputs."""
    if importlib.util.find_spec("torch.hpu") is None:  # not an Intel Gaudi install
        assert available_backends("hpu") == []
    for dtype in (torch.int64, torch.bool, torch.complex64):
        assert available_backends("cpu", dtype) == []
        with pytest.raises(VmmError, match="must be a real floating-point tensor"):
            selective_scan(**dict(make_inputs(1, 2, 3), u=torch.zeros(1, 2, 3, dtype=dtype)))
    assert available_backends("cpu", torch.bfloat16) == ["reference"]


# ------------------------------------------------------------------------------------------------ return_last_state

def naive_last_state(*args, **kwargs):
    """The last h of :func:`naive_scan` (D and z do not enter the state)."""
    return naive_scan(*args, **kwargs, return_last_state=True)[1]


@pytest.mark.parametrize("length", [1, 2, 13])
@pytest.mark.parametrize("state", [1, 3])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("options", list(OPTION_SETS))
def test_last_state_matches_the_loop(length, state, reverse, options, block_elems):
    opts = OPTION_SETS[options]
    inputs = make_inputs(2, 3, length, state=state, softplus=opts["softplus"], seed=length + 10 * state)
    kw = scan_args(inputs, opts)
    want = naive_last_state(**kw, reverse=reverse)
    out, last = selective_scan(**kw, reverse=reverse, return_last_state=True)
    assert last.shape == (2, 3, state) and last.dtype == torch.float64
    assert rel_err(last, want) < 1e-12
    assert torch.equal(out, selective_scan(**kw, reverse=reverse))  # the output is unchanged
    # the autograd path returns the same state
    leaves = {k: (v.clone().requires_grad_(True) if torch.is_tensor(v) else v) for k, v in kw.items()}
    out_g, last_g = selective_scan_ref(**leaves, reverse=reverse, return_last_state=True)
    assert torch.equal(last_g.detach(), last) and torch.equal(out_g.detach(), out) and last_g.requires_grad
    # float32 inputs: float32 state, as mamba-ssm's
    kw32 = {k: (v.float() if torch.is_tensor(v) else v) for k, v in kw.items()}
    out32, last32 = selective_scan(**kw32, reverse=reverse, return_last_state=True)
    assert out32.dtype == last32.dtype == torch.float32 and rel_err(last32, want) < 1e-5


def test_last_state_of_bf16_inputs_is_float32_and_of_an_empty_sequence_is_zero():
    kw = scan_args(make_inputs(1, 2, 9, dtype=torch.bfloat16), OPTION_SETS["all"])
    out, last = selective_scan(**kw, return_last_state=True)
    assert out.dtype == torch.bfloat16 and last.dtype == torch.float32 and last.shape == (1, 2, 4)
    kw = scan_args(make_inputs(2, 3, 0), OPTION_SETS["all"])
    out, last = selective_scan(**kw, return_last_state=True)
    assert out.shape == (2, 3, 0) and last.shape == (2, 3, 4) and not last.any()


@pytest.mark.parametrize("reverse", [False, True])
def test_reverse_last_state_is_the_flipped_forward_last_state(reverse):
    """With reverse=True the last step is position 0: the state flip -> forward scan leaves."""
    kw = scan_args(make_inputs(2, 3, 13, seed=3), OPTION_SETS["all"])
    flipped = {k: (v.flip(-1) if k in ("u", "delta", "B", "C", "z") else v) for k, v in kw.items()}
    _, last = selective_scan(**kw, reverse=True, return_last_state=True)
    _, want = selective_scan(**flipped, return_last_state=True)
    assert rel_err(last, want) < 1e-13


@pytest.mark.parametrize("groups", [2, 3])
@pytest.mark.parametrize("reverse", [False, True])
def test_last_state_with_grouped_B_and_C(groups, reverse, block_elems):
    inputs = make_inputs(2, 6, 13, state=3, seed=groups)
    g = torch.Generator().manual_seed(groups)
    inputs["B"], inputs["C"] = (torch.randn(2, groups, 3, 13, generator=g, dtype=torch.float64) for _ in "BC")
    kw = scan_args(inputs, OPTION_SETS["all"])
    _, last = selective_scan(**kw, reverse=reverse, return_last_state=True)
    assert last.shape == (2, 6, 3) and rel_err(last, naive_last_state(**kw, reverse=reverse)) < 1e-12
    want = state_loss_grads(naive_scan, naive_last_state, inputs, OPTION_SETS["all"], reverse)
    got = state_loss_grads(selective_scan_ref, None, inputs, OPTION_SETS["all"], reverse)
    for name in want:
        assert got[name].shape == inputs[name].shape and rel_err(got[name], want[name]) < 1e-10, name


def state_loss_grads(fn, state_fn, inputs, opts, reverse, use_out=True):
    """Gradients of sum(w1 * out) + sum(w2 * last_state) (or of the state term only). With state_fn (the naive
    oracles) out and the state come from two functions; otherwise from fn(..., return_last_state=True)."""
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in inputs.items()}
    kw = scan_args(leaves, opts)
    if state_fn is None:
        out, last = fn(**kw, reverse=reverse, return_last_state=True)
    else:
        out, last = fn(**kw, reverse=reverse), state_fn(**kw, reverse=reverse)
    g = torch.Generator().manual_seed(7)
    w1 = torch.randn(out.shape, dtype=torch.float64, generator=g)
    w2 = torch.randn(last.shape, dtype=torch.float64, generator=g)
    loss = (last.double() * w2).sum()
    if use_out:
        loss = loss + (out.double() * w1).sum()
    names = [k for k in GRAD_NAMES if kw.get(k) is not None]
    grads = torch.autograd.grad(loss, [leaves[k] for k in names], allow_unused=True)
    return {k: (torch.zeros_like(leaves[k]) if gr is None else gr) for k, gr in zip(names, grads)}


@pytest.mark.parametrize("length", [1, 2, 13])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("options", ["all", "plain"])
@pytest.mark.parametrize("use_out", [True, False])
def test_last_state_gradients_match_naive_autograd(length, reverse, options, use_out, block_elems):
    opts = OPTION_SETS[options]
    inputs = make_inputs(2, 3, length, state=3, softplus=opts["softplus"], seed=20 + length)
    want = state_loss_grads(naive_scan, naive_last_state, inputs, opts, reverse, use_out)
    got = state_loss_grads(selective_scan_ref, None, inputs, opts, reverse, use_out)
    assert set(got) == set(want)
    for name in want:
        assert rel_err(got[name], want[name]) < 1e-10, name


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("which", ["out_and_state", "state_only"])
def test_last_state_gradcheck_float64(reverse, which, monkeypatch):
    monkeypatch.setattr(scan_module, "_BLOCK_ELEMS", 1)  # one position per block: every boundary is exercised
    inputs = make_inputs(2, 3, 5, state=2, seed=6)
    leaves = tuple(inputs[k].clone().requires_grad_(True) for k in GRAD_NAMES)

    def fn(*tensors):
        out, last = selective_scan_ref(**dict(zip(GRAD_NAMES, tensors)), delta_softplus=True, reverse=reverse,
                                       return_last_state=True)
        return (out, last) if which == "out_and_state" else last

    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-8, rtol=1e-6)


def test_a_backend_without_return_last_state_is_refused_by_name_and_keeps_working(monkeypatch):
    monkeypatch.setattr(scan_module, "_SCAN_BACKENDS", dict(scan_module._SCAN_BACKENDS))
    seen = []

    def old_style(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, reverse=False):
        return selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse)

    def with_kwargs(*args, **kwargs):
        seen.append(kwargs.get("return_last_state", "absent"))
        return selective_scan_ref(*args, **kwargs)

    kw = scan_args(make_inputs(1, 2, 6), OPTION_SETS["all"])
    register_backend("old_style", old_style, available=lambda t: True, priority=50)
    with pytest.raises(VmmError) as err:
        selective_scan(**kw, return_last_state=True)
    message = str(err.value)
    assert "'old_style' does not support return_last_state=True" in message and "\n" not in message
    assert torch.equal(selective_scan(**kw), selective_scan_ref(**kw))  # still the choice without the state
    out, last = selective_scan(**kw, backend="reference", return_last_state=True)
    assert rel_err(last, naive_last_state(**kw)) < 1e-12
    register_backend("with_kwargs", with_kwargs, available=lambda t: True, priority=60)
    selective_scan(**kw)
    got = selective_scan(**kw, reverse=True, return_last_state=True)
    assert seen == ["absent", True] and rel_err(got[1], naive_last_state(**kw, reverse=True)) < 1e-12


@pytest.mark.parametrize("reverse", [False, True])
def test_mamba_ssm_wrapper_passes_return_last_state_through(reverse, monkeypatch):
    """A stand-in with mamba-ssm's signature and return convention ((out, last_state), the state of its forward
    scan): through the wrapper's flips the reverse last state is the reference's."""
    seen = []

    def kernel(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False):
        seen.append(return_last_state)
        return selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                  return_last_state=return_last_state)

    monkeypatch.setattr(mamba_backend, "_load_selective_scan_fn", lambda: kernel)
    kw = scan_args(make_inputs(2, 4, 13, dtype=torch.float32), OPTION_SETS["all"])
    kw["u"] = kw["u"].requires_grad_(True)
    out, last = mamba_backend.selective_scan_mamba_ssm(**kw, reverse=reverse, return_last_state=True)
    want_out, want_last = selective_scan_ref(**kw, reverse=reverse, return_last_state=True)
    assert seen == [True] and last.dtype == torch.float32 and not last.requires_grad  # its gradient is ignored
    assert rel_err(out, want_out) < 1e-5 and rel_err(last, want_last) < 1e-5
    plain = mamba_backend.selective_scan_mamba_ssm(**kw, reverse=reverse)
    assert seen == [True, False] and torch.is_tensor(plain)


def test_docs_return_last_state_example_runs(capsys):
    import pathlib
    import re
    text = (pathlib.Path(__file__).parents[1] / "docs" / "kernels.md").read_text()
    blocks = [b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "return_last_state" in b]
    assert len(blocks) == 1
    exec(compile(blocks[0], "docs/kernels.md", "exec"), {})
    assert capsys.readouterr().out.splitlines() == [
        "torch.Size([2, 8, 20]) torch.Size([2, 8, 4]) torch.float32", "True", "True"]


def test_the_documented_call_restores_an_unregistered_mamba_ssm(monkeypatch):
    """unregister_backend("mamba_ssm") had no undo short of restarting Python: the call unregister_backend's
    docstring shows must give back the very backend the import registered."""
    monkeypatch.setattr(scan_module, "_SCAN_BACKENDS", dict(scan_module._SCAN_BACKENDS))
    built_in = scan_module._SCAN_BACKENDS["mamba_ssm"]
    kw = scan_args(make_inputs(1, 2, 6, dtype=torch.float32), OPTION_SETS["plain"])
    with pytest.raises(VmmError) as before:
        selective_scan(**kw, backend="mamba_ssm")
    unregister_backend("mamba_ssm")
    with pytest.raises(VmmError, match="unknown selective_scan backend 'mamba_ssm'"):
        selective_scan(**kw, backend="mamba_ssm")
    register_backend("mamba_ssm", mamba_backend.selective_scan_mamba_ssm, mamba_backend.selective_scan_available, 10,
                     mamba_backend.MAMBA_SSM_HINT)
    assert scan_module._SCAN_BACKENDS["mamba_ssm"] == built_in
    with pytest.raises(VmmError) as after:
        selective_scan(**kw, backend="mamba_ssm")
    assert str(after.value) == str(before.value)
