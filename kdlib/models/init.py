"""Initial weights: a seeded initialisation, and a student started near its teacher's.

"Random Teachers are Good Teachers" (Sarnthein et al., ICML 2023) distils students from a
teacher at its random initialisation, and finds feature learning strongly amplified when
the student starts close to that teacher. Their code (safelix/dinopl, configuration.py
`init_student_teacher`, `--s_init neighborhood`) draws a fresh initialisation theta_R of the
student and sets every parameter to theta_T + eps * theta_R, optionally divided by
sqrt(1 + eps^2) (`--s_init_var_preserving`); eps = 0 is their default, the teacher itself.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from kdlib.models import build_model


def initial_model(arch: str, seed: int, num_classes: int, in_channels: int = 3, image_size: int = 32) -> nn.Module:
    """`arch` as `torch.manual_seed(seed)` then `build_model` initialises it (what a training
    run seeded `seed` starts from), built under a forked RNG: the caller's stays as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model(arch, num_classes, in_channels, image_size)


@torch.no_grad()
def start_near(student: nn.Module, teacher: nn.Module, noise: float, variance_preserving: bool = False) -> None:
    """In place: every parameter of `student` becomes teacher + noise * (its own value), divided
    by sqrt(1 + noise^2) with `variance_preserving`; its buffers (batch-norm statistics) become
    the teacher's. The two must be the same architecture (same parameter names and shapes)."""
    theirs = dict(teacher.named_parameters())
    ours = dict(student.named_parameters())
    if ours.keys() != theirs.keys() or any(p.shape != theirs[n].shape for n, p in ours.items()):
        raise ValueError(f"start_near: {type(student).__name__} and {type(teacher).__name__} differ in parameters")
    scale = 1.0 / math.sqrt(1.0 + noise**2) if variance_preserving else 1.0
    for name, p in ours.items():
        p.copy_((theirs[name] + noise * p) * scale)
    buffers = dict(teacher.named_buffers())
    for name, b in student.named_buffers():
        b.copy_(buffers[name])
