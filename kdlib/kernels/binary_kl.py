"""BinaryKL and BinaryKLNorm: elementwise losses, value and gradient in one launch.

Each program takes ``BLOCK`` elements of the flattened ``(N, C)`` inputs, writes
their gradient and one partial sum of the loss (summed on the host: no atomics,
so the result is deterministic). Everything is built from ``exp``/``log``
(libdevice ``log1p``/``tanh`` are missing in Triton's CPU interpreter):
``softplus(x) = max(x, 0) + log1p(exp(-|x|))`` with Goldberg's exact ``log1p``
(``u * log(1+u) / ((1+u) - 1)``), ``tanh(x) = sign(x) (1 - e) / (1 + e)`` with
``e = exp(-2|x|)``; none overflows at ``|x| = 100`` in fp32.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from kdlib.kernels.primitives import softplus
from kdlib.kernels.utils import NUM_WARPS, acc_dtype, scale_grad, use_triton
from kdlib.losses import binary_kl as reference
from kdlib.losses.checks import check_pair, check_temperature, compute_dtype

BLOCK = 4096


@triton.jit
def _tanh(x):
    e = tl.exp(-2.0 * tl.abs(x))
    th = (1.0 - e) / (1.0 + e)
    return tl.where(x < 0, -th, th)


@triton.jit
def _binary_kl_kernel(
    S, T, PARTIAL, GRAD, n_elements, inv_temp, grad_scale,
    NORM: tl.constexpr, WRITE_GRAD: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n_elements
    s = tl.load(S + offs, mask=mask, other=0.0).to(ACC)
    t = tl.load(T + offs, mask=mask, other=0.0).to(ACC)
    if NORM:
        # log cosh(x), x = (s - t) / 2T; d/ds = tanh(x) / 2T
        x = (s - t) * (0.5 * inv_temp)
        ax = tl.abs(x)
        elem = ax + softplus(-2.0 * ax) - 0.6931471805599453
        g = _tanh(x)
    else:
        # q log(q/p) + (1-q) log((1-q)/(1-p)) with log sigmoid(z) = -softplus(-z); d/ds = (p - q) / T
        zs = s * inv_temp
        zt = t * inv_temp
        q = tl.sigmoid(zt)
        elem = q * (softplus(-zs) - softplus(-zt)) + (1.0 - q) * (softplus(zs) - softplus(zt))
        g = tl.sigmoid(zs) - q
    tl.store(PARTIAL + pid, tl.sum(tl.where(mask, elem, 0.0), 0))
    if WRITE_GRAD:
        tl.store(GRAD + offs, (grad_scale * g).to(GRAD.dtype.element_ty), mask=mask)


class _BinaryKLFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, student, teacher, temperature, norm):
        n = student.shape[0]
        temp = float(temperature)
        student_c = student.contiguous()
        teacher_c = teacher.detach().contiguous()
        numel = student_c.numel()
        grid = triton.cdiv(numel, BLOCK)
        partial = torch.empty(grid, dtype=compute_dtype(student, teacher), device=student.device)
        write_grad = student.requires_grad
        grad = torch.empty_like(student_c) if write_grad else student_c
        # both gradients are T^2/N times d(elem)/ds: (p - q)/T, resp. tanh(x)/(2T)
        grad_scale = temp / n * (0.5 if norm else 1.0)
        _binary_kl_kernel[(grid,)](
            student_c, teacher_c, partial, grad, numel, 1.0 / temp, grad_scale,
            NORM=norm, WRITE_GRAD=write_grad, ACC=acc_dtype(student, teacher), BLOCK=BLOCK, num_warps=NUM_WARPS,
        )
        ctx.save_for_backward(grad if write_grad else student.new_empty(0))
        return (temp * temp / n) * partial.sum()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        (grad,) = ctx.saved_tensors
        return scale_grad(grad, grad_output), None, None, None


def binary_kl_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float, backend: str = "auto") -> torch.Tensor:
    """``kdlib.losses.binary_kl.binary_kl_loss`` in one Triton launch (gradient ``T/N (sigmoid(s/T) - sigmoid(t/T))``)."""
    if not use_triton(backend, student.device):
        return reference.binary_kl_loss(student, teacher, temperature)
    check_pair(student, teacher)
    check_temperature(temperature)
    return _BinaryKLFunction.apply(student, teacher, temperature, False)


def binary_kl_norm_loss(
    student: torch.Tensor, teacher: torch.Tensor, temperature: float, backend: str = "auto"
) -> torch.Tensor:
    """``kdlib.losses.binary_kl.binary_kl_norm_loss`` in one Triton launch (gradient ``T/(2N) tanh((s-t)/2T)``)."""
    if not use_triton(backend, student.device):
        return reference.binary_kl_norm_loss(student, teacher, temperature)
    check_pair(student, teacher)
    check_temperature(temperature)
    return _BinaryKLFunction.apply(student, teacher, temperature, True)
