"""KD and DKD on z-scored logits (logit standardization, Sun et al., CVPR 2024)."""
from __future__ import annotations

from pydantic import Field

from kdlib.losses import ce, dkd, kd, logit_standardization
from kdlib.methods.base import Method, register
from kdlib.methods.dkd import DKDSettings, warmup_ramp
from kdlib.methods.kd import KDSettings


class KDLSSettings(KDSettings):
    temperature: float = Field(2.0, gt=0, description="base temperature after standardization")
    ce_weight: float = Field(0.1, ge=0)
    kd_weight: float = Field(9.0, ge=0)


@register
class KDLS(Method):
    """KD + logit standardization (CVPR 2024): row-wise z-score of student and teacher
    logits, then Hinton KD with base T = 2; CE stays on the raw logits.

    Defaults are the LS repo's CIFAR KD+LS setting: `ce_weight` 0.1, `kd_weight` 9, T = 2.
    """

    name = "kd+ls"
    min_classes = 3  # z-scored logits of 2 classes are +-1 whatever they are: the KD term has no gradient
    Settings = KDLSSettings

    def kernels(self):
        from kdlib.kernels import kd as kd_kernels

        return {kd.kd_loss: kd_kernels.kd_loss}

    def forward_train(self, model, x, target, teacher, epoch):
        s = self.settings
        logits, _ = model(x)
        zs = logit_standardization.logit_standardize(logits)
        zt = logit_standardization.logit_standardize(teacher.detach())
        return logits, {
            "ce": s.ce_weight * ce.cross_entropy(logits, target),
            "kd": s.kd_weight * self.loss(kd.kd_loss)(zs, zt, s.temperature),
        }


class DKDLSSettings(DKDSettings):
    temperature: float = Field(2.0, gt=0, description="base temperature after standardization (--base-temp)")
    kd_weight: float = Field(
        9.0, ge=0, description="--kd-weight: multiplies alpha and beta (the LS repo's DKD+LS: 9, so alpha 9, "
        "beta 72); 1 keeps DKD's alpha and beta as they are",
    )


@register
class DKDLS(Method):
    """DKD + logit standardization: CE on the raw logits + ramped DKD on the z-scored
    student and teacher logits, with (kd_weight alpha, kd_weight beta); the LS repo's CIFAR
    DKD+LS run by default: alpha 1 x 9, beta 8 x 9, T 2, warmup 20.

    The LS code (`tools/train.py:115-118`) multiplies DKD's alpha and beta by `--kd-weight`
    (9 in the README's DKD+LS command) and sets T to `--base-temp` (2).
    """

    name = "dkd+ls"
    min_classes = 3  # z-scored logits of 2 classes are +-1 whatever they are: the KD term has no gradient
    Settings = DKDLSSettings

    def kernels(self):
        from kdlib.kernels import dkd as dkd_kernels

        return {dkd.dkd_loss: dkd_kernels.dkd_loss}

    def forward_train(self, model, x, target, teacher, epoch):
        s = self.settings
        logits, _ = model(x)
        ramp = warmup_ramp(epoch, s.warmup_epochs)
        zs = logit_standardization.logit_standardize(logits)
        zt = logit_standardization.logit_standardize(teacher.detach())
        return logits, {
            "ce": s.ce_weight * ce.cross_entropy(logits, target),
            "dkd": ramp * self.loss(dkd.dkd_loss)(zs, zt, target, s.kd_weight * s.alpha, s.kd_weight * s.beta, s.temperature),
        }
