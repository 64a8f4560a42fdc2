"""Softmax KD with temperature, and CE + KD, in one launch: loss and gradient.

One program per row, two online passes over the columns in blocks of at most
``MAX_BLOCK``:

1. online log-sum-exp of ``s/T`` and ``t/T`` (and of ``s`` for CE), and
   ``A = sum_c exp(t_c/T - m_t) (t_c - s_c)/T`` rescaled as the max moves, so
   ``KL = A / d_t - lse_t + lse_s`` without a second pass;
2. the gradient ``kd_weight * (T/N) (softmax(s/T) - softmax(t/T))``
   (``+ ce_weight/N (softmax(s) - onehot(y))``), written once in the student's dtype.

So each row is read twice and its gradient written once (eager PyTorch makes ~20
passes). Every load is upcast to fp32 (fp64 for fp64 inputs), so fp16/bf16 inputs
accumulate in fp32. The backward only scales the stored gradient. Without a
gradient (student does not require grad) pass 2 is skipped.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from kdlib.kernels.primitives import online_lse
from kdlib.kernels.utils import NUM_WARPS, acc_dtype, block_size, scale_grad, use_triton
from kdlib.losses import kd as reference
from kdlib.losses.checks import check_pair, check_target, check_temperature, compute_dtype


@triton.jit
def _kd_kernel(
    S, T, Y, ROW_KL, ROW_CE, GRAD,
    stride_s, stride_t, stride_g, n_cols,
    inv_temp, kd_grad_scale, ce_grad_scale,
    HAS_CE: tl.constexpr, WRITE_GRAD: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    s_row = S + row * stride_s
    t_row = T + row * stride_t
    m_s = tl.full([], -float("inf"), ACC)
    d_s = tl.full([], 0.0, ACC)
    m_t = tl.full([], -float("inf"), ACC)
    d_t = tl.full([], 0.0, ACC)
    a_t = tl.full([], 0.0, ACC)
    m_1 = tl.full([], -float("inf"), ACC)
    d_1 = tl.full([], 0.0, ACC)
    for start in range(0, n_cols, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        mask = cols < n_cols
        s = tl.load(s_row + cols, mask=mask, other=-float("inf")).to(ACC)
        t = tl.load(t_row + cols, mask=mask, other=-float("inf")).to(ACC)
        zs = s * inv_temp
        zt = t * inv_temp
        m_s, d_s, _, _ = online_lse(m_s, d_s, zs)
        m_t, d_t, rescale, e_t = online_lse(m_t, d_t, zt)
        a_t = a_t * rescale + tl.sum(tl.where(mask, e_t * (zt - zs), 0.0), 0)
        if HAS_CE:
            m_1, d_1, _, _ = online_lse(m_1, d_1, s)
    lse_s = m_s + tl.log(d_s)
    lse_t = m_t + tl.log(d_t)
    tl.store(ROW_KL + row, a_t / d_t - lse_t + lse_s)
    y = 0
    lse_1 = 0.0
    if HAS_CE:
        y = tl.load(Y + row)
        lse_1 = m_1 + tl.log(d_1)
        tl.store(ROW_CE + row, lse_1 - tl.load(s_row + y).to(ACC))
    if WRITE_GRAD:
        g_row = GRAD + row * stride_g
        for start in range(0, n_cols, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            mask = cols < n_cols
            s = tl.load(s_row + cols, mask=mask, other=0.0).to(ACC)
            t = tl.load(t_row + cols, mask=mask, other=0.0).to(ACC)
            g = kd_grad_scale * (tl.exp(s * inv_temp - lse_s) - tl.exp(t * inv_temp - lse_t))
            if HAS_CE:
                g += ce_grad_scale * (tl.exp(s - lse_1) - tl.where(cols == y, 1.0, 0.0))
            tl.store(g_row + cols, g.to(GRAD.dtype.element_ty), mask=mask)


def kd_forward(
    student: torch.Tensor,
    teacher: torch.Tensor,
    target: torch.Tensor | None,
    temperature: float,
    ce_weight: float,
    kd_weight: float,
    n_total: int | None = None,
    write_grad: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Launch the kernel on ``(N, C)`` rows: ``(sum of the rows' weighted losses / n_total, gradient or None)``.

    ``n_total`` is the batch size the mean is over (the row count unless the rows
    are a chunk of a larger batch, as in ``fused_linear_kd_loss``).
    """
    n, c = student.shape
    n_total = n if n_total is None else n_total
    temp = float(temperature)
    student = student.contiguous()
    teacher = teacher.detach().contiguous()
    dt = compute_dtype(student, teacher)
    row_kl = torch.empty(n, dtype=dt, device=student.device)
    has_ce = target is not None and ce_weight != 0.0
    row_ce = torch.empty(n, dtype=dt, device=student.device) if has_ce else row_kl
    y = target.contiguous().long() if has_ce else row_kl
    grad = torch.empty_like(student) if write_grad else student
    _kd_kernel[(n,)](
        student, teacher, y, row_kl, row_ce, grad,
        student.stride(0), teacher.stride(0), grad.stride(0), c,
        1.0 / temp, kd_weight * temp / n_total, ce_weight / n_total,
        HAS_CE=has_ce, WRITE_GRAD=write_grad, ACC=acc_dtype(student, teacher), BLOCK=block_size(c),
        num_warps=NUM_WARPS,
    )
    loss = (kd_weight * temp * temp / n_total) * row_kl.sum()
    if has_ce:
        loss = loss + (ce_weight / n_total) * row_ce.sum()
    return loss, (grad if write_grad else None)


class _SoftmaxKDFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, student, teacher, target, temperature, ce_weight, kd_weight):
        loss, grad = kd_forward(
            student, teacher, target, temperature, ce_weight, kd_weight, write_grad=student.requires_grad
        )
        ctx.save_for_backward(grad if grad is not None else student.new_empty(0))
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        (grad,) = ctx.saved_tensors
        return scale_grad(grad, grad_output), None, None, None, None, None


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float, backend: str = "auto") -> torch.Tensor:
    """``kdlib.losses.kd.kd_loss`` (``T^2 * mean_n KL(softmax(t/T) || softmax(s/T))``) in one Triton launch."""
    if not use_triton(backend, student.device):
        return reference.kd_loss(student, teacher, temperature)
    check_pair(student, teacher)
    check_temperature(temperature)
    return _SoftmaxKDFunction.apply(student, teacher, None, float(temperature), 0.0, 1.0)


def ce_kd_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    target: torch.Tensor,
    temperature: float,
    ce_weight: float,
    kd_weight: float,
    backend: str = "auto",
) -> torch.Tensor:
    """``kdlib.losses.kd.ce_kd_loss``: ``ce_weight * CE(s, y) + kd_weight * kd_loss(s, t, T)`` in one pass.

    The CE log-sum-exp (at T = 1) is a third online accumulator of the same read,
    and both gradients go into the one write. It returns the weighted sum, not
    the two terms: a caller that logs them separately calls ``cross_entropy``
    and ``kd_loss`` instead.
    """
    if not use_triton(backend, student.device):
        return reference.ce_kd_loss(student, teacher, target, temperature, ce_weight, kd_weight)
    check_pair(student, teacher)
    check_target(target, student.shape[0])
    check_temperature(temperature)
    return _SoftmaxKDFunction.apply(
        student, teacher, target.to(student.device), float(temperature), float(ce_weight), float(kd_weight)
    )
