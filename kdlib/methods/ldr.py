"""LDR-KL (Zhu et al., 2023) alone: a student without teacher, a robust CE replacement."""
from __future__ import annotations

from pydantic import Field

from kdlib.losses import ldr
from kdlib.methods.base import Method, MethodSettings, register


class LDRSettings(MethodSettings):
    lam: float = Field(10.0, gt=0, description="lambda: KL-ball temperature (paper: 10)")
    delta: float = Field(2.0, ge=0, description="margin on the non-target classes")


@register
class LDR(Method):
    """LDR-KL alone (student without teacher): a label-distributionally-robust CE replacement.

    Defaults: lam = 10 (methods.md / paper); delta = 2, the margin (`threshold`) default of
    the authors' reference LDR-KL code (`LDRLoss_V1(threshold=2.0, ...)`); methods.md gives
    no delta. The normalized scores f~ have row mean 1, so a margin of 2 is of their order.
    """

    name = "ldr"
    Settings = LDRSettings
    needs_teacher = False

    def forward_train(self, model, x, target, teacher, epoch):
        s = self.settings
        logits, _ = model(x)
        return logits, {"ldr": ldr.ldr_kl_loss(logits, target, s.lam, s.delta)}
