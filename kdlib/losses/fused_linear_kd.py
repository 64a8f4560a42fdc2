"""KD through the output heads (LLM distillation): the eager reference of the chunked kernel."""
from __future__ import annotations

import torch

from kdlib.losses.checks import check_logits
from kdlib.losses.kd import kd_loss


def fused_linear_kd_loss(
    student_hidden: torch.Tensor,
    student_weight: torch.Tensor,
    teacher_hidden: torch.Tensor,
    teacher_weight: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """KD through the output heads: ``kd_loss(h_s @ W_s^T, h_t @ W_t^T, T)``, eager full logits.

    ``student_hidden`` ``(N, H_s)``, ``student_weight`` ``(C, H_s)`` (an LM head,
    no bias), ``teacher_hidden`` ``(N, H_t)``, ``teacher_weight`` ``(C, H_t)``;
    the teacher side is constant. This materialises both ``(N, C)`` logit
    matrices: it is the reference that ``kdlib.kernels.fused_linear_kd.fused_linear_kd_loss``
    (chunked, never the full logits) is checked against.
    """
    check_linear_heads(student_hidden, student_weight, teacher_hidden, teacher_weight)
    student = student_hidden @ student_weight.t()
    teacher = teacher_hidden.detach() @ teacher_weight.detach().t()
    return kd_loss(student, teacher, temperature)


def check_linear_heads(
    student_hidden: torch.Tensor, student_weight: torch.Tensor, teacher_hidden: torch.Tensor, teacher_weight: torch.Tensor
) -> None:
    """Shapes of ``fused_linear_kd_loss``'s inputs, with errors naming the argument."""
    for x, name in ((student_hidden, "student_hidden"), (student_weight, "student_weight"),
                    (teacher_hidden, "teacher_hidden"), (teacher_weight, "teacher_weight")):
        check_logits(x, name)
    if teacher_hidden.shape[0] != student_hidden.shape[0]:
        raise ValueError(
            f"teacher_hidden has {teacher_hidden.shape[0]} rows, student_hidden {student_hidden.shape[0]}"
        )
    if student_weight.shape[1] != student_hidden.shape[1]:
        raise ValueError(
            f"student_weight must have shape (C, {student_hidden.shape[1]}), got {tuple(student_weight.shape)}"
        )
    if teacher_weight.shape[1] != teacher_hidden.shape[1]:
        raise ValueError(
            f"teacher_weight must have shape (C, {teacher_hidden.shape[1]}), got {tuple(teacher_weight.shape)}"
        )
    if teacher_weight.shape[0] != student_weight.shape[0]:
        raise ValueError(
            f"teacher_weight has {teacher_weight.shape[0]} classes, student_weight {student_weight.shape[0]}"
        )
