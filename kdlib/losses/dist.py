"""DIST (Huang et al., NeurIPS 2022): match inter- and intra-class relations of the predictions."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kdlib.losses.checks import check_pair, check_temperature, compute_dtype


def _pearson_rows(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Pearson correlation of each row pair, as DIST's code: cosine of the centred rows, ``+eps`` in the denominator."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def dist_loss(
    student: torch.Tensor, teacher: torch.Tensor, beta: float, gamma: float, temperature: float
) -> torch.Tensor:
    """DIST term (no CE): ``tau^2 * (beta * inter + gamma * intra)``.

    Matches *relations* instead of exact probabilities, which tolerates a large
    teacher-student gap. With ``y = softmax(z / tau)``:
    ``inter = 1 - mean_n pearson(y_s[n, :], y_t[n, :])`` (per sample, across
    classes) and ``intra = 1 - mean_c pearson(y_s[:, c], y_t[:, c])`` (per class,
    across the batch). Pearson is the cosine of the centred vectors with
    ``+1e-8`` in the denominator, as in the DIST reference code, so
    ``s == t`` gives ~0 (not exactly 0) and a constant vector correlates 0.
    Shift-invariant per row. With ``N = 1`` the intra term is the constant 1.
    """
    check_pair(student, teacher)
    check_temperature(temperature)
    dt = compute_dtype(student, teacher)
    tau = float(temperature)
    y_s = F.softmax(student.to(dt) / tau, dim=1)
    y_t = F.softmax(teacher.detach().to(dt) / tau, dim=1)
    inter = 1.0 - _pearson_rows(y_s, y_t).mean()
    intra = 1.0 - _pearson_rows(y_s.t(), y_t.t()).mean()
    return (tau * tau) * (beta * inter + gamma * intra)
