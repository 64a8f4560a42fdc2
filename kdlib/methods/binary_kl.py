"""BinaryKL and BinaryKLNorm on the student's one head: DHKD's ablation rows 2 and 3.

Each class an independent Bernoulli (`kdlib.losses.binary_kl`); DHKD itself, the same
loss on a second head, is `kdlib.methods.dhkd`.
"""
from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from kdlib.losses import binary_kl, ce
from kdlib.methods.base import Method, MethodSettings, register


class LogitLossSettings(MethodSettings):
    temperature: float = Field(2.0, gt=0)
    kd_weight: float = Field(1.0, ge=0)


class BinaryKLMethod(Method):
    """A method of this family: `term` (binarykl or binarykl_norm) on the one head, with CE
    beside it when `with_ce`; its losses have Triton twins in `kdlib.kernels.binary_kl`."""

    term: ClassVar[str]
    with_ce: ClassVar[bool] = False
    REFERENCES: ClassVar[dict] = {"binarykl": binary_kl.binary_kl_loss, "binarykl_norm": binary_kl.binary_kl_norm_loss}

    def forward_train(self, model, x, target, teacher, epoch):
        s = self.settings
        logits, _ = model(x)
        terms = {"ce": s.ce_weight * ce.cross_entropy(logits, target)} if self.with_ce else {}
        terms[self.term] = s.kd_weight * self.loss(self.REFERENCES[self.term])(logits, teacher, s.temperature)
        return logits, terms

    def kernels(self):
        from kdlib.kernels import binary_kl as binary_kl_kernels

        return {
            binary_kl.binary_kl_loss: binary_kl_kernels.binary_kl_loss,
            binary_kl.binary_kl_norm_loss: binary_kl_kernels.binary_kl_norm_loss,
        }


@register
class BinaryKL(BinaryKLMethod):
    """BinaryKL alone on the one head (DHKD ablation row 2)."""

    name = "binarykl"
    Settings = LogitLossSettings
    term = "binarykl"


@register
class BinaryKLNorm(BinaryKLMethod):
    """BinaryKLNorm alone on the one head (DHKD ablation row 2, the official code's loss)."""

    name = "binarykl_norm"
    Settings = LogitLossSettings
    term = "binarykl_norm"


class SameHeadSettings(LogitLossSettings):
    ce_weight: float = Field(1.0, ge=0)


@register
class CEBinaryKLSameHead(BinaryKLMethod):
    """CE + BinaryKL on the same head: the collapse ablation (row 3) with the paper's BinaryKL."""

    name = "ce+binarykl"
    Settings = SameHeadSettings
    term = "binarykl"
    with_ce = True


@register
class CEBinaryKLNormSameHead(BinaryKLMethod):
    """CE + BinaryKLNorm on the same head: DHKD's collapse ablation (row 3)."""

    name = "ce+binarykl_norm"
    Settings = SameHeadSettings
    term = "binarykl_norm"
    with_ce = True
