"""The student alone on its labels: cross-entropy, no teacher (every table's baseline)."""
from __future__ import annotations

from kdlib.losses import ce
from kdlib.methods.base import Method, register


@register
class CE(Method):
    """The student alone: cross-entropy, no teacher."""

    name = "ce"
    needs_teacher = False

    def forward_train(self, model, x, target, teacher, epoch):
        logits, _ = model(x)
        return logits, {"ce": ce.cross_entropy(logits, target)}
