"""Each fast op beside its PyTorch twin, with the same arguments: add + RMSNorm, and the bimamba layer."""
import inspect
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vmm.errors import VmmError
from vmm.models.layers import RMSNorm
from vmm.ops import triton_norm
from vmm.ops.bimamba import bimamba_inner, bimamba_inner_ref
from vmm.ops.norm import add_rmsnorm_ref

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("with_residual", [False, True])
def test_add_rmsnorm_ref_is_what_a_layer_runs_bit_for_bit(dtype, with_residual):
    """The reference lived inline in RMSNorm.add_forward (and again in a test); the twin must be that same
    function, not another formula (the fused kernel's tests and the CUDA tests compare against it)."""
    g = torch.Generator().manual_seed(0)
    norm = RMSNorm(48, eps=1e-3)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(48, generator=g))
    hidden = torch.randn(3, 5, 48, generator=g).to(dtype)
    residual = torch.randn(3, 5, 48, generator=g) if with_residual else None
    got = add_rmsnorm_ref(hidden, residual, norm.weight, norm.eps)
    want = norm.add_forward(hidden, residual, backend="reference")
    assert [t.dtype for t in got] == [dtype, torch.float32]
    assert all(torch.equal(a, b) for a, b in zip(got, want))
    # the residual stream: the fp32 sum, normed by the module's own forward
    summed = hidden.float() + (residual if with_residual else 0)
    assert torch.equal(got[1], summed) and torch.equal(got[0], norm(summed, out_dtype=dtype))


@pytest.mark.parametrize("residual,weight", [
    ((1, 5, 64), (64,)), ((5, 2, 64), (64,)), (None, (32,)), (None, None), ("int", (64,)),
])
def test_add_rmsnorm_ref_refuses_what_the_kernel_refuses_in_the_same_words(residual, weight):
    hidden = torch.randn(2, 5, 64)
    res = torch.ones(2, 5, 64, dtype=torch.int64) if residual == "int" else (
        None if residual is None else torch.randn(residual))
    w = None if weight is None else torch.ones(weight)
    with pytest.raises(VmmError) as ref_err:
        add_rmsnorm_ref(hidden, res, w)
    with pytest.raises(VmmError) as kernel_err:
        triton_norm.add_rmsnorm(hidden, res, w)
    assert str(ref_err.value).startswith("add_rmsnorm_ref: ") and "\n" not in str(ref_err.value)
    assert str(ref_err.value).replace("add_rmsnorm_ref:", "add_rmsnorm:", 1) == str(kernel_err.value)


def test_the_kernel_on_cpu_names_its_twin(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(VmmError, match=r"cannot run on cpu .*, or use vmm\.ops\.norm\.add_rmsnorm_ref$"):
        triton_norm.add_rmsnorm(torch.randn(2, 5, 64), None, torch.ones(64))


def test_bimamba_inner_and_its_reference_take_the_same_arguments():
    """bimamba_inner(..., backend=) against bimamba_inner_ref(..., scan_backend=): the same call with a keyword
    failed on one of them."""
    fast, ref = inspect.signature(bimamba_inner), inspect.signature(bimamba_inner_ref)
    assert [(p.name, p.default) for p in fast.parameters.values()] == \
        [(p.name, p.default) for p in ref.parameters.values()]


def test_a_cpu_model_imports_no_triton():
    """docs/kernels.md: on a CPU the default runs the reference and imports neither mamba-ssm nor Triton; the
    add + RMSNorm twin and the argument checks it shares with the kernel live outside the Triton modules."""
    code = ("import sys, torch, vmm\n"
            "model = vmm.create_model('videomamba_tiny', depth=2, img_size=32, num_frames=4)\n"
            "model(torch.randn(1, 3, 4, 32, 32)).sum().backward()\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('triton', 'mamba_ssm')\n"
            "             or m in ('vmm.ops._triton', 'vmm.ops.triton_norm')))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"
