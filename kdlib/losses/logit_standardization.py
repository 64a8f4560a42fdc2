"""Logit standardization (Sun et al., CVPR 2024): z-scored logits before KD / DKD's softmax."""
from __future__ import annotations

import torch

from kdlib.losses.checks import check_logits, check_min_classes, compute_dtype


def logit_standardize(logits: torch.Tensor) -> torch.Tensor:
    """Logit standardization (LS, CVPR 2024): row-wise z-score ``(z - mean(z)) / (std(z) + 1e-7)``.

    Not a loss: a modifier applied to both student and teacher logits before the
    softmax of KD / DKD, so the student only has to match the teacher's logit
    *relations*, not their shift and scale. ``std`` is the unbiased (sample,
    ``C - 1``) standard deviation, as the paper's code uses ``torch.std``'s
    default. Output has row mean 0 and (unbiased) row std ~1 and is invariant
    to a per-row shift and positive scale of the input (up to the 1e-7).
    Keeps autograd (call on ``teacher.detach()`` yourself, or let the loss
    detach it). Needs ``C >= 2``. Returns float32 (float64 for float64 input).
    A constant row maps to 0, with a gradient of order ``1 / 1e-7``.
    """
    check_logits(logits, "logits")
    check_min_classes(logits, "logits", 2, "logit_standardize")
    z = logits.to(compute_dtype(logits))
    mean = z.mean(dim=1, keepdim=True)
    std = z.std(dim=1, keepdim=True)  # unbiased, as in the LS reference code
    return (z - mean) / (std + 1e-7)
