"""Z-loss (de Brebisson & Vincent, 2016): a shift- and scale-invariant replacement of CE."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kdlib.losses.checks import check_logits, check_min_classes, check_positive, check_target, compute_dtype


def z_loss(logits: torch.Tensor, target: torch.Tensor, a: float, b: float, std_eps: float = 1e-7) -> torch.Tensor:
    """Z-loss (de Brebisson & Vincent, 2016): a shift- and scale-invariant CE replacement.

    ``z = (o - mean(o)) / (std(o) + std_eps)`` per row, ``L = batch_mean( softplus(a * (b - z_y)) / a )``.
    ``std`` is the population (``1/C``) standard deviation, as the paper defines
    ``sigma(o) = sqrt(mean_k (o_k - mu)^2)``. The paper has no eps (``std_eps=0``: its formula
    exactly; no official code was found). The default ``1e-7`` is kdflow's guard, as LS adds
    to its std: a constant row (std 0, e.g. an all-zero head) gives ``z = 0`` instead of
    ``0 / 0 = NaN``, though its gradient there is of order ``1 / 1e-7`` (true of any
    z-scoring, LS too): avoid exactly constant rows. Elsewhere it changes ``z`` by a relative
    ``~1e-7 / std``. Needs ``C >= 2``, ``a > 0``, ``std_eps >= 0``.
    """
    check_logits(logits, "logits")
    check_min_classes(logits, "logits", 2, "z_loss")
    check_target(target, logits.shape[0])
    check_positive(a, "a")
    if not (isinstance(std_eps, (int, float)) and 0 <= float(std_eps) < float("inf")):
        raise ValueError(f"std_eps must be a finite number >= 0, got {std_eps!r}")
    o = logits.to(compute_dtype(logits))
    y = target.long().to(logits.device).unsqueeze(1)
    mean = o.mean(dim=1, keepdim=True)
    std = o.std(dim=1, unbiased=False, keepdim=True)
    z_y = ((o - mean) / (std + float(std_eps))).gather(1, y).squeeze(1)
    a = float(a)
    return (F.softplus(a * (float(b) - z_y)) / a).mean()
