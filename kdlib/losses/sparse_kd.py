"""TinyViT's sparse KD: soft-target CE against the teacher's cached top-K probabilities."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kdlib.losses.checks import check_logits, compute_dtype


def sparse_kd_loss(student: torch.Tensor, topk_probs: torch.Tensor, topk_indices: torch.Tensor) -> torch.Tensor:
    """Soft-target CE against a TinyViT-style sparse teacher cache.

    Only the teacher's top-K probabilities are stored. Reconstruction: the top-K
    values in place, the remaining mass ``r = max(1 - sum(topK), 0)`` spread
    uniformly over the other ``C - K`` classes (nothing when ``K = C``).
    ``L = -batch_mean( sum_c p_c * log_softmax(s)_c )``. The clamp keeps fp16
    rounding (``sum(topK)`` slightly above 1) from giving negative targets; the
    reconstruction then sums to ``sum(topK)``, not exactly 1. Indices in a row
    are assumed distinct.
    """
    check_sparse_targets(student, topk_probs, topk_indices)
    n, c = student.shape
    k = topk_probs.shape[1]
    dt = compute_dtype(student, topk_probs)
    vals = topk_probs.detach().to(device=student.device, dtype=dt)
    idx = topk_indices.to(student.device).long()
    if k < c:
        rest = (1.0 - vals.sum(dim=1, keepdim=True)).clamp_min(0.0) / (c - k)
    else:
        rest = vals.new_zeros(n, 1)
    p = rest.expand(n, c).scatter(1, idx, vals)
    return -(p * F.log_softmax(student.to(dt), dim=1)).sum(dim=1).mean()


def check_sparse_targets(student: torch.Tensor, topk_probs: torch.Tensor, topk_indices: torch.Tensor) -> None:
    """Shapes and dtypes of a top-K teacher cache against the student logits."""
    check_logits(student, "student")
    n, c = student.shape
    if not isinstance(topk_probs, torch.Tensor) or not topk_probs.is_floating_point():
        raise ValueError("topk_probs must be a floating-point torch.Tensor")
    if topk_probs.dim() != 2 or topk_probs.shape[0] != n or not (1 <= topk_probs.shape[1] <= c):
        raise ValueError(f"topk_probs must have shape ({n}, K) with 1 <= K <= {c}, got shape {tuple(topk_probs.shape)}")
    if not isinstance(topk_indices, torch.Tensor) or topk_indices.is_floating_point() or topk_indices.is_complex() \
            or topk_indices.dtype == torch.bool:
        raise ValueError("topk_indices must be an integer torch.Tensor")
    if topk_indices.shape != topk_probs.shape:
        raise ValueError(
            f"topk_indices shape {tuple(topk_indices.shape)} does not match topk_probs shape {tuple(topk_probs.shape)}"
        )
