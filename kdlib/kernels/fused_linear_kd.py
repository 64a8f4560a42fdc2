"""KD through the output heads without materialising the full ``(N, C)`` logits.

For LLM distillation ``N x C`` logits (8192 x 128256) are GBs per matrix. As in
Liger's fused linear JSD and Cut Cross-Entropy, the rows are processed in chunks
sized by a memory budget: per chunk the student and teacher logits come from
two matmuls, the fused ``kd`` kernel gives the chunk's loss and its logit
gradient ``G`` (scaled by the whole batch's ``1/N``), and ``G`` is contracted
at once: ``dL/dh_s[chunk] = G W_s`` and ``dL/dW_s += G^T h_s[chunk]``. Peak extra
memory is then about three chunk-sized logit buffers plus the two gradients of
the inputs, instead of several ``(N, C)`` matrices. The gradients are computed in
the forward (the backward only scales them), so the logits are never recomputed.
``grad_W`` accumulates in the weight's dtype with ``addmm_`` (as Liger does).
"""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from kdlib.kernels.kd import kd_forward
from kdlib.kernels.utils import scale_grad, use_triton
from kdlib.losses import fused_linear_kd as reference
from kdlib.losses.checks import check_temperature, compute_dtype

DEFAULT_MEMORY_BUDGET = 512 * 2**20


def chunk_rows(n: int, n_cols: int, itemsize: int, memory_budget: int) -> int:
    """Rows per chunk so that the chunk's student logits, teacher logits and gradient fit the budget."""
    return max(1, min(n, memory_budget // (3 * n_cols * itemsize)))


class _FusedLinearKDFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h_s, w_s, h_t, w_t, temperature, memory_budget):
        n = h_s.shape[0]
        c = w_s.shape[0]
        h_t = h_t.detach()
        w_t = w_t.detach()
        need_h, need_w = h_s.requires_grad, w_s.requires_grad
        grad_h = torch.empty_like(h_s) if need_h else None
        grad_w = torch.zeros_like(w_s) if need_w else None
        rows = chunk_rows(n, c, h_s.element_size(), memory_budget)
        loss = h_s.new_zeros((), dtype=compute_dtype(h_s))
        for start in range(0, n, rows):
            hs = h_s[start:start + rows]
            part, g = kd_forward(
                hs @ w_s.t(), h_t[start:start + rows] @ w_t.t(), None, temperature, 0.0, 1.0,
                n_total=n, write_grad=need_h or need_w,
            )
            loss += part
            if need_h:
                torch.mm(g, w_s, out=grad_h[start:start + rows])
            if need_w:
                grad_w.addmm_(g.t(), hs)
        ctx.save_for_backward(
            grad_h if need_h else h_s.new_empty(0), grad_w if need_w else w_s.new_empty(0)
        )
        ctx.need = (need_h, need_w)
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        grad_h, grad_w = ctx.saved_tensors
        need_h, need_w = ctx.need
        return (
            scale_grad(grad_h, grad_output) if need_h else None,
            scale_grad(grad_w, grad_output) if need_w else None,
            None, None, None, None,
        )


def fused_linear_kd_loss(
    student_hidden: torch.Tensor,
    student_weight: torch.Tensor,
    teacher_hidden: torch.Tensor,
    teacher_weight: torch.Tensor,
    temperature: float,
    backend: str = "auto",
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> torch.Tensor:
    """``kdlib.losses.fused_linear_kd.fused_linear_kd_loss`` (``kd_loss`` of ``h_s W_s^T`` and ``h_t W_t^T``), chunked.

    ``memory_budget`` (bytes) bounds one chunk's logit buffers (student,
    teacher, gradient); the ``torch`` backend is the eager reference (full logits).
    """
    if not use_triton(backend, student_hidden.device):
        return reference.fused_linear_kd_loss(student_hidden, student_weight, teacher_hidden, teacher_weight, temperature)
    reference.check_linear_heads(student_hidden, student_weight, teacher_hidden, teacher_weight)
    check_temperature(temperature)
    if int(memory_budget) < 1:
        raise ValueError(f"memory_budget must be a positive number of bytes, got {memory_budget!r}")
    return _FusedLinearKDFunction.apply(
        student_hidden, student_weight, teacher_hidden, teacher_weight, float(temperature), int(memory_budget)
    )
