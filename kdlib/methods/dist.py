"""DIST (Huang et al., NeurIPS 2022): CE plus inter- and intra-class relation matching."""
from __future__ import annotations

from pydantic import Field

from kdlib.losses import ce, dist
from kdlib.methods.base import Method, MethodSettings, register


class DISTSettings(MethodSettings):
    ce_weight: float = Field(1.0, ge=0)
    beta: float = Field(2.0, ge=0, description="inter-class (per sample) relation weight")
    gamma: float = Field(2.0, ge=0, description="intra-class (per class) relation weight")
    temperature: float = Field(4.0, gt=0)


@register
class DIST(Method):
    """DIST: CE + tau^2 (beta * inter + gamma * intra); CIFAR defaults beta = gamma = 2, tau = 4."""

    name = "dist"
    min_classes = 3  # the inter-class Pearson correlation of 2 values is +-1: no gradient
    Settings = DISTSettings

    def forward_train(self, model, x, target, teacher, epoch):
        s = self.settings
        logits, _ = model(x)
        return logits, {
            "ce": s.ce_weight * ce.cross_entropy(logits, target),
            "dist": dist.dist_loss(logits, teacher, s.beta, s.gamma, s.temperature),
        }
