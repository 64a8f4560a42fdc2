"""LDR-KL (Zhu et al., 2023): the label-distributionally-robust KL loss, a CE replacement."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from kdlib.losses.checks import check_logits, check_positive, check_target, compute_dtype


def ldr_kl_loss(logits: torch.Tensor, target: torch.Tensor, lam: float, delta: float) -> torch.Tensor:
    """LDR-KL (label-distributionally-robust KL loss, Zhu et al. 2023): a CE replacement.

    The worst case over label distributions in a KL ball gives a log-sum-exp
    with margin ``delta`` on the wrong classes. With
    ``f~ = softplus(f) / mean_k softplus(f)`` per row:
    ``L = batch_mean( lam * log( mean_k exp((delta * [k != y] + f~_k - f~_y) / lam) ) )``,
    computed as ``lam * (logsumexp(...) - log C)``. ``lam = 10`` in the paper.
    """
    check_logits(logits, "logits")
    n, c = logits.shape
    check_target(target, n)
    check_positive(lam, "lam")
    f = logits.to(compute_dtype(logits))
    y = target.long().to(logits.device).unsqueeze(1)
    sp = F.softplus(f)
    ft = sp / sp.mean(dim=1, keepdim=True)
    margin = torch.full_like(ft, float(delta)).scatter(1, y, 0.0)
    lam = float(lam)
    x = (margin + ft - ft.gather(1, y)) / lam
    return (lam * (torch.logsumexp(x, dim=1) - math.log(c))).mean()
