"""USKD (Yang et al., ICCV 2023): self-distillation through a weak head on an intermediate stage."""
from __future__ import annotations

from typing import Literal

from pydantic import Field
from torch import nn

from kdlib.losses import ce, uskd
from kdlib.methods.base import Method, MethodSettings, register
from kdlib.models.heads import WeakHead


class USKDSettings(MethodSettings):
    ce_weight: float = Field(1.0, ge=0, description="CE on the student's own head")
    alpha: float = Field(0.1, ge=0, description="normalized target term")
    beta: float = Field(0.1, ge=0, description="Zipf non-target term")
    mu: float = Field(0.1, ge=0, description="weak head's label-smoothed CE")
    nontarget_rank: Literal["official", "paper"] = Field(
        "official", description="key ranking the classes for the Zipf term: official (the code's, "
        "w_i/(1-w_y+1e-6) + log s_i/(1-log s_y+1e-6), uskd.py:53-54,73) or paper (probabilities, "
        "w_i/(1-w_y) + s_i/(1-s_y), as the paper writes: kdflow's before)",
    )


@register
class USKD(Method):
    """USKD (Yang et al., ICCV 2023): self-distillation, no teacher. CE + alpha L_target +
    beta L_non on the student's head, mu L_weak on a weak linear head reading the pooled
    second-to-last stage (`kdlib.models.heads.WeakHead`); see `kdlib.losses.uskd.uskd_terms`. CIFAR
    defaults of the authors' config: alpha = beta = mu = 0.1; the Zipf term's ranking key is the
    code's (`nontarget_rank`)."""

    name = "uskd"
    image_only = True  # its weak head reads an image model's intermediate stage
    min_classes = 3  # L_non, over the non-target classes alone, is 0 with one
    Settings = USKDSettings
    needs_teacher = False

    def build(self, student: nn.Module) -> nn.Module:
        return WeakHead(student)

    def forward_train(self, model, x, target, teacher, epoch):
        s = self.settings
        logits, weak, _ = model(x)
        l_target, l_non, l_weak = uskd.uskd_terms(logits, weak, target, s.nontarget_rank)
        return logits, {
            "ce": s.ce_weight * ce.cross_entropy(logits, target),
            "uskd_target": s.alpha * l_target,
            "uskd_non_target": s.beta * l_non,
            "uskd_weak": s.mu * l_weak,
        }
