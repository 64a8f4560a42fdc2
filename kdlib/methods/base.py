"""The distillation method every family subclasses, and the registry of methods by name.

A method is a small class (mdistiller's distiller, minus the models): an objective
(`kdlib.objective.Objective`: `forward_train` returns the logits that are evaluated plus a
dict of *named, already weighted* loss terms, which `fit` sums and logs) with a `Settings`
model holding every knob at the paper's default, a `build` that wraps the student when it
needs a second head, and the cached teachers it reads. Each paper family has its own module
in this package (`kdlib/methods/<family>.py`: its settings and methods, registered with
`@register`); adding a method is one such module plus its tests (docs/contributing.md).

The registry fills itself on first use by importing every module of this package. Shared
code reaches a method only through it (`method_class`, `build_method`), never by importing
a family module, so a student's code identity (`tasks.code_identity`) is this module plus
its own family's module and the loss and kernel families that module imports.
"""
from __future__ import annotations

import functools
import importlib
import pkgutil
from pathlib import Path
from typing import Any, Callable, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn

from kdlib.config import MAIN_TEACHER
from kdlib.kernels.utils import resolve_backend
from kdlib.models.heads import DualHead, ProjectedFeature, WeakHead
from kdlib.objective import Objective


class MethodSettings(BaseModel):
    # allow_inf_nan=False: a temperature or weight of .inf / .nan is refused at validation
    # ("methods.kd.temperature: Input should be a finite number"), not in the first step.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    method: str = Field("", description="registry name, when the entry's name is a variant")
    teacher: str = Field(
        MAIN_TEACHER, exclude=True,
        description="the cached teacher it distils from; not a loss setting (left out of dumps): the "
        "student's cache key holds that teacher's logit cache",
    )


class Method(Objective):
    name: ClassVar[str]
    Settings: ClassVar[type[MethodSettings]] = MethodSettings
    needs_teacher: ClassVar[bool] = True
    dual_head: ClassVar[bool] = False
    online_teacher: ClassVar[bool] = False
    """Trains its own teacher (arch `teacher.arch`) beside the student: reads no logit cache."""
    min_classes: ClassVar[int] = 2
    """The fewest classes its losses can learn from, checked against the data set when the
    study is validated (`StudyConfig._check_classes`). 2 for all: with 1 class every loss is
    constant. A family whose term vanishes at 2 classes sets 3: a term over the non-target
    classes alone (DKD's NCKD, NKD's, USKD's) is 0 with one non-target class, and a row
    z-score (logit standardization, Z-loss) or a Pearson correlation across the classes
    (DIST's inter-class term) of 2 values is the constant +-1, so it has no gradient."""
    image_only: ClassVar[bool] = False
    """Needs an image model (an intermediate stage, as USKD's weak head): refused on token data."""
    TOKEN_CACHE_FIELDS: ClassVar[frozenset[str]] = frozenset({"logits", "topk_probs", "topk_indices"})
    """What `kdlib.token_cache.TokenCache.reader` serves: no teacher features for tokens."""
    cached: ClassVar[tuple[str, ...]] = ("logits",)
    """The cached teacher tensors it reads per batch (`kdlib.logit_cache.TeacherBatch` fields).
    A method reading only the dense logits gets them as a tensor in `forward_train`'s
    `teacher`; any other gets a `TeacherBatch` holding exactly these fields."""

    def __init__(self, settings: MethodSettings) -> None:
        self.settings = settings
        self.backend = "torch"
        """Where its losses run: "torch" (the `kdlib.losses` references) or "triton" (`use_kernels`)."""
        self._kernels: dict[Callable, Callable] = {}

    @classmethod
    def token_refusal(cls) -> str | None:
        """Why this method cannot train on token data (None if it can): it reads teacher tensors
        the token cache does not hold, or it needs an image model's stage."""
        features = sorted(set(cls.cached) - cls.TOKEN_CACHE_FIELDS) if cls.needs_teacher else []
        if features:
            return f"reads the teacher's {', '.join(features)}, which the token cache does not hold"
        return "needs an image model's intermediate stage" if cls.image_only else None

    def kernels(self) -> dict[Callable, Callable]:
        """The Triton twins of the reference losses `forward_train` calls: {`kdlib.losses.<family>`
        function: the `kdlib.kernels.<family>` function of the same name}.

        Called by `use_kernels` only once it chose Triton; a method with kernelled losses
        overrides it and imports its kernel families inside (`from kdlib.kernels import kd`),
        so triton is imported only where the kernels run while the method's code identity
        (its static imports) still holds them."""
        return {}

    def use_kernels(self, backend: str, device: torch.device | str) -> None:
        """Compute the losses with `runtime.kernels` (auto | triton | torch) on `device`;
        `triton` where Triton cannot run raises here, before any training."""
        self.backend = resolve_backend(backend, device)
        self._kernels = {}
        if self.backend == "triton":
            self._kernels = {ref: functools.partial(fn, backend="triton") for ref, fn in self.kernels().items()}

    def loss(self, reference: Callable) -> Callable:
        """The function that computes `reference` (a `kdlib.losses` function) here: its Triton
        twin after `use_kernels` chose Triton, else the reference itself."""
        return self._kernels.get(reference, reference)

    def build(self, student: nn.Module) -> nn.Module:
        """The module that is trained; `exported(module)` is what gets evaluated."""
        if self.dual_head:
            return DualHead(student, head=self.settings.aux_head)
        return student

    @staticmethod
    def exported(trained: nn.Module) -> nn.Module:
        """Head 2 of a dual-head student (or USKD's weak head, KD++'s projector) is dropped at inference."""
        return trained.backbone_model if isinstance(trained, (DualHead, WeakHead, ProjectedFeature)) else trained

    def teacher_names(self) -> list[str]:
        """The cached teachers it reads, in the order `forward_train` gets their logits."""
        return [self.settings.teacher] if self.needs_teacher else []


# --------------------------------------------------------------------------- #
# the registry
# --------------------------------------------------------------------------- #
_REGISTRY: dict[str, type[Method]] = {}
_loaded = False


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: the method under its `name`; a name registered twice is an error."""
    known = _REGISTRY.get(cls.name)
    if known is not None and _qualified(known) != _qualified(cls):
        raise ValueError(f"method name {cls.name!r} registered twice: by {_qualified(known)} and by {_qualified(cls)}")
    _REGISTRY[cls.name] = cls
    return cls


def _registry() -> dict[str, type[Method]]:
    """Every registered method, after importing each module of this package once."""
    global _loaded
    if not _loaded:
        for info in pkgutil.iter_modules([str(Path(__file__).parent)]):
            importlib.import_module(f"{__package__}.{info.name}")
        _loaded = True
    return _REGISTRY


def method_names() -> list[str]:
    """The registered method names, sorted."""
    return sorted(_registry())


def method_class(name: str) -> type[Method]:
    """The method registered as `name`."""
    registry = _registry()
    if name not in registry:
        raise ValueError(f"unknown method {name!r}; allowed: {', '.join(method_names())}")
    return registry[name]


def validate_method_entry(entry: str, raw: dict[str, Any] | None) -> MethodSettings:
    """Settings of the `methods.<entry>` block; errors name the field path."""
    raw = dict(raw or {})
    method = raw.get("method") or entry
    if method not in _registry():
        where = f"methods.{entry}.method" if raw.get("method") else f"students.methods: {entry!r}"
        raise ValueError(f"{where}: unknown method {method!r}; allowed: {', '.join(method_names())}")
    raw["method"] = method
    settings_model = method_class(method).Settings
    try:
        return settings_model.model_validate(raw)
    except ValidationError as err:
        problems = []
        for e in err.errors():
            path = ".".join(str(p) for p in e["loc"])
            msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
            allowed = ", ".join(f for f in settings_model.model_fields if f != "method")
            problems.append(f"methods.{entry}.{path}: {msg} (settings of {method!r}: {allowed or 'none'})")
        raise ValueError("; ".join(problems)) from None


def build_method(entry: str, settings: MethodSettings) -> Method:
    """The method of the `methods.<entry>` block, from its parsed settings
    (`StudyConfig.method_settings(entry)`, or `validate_method_entry`)."""
    if not isinstance(settings, MethodSettings):
        raise TypeError(
            f"build_method({entry!r}, ...) takes the entry's parsed settings (StudyConfig.method_settings or "
            f"validate_method_entry), got {type(settings).__name__}"
        )
    cls = method_class(settings.method)
    if not isinstance(settings, cls.Settings):
        raise TypeError(f"methods.{entry}: settings {type(settings).__name__} are not {cls.name!r}'s {cls.Settings.__name__}")
    return cls(settings)
