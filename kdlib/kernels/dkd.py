"""Decoupled KD (TCKD + NCKD) in one launch: loss and gradient, target split in the same pass.

One program per row, two passes. Pass 1 keeps an online log-sum-exp over the
*non-target* columns only (the target column masked out) for ``s/T`` and
``t/T``, and ``A = sum_{c != y} exp(t_c/T - m_t) (t_c - s_c)/T``; the target
logit is one extra load. Then, with ``z_y`` and ``lse_nt``:
``log p_y = -softplus(lse_nt - z_y)``, ``log(1 - p_y) = -softplus(z_y - lse_nt)``,
``NCKD = A / d_t - lse_nt_t + lse_nt_s``, all stable at ``|z| = 100``.
Pass 2 writes the gradient (``g = (T/N) * ...``, ``p_hat`` the non-target softmax):
``alpha (p_s_y - p_t_y)`` at the target,
``alpha p_hat_s_c (p_s_!y - p_t_!y) + beta (p_hat_s_c - p_hat_t_c)`` elsewhere.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from kdlib.kernels.primitives import online_lse, softplus
from kdlib.kernels.utils import NUM_WARPS, acc_dtype, block_size, scale_grad, use_triton
from kdlib.losses import dkd as reference
from kdlib.losses.checks import check_min_classes, check_pair, check_target, check_temperature, compute_dtype


@triton.jit
def _dkd_kernel(
    S, T, Y, ROW_LOSS, GRAD, stride_s, stride_t, stride_g, n_cols,
    inv_temp, alpha, beta, grad_scale,
    WRITE_GRAD: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    s_row = S + row * stride_s
    t_row = T + row * stride_t
    y = tl.load(Y + row)
    m_s = tl.full([], -float("inf"), ACC)
    d_s = tl.full([], 0.0, ACC)
    m_t = tl.full([], -float("inf"), ACC)
    d_t = tl.full([], 0.0, ACC)
    a_t = tl.full([], 0.0, ACC)
    for start in range(0, n_cols, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        mask = (cols < n_cols) & (cols != y)
        zs = tl.load(s_row + cols, mask=mask, other=-float("inf")).to(ACC) * inv_temp
        zt = tl.load(t_row + cols, mask=mask, other=-float("inf")).to(ACC) * inv_temp
        # (a block may hold only the target column: online_lse keeps the running max then)
        m_s, d_s, _, _ = online_lse(m_s, d_s, zs)
        m_t, d_t, rescale, e_t = online_lse(m_t, d_t, zt)
        a_t = a_t * rescale + tl.sum(tl.where(mask, e_t * (zt - zs), 0.0), 0)
    zs_y = tl.load(s_row + y).to(ACC) * inv_temp
    zt_y = tl.load(t_row + y).to(ACC) * inv_temp
    lse_nt_s = m_s + tl.log(d_s)
    lse_nt_t = m_t + tl.log(d_t)
    log_ps_y = -softplus(lse_nt_s - zs_y)
    log_ps_n = -softplus(zs_y - lse_nt_s)
    log_pt_y = -softplus(lse_nt_t - zt_y)
    log_pt_n = -softplus(zt_y - lse_nt_t)
    pt_y = tl.exp(log_pt_y)
    pt_n = tl.exp(log_pt_n)
    tckd = pt_y * (log_pt_y - log_ps_y) + pt_n * (log_pt_n - log_ps_n)
    nckd = a_t / d_t - lse_nt_t + lse_nt_s
    tl.store(ROW_LOSS + row, alpha * tckd + beta * nckd)
    if WRITE_GRAD:
        g_row = GRAD + row * stride_g
        ps_y = tl.exp(log_ps_y)
        gap_n = tl.exp(log_ps_n) - pt_n
        for start in range(0, n_cols, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            mask = cols < n_cols
            zs = tl.load(s_row + cols, mask=mask, other=0.0).to(ACC) * inv_temp
            zt = tl.load(t_row + cols, mask=mask, other=0.0).to(ACC) * inv_temp
            hat_s = tl.exp(zs - lse_nt_s)
            hat_t = tl.exp(zt - lse_nt_t)
            g = tl.where(cols == y, alpha * (ps_y - pt_y), alpha * hat_s * gap_n + beta * (hat_s - hat_t))
            tl.store(g_row + cols, (grad_scale * g).to(GRAD.dtype.element_ty), mask=mask)


class _DKDFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, student, teacher, target, alpha, beta, temperature):
        n, c = student.shape
        temp = float(temperature)
        student_c = student.contiguous()
        teacher_c = teacher.detach().contiguous()
        row_loss = torch.empty(n, dtype=compute_dtype(student, teacher), device=student.device)
        write_grad = student.requires_grad
        grad = torch.empty_like(student_c) if write_grad else student_c
        _dkd_kernel[(n,)](
            student_c, teacher_c, target.contiguous().long(), row_loss, grad,
            student_c.stride(0), teacher_c.stride(0), grad.stride(0), c,
            1.0 / temp, float(alpha), float(beta), temp / n,
            WRITE_GRAD=write_grad, ACC=acc_dtype(student, teacher), BLOCK=block_size(c), num_warps=NUM_WARPS,
        )
        ctx.save_for_backward(grad if write_grad else student.new_empty(0))
        return (temp * temp / n) * row_loss.sum()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        (grad,) = ctx.saved_tensors
        return scale_grad(grad, grad_output), None, None, None, None, None


def dkd_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    target: torch.Tensor,
    alpha: float,
    beta: float,
    temperature: float,
    backend: str = "auto",
) -> torch.Tensor:
    """``kdlib.losses.dkd.dkd_loss`` (``T^2 * mean(alpha TCKD + beta NCKD)``, no CE, no warmup) in one launch."""
    if not use_triton(backend, student.device):
        return reference.dkd_loss(student, teacher, target, alpha, beta, temperature)
    check_pair(student, teacher)
    check_min_classes(student, "student", 2, "DKD")
    check_target(target, student.shape[0])
    check_temperature(temperature)
    return _DKDFunction.apply(student, teacher, target.to(student.device), alpha, beta, temperature)
