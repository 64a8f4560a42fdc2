"""Decoupled KD (Zhao et al., CVPR 2022): CE plus a linearly warmed-up TCKD + NCKD term."""
from __future__ import annotations

from pydantic import Field

from kdlib.losses import ce, dkd
from kdlib.methods.base import Method, MethodSettings, register


class DKDSettings(MethodSettings):
    ce_weight: float = Field(1.0, ge=0)
    alpha: float = Field(1.0, ge=0)
    beta: float = Field(8.0, ge=0)
    temperature: float = Field(4.0, gt=0)
    warmup_epochs: int = Field(20, ge=0, description="linear ramp of the DKD term")


def warmup_ramp(epoch: int, warmup_epochs: int) -> float:
    """DKD's linear warmup of the distillation term: min((epoch + 1) / warmup, 1)."""
    return min((epoch + 1) / warmup_epochs, 1.0) if warmup_epochs else 1.0


@register
class DKD(Method):
    """Decoupled KD: CE + min(epoch / warmup, 1) * T^2 (alpha TCKD + beta NCKD)."""

    name = "dkd"
    min_classes = 3  # NCKD, over the non-target classes alone, is 0 with one
    Settings = DKDSettings

    def kernels(self):
        from kdlib.kernels import dkd as dkd_kernels

        return {dkd.dkd_loss: dkd_kernels.dkd_loss}

    def forward_train(self, model, x, target, teacher, epoch):
        s = self.settings
        logits, _ = model(x)
        ramp = warmup_ramp(epoch, s.warmup_epochs)
        return logits, {
            "ce": s.ce_weight * ce.cross_entropy(logits, target),
            "dkd": ramp * self.loss(dkd.dkd_loss)(logits, teacher, target, s.alpha, s.beta, s.temperature),
        }
