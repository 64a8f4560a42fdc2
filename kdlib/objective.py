"""What `kdlib.train.fit` trains with: an objective, and the teacher's own (cross-entropy).

An objective turns one batch into the logits that are evaluated plus a dict of *named,
already weighted* loss terms; `fit` sums the dict, logs each term and calls `backward`.
Training a teacher needs nothing more, so teacher training (`tasks/train_teacher.py`,
`kdlib/mcmi.py`) builds on this module alone and never on distillation code. The
distillation methods (`kdlib.methods.base.Method`) are objectives with settings, a
registry name and the teachers they read.
"""
from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    """Hard-label cross-entropy, batch mean, computed in float32 at least (float64 stays
    float64): the same numbers as the students' `kdlib.losses.ce.cross_entropy`, without its
    input checks."""
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    return F.cross_entropy(logits.to(dtype), target.long(), reduction="mean")


class Objective:
    """The part of a training objective that `fit` and `kdlib.diagnostics.Probe` use."""

    name: ClassVar[str]
    """How logs and errors name it (a method's registry name)."""
    needs_teacher: ClassVar[bool] = False
    """Reads a teacher's cached tensors per batch (`fit`'s `teacher_views`)."""

    def start_epoch(self, model: nn.Module, epoch: int) -> None:
        """Called by `fit` before each epoch's first step (and on resume): an objective with
        state that follows the model (MCMI's class centroids) refreshes it here."""

    def forward_train(
        self, model: nn.Module, x: Tensor, target: Tensor, teacher: Any, epoch: int
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """(the logits that are evaluated, the named and weighted loss terms) of one batch."""
        raise NotImplementedError

    def backward(self, model: nn.Module, terms: dict[str, Tensor]) -> None:
        """Backpropagate one step's loss terms (called by `fit`): one backward of their sum.

        An objective that shapes its gradients (DHKD's `grad_align`) overrides this and says
        so in `shapes_gradients`.
        """
        sum(terms.values()).backward()

    @property
    def shapes_gradients(self) -> bool:
        """Whether `backward` does more than one backward of the summed terms (DDP's
        all-reduce only follows that one)."""
        return False

    @staticmethod
    def exported(trained: nn.Module) -> nn.Module:
        """The part of the trained module that is evaluated and saved (all of it here)."""
        return trained


class CrossEntropy(Objective):
    """The network alone on its labels: one term `ce` (how a teacher is trained)."""

    name = "ce"

    def forward_train(self, model, x, target, teacher, epoch):
        logits, _ = model(x)
        return logits, {"ce": cross_entropy(logits, target)}
