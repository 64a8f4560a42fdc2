"""Normalized KD (Yang et al., ICCV 2023): a confidence-weighted target term plus a
normalized non-target term."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kdlib.losses.checks import (
    check_min_classes,
    check_pair,
    check_target,
    check_temperature,
    compute_dtype,
    nontarget_index,
)


def nkd_loss(
    student: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor, temperature: float, gamma: float
) -> torch.Tensor:
    """Normalized KD term (no CE): ``L_target + L_non``.

    Splits KD into a target part weighted by the teacher's own confidence and a
    normalized non-target part. ``t_y = softmax(t)[y]`` at ``T = 1`` (constant):
    ``L_target = -batch_mean(t_y * log_softmax(s)[y])``;
    ``L_non = -gamma * T^2 * batch_mean( sum_{i != y} T_hat_i * log S_hat_i )``
    with ``T_hat``, ``S_hat`` the softmax of ``z / T`` over the non-target
    logits only (a cross-entropy, as in the NKD code, not a KL). Needs ``C >= 2``.
    """
    check_pair(student, teacher)
    n, c = student.shape
    check_min_classes(student, "student", 2, "NKD")
    check_target(target, n)
    check_temperature(temperature)
    dt = compute_dtype(student, teacher)
    T = float(temperature)
    y = target.long().to(student.device)
    s = student.to(dt)
    t = teacher.detach().to(dt)
    t_y = F.softmax(t, dim=1).gather(1, y.unsqueeze(1)).squeeze(1)
    log_s_y = F.log_softmax(s, dim=1).gather(1, y.unsqueeze(1)).squeeze(1)
    l_target = -(t_y * log_s_y).mean()
    nt = nontarget_index(y, c)
    log_S_hat = F.log_softmax(s.gather(1, nt) / T, dim=1)
    T_hat = F.softmax(t.gather(1, nt) / T, dim=1)
    l_non = -float(gamma) * (T * T) * (T_hat * log_S_hat).sum(dim=1).mean()
    return l_target + l_non
