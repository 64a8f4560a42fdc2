"""Plackett-Luce distillation: one list-wise term in place of CE + KD."""
from __future__ import annotations

from pydantic import Field

from kdlib.losses import pld
from kdlib.methods.base import Method, MethodSettings, register


class PLDSettings(MethodSettings):
    temperature: float = Field(4.0, gt=0, description="teacher softmax temperature of the weights (CIFAR: 4)")


@register
class PLD(Method):
    """Plackett-Luce distillation: one list-wise term replacing CE + KD (weight 1), tau = 4 (CIFAR)."""

    name = "pld"
    Settings = PLDSettings

    def forward_train(self, model, x, target, teacher, epoch):
        logits, _ = model(x)
        return logits, {"pld": pld.pld_loss(logits, teacher, target, self.settings.temperature)}
