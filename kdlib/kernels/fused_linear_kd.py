"""KD through the output heads without materialising the full ``(N, C)`` logits.

For LLM distillation ``N x C`` logits (8192 x 128256) are GBs per matrix. As in
Liger's fused linear JSD and Cut Cross-Entropy, the rows are processed in chunks
sized by a memory budget: per chunk the student and teacher logits come from
two matmuls, a per-chunk function gives the chunk's loss and its logit gradient
``G`` (scaled by the whole batch's ``1/N``), and ``G`` is contracted at once:
``dL/dh_s[chunk] = G W_s`` and ``dL/dW_s += G^T h_s[chunk]``. Peak extra memory
is then about three chunk-sized logit buffers plus the two gradients of the
inputs, instead of several ``(N, C)`` matrices. The gradients are computed in the
forward (the backward only scales them), so the logits are never recomputed.
``grad_W`` accumulates in the weight's dtype with ``addmm_`` (as Liger does).

The chunk loop is one autograd Function for both backends; they differ only in
the per-chunk loss and gradient:

* ``triton``: the fused ``kd`` kernel (``kdlib.kernels.kd.kd_forward``), imported
  on first use, so this module itself never imports triton;
* ``torch_chunked``: the same quantities in plain PyTorch (`_torch_chunk`), on any
  device: the chunked path of a CPU run.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch.autograd.function import once_differentiable

from kdlib.kernels.utils import BACKENDS as KERNEL_BACKENDS
from kdlib.kernels.utils import scale_grad, use_triton
from kdlib.losses import fused_linear_kd as reference
from kdlib.losses.checks import check_temperature, compute_dtype

DEFAULT_MEMORY_BUDGET = 512 * 2**20
TORCH_CHUNKED = "torch_chunked"
BACKENDS = KERNEL_BACKENDS + (TORCH_CHUNKED,)

# (student logits, teacher logits, T, N of the whole batch, write the gradient) -> (loss part, gradient or None)
ChunkFn = Callable[[torch.Tensor, torch.Tensor, float, int, bool], tuple]


def chunk_rows(n: int, n_cols: int, itemsize: int, memory_budget: int) -> int:
    """Rows per chunk so that the chunk's student logits, teacher logits and gradient fit the budget."""
    return max(1, min(n, memory_budget // (3 * n_cols * itemsize)))


def _triton_chunk(s, t, temperature, n_total, write_grad):
    """One chunk's ``(loss part, logit gradient or None)`` from the fused ``kd`` kernel."""
    from kdlib.kernels import kd

    return kd.kd_forward(s, t, None, temperature, 0.0, 1.0, n_total=n_total, write_grad=write_grad)


def _torch_chunk(s, t, temperature, n_total, write_grad):
    """One chunk's share of ``kdlib.losses.kd.kd_loss`` and its logit gradient, in plain PyTorch.

    ``kd_loss = T^2/N sum_n KL_n`` with ``KL_n = sum_c p_t (log p_t - log p_s)``,
    ``p = softmax(x/T)``, computed in ``compute_dtype`` (fp32 for fp16/bf16, fp64 for
    fp64), as the reference does. The chunk's part is ``T^2/N`` times its rows' KL sum
    (``N = n_total``, the whole batch); since ``dKL_n/ds_c = (p_s,c - p_t,c)/T`` the
    gradient is ``G = (T/N)(p_s - p_t)``, returned in the student's dtype (as autograd
    of the reference hands it to the matmul). ``s`` and ``t`` are fresh matmul outputs
    owned by the caller's loop, so for fp32/fp64 inputs they are overwritten in place:
    three chunk-sized buffers (``s``, ``t``, ``p_t``), what ``chunk_rows`` budgets. For
    fp16/bf16 inputs the fp32 copies come on top of the half-precision logits (about
    3x the budget, which counts the student's itemsize).
    """
    dt = compute_dtype(s, t)
    log_ps = s.to(dt).div_(temperature)
    log_ps.sub_(torch.logsumexp(log_ps, dim=1, keepdim=True))
    log_pt = t.to(dt).div_(temperature)
    log_pt.sub_(torch.logsumexp(log_pt, dim=1, keepdim=True))
    p_t = log_pt.exp()
    part = (temperature * temperature / n_total) * log_pt.sub_(log_ps).mul_(p_t).sum()
    if not write_grad:
        return part, None
    grad = log_ps.exp_().sub_(p_t).mul_(temperature / n_total)
    return part, grad.to(s.dtype)


class _FusedLinearKDFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h_s, w_s, h_t, w_t, temperature, memory_budget, chunk_fn: ChunkFn):
        n = h_s.shape[0]
        c = w_s.shape[0]
        h_t = h_t.detach()
        w_t = w_t.detach()
        need_h, need_w = h_s.requires_grad, w_s.requires_grad
        grad_h = torch.empty_like(h_s) if need_h else None
        grad_w = torch.zeros_like(w_s) if need_w else None
        rows = chunk_rows(n, c, h_s.element_size(), memory_budget)
        loss = h_s.new_zeros((), dtype=compute_dtype(h_s, h_t))
        for start in range(0, n, rows):
            hs = h_s[start:start + rows]
            part, g = chunk_fn(
                hs @ w_s.t(), h_t[start:start + rows] @ w_t.t(), temperature, n, need_h or need_w
            )
            loss += part
            if need_h:
                torch.mm(g, w_s, out=grad_h[start:start + rows])
            if need_w:
                grad_w.addmm_(g.t(), hs)
            del g, part
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
            None, None, None, None, None,
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

    ``memory_budget`` (bytes) bounds one chunk's logit buffers (student, teacher,
    gradient; counted in the student's dtype). ``backend``:

    * ``auto``: ``triton`` on CUDA, the eager reference elsewhere;
    * ``triton``: chunked, per-chunk loss and gradient from the fused ``kd`` kernel
      (an error where Triton cannot run);
    * ``torch``: the eager reference (full ``(N, C)`` logits);
    * ``torch_chunked``: chunked exactly like ``triton``, the per-chunk loss and
      gradient in plain PyTorch; any device. The path for CPU runs that must not
      hold the full logits.

    ``torch`` keeps the meaning it has in every other kernel module and in
    ``kdlib.kernels.utils.resolve_backend`` (``runtime.kernels: torch`` = the
    ``kdlib.losses`` reference, which the tests compare the kernels against), so the
    chunked PyTorch path is a separate, explicit value rather than a silent change of
    what ``torch`` (and ``auto`` on CPU) compute.
    """
    if backend == TORCH_CHUNKED:
        chunk_fn = _torch_chunk
    elif backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    elif use_triton(backend, student_hidden.device):
        chunk_fn = _triton_chunk
    else:
        return reference.fused_linear_kd_loss(student_hidden, student_weight, teacher_hidden, teacher_weight, temperature)
    reference.check_linear_heads(student_hidden, student_weight, teacher_hidden, teacher_weight)
    check_temperature(temperature)
    if int(memory_budget) < 1:
        raise ValueError(f"memory_budget must be a positive number of bytes, got {memory_budget!r}")
    return _FusedLinearKDFunction.apply(
        student_hidden, student_weight, teacher_hidden, teacher_weight, float(temperature), int(memory_budget), chunk_fn
    )
