"""Inputs and comparisons for the kernel tests (tests/kernels).

Imports no kernel module: tests/kernels/conftest.py sets TRITON_INTERPRET=1 (where no
GPU is) before the first one is imported.
"""
from __future__ import annotations

import importlib

import torch

CUDA = torch.cuda.is_available()
DEV = "cuda" if CUDA else "cpu"
CLASSES = [1, 7, 100, 1000, 5000]
TEMPS = [1.0, 4.0]
ROWS = 3
FP = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float16: dict(rtol=2e-3, atol=2e-3, grad_atol=1e-5)}
FAMILY = {
    "kd_loss": "kd", "ce_kd_loss": "kd", "binary_kl_loss": "binary_kl", "binary_kl_norm_loss": "binary_kl",
    "dkd_loss": "dkd", "sparse_kd_loss": "sparse_kd", "fused_linear_kd_loss": "fused_linear_kd",
}
"""Every kernelled loss and its family: the stem of both its `kdlib.kernels` and `kdlib.losses` modules."""


def kernel(name: str):
    """The Triton function `name` (from `kdlib.kernels.<family>`)."""
    return getattr(importlib.import_module(f"kdlib.kernels.{FAMILY[name]}"), name)


def reference(name: str):
    """The PyTorch reference `name` (from `kdlib.losses.<family>`)."""
    return getattr(importlib.import_module(f"kdlib.losses.{FAMILY[name]}"), name)


def logits(n: int, c: int, seed: int, scale: float = 3.0, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(n, c, generator=g, dtype=torch.float64)).to(device=DEV, dtype=dtype)


def labels(n: int, c: int, seed: int) -> torch.Tensor:
    return torch.randint(0, c, (n,), generator=torch.Generator().manual_seed(seed)).to(DEV)


def value_and_grad(fn, student: torch.Tensor, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    s = student.detach().clone().requires_grad_(True)
    loss = fn(s, *args, **kwargs)
    (grad,) = torch.autograd.grad(loss, s)
    return loss.detach(), grad


def assert_matches(kernel_fn, ref_fn, student, *args, rtol=1e-5, atol=1e-6, grad_atol=None):
    """Kernel (backend='triton') vs reference: loss and gradient w.r.t. the student."""
    v_k, g_k = value_and_grad(kernel_fn, student, *args, backend="triton")
    v_r, g_r = value_and_grad(ref_fn, student, *args)
    assert v_k.dtype == v_r.dtype and g_k.dtype == student.dtype
    assert torch.isfinite(v_k) and torch.isfinite(g_k).all()
    torch.testing.assert_close(v_k, v_r, rtol=rtol, atol=atol)
    torch.testing.assert_close(g_k.double(), g_r.double(), rtol=rtol, atol=atol if grad_atol is None else grad_atol)


def topk_cache(n, c, k, seed, dtype=torch.float32):
    probs = torch.softmax(logits(n, c, seed).double(), dim=1)
    vals, idx = probs.topk(k, dim=1)
    return vals.to(dtype), idx


def heads(n, c, hs, ht, seed, dtype=torch.float32):
    return logits(n, hs, seed, 1.0, dtype), logits(c, hs, seed + 1, 0.3, dtype), \
        logits(n, ht, seed + 2, 1.0, dtype), logits(c, ht, seed + 3, 0.3, dtype)
