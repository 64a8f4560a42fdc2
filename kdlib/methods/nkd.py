"""Normalized KD (Yang et al., ICCV 2023): CE plus NKD's target and non-target terms."""
from __future__ import annotations

from pydantic import Field

from kdlib.losses import ce, nkd
from kdlib.methods.base import Method, MethodSettings, register


class NKDSettings(MethodSettings):
    ce_weight: float = Field(1.0, ge=0)
    temperature: float = Field(3.0, gt=0)
    gamma: float = Field(3.5, ge=0, description="weight of the normalized non-target term")


@register
class NKD(Method):
    """Normalized KD: CE + (L_target + L_non); the NKD CIFAR config T = 3, gamma = 3.5
    (ImageNet uses T = 1, gamma = 1.5)."""

    name = "nkd"
    min_classes = 3  # L_non, over the non-target classes alone, is 0 with one
    Settings = NKDSettings

    def forward_train(self, model, x, target, teacher, epoch):
        s = self.settings
        logits, _ = model(x)
        return logits, {
            "ce": s.ce_weight * ce.cross_entropy(logits, target),
            "nkd": nkd.nkd_loss(logits, teacher, target, s.temperature, s.gamma),
        }
