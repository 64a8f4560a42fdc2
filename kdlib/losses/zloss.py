"""Z-loss (de Brebisson & Vincent, 2016): a shift- and scale-invariant replacement of CE."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kdlib.losses.checks import check_logits, check_min_classes, check_positive, check_target, compute_dtype


def z_loss(logits: torch.Tensor, target: torch.Tensor, a: float, b: float) -> torch.Tensor:
    """Z-loss (de Brebisson & Vincent, 2016): a shift- and scale-invariant CE replacement.

    ``z = (o - mean(o)) / std(o)`` per row, ``L = batch_mean( softplus(a * (b - z_y)) / a )``.
    ``std`` is the population (``1/C``) standard deviation, as the paper defines
    ``sigma(o) = sqrt(mean_k (o_k - mu)^2)``; ``1e-7`` is added to it as in LS, so a
    constant row gives ``z = 0`` instead of NaN, but its gradient there is of
    order ``1 / 1e-7`` (true of any z-scoring, LS too): avoid exactly constant
    rows. Needs ``C >= 2`` and ``a > 0``.
    """
    check_logits(logits, "logits")
    check_min_classes(logits, "logits", 2, "z_loss")
    check_target(target, logits.shape[0])
    check_positive(a, "a")
    o = logits.to(compute_dtype(logits))
    y = target.long().to(logits.device).unsqueeze(1)
    mean = o.mean(dim=1, keepdim=True)
    std = o.std(dim=1, unbiased=False, keepdim=True)
    z_y = ((o - mean) / (std + 1e-7)).gather(1, y).squeeze(1)
    a = float(a)
    return (F.softplus(a * (float(b) - z_y)) / a).mean()
