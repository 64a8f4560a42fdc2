"""Input checks and dtype/index helpers shared by the loss families (and their kernels).

Every check raises ``ValueError`` naming the argument, so a bad call says which input
to fix.
"""
from __future__ import annotations

import math

import torch


def check_logits(x: torch.Tensor, name: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() != 2:
        raise ValueError(f"{name} must have shape (N, C), got shape {tuple(x.shape)}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} must be non-empty, got shape {tuple(x.shape)}")


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


def compute_dtype(*xs: torch.Tensor) -> torch.dtype:
    """float64 if any input is float64, else float32 (fp16/bf16 are upcast)."""
    return torch.float64 if any(x.dtype == torch.float64 for x in xs) else torch.float32


def nontarget_index(y: torch.Tensor, c: int) -> torch.Tensor:
    """(N, C-1) column indices of the non-target classes of each row, in order."""
    cols = torch.arange(c - 1, device=y.device)
    return cols.unsqueeze(0) + (cols.unsqueeze(0) >= y.unsqueeze(1)).long()
