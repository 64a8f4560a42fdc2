"""LDR-KL (Zhu et al., 2023) alone: a student without teacher, a robust CE replacement."""
from __future__ import annotations

from pydantic import Field

from kdlib.losses import ldr
from kdlib.methods.base import Method, MethodSettings, register


class LDRSettings(MethodSettings):
    lam: float = Field(
        10.0, gt=0, description="lambda: KL-ball temperature (the LDR code picks it per dataset by 5-fold "
        "cross-validation over 0.1, 1, 10)",
    )
    delta: float = Field(0.1, ge=0, description="--margin: margin on the non-target classes")


@register
class LDR(Method):
    """LDR-KL alone (student without teacher): a label-distributionally-robust CE replacement.

    Defaults: delta = 0.1, the `--margin` default of the LDR code's runnable script
    (DixianZhu/LDR, experiment.py:23, passed to `LDRLoss_V1` at line 181; the class's own
    default `threshold=2.0`, loss.py:174, is never used there); lam = 10, methods.md's value
    and the largest of the three the script cross-validates (experiment.py:133-134).
    """

    name = "ldr"
    Settings = LDRSettings
    needs_teacher = False

    def forward_train(self, model, x, target, teacher, epoch):
        s = self.settings
        logits, _ = model(x)
        return logits, {"ldr": ldr.ldr_kl_loss(logits, target, s.lam, s.delta)}
