"""Distillation methods by name: how each one wires losses to heads.

A method is a small class (mdistiller's distiller, minus the models): its `Settings`
model holds every knob with the paper's default, `build` wraps the student when it
needs a second head, and `forward_train` returns the logits that are evaluated plus a
dict of *named, already weighted* loss terms; the trainer sums the dict and logs each
term. Adding a method is one class here plus one test.
"""
from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import Tensor, nn

from kdlib import losses
from kdlib.models import DualHead


class MethodSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    method: str = Field("", description="registry name, when the entry's name is a variant")


class Method:
    name: ClassVar[str]
    Settings: ClassVar[type[MethodSettings]] = MethodSettings
    needs_teacher: ClassVar[bool] = True
    dual_head: ClassVar[bool] = False

    def __init__(self, settings: MethodSettings) -> None:
        self.settings = settings

    def build(self, student: nn.Module) -> nn.Module:
        """The module that is trained; `exported(module)` is what gets evaluated."""
        if self.dual_head:
            return DualHead(student, head=self.settings.aux_head)
        return student

    @staticmethod
    def exported(trained: nn.Module) -> nn.Module:
        """Head 2 of a dual-head student is dropped at inference."""
        return trained.backbone_model if isinstance(trained, DualHead) else trained

    def forward_train(
        self, model: nn.Module, x: Tensor, target: Tensor, teacher: Tensor | None, epoch: int
    ) -> tuple[Tensor, dict[str, Tensor]]:
        raise NotImplementedError


METHODS: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    METHODS[cls.name] = cls
    return cls


@register
class CE(Method):
    """The student alone: cross-entropy, no teacher."""

    name = "ce"
    needs_teacher = False

    def forward_train(self, model, x, target, teacher, epoch):
        logits, _ = model(x)
        return logits, {"ce": losses.cross_entropy(logits, target)}


class KDSettings(MethodSettings):
    temperature: float = Field(4.0, gt=0)
    ce_weight: float = Field(0.1, ge=0)
    kd_weight: float = Field(0.9, ge=0)


@register
class KD(Method):
    """Hinton KD: w_ce * CE + w_kd * T^2 KL(p_t || p_s); mdistiller's CIFAR defaults."""

    name = "kd"
    Settings = KDSettings

    def forward_train(self, model, x, target, teacher, epoch):
        s = self.settings
        logits, _ = model(x)
        return logits, {
            "ce": s.ce_weight * losses.cross_entropy(logits, target),
            "kd": s.kd_weight * losses.kd_loss(logits, teacher, s.temperature),
        }


class LogitLossSettings(MethodSettings):
    temperature: float = Field(2.0, gt=0)
    kd_weight: float = Field(1.0, ge=0)


@register
class BinaryKL(Method):
    """BinaryKL alone on the one head (DHKD ablation row 2)."""

    name = "binarykl"
    Settings = LogitLossSettings

    def forward_train(self, model, x, target, teacher, epoch):
        s = self.settings
        logits, _ = model(x)
        return logits, {"binarykl": s.kd_weight * losses.binary_kl_loss(logits, teacher, s.temperature)}


@register
class BinaryKLNorm(Method):
    """BinaryKLNorm alone on the one head (DHKD ablation row 2, the official code's loss)."""

    name = "binarykl_norm"
    Settings = LogitLossSettings

    def forward_train(self, model, x, target, teacher, epoch):
        s = self.settings
        logits, _ = model(x)
        return logits, {"binarykl_norm": s.kd_weight * losses.binary_kl_norm_loss(logits, teacher, s.temperature)}


class SameHeadSettings(LogitLossSettings):
    ce_weight: float = Field(1.0, ge=0)


@register
class CEBinaryKLNormSameHead(Method):
    """CE + BinaryKLNorm on the same head: DHKD's collapse ablation (row 3)."""

    name = "ce+binarykl_norm"
    Settings = SameHeadSettings

    def forward_train(self, model, x, target, teacher, epoch):
        s = self.settings
        logits, _ = model(x)
        return logits, {
            "ce": s.ce_weight * losses.cross_entropy(logits, target),
            "binarykl_norm": s.kd_weight * losses.binary_kl_norm_loss(logits, teacher, s.temperature),
        }


class DHKDSettings(MethodSettings):
    ce_weight: float = Field(1.0, ge=0, description="gamma: CE on head 1")
    aux_weight: float = Field(1.0, ge=0, description="alpha: BinaryKLNorm on head 2")
    aux_temperature: float = Field(2.0, gt=0)
    aux_head: Literal["linear", "mlp"] = "linear"


@register
class DHKD(Method):
    """Dual-Head KD: CE on head 1, BinaryKLNorm on head 2, both reach the backbone."""

    name = "dhkd"
    Settings = DHKDSettings
    dual_head = True

    def forward_train(self, model, x, target, teacher, epoch):
        s = self.settings
        head1, head2, _ = model(x)
        return head1, {
            "ce": s.ce_weight * losses.cross_entropy(head1, target),
            "aux_binarykl_norm": s.aux_weight * losses.binary_kl_norm_loss(head2, teacher, s.aux_temperature),
        }


class DHKDKDSettings(DHKDSettings):
    ce_weight: float = Field(0.1, ge=0)
    kd_weight: float = Field(0.9, ge=0)
    temperature: float = Field(4.0, gt=0)


@register
class DHKDKD(Method):
    """DHKD with Hinton KD added on head 1 (CE + KD on head 1, BinaryKLNorm on head 2)."""

    name = "dhkd_kd"
    Settings = DHKDKDSettings
    dual_head = True

    def forward_train(self, model, x, target, teacher, epoch):
        s = self.settings
        head1, head2, _ = model(x)
        return head1, {
            "ce": s.ce_weight * losses.cross_entropy(head1, target),
            "kd": s.kd_weight * losses.kd_loss(head1, teacher, s.temperature),
            "aux_binarykl_norm": s.aux_weight * losses.binary_kl_norm_loss(head2, teacher, s.aux_temperature),
        }


class DKDSettings(MethodSettings):
    ce_weight: float = Field(1.0, ge=0)
    alpha: float = Field(1.0, ge=0)
    beta: float = Field(8.0, ge=0)
    temperature: float = Field(4.0, gt=0)
    warmup_epochs: int = Field(20, ge=0, description="linear ramp of the DKD term")


@register
class DKD(Method):
    """Decoupled KD: CE + min(epoch / warmup, 1) * T^2 (alpha TCKD + beta NCKD)."""

    name = "dkd"
    Settings = DKDSettings

    def forward_train(self, model, x, target, teacher, epoch):
        s = self.settings
        logits, _ = model(x)
        ramp = min((epoch + 1) / s.warmup_epochs, 1.0) if s.warmup_epochs else 1.0
        return logits, {
            "ce": s.ce_weight * losses.cross_entropy(logits, target),
            "dkd": ramp * losses.dkd_loss(logits, teacher, target, s.alpha, s.beta, s.temperature),
        }


def validate_method_entry(entry: str, raw: dict[str, Any] | None) -> MethodSettings:
    """Settings of the `methods.<entry>` block; errors name the field path."""
    raw = dict(raw or {})
    method = raw.get("method") or entry
    if method not in METHODS:
        where = f"methods.{entry}.method" if raw.get("method") else f"students.methods: {entry!r}"
        raise ValueError(f"{where}: unknown method {method!r}; allowed: {', '.join(METHODS)}")
    raw["method"] = method
    try:
        return METHODS[method].Settings.model_validate(raw)
    except ValidationError as err:
        problems = []
        for e in err.errors():
            path = ".".join(str(p) for p in e["loc"])
            msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
            allowed = ", ".join(f for f in METHODS[method].Settings.model_fields if f != "method")
            problems.append(f"methods.{entry}.{path}: {msg} (settings of {method!r}: {allowed or 'none'})")
        raise ValueError("; ".join(problems)) from None


def build_method(entry: str, raw: dict[str, Any] | None = None) -> Method:
    settings = validate_method_entry(entry, raw)
    return METHODS[settings.method](settings)

