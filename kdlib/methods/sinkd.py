"""SinKD: CE and a KD term plus the batch-wise Sinkhorn distance to the teacher's predictions."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from kdlib.losses import ce, kd, sinkd
from kdlib.methods.base import Method, MethodSettings, register


class SinKDSettings(MethodSettings):
    alpha: float = Field(0.8, ge=0, le=1, description="--alpha: KD weight; CE gets 1 - alpha")
    temperature: float = Field(2.0, gt=0, description="--temperature: the KD term's")
    kd_form: Literal["soft_ce", "kl_t2"] = Field(
        "soft_ce", description="KD term: soft_ce (the SinKD code's: -mean_n sum p_t log p_s, no T^2) or "
        "kl_t2 (Hinton's T^2 KL)",
    )
    beta: float = Field(
        0.001, ge=0, description="weight of the Sinkhorn sum: the SinKD code's --beta 1 times the 0.001 "
        "inside its Sinkhorn loss",
    )
    sinkhorn_temperature: float = Field(2.0, gt=0, description="the Sinkhorn term's softmax temperature (fixed 2 in the SinKD code)")
    epsilon: float = Field(0.1, gt=0, description="entropic regularisation of the Sinkhorn plan")
    iterations: int = Field(20, ge=1, description="row/column normalisation rounds")


@register
class SinKD(Method):
    """SinKD: (1 - alpha) CE + alpha KD + beta Sinkhorn; by default the SinKD code's: alpha 0.8,
    soft cross-entropy KD at T 2 (no T^2), Sinkhorn weight 0.001 at T 2, eps 0.1, 20 iterations.

    The Sinkhorn term is a *sum* over the batch (total transport mass N, see
    `kdlib.losses.sinkd.sinkhorn_loss`), so it grows with the batch size, as in the SinKD code.
    `kd_form: kl_t2` is kdflow's earlier KD term (Hinton's T^2 KL: T^2 times the gradient).
    """

    name = "sinkd"
    Settings = SinKDSettings

    def kernels(self):
        from kdlib.kernels import kd as kd_kernels

        return {kd.kd_loss: kd_kernels.kd_loss}

    def forward_train(self, model, x, target, teacher, epoch):
        s = self.settings
        logits, _ = model(x)
        kd_term = sinkd.soft_cross_entropy if s.kd_form == "soft_ce" else self.loss(kd.kd_loss)
        return logits, {
            "ce": (1.0 - s.alpha) * ce.cross_entropy(logits, target),
            "kd": s.alpha * kd_term(logits, teacher, s.temperature),
            "sinkhorn": s.beta * sinkd.sinkhorn_loss(logits, teacher, s.sinkhorn_temperature, s.epsilon, s.iterations),
        }
