"""Dual-Head KD (DHKD): CE on the student's head, BinaryKLNorm on a second head, both reaching
the backbone; with or without Hinton KD on head 1, and with the authors' gradient alignment
(`grad_align`). Defaults: the official CIFAR-100 quick start (penghui-yang/DHKD README:
`--dual_head --nonlinear --ga --distill dhkd -r 1 -a 1 --BinaryKL_T 2`)."""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, field_validator
from torch import Tensor, nn

from kdlib.losses import binary_kl, ce, kd
from kdlib.methods.base import Method, MethodSettings, register


GRAD_ALIGN = ("official", "shared", "none")
"""`grad_align` rules: `official` (the DHKD code's, whole parameter vector), `shared` (the
parameters both terms reach), `none` (one backward of the sum; not `off`, which YAML reads as false); see `project_conflicting`."""


class DHKDSettings(MethodSettings):
    ce_weight: float = Field(1.0, ge=0, description="gamma (-r): CE on head 1")
    aux_weight: float = Field(1.0, ge=0, description="alpha (-a): BinaryKLNorm on head 2")
    aux_temperature: float = Field(2.0, gt=0, description="--BinaryKL_T")
    aux_head: Literal["nonlinear", "linear", "mlp"] = Field(
        "nonlinear", description="second head: nonlinear (the official NonLinearClassifier), linear, or mlp "
        "(the same layers as nonlinear)",
    )
    grad_align: Literal["official", "shared", "none"] = Field(
        "official", description="project conflicting terms off the CE gradient: official (whole parameter "
        "vector, head 1 included), shared (the parameters both terms reach), none",
    )

    @field_validator("grad_align", mode="before")
    @classmethod
    def _grad_align_is_named(cls, value):
        if not isinstance(value, str) or value not in GRAD_ALIGN:
            was = isinstance(value, bool) or str(value).lower() in ("true", "false")
            raise ValueError(
                f"grad_align is one of official | shared | none, got {value!r}"
                + (" (no longer a boolean: the former true is `shared`, false is `none`; YAML reads an unquoted off/no as false)" if was else "")
            )
        return value


def project_conflicting(
    anchor: list[Tensor | None], grad: list[Tensor | None], rule: str
) -> list[Tensor | None]:
    """One term's gradient projected off the anchor's (CE's) where they conflict.

    Per parameter tensor; `None` marks a parameter the loss does not reach. With `g` the
    term's and `c` the anchor's gradient, taken as one flattened vector over a set of
    parameters: `g <- g - (<g, c> / ||c||^2) c` when `<g, c> < 0`, else unchanged.

    - `official`: the DHKD code's rule (`helper/optimizer.py`, `OptimGradAlign._project_conflicting`,
      lines 47-60): the vector is every parameter, a loss that does not reach one counting as
      zeros there. So `||c||^2` includes head 1, and the projection writes `-(<g, c>/||c||^2) c`
      into head 1 too, where the term had no gradient; parameters only the term reaches
      (head 2) keep their gradient, since `c` is zero there.
    - `shared`: the vector is only the parameters both gradients reach (the backbone, plus
      head 1 for a KD term on head 1); elsewhere the term's gradient is left alone, so CE's
      direction is never written into a head the term does not train.
    """
    if rule == "official":
        over = [i for i, a in enumerate(anchor) if a is not None]
    elif rule == "shared":
        over = [i for i, (a, g) in enumerate(zip(anchor, grad)) if a is not None and g is not None]
    else:
        raise ValueError(f"unknown grad_align rule {rule!r}; allowed: official, shared")
    dot = sum((anchor[i] * grad[i]).sum() for i in over if grad[i] is not None)
    if not over or dot >= 0:
        return list(grad)
    scale = dot / sum(anchor[i].pow(2).sum() for i in over)
    out = list(grad)
    for i in over:
        out[i] = -scale * anchor[i] if grad[i] is None else grad[i] - scale * anchor[i]
    return out


def aligned_backward(model: nn.Module, terms: dict[str, Tensor], rule: str, anchor: str = "ce") -> None:
    """One backward per loss term; every other term's gradient is projected off the
    `anchor` term's where they conflict (`project_conflicting` with `rule`), each against the
    anchor alone, then the anchor's own gradient and the projected ones are summed into
    `.grad`, as the DHKD code sums its list (anchor first). Costs one extra backward per
    term beyond the first. Under `official` every trainable parameter gets a gradient, zeros
    where no term reaches it, as the DHKD code's `_set_grad` writes."""
    params = [p for p in model.parameters() if p.requires_grad]
    anchor_grad = list(torch.autograd.grad(terms[anchor], params, retain_graph=True, allow_unused=True))
    total = list(anchor_grad)
    for name, term in terms.items():
        if name == anchor:
            continue
        grad = torch.autograd.grad(term, params, retain_graph=True, allow_unused=True)
        for i, g in enumerate(project_conflicting(anchor_grad, list(grad), rule)):
            if g is not None:
                total[i] = g if total[i] is None else total[i] + g
    if rule == "official":
        total = [torch.zeros_like(p) if g is None else g for p, g in zip(params, total)]
    for p, g in zip(params, total):
        if g is not None:
            p.grad = g if p.grad is None else p.grad + g


@register
class DHKD(Method):
    """Dual-Head KD: CE on head 1, BinaryKLNorm on head 2, both reach the backbone.

    Defaults are the official CIFAR-100 quick start: the non-linear second head, gradient
    alignment by the official rule, T = 2, weights 1 / 1. `grad_align` other than `none`
    replaces the summed backward by `aligned_backward` with CE as the anchor.
    """

    name = "dhkd"
    Settings = DHKDSettings
    dual_head = True

    def kernels(self):
        from kdlib.kernels import binary_kl as binary_kl_kernels

        return {binary_kl.binary_kl_norm_loss: binary_kl_kernels.binary_kl_norm_loss}

    @property
    def shapes_gradients(self) -> bool:
        return self.settings.grad_align != "none"

    def backward(self, model, terms):
        if self.shapes_gradients:
            aligned_backward(model, terms, self.settings.grad_align, anchor="ce")
        else:
            super().backward(model, terms)

    def forward_train(self, model, x, target, teacher, epoch):
        s = self.settings
        head1, head2, _ = model(x)
        return head1, {
            "ce": s.ce_weight * ce.cross_entropy(head1, target),
            "aux_binarykl_norm": s.aux_weight * self.loss(binary_kl.binary_kl_norm_loss)(head2, teacher, s.aux_temperature),
        }


class DHKDKDSettings(DHKDSettings):
    ce_weight: float = Field(0.1, ge=0)
    kd_weight: float = Field(0.9, ge=0)
    temperature: float = Field(4.0, gt=0)


@register
class DHKDKD(DHKD):
    """DHKD with Hinton KD added on head 1 (CE + KD on head 1, BinaryKLNorm on head 2);
    `grad_align` projects both KD and BinaryKLNorm against CE, each on its own.

    kdflow's variant (the official code has no such method): head 2 and the alignment take
    DHKD's defaults, head 1's KD weights and T are mdistiller's KD defaults."""

    name = "dhkd_kd"
    Settings = DHKDKDSettings
    dual_head = True

    def kernels(self):
        from kdlib.kernels import kd as kd_kernels

        return {**super().kernels(), kd.kd_loss: kd_kernels.kd_loss}

    def forward_train(self, model, x, target, teacher, epoch):
        s = self.settings
        head1, head2, _ = model(x)
        return head1, {
            "ce": s.ce_weight * ce.cross_entropy(head1, target),
            "kd": s.kd_weight * self.loss(kd.kd_loss)(head1, teacher, s.temperature),
            "aux_binarykl_norm": s.aux_weight * self.loss(binary_kl.binary_kl_norm_loss)(head2, teacher, s.aux_temperature),
        }
