"""Hard-label cross-entropy, the term most methods add to their distillation loss."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kdlib.losses.checks import check_logits, check_target, compute_dtype


def cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Hard-label cross-entropy, batch mean: ``mean_n( -log_softmax(z_n)[y_n] )``.

    A thin wrapper over ``F.cross_entropy`` that adds the shared validation and
    the fp32-at-least upcast.
    """
    check_logits(logits, "logits")
    check_target(target, logits.shape[0])
    z = logits.to(compute_dtype(logits))
    return F.cross_entropy(z, target.long(), reduction="mean")
