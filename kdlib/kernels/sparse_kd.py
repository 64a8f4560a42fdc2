"""Soft-target CE against a top-K teacher cache (TinyViT sparse KD) in one launch.

The dense target is never built. With ``r = max(1 - sum_k v_k, 0) / (C - K)``
(0 when ``K = C``) on the classes outside the top K and ``P = r (C - K) + sum_k v_k``
its total mass, the row loss is
``lse(s) P - r sum_c s_c - sum_k (v_k - r) s_{i_k}``, from one online pass over the
row (log-sum-exp and plain sum) and K gathers. The gradient
``(softmax(s)_c P - p_c) / N`` is written densely with ``p_c = r`` in pass 2,
then (after a barrier) overwritten at the K indices with ``p_c = v_k``.
Indices in a row must be distinct (as for the reference).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from kdlib.kernels.primitives import online_lse
from kdlib.kernels.utils import NUM_WARPS, acc_dtype, block_size, scale_grad, use_triton
from kdlib.losses import sparse_kd as reference
from kdlib.losses.checks import compute_dtype


@triton.jit
def _sparse_kd_kernel(
    S, V, I, ROW_LOSS, GRAD, stride_s, stride_v, stride_i, stride_g, n_cols, k, grad_scale,
    WRITE_GRAD: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr, BLOCK_K: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    s_row = S + row * stride_s
    kk = tl.arange(0, BLOCK_K)
    k_mask = kk < k
    v = tl.load(V + row * stride_v + kk, mask=k_mask, other=0.0).to(ACC)
    idx = tl.load(I + row * stride_i + kk, mask=k_mask, other=0)
    v_sum = tl.sum(v, 0)
    rest = tl.maximum(1.0 - v_sum, 0.0) / tl.maximum(n_cols - k, 1)
    rest = tl.where(n_cols > k, rest, 0.0)
    mass = rest * (n_cols - k) + v_sum
    m = tl.full([], -float("inf"), ACC)
    d = tl.full([], 0.0, ACC)
    total = tl.full([], 0.0, ACC)
    for start in range(0, n_cols, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        mask = cols < n_cols
        s = tl.load(s_row + cols, mask=mask, other=-float("inf")).to(ACC)
        m, d, _, _ = online_lse(m, d, s)
        total += tl.sum(tl.where(mask, s, 0.0), 0)
    lse = m + tl.log(d)
    s_top = tl.load(s_row + idx, mask=k_mask, other=0.0).to(ACC)
    tl.store(ROW_LOSS + row, lse * mass - rest * total - tl.sum((v - rest) * s_top, 0))
    if WRITE_GRAD:
        g_row = GRAD + row * stride_g
        for start in range(0, n_cols, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            mask = cols < n_cols
            s = tl.load(s_row + cols, mask=mask, other=0.0).to(ACC)
            g = grad_scale * (tl.exp(s - lse) * mass - rest)
            tl.store(g_row + cols, g.to(GRAD.dtype.element_ty), mask=mask)
        tl.debug_barrier()  # the K overwrites below must land after the dense stores above
        g_top = grad_scale * (tl.exp(s_top - lse) * mass - v)
        tl.store(g_row + idx, g_top.to(GRAD.dtype.element_ty), mask=k_mask)


class _SparseKDFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, student, topk_probs, topk_indices):
        n, c = student.shape
        k = topk_probs.shape[1]
        student_c = student.contiguous()
        vals = topk_probs.detach().to(student.device).contiguous()
        idx = topk_indices.to(student.device).long().contiguous()
        row_loss = torch.empty(n, dtype=compute_dtype(student, topk_probs), device=student.device)
        write_grad = student.requires_grad
        grad = torch.empty_like(student_c) if write_grad else student_c
        _sparse_kd_kernel[(n,)](
            student_c, vals, idx, row_loss, grad,
            student_c.stride(0), vals.stride(0), idx.stride(0), grad.stride(0), c, k, 1.0 / n,
            WRITE_GRAD=write_grad, ACC=acc_dtype(student, topk_probs), BLOCK=block_size(c),
            BLOCK_K=triton.next_power_of_2(k), num_warps=NUM_WARPS,
        )
        ctx.save_for_backward(grad if write_grad else student.new_empty(0))
        return row_loss.sum() / n

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        (grad,) = ctx.saved_tensors
        return scale_grad(grad, grad_output), None, None


def sparse_kd_loss(
    student: torch.Tensor, topk_probs: torch.Tensor, topk_indices: torch.Tensor, backend: str = "auto"
) -> torch.Tensor:
    """``kdlib.losses.sparse_kd.sparse_kd_loss`` in one launch, without building the dense ``(N, C)`` target."""
    if not use_triton(backend, student.device):
        return reference.sparse_kd_loss(student, topk_probs, topk_indices)
    reference.check_sparse_targets(student, topk_probs, topk_indices)
    return _SparseKDFunction.apply(student, topk_probs, topk_indices)
