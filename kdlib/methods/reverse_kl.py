"""Token-level reverse KL (the mode-seeking KD of language models: MiniLLM, GKD at beta = 1)."""
from __future__ import annotations

from pydantic import Field

from kdlib.losses import ce, kd
from kdlib.methods.base import Method, MethodSettings, register


class ReverseKLSettings(MethodSettings):
    temperature: float = Field(1.0, gt=0, description="LM distillation compares the distributions at T = 1")
    ce_weight: float = Field(
        0.5, ge=0, description="next-token CE: the MiniLLM repo's KD runs mix (1 - kd_ratio) * lm_loss + kd_ratio * "
        "distil_loss with --kd-ratio 0.5",
    )
    kd_weight: float = Field(0.5, ge=0, description="the reverse KL term (kd_ratio 0.5, as ce_weight)")


@register
class ReverseKL(Method):
    """Reverse KD: ce_weight * CE + kd_weight * T^2 KL(p_s || p_t), the student's distribution first, so it
    seeks the teacher's modes instead of covering its tail; per token on a language model.

    MiniLLM (Gu et al., ICLR 2024) argues for this direction and optimises its sequence-level form by
    policy gradient on sampled text; this is the token-level term on the data (no sampling), the
    word-level reverse KL that GKD (beta = 1) and DistiLLM train with.
    `kdlib.losses.kd.reverse_kl_loss`; the teacher is a constant."""

    name = "reverse_kl"
    Settings = ReverseKLSettings

    def forward_train(self, model, x, target, teacher, epoch):
        s = self.settings
        logits, _ = model(x)
        return logits, {
            "ce": s.ce_weight * ce.cross_entropy(logits, target),
            "reverse_kl": s.kd_weight * kd.reverse_kl_loss(logits, teacher, s.temperature),
        }
