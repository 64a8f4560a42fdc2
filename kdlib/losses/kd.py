"""Hinton KD (Hinton et al., 2015): the tempered softmax KL, alone, with CE, and reversed."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kdlib.losses.ce import cross_entropy
from kdlib.losses.checks import check_logits, check_pair, check_temperature, compute_dtype


def kl_rows(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """Per-row ``KL(p || q)`` from log-probabilities."""
    return (log_p.exp() * (log_p - log_q)).sum(dim=1)


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton KD term (no CE): ``T^2 * mean_n KL(softmax(t/T) || softmax(s/T))``.

    The ``T^2`` keeps the gradient scale independent of ``T``. Shift-invariant
    per row (softmax is). ``KL = sum_c p_t (log p_t - log p_s)`` with both logs
    from ``log_softmax``.
    """
    check_pair(student, teacher)
    check_temperature(temperature)
    dt = compute_dtype(student, teacher)
    T = float(temperature)
    log_ps = F.log_softmax(student.to(dt) / T, dim=1)
    log_pt = F.log_softmax(teacher.detach().to(dt) / T, dim=1)
    kl = (log_pt.exp() * (log_pt - log_ps)).sum(dim=1)
    return (T * T) * kl.mean()


def ce_kd_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    target: torch.Tensor,
    temperature: float,
    ce_weight: float,
    kd_weight: float,
) -> torch.Tensor:
    """Hinton's full objective as one scalar: ``ce_weight * CE(s, y) + kd_weight * kd_loss(s, t, T)``.

    CE is at temperature 1 on the raw student logits; the KD term is ``kd_loss``
    (with its ``T^2``). The reference of the one-pass kernel
    ``kdlib.kernels.kd.ce_kd_loss``.
    """
    return float(ce_weight) * cross_entropy(student, target) + float(kd_weight) * kd_loss(student, teacher, temperature)


def reverse_kl_loss(logits: torch.Tensor, target_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * mean_n KL(softmax(logits/T) || softmax(target_logits/T))``, the target constant.

    The KL whose first argument is the distribution being trained (mode-seeking): BD-KD's
    term for the online teacher, with the student's predictions as the constant target.
    """
    check_logits(logits, "logits")
    check_logits(target_logits, "target_logits")
    if logits.shape != target_logits.shape:
        raise ValueError(f"target_logits shape {tuple(target_logits.shape)} does not match logits shape {tuple(logits.shape)}")
    check_temperature(temperature)
    dt = compute_dtype(logits, target_logits)
    T = float(temperature)
    log_p = F.log_softmax(logits.to(dt) / T, dim=1)
    log_q = F.log_softmax(target_logits.detach().to(dt) / T, dim=1)
    return (T * T) * kl_rows(log_p, log_q).mean()
