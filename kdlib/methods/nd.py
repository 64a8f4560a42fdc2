"""KD++ and DKD++ (Wang et al., 2023): a logit loss plus the ND loss on the student's projected
penultimate feature; they read the teacher's feature norms and class means from the cache."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field
from torch import Tensor, nn

from kdlib.losses import ce, dkd, kd, nd
from kdlib.methods.base import Method, register
from kdlib.methods.dkd import DKDSettings, warmup_ramp
from kdlib.methods.kd import KDSettings
from kdlib.models.heads import ProjectedFeature


WARMUP_START_DESCRIPTION = (
    "first epoch of the logit term's ramp: official (the ND code's min(epoch / warmup_epochs, 1), epochs "
    "from 0: 0 in the first epoch) or one_epoch_ahead (min((epoch + 1) / warmup_epochs, 1), mdistiller's "
    "DKD convention: kdflow's before)"
)


def nd_warmup_ramp(epoch: int, warmup_epochs: int, start: str) -> float:
    """The ramp on KD++'s KD / DKD++'s DKD term at `epoch` (counted from 0).

    ``official``: ``min(epoch / warmup_epochs, 1)``, the ND code's (``CIFAR/train_cifar_kd.py:52``,
    ``train_cifar_dkd.py:52``, with ``epoch`` the loop variable of ``range(0, epochs)``, line
    170): the term is 0 in the first epoch. ``one_epoch_ahead``: ``min((epoch + 1) /
    warmup_epochs, 1)`` (`kdlib.methods.dkd.warmup_ramp`, mdistiller's DKD, whose epochs count
    from 1). Both are 1 from epoch ``warmup_epochs`` on, and 1 throughout at ``warmup_epochs``
    0 (where the ND code would divide by zero).
    """
    if start == "one_epoch_ahead":
        return warmup_ramp(epoch, warmup_epochs)
    if start != "official":
        raise ValueError(f"warmup_start must be 'official' or 'one_epoch_ahead', got {start!r}")
    return min(epoch / warmup_epochs, 1.0) if warmup_epochs else 1.0


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
    warmup_start: Literal["official", "one_epoch_ahead"] = Field("official", description=WARMUP_START_DESCRIPTION)


@register
class KDPP(NDMethod):
    """KD++: CE + ramp * kd_weight * KD + nd_weight * ND. Defaults of the ND repo's
    resnet32x4 -> resnet8x4 run: CE 1, KD 3.5 at T = 4, ND 2, the KD term ramped over 20
    epochs as the ND code, min(epoch / 20, 1) from epoch 0 (`warmup_start`)."""

    name = "kd++"
    Settings = KDPPSettings

    def kernels(self):
        from kdlib.kernels import kd as kd_kernels

        return {kd.kd_loss: kd_kernels.kd_loss}

    def forward_train(self, model, x, target, teacher, epoch):
        s = self.settings
        logits, feature = model(x)
        ramp = nd_warmup_ramp(epoch, s.warmup_epochs, s.warmup_start)
        return logits, {
            "ce": s.ce_weight * ce.cross_entropy(logits, target),
            "kd": ramp * s.kd_weight * self.loss(kd.kd_loss)(logits, teacher.logits, s.temperature),
            "nd": self.nd_term(feature, teacher, target),
        }


class DKDPPSettings(DKDSettings):
    alpha: float = Field(2.0, ge=0, description="TCKD weight; ND repo, resnet32x4 -> resnet8x4")
    nd_weight: float = Field(0.5, ge=0, description="weight of the ND loss")
    warmup_start: Literal["official", "one_epoch_ahead"] = Field("official", description=WARMUP_START_DESCRIPTION)


@register
class DKDPP(NDMethod):
    """DKD++: DKD (CE + ramped T^2 (alpha TCKD + beta NCKD)) + nd_weight * ND. Defaults of
    the ND repo's resnet32x4 -> resnet8x4 run: alpha 2, beta 8, T 4, ND 0.5, warmup 20 (the ND
    code's ramp, min(epoch / 20, 1) from epoch 0: `warmup_start`)."""

    name = "dkd++"
    min_classes = 3  # DKD's NCKD is 0 with one non-target class
    Settings = DKDPPSettings

    def kernels(self):
        from kdlib.kernels import dkd as dkd_kernels

        return {dkd.dkd_loss: dkd_kernels.dkd_loss}

    def forward_train(self, model, x, target, teacher, epoch):
        s = self.settings
        logits, feature = model(x)
        ramp = nd_warmup_ramp(epoch, s.warmup_epochs, s.warmup_start)
        return logits, {
            "ce": s.ce_weight * ce.cross_entropy(logits, target),
            "dkd": ramp * self.loss(dkd.dkd_loss)(logits, teacher.logits, target, s.alpha, s.beta, s.temperature),
            "nd": self.nd_term(feature, teacher, target),
        }
