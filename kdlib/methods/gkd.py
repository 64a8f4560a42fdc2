"""GKD (Agarwal et al., ICLR 2024): the generalized Jensen-Shannon divergence to the teacher."""
from __future__ import annotations

from pydantic import Field

from kdlib.losses import ce, tokens
from kdlib.methods.base import Method, MethodSettings, register


class GKDSettings(MethodSettings):
    beta: float = Field(
        0.5, ge=0, le=1, description="TRL GKDConfig.beta: 0 is the forward KL (teacher first), 1 the reverse KL (student first), "
        "between them the generalized JSD",
    )
    temperature: float = Field(
        1.0, gt=0, description="GKDTrainer.compute_loss calls the loss at its default 1.0 (GKDConfig.temperature, 0.9, "
        "is the sampling temperature)",
    )
    ce_weight: float = Field(0.0, ge=0, description="GKD trains on the divergence alone")
    kd_weight: float = Field(1.0, ge=0, description="the generalized JSD term")


@register
class GKD(Method):
    """GKD's supervised form: ce_weight * CE + kd_weight * T^2 JSD_beta(p_t, p_s) per token, the
    divergence that interpolates from forward (beta = 0) to reverse KL (beta = 1),
    `kdlib.losses.tokens.generalized_jsd_loss`.

    On the data only: TRL's on-policy part (lmbda, the share of batches the student generates
    itself) needs sampling, which kdflow's cached-teacher loop does not do; this is GKD with
    lmbda = 0."""

    name = "gkd"
    Settings = GKDSettings

    def forward_train(self, model, x, target, teacher, epoch):
        s = self.settings
        logits, _ = model(x)
        terms = {"gkd": s.kd_weight * tokens.generalized_jsd_loss(logits, teacher, s.beta, s.temperature)}
        if s.ce_weight > 0:  # GKD's default has no CE term: a zero-weight term would be logged and probed as one
            terms["ce"] = s.ce_weight * ce.cross_entropy(logits, target)
        return logits, terms
