"""Plackett-Luce distillation: one list-wise loss over the teacher's class ranking."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kdlib.losses.checks import check_pair, check_target, check_temperature, compute_dtype


def pld_loss(student: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor, temperature: float) -> torch.Tensor:
    """Plackett-Luce distillation: one list-wise loss replacing CE + KD.

    Order ``pi``: the true label first, then the other classes by teacher logit,
    descending (ties: lower class index first). Weights
    ``a_k = softmax(t / tau)[pi_k]``.
    ``L = batch_mean( sum_k a_k * (logsumexp_{l >= k} s[pi_l] - s[pi_k]) )``,
    the suffix log-sum-exps from one ``logcumsumexp`` over the flipped permuted
    row. Student logits are not temperature-scaled. Convex in ``s`` and
    shift-invariant per row; a one-hot ``a = (1, 0, ...)`` gives CE.
    """
    check_pair(student, teacher)
    n, c = student.shape
    check_target(target, n)
    check_temperature(temperature)
    dt = compute_dtype(student, teacher)
    tau = float(temperature)
    y = target.long().to(student.device).unsqueeze(1)
    t = teacher.detach().to(dt)
    s = student.to(dt)
    key = t.scatter(1, y, float("inf"))  # the true label sorts first
    pi = torch.sort(key, dim=1, descending=True, stable=True).indices
    a = F.softmax(t / tau, dim=1).gather(1, pi)
    s_pi = s.gather(1, pi)
    suffix_lse = torch.logcumsumexp(s_pi.flip(1), dim=1).flip(1)  # [k] = lse_{l >= k} s_pi[l]
    return (a * (suffix_lse - s_pi)).sum(dim=1).mean()
