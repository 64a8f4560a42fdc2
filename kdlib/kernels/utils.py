"""Backend choice and launch helpers shared by the kernel files.

The Triton kernels run on CUDA tensors, or on CPU tensors under Triton's
interpreter (``TRITON_INTERPRET=1``), which is how the test suite checks them
without a GPU. The interpreter only takes effect if it is set before ``triton``
itself is imported, so this module and ``kdlib.kernels`` never import triton:
only the kernel files do, on first use. The methods read the backend choice here
(`resolve_backend`) and import their kernel files only when it is ``"triton"``.
"""
from __future__ import annotations

import os
from typing import Any

import torch

BACKENDS = ("auto", "triton", "torch")

# Columns one program holds per step of its loop over a row. 4096 fp32 values in
# 8 warps is 16 registers per thread: no spills (Liger JSD's whole-row block
# spills past V = 16K), and it is large enough for the interpreter to be quick.
MAX_BLOCK = 4096
NUM_WARPS = 8


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "") == "1"


def check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def resolve_backend(backend: str, device: torch.device | str) -> str:
    """``runtime.kernels`` (auto | triton | torch) on ``device``: ``"triton"`` where the
    losses run as Triton kernels, else ``"torch"`` (the ``kdlib.losses`` references).

    ``triton`` where Triton cannot run raises here, before any training.
    """
    if backend not in BACKENDS:
        raise ValueError(f"runtime.kernels must be one of {BACKENDS}, got {backend!r}")
    return "triton" if use_triton(backend, device) else "torch"


def use_triton(backend: str, device: torch.device | str) -> bool:
    """Whether a loss on ``device`` runs the Triton kernel.

    ``auto``: Triton on CUDA, the PyTorch reference elsewhere. ``triton``: Triton
    or a clear error when it cannot run (CPU without the interpreter).
    """
    check_backend(backend)
    device = torch.device(device)
    if backend == "torch":
        return False
    if backend == "auto":
        return device.type == "cuda"
    if device.type == "cuda" or (device.type == "cpu" and interpreting()):
        return True
    raise ValueError(
        f"backend 'triton' cannot run on device {device.type!r}: the kernels need a CUDA device, "
        "or TRITON_INTERPRET=1 set before the first kernel module is imported (CPU interpreter, slow; for tests)"
    )


def acc_dtype(*xs: torch.Tensor) -> Any:
    """Accumulation type of a kernel: fp64 for fp64 inputs (gradcheck), fp32 for fp32/fp16/bf16."""
    import triton.language as tl

    return tl.float64 if any(x.dtype == torch.float64 for x in xs) else tl.float32


def block_size(n_cols: int) -> int:
    return min(1 << (n_cols - 1).bit_length(), MAX_BLOCK)


def scale_grad(grad: torch.Tensor, grad_output: torch.Tensor) -> torch.Tensor:
    """Backward of a loss whose gradient the forward already wrote: scale it by dL/dloss.

    The common case (``loss.backward()`` on a plain sum of terms) is a multiply by
    1; it is skipped, so the buffer is handed back without another pass over N x C
    (the check costs one device sync, far less than that pass, as in Liger-Kernel).
    """
    if torch.equal(grad_output, torch.ones_like(grad_output)):
        return grad
    return grad * grad_output.to(grad.dtype)
