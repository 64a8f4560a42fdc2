"""SinKD: CE and Hinton KD plus the batch-wise Sinkhorn distance to the teacher's predictions."""
from __future__ import annotations

from pydantic import Field

from kdlib.losses import ce, kd, sinkd
from kdlib.methods.base import Method, MethodSettings, register


class SinKDSettings(MethodSettings):
    alpha: float = Field(0.9, ge=0, le=1, description="KD weight; CE gets 1 - alpha")
    beta: float = Field(0.1, ge=0, description="Sinkhorn weight")
    temperature: float = Field(2.0, gt=0)
    epsilon: float = Field(0.1, gt=0, description="entropic regularisation of the Sinkhorn plan")
    iterations: int = Field(20, ge=1, description="row/column normalisation rounds")


@register
class SinKD(Method):
    """SinKD: alpha * KD + (1 - alpha) * CE + beta * Sinkhorn, T = 2, eps = 0.1, 20 iterations.

    methods.md fixes T, eps and the iterations but not alpha / beta; our choice: alpha = 0.9
    (the usual CE 0.1 / KD 0.9 split of Hinton KD on CIFAR) and beta = 0.1. The Sinkhorn term
    is a *sum* over the batch (total transport mass N, see `kdlib.losses.sinkd.sinkhorn_loss`), so it
    grows with the batch size: beta = 0.1 at batch 64 makes it about twice the KD term at
    initialisation (100 classes) and relatively larger as the student nears the teacher.
    Scale beta with the batch size when changing it.
    """

    name = "sinkd"
    Settings = SinKDSettings

    def kernels(self):
        from kdlib.kernels import kd as kd_kernels

        return {kd.kd_loss: kd_kernels.kd_loss}

    def forward_train(self, model, x, target, teacher, epoch):
        s = self.settings
        logits, _ = model(x)
        return logits, {
            "ce": (1.0 - s.alpha) * ce.cross_entropy(logits, target),
            "kd": s.alpha * self.loss(kd.kd_loss)(logits, teacher, s.temperature),
            "sinkhorn": s.beta * sinkd.sinkhorn_loss(logits, teacher, s.temperature, s.epsilon, s.iterations),
        }
