"""Hinton KD (Hinton, Vinyals & Dean, 2015): CE plus the tempered softmax KL to the teacher."""
from __future__ import annotations

from pydantic import Field

from kdlib.losses import ce, kd
from kdlib.methods.base import Method, MethodSettings, register


class KDSettings(MethodSettings):
    temperature: float = Field(4.0, gt=0)
    ce_weight: float = Field(0.1, ge=0)
    kd_weight: float = Field(0.9, ge=0)


@register
class KD(Method):
    """Hinton KD: w_ce * CE + w_kd * T^2 KL(p_t || p_s); mdistiller's CIFAR defaults."""

    name = "kd"
    Settings = KDSettings

    def kernels(self):
        from kdlib.kernels import kd as kd_kernels

        return {kd.kd_loss: kd_kernels.kd_loss}

    def forward_train(self, model, x, target, teacher, epoch):
        s = self.settings
        logits, _ = model(x)
        return logits, {
            "ce": s.ce_weight * ce.cross_entropy(logits, target),
            "kd": s.kd_weight * self.loss(kd.kd_loss)(logits, teacher, s.temperature),
        }
