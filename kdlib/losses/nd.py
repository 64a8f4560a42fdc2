"""ND, the feature loss of KD++ / DKD++ (Wang et al., 2023): the student's penultimate feature
pushed along the teacher's class-mean direction and towards the larger norm."""
from __future__ import annotations

import torch

from kdlib.losses.checks import check_logits, check_target, compute_dtype


def nd_loss(
    student_feat: torch.Tensor, teacher_feat: torch.Tensor, class_means: torch.Tensor, target: torch.Tensor
) -> torch.Tensor:
    """ND (norm and direction) feature loss, the "++" of KD++ / DKD++.

    Pushes the student's penultimate feature along the teacher's class-mean
    direction and towards the larger of the two norms. With
    ``u_y = mu_y / ||mu_y||``:
    ``L = mean_n( 1 - <e_s, u_y> / max(||e_s||, ||e_t||) )``.
    ``teacher_feat`` and ``class_means`` (``(C, D)``) are constants (detached);
    the gradient goes through the max as in the ND code. Features must be
    non-zero (the norm's gradient is undefined at 0).
    """
    check_logits(student_feat, "student_feat")
    check_logits(teacher_feat, "teacher_feat")
    if teacher_feat.shape != student_feat.shape:
        raise ValueError(
            f"teacher_feat shape {tuple(teacher_feat.shape)} does not match student_feat shape "
            f"{tuple(student_feat.shape)}"
        )
    teacher_norm = teacher_feat.detach().to(compute_dtype(student_feat, teacher_feat)).norm(dim=1)
    return nd_loss_from_norms(student_feat, teacher_norm, class_means, target)


def nd_loss_from_norms(
    student_feat: torch.Tensor, teacher_norm: torch.Tensor, class_means: torch.Tensor, target: torch.Tensor
) -> torch.Tensor:
    """`nd_loss` given only the teacher features' norms ``||e_t||`` (shape (N,)).

    The ND loss reads the teacher feature through its norm alone, so the logit cache
    stores one norm per (epoch, sample) view instead of the whole feature.
    """
    check_logits(student_feat, "student_feat")
    n, d = student_feat.shape
    if not isinstance(teacher_norm, torch.Tensor) or not teacher_norm.is_floating_point() or teacher_norm.shape != (n,):
        raise ValueError(f"teacher_norm must be a floating-point tensor of shape ({n},), got {getattr(teacher_norm, 'shape', teacher_norm)}")
    check_logits(class_means, "class_means")
    if class_means.shape[1] != d:
        raise ValueError(f"class_means must have shape (C, {d}), got shape {tuple(class_means.shape)}")
    check_target(target, n)
    dt = compute_dtype(student_feat, teacher_norm, class_means)
    e_s = student_feat.to(dt)
    mu = class_means.detach().to(device=student_feat.device, dtype=dt)
    u = mu / mu.norm(dim=1, keepdim=True)
    u_y = u.index_select(0, target.long().to(student_feat.device))
    denom = torch.maximum(e_s.norm(dim=1), teacher_norm.detach().to(device=student_feat.device, dtype=dt))
    return (1.0 - (e_s * u_y).sum(dim=1) / denom).mean()
