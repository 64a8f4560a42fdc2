"""KD++ and DKD++ (Wang et al., 2023): a logit loss plus the ND loss on the student's projected
penultimate feature; they read the teacher's feature norms and class means from the cache."""
from __future__ import annotations

from typing import Any

from pydantic import Field
from torch import Tensor, nn

from kdlib.losses import ce, dkd, kd, nd
from kdlib.methods.base import Method, register
from kdlib.methods.dkd import DKDSettings, warmup_ramp
from kdlib.methods.kd import KDSettings
from kdlib.models.heads import ProjectedFeature


class NDMethod(Method):
    """KD++ / DKD++ (Wang et al., 2023, "Improving Knowledge Distillation via Regularizing
    Feature Norm and Direction"): a logit loss plus nd_weight * ND loss on the student's
    penultimate feature, projected to the teacher's width by a linear layer when the widths
    differ (trained with the student, dropped at export). The teacher's feature reaches the
    loss only through its norm, so the cache holds one norm per view and the class means."""

    cached = ("logits", "feature_norms", "class_means")

    def build(self, student: nn.Module, teacher_dim: int | None = None) -> nn.Module:
        if teacher_dim is None:
            raise ValueError(f"{self.name} needs the teacher's feature width: build(student, teacher_dim)")
        return ProjectedFeature(student, teacher_dim)

    def nd_term(self, feature: Tensor, teacher: Any, target: Tensor) -> Tensor:
        loss = nd.nd_loss_from_norms(feature, teacher.feature_norms, teacher.class_means, target)
        return self.settings.nd_weight * loss


class KDPPSettings(KDSettings):
    ce_weight: float = Field(1.0, ge=0)
    kd_weight: float = Field(3.5, ge=0, description="ND repo, resnet32x4 -> resnet8x4")
    nd_weight: float = Field(2.0, ge=0, description="weight of the ND loss")
    warmup_epochs: int = Field(20, ge=0, description="linear ramp of the KD term, as the ND code")


@register
class KDPP(NDMethod):
    """KD++: CE + ramp * kd_weight * KD + nd_weight * ND. Defaults of the ND repo's
    resnet32x4 -> resnet8x4 run: CE 1, KD 3.5 at T = 4, ND 2, the KD term ramped over 20
    epochs (the ND code ramps it too; kdflow's `warmup_ramp` convention)."""

    name = "kd++"
    Settings = KDPPSettings

    def kernels(self):
        from kdlib.kernels import kd as kd_kernels

        return {kd.kd_loss: kd_kernels.kd_loss}

    def forward_train(self, model, x, target, teacher, epoch):
        s = self.settings
        logits, feature = model(x)
        ramp = warmup_ramp(epoch, s.warmup_epochs)
        return logits, {
            "ce": s.ce_weight * ce.cross_entropy(logits, target),
            "kd": ramp * s.kd_weight * self.loss(kd.kd_loss)(logits, teacher.logits, s.temperature),
            "nd": self.nd_term(feature, teacher, target),
        }


class DKDPPSettings(DKDSettings):
    alpha: float = Field(2.0, ge=0, description="TCKD weight; ND repo, resnet32x4 -> resnet8x4")
    nd_weight: float = Field(0.5, ge=0, description="weight of the ND loss")


@register
class DKDPP(NDMethod):
    """DKD++: DKD (CE + ramped T^2 (alpha TCKD + beta NCKD)) + nd_weight * ND. Defaults of
    the ND repo's resnet32x4 -> resnet8x4 run: alpha 2, beta 8, T 4, ND 0.5, warmup 20."""

    name = "dkd++"
    min_classes = 3  # DKD's NCKD is 0 with one non-target class
    Settings = DKDPPSettings

    def kernels(self):
        from kdlib.kernels import dkd as dkd_kernels

        return {dkd.dkd_loss: dkd_kernels.dkd_loss}

    def forward_train(self, model, x, target, teacher, epoch):
        s = self.settings
        logits, feature = model(x)
        ramp = warmup_ramp(epoch, s.warmup_epochs)
        return logits, {
            "ce": s.ce_weight * ce.cross_entropy(logits, target),
            "dkd": ramp * self.loss(dkd.dkd_loss)(logits, teacher.logits, target, s.alpha, s.beta, s.temperature),
            "nd": self.nd_term(feature, teacher, target),
        }
