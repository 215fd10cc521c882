"""Compute kernels: every fast backend has a pure-PyTorch reference with the same signature."""
from vmm.ops.selective_scan import (
    available_backends,
    causal_conv1d,
    causal_conv1d_ref,
    register_backend,
    selective_scan,
    selective_scan_ref,
    unregister_backend,
)

__all__ = [
    "available_backends",
    "causal_conv1d",
    "causal_conv1d_ref",
    "register_backend",
    "selective_scan",
    "selective_scan_ref",
    "unregister_backend",
]
