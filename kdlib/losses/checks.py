"""Input checks and dtype/index helpers shared by the loss families (and their kernels).

Every check raises ``ValueError`` naming the argument, so a bad call says which input
to fix.
"""
from __future__ import annotations

import math

import torch

from kdlib.checks import check_logits, compute_dtype  # noqa: F401 - the losses' names for them


def check_pair(student: torch.Tensor, teacher: torch.Tensor) -> None:
    check_logits(student, "student")
    check_logits(teacher, "teacher")
    if student.shape != teacher.shape:
        raise ValueError(
            f"teacher shape {tuple(teacher.shape)} does not match student shape "
            f"{tuple(student.shape)}"
        )


def check_target(target: torch.Tensor, n: int) -> None:
    if not isinstance(target, torch.Tensor):
        raise ValueError(f"target must be a torch.Tensor, got {type(target).__name__}")
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise ValueError(f"target must be an integer (long) tensor, got dtype {target.dtype}")
    if target.dim() != 1 or target.shape[0] != n:
        raise ValueError(f"target must have shape ({n},), got shape {tuple(target.shape)}")


def check_temperature(temperature: float) -> None:
    t = float(temperature)
    if not (math.isfinite(t) and t > 0.0):
        raise ValueError(f"temperature must be a finite positive number, got {temperature!r}")


def check_min_classes(x: torch.Tensor, name: str, k: int, what: str) -> None:
    if x.shape[1] < k:
        raise ValueError(f"{name} must have at least {k} classes for {what}, got shape {tuple(x.shape)}")


def check_positive(value: float, name: str) -> None:
    v = float(value)
    if not (math.isfinite(v) and v > 0.0):
        raise ValueError(f"{name} must be a finite positive number, got {value!r}")


def nontarget_index(y: torch.Tensor, c: int) -> torch.Tensor:
    """(N, C-1) column indices of the non-target classes of each row, in order."""
    cols = torch.arange(c - 1, device=y.device)
    return cols.unsqueeze(0) + (cols.unsqueeze(0) >= y.unsqueeze(1)).long()
