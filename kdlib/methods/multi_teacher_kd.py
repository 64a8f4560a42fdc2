"""Multi-teacher KD with MTARD's entropy balance (Zhao et al., ECCV 2022), several cached teachers."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from kdlib.losses import ce, multi_teacher_kd
from kdlib.methods.base import Method, MethodSettings, register


class MultiTeacherKDSettings(MethodSettings):
    teachers: list[str] = Field(min_length=2, description="names of the cached teachers it distils from")
    ce_weight: float = Field(0.1, ge=0, description="our choice, Hinton KD's CIFAR split (MTARD has no CE)")
    kd_weight: float = Field(0.9, ge=0)
    temperature: float = Field(1.0, gt=0, description="MTARD's start and floor: the softest teacher's temperature")
    max_temperature: float = Field(10.0, gt=0, description="MTARD's ceiling")
    kd_reduction: Literal["mean", "batchmean"] = Field(
        "mean", description="mean: MTARD's torch.mean over batch and classes "
        "(resnet18_mtard_cifar10.py:125-126); batchmean: the per-row KL summed over the classes, "
        "C times larger (kdflow's before)",
    )
    target_log_eps: float = Field(
        1e-5, ge=0, description="MTARD's log(p_t + 1e-5) (line 57); 0: the exact KL "
        "(kdflow's before). The value only: the gradient is the same",
    )

    @model_validator(mode="after")
    def _check(self) -> "MultiTeacherKDSettings":
        if len(set(self.teachers)) != len(self.teachers):
            raise ValueError(f"teachers: {self.teachers} lists a teacher twice")
        if self.max_temperature < self.temperature:
            raise ValueError(f"max_temperature ({self.max_temperature}) must be >= temperature ({self.temperature})")
        return self


@register
class MultiTeacherKD(Method):
    """Multi-teacher KD, MTARD's entropy balance without the adversarial part (Zhao et al.,
    ECCV 2022): ce_weight * CE + kd_weight * mean_k KL(softmax(t_k / tau_k) || softmax(s)),
    the tau_k of `kdlib.losses.multi_teacher_kd.entropy_balanced_temperatures` per batch (every teacher's target
    as soft as the softest teacher's at `temperature`), the KL reduced as MTARD's (mean over
    batch and classes, log(p_t + 1e-5): `kd_reduction`, `target_log_eps`). `forward_train` gets the teachers'
    logits stacked, (K, B, C), in `teachers` order. Equal weights 1/K: MTARD's loss-weight
    balance (by relative loss decrease) is stateful and left out.
    """

    name = "multi_teacher_kd"
    Settings = MultiTeacherKDSettings

    def teacher_names(self) -> list[str]:
        return list(self.settings.teachers)

    def forward_train(self, model, x, target, teacher, epoch):
        s = self.settings
        logits, _ = model(x)
        taus = multi_teacher_kd.entropy_balanced_temperatures(teacher, s.temperature, s.max_temperature)
        return logits, {
            "ce": s.ce_weight * ce.cross_entropy(logits, target),
            "kd": s.kd_weight * multi_teacher_kd.multi_teacher_kd_loss(
                logits, teacher, taus, s.kd_reduction, s.target_log_eps
            ),
        }
