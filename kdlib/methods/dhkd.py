"""Dual-Head KD (DHKD): CE on the student's head, BinaryKLNorm on a second head, both reaching
the backbone; with or without Hinton KD on head 1, and with an optional PCGrad-style
alignment of the terms' gradients (`grad_align`)."""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from kdlib.losses import binary_kl, ce, kd
from kdlib.methods.base import Method, MethodSettings, register


class DHKDSettings(MethodSettings):
    ce_weight: float = Field(1.0, ge=0, description="gamma: CE on head 1")
    aux_weight: float = Field(1.0, ge=0, description="alpha: BinaryKLNorm on head 2")
    aux_temperature: float = Field(2.0, gt=0)
    aux_head: Literal["linear", "mlp"] = "linear"
    grad_align: bool = Field(False, description="PCGrad-style: project conflicting terms off the CE gradient")


def project_conflicting(anchor: list[Tensor | None], grad: list[Tensor | None]) -> list[Tensor | None]:
    """PCGrad's projection (Yu et al., 2020) of one term's gradient against the anchor's.

    Per parameter tensor, `None` marks a parameter the loss does not reach. The shared
    parameters (both gradients reach them: the backbone, and head 1 for a KD term) form
    one flattened vector, as in PCGrad: with `g` the term's and `c` the anchor's gradient
    there, `g <- g - (<g, c> / ||c||^2) c` when `<g, c> < 0`, else unchanged. Parameters
    only the term reaches (head 2) keep their gradient: projecting there would push the
    term's update into the anchor's own head.
    """
    shared = [i for i, (a, g) in enumerate(zip(anchor, grad)) if a is not None and g is not None]
    if not shared:
        return list(grad)
    dot = sum((anchor[i] * grad[i]).sum() for i in shared)
    if dot >= 0:
        return list(grad)
    scale = dot / sum(anchor[i].pow(2).sum() for i in shared)
    out = list(grad)
    for i in shared:
        out[i] = grad[i] - scale * anchor[i]
    return out


def aligned_backward(model: nn.Module, terms: dict[str, Tensor], anchor: str = "ce") -> None:
    """One backward per loss term; every other term's gradient is projected off the
    `anchor` term's where they conflict (`project_conflicting`), then all are summed into
    `.grad`. Costs one extra backward per term beyond the first."""
    params = [p for p in model.parameters() if p.requires_grad]
    anchor_grad = list(torch.autograd.grad(terms[anchor], params, retain_graph=True, allow_unused=True))
    total = list(anchor_grad)
    for name, term in terms.items():
        if name == anchor:
            continue
        grad = torch.autograd.grad(term, params, retain_graph=True, allow_unused=True)
        for i, g in enumerate(project_conflicting(anchor_grad, list(grad))):
            if g is not None:
                total[i] = g if total[i] is None else total[i] + g
    for p, g in zip(params, total):
        if g is not None:
            p.grad = g if p.grad is None else p.grad + g


@register
class DHKD(Method):
    """Dual-Head KD: CE on head 1, BinaryKLNorm on head 2, both reach the backbone.

    `grad_align: true` replaces the summed backward by `aligned_backward` with CE as the
    anchor: the distillation terms keep only the part of their gradient on the shared
    parameters that does not oppose CE's (shared docs/methods.md, DHKD).
    """

    name = "dhkd"
    Settings = DHKDSettings
    dual_head = True

    def kernels(self):
        from kdlib.kernels import binary_kl as binary_kl_kernels

        return {binary_kl.binary_kl_norm_loss: binary_kl_kernels.binary_kl_norm_loss}

    @property
    def shapes_gradients(self) -> bool:
        return self.settings.grad_align

    def backward(self, model, terms):
        if self.settings.grad_align:
            aligned_backward(model, terms, anchor="ce")
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
    `grad_align` projects both KD and BinaryKLNorm against CE, each on its own."""

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
