"""BD-KD (Amara et al., 2022), online: the student and a fresh teacher train together."""
from __future__ import annotations

from pydantic import Field
from torch import nn

from kdlib.losses import bdkd, ce, kd
from kdlib.methods.base import Method, MethodSettings, register
from kdlib.models.heads import OnlinePair


class BDKDSettings(MethodSettings):
    ce_weight: float = Field(1.0, ge=0, description="CE of the student")
    kd_weight: float = Field(1.0, ge=0, description="the student's balanced forward/reverse KL")
    teacher_ce_weight: float = Field(1.0, ge=0, description="CE of the online teacher")
    teacher_kd_weight: float = Field(1.0, ge=0, description="the teacher's reverse KL to the student")
    temperature: float = Field(4.0, gt=0)


@register
class BDKD(Method):
    """BD-KD (Amara et al., 2022), online: a fresh teacher of arch `teacher.arch` trains
    with the student in the same run (one SGD over both; each loss reaches one network).

    Student: CE + kd_weight * `kdlib.losses.bdkd.bdkd_loss` (forward and reverse KL mixed per sample
    by the entropy gap: kdflow's interpretation). Teacher: CE + teacher_kd_weight *
    `kd.reverse_kl_loss(teacher, student)`. Only the student is exported.
    """

    name = "bdkd"
    Settings = BDKDSettings
    needs_teacher = False
    online_teacher = True

    def build(self, student: nn.Module, teacher: nn.Module | None = None) -> nn.Module:
        if teacher is None:
            raise ValueError("bdkd trains an online teacher: build(student, teacher) needs the teacher network")
        return OnlinePair(student, teacher)

    @staticmethod
    def exported(trained: nn.Module) -> nn.Module:
        return trained.student if isinstance(trained, OnlinePair) else trained

    def forward_train(self, model, x, target, teacher, epoch):
        s = self.settings
        logits, teacher_logits, _ = model(x)
        return logits, {
            "ce": s.ce_weight * ce.cross_entropy(logits, target),
            "bdkd": s.kd_weight * bdkd.bdkd_loss(logits, teacher_logits.detach(), s.temperature),
            "teacher_ce": s.teacher_ce_weight * ce.cross_entropy(teacher_logits, target),
            "teacher_reverse_kl": s.teacher_kd_weight
            * kd.reverse_kl_loss(teacher_logits, logits.detach(), s.temperature),
        }
