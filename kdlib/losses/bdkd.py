"""BD-KD (Amara et al., 2022): forward and reverse KL mixed per sample by the entropy gap."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from kdlib.losses.checks import check_min_classes, check_pair, check_temperature, compute_dtype
from kdlib.losses.kd import kl_rows


def entropy_gap_weights(student: torch.Tensor, teacher: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """BD-KD's per-sample ``(w_forward, w_reverse)`` from the entropy gap (detached, shape (N,)).

    kdflow's interpretation (the paper's exact weighting could not be checked):
    ``g = (H(softmax(s)) - H(softmax(t))) / log C`` in [-1, 1], at temperature 1 (the
    predictions whose confidence calibration is about); ``w_reverse = (1 + g) / 2``,
    ``w_forward = (1 - g) / 2``. An under-confident student (``g > 0``) leans on the
    mode-seeking reverse KL, which sharpens it; an over-confident one on the
    mode-covering forward KL, which softens it; equal entropies give the symmetric
    half-and-half mix. Needs ``C >= 2``.
    """
    check_pair(student, teacher)
    check_min_classes(student, "student", 2, "the entropy gap")
    dt = compute_dtype(student, teacher)
    with torch.no_grad():
        log_ps = F.log_softmax(student.detach().to(dt), dim=1)
        log_pt = F.log_softmax(teacher.detach().to(dt), dim=1)
        h_s = -(log_ps.exp() * log_ps).sum(dim=1)
        h_t = -(log_pt.exp() * log_pt).sum(dim=1)
        gap = ((h_s - h_t) / math.log(student.shape[1])).clamp(-1.0, 1.0)
    return (1.0 - gap) / 2.0, (1.0 + gap) / 2.0


def bdkd_loss(
    student: torch.Tensor, teacher: torch.Tensor, temperature: float, reverse_weight: torch.Tensor | None = None
) -> torch.Tensor:
    """BD-KD student term: ``T^2 * mean_n( (1 - r_n) KL(p_t || p_s) + r_n KL(p_s || p_t) )``.

    Amara et al., "BD-KD: Balancing the Divergences for Online Knowledge Distillation"
    (2022): forward and reverse KL between ``p = softmax(z / T)`` mixed per sample.
    ``r`` defaults to `entropy_gap_weights`'s ``w_reverse`` (an interpretation); pass
    ``reverse_weight`` (shape (N,), constants) to fix it (0: Hinton KD, 1: reverse KL).
    The teacher is a constant here.
    """
    check_pair(student, teacher)
    check_temperature(temperature)
    n = student.shape[0]
    if reverse_weight is None:
        reverse_weight = entropy_gap_weights(student, teacher)[1]
    elif not isinstance(reverse_weight, torch.Tensor) or reverse_weight.shape != (n,):
        raise ValueError(f"reverse_weight must be a tensor of shape ({n},), got {getattr(reverse_weight, 'shape', reverse_weight)}")
    dt = compute_dtype(student, teacher)
    T = float(temperature)
    log_ps = F.log_softmax(student.to(dt) / T, dim=1)
    log_pt = F.log_softmax(teacher.detach().to(dt) / T, dim=1)
    r = reverse_weight.detach().to(device=student.device, dtype=dt)
    mix = (1.0 - r) * kl_rows(log_pt, log_ps) + r * kl_rows(log_ps, log_pt)
    return (T * T) * mix.mean()
