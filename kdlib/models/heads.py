"""Wrappers around the models of the registry, used by some distillation methods.

A second head on one backbone (``DualHead``, ``WeakHead``), a projected feature
(``ProjectedFeature``), a student trained beside its teacher (``OnlinePair``). In
each, the wrapped model's own logits are head 1: they are the ones evaluated, and
only that model is exported.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from kdlib.models.mlp import MLP
from kdlib.models.mobilenet import MobileNetV1, MobileNetV2
from kdlib.models.resnet import BottleneckResNet, ResNet
from kdlib.models.shufflenet import ShuffleNetV1, ShuffleNetV2
from kdlib.models.vgg import VGG
from kdlib.models.wrn import WideResNet

DUAL_HEADS = ("linear", "nonlinear", "mlp")
"""Second heads a DualHead builds: `linear` is `Linear(d, C)`; `nonlinear` is the official DHKD
code's `NonLinearClassifier` (penghui-yang/DHKD, models/classifier.py:4-15); `mlp` is kdflow's
earlier name for the same layers, kept so that study files naming it build the same head."""


def nonlinear_classifier(in_features: int, num_classes: int) -> nn.Sequential:
    """DHKD's `NonLinearClassifier` (models/classifier.py:9-15): `Linear(d, 200)`, `Dropout(0.1)`,
    `BatchNorm1d(200)`, `ReLU`, `Linear(200, C)`, in that order, both linears with a bias. Every
    layer keeps PyTorch's default initialisation, as in the official ResNet and ShuffleNet students
    (the quick start's ShuffleV2), whose init loops touch only conv and 2-d batch-norm layers; the
    official WRN, VGG and MobileNetV2 loops also re-initialise its linears (zero bias; VGG and
    MobileNetV2 weights N(0, 0.01)), which kdflow does not do for any Linear (`models.layers`)."""
    return nn.Sequential(
        nn.Linear(in_features, 200),
        nn.Dropout(0.1),
        nn.BatchNorm1d(200),
        nn.ReLU(inplace=True),
        nn.Linear(200, num_classes),
    )


class DualHead(nn.Module):
    """Adds an auxiliary head that reads the same feature as the model's own head.

    Used by methods that train a second classifier on a shared backbone (e.g. one
    head for the CE target, one for the distillation target). Nothing is
    detached, so both heads' losses reach the backbone. Head 1 (``classifier``)
    is the model's own head: it is the one evaluated and exported.
    """

    def __init__(self, model: nn.Module, head: str = "linear") -> None:
        super().__init__()
        if head not in DUAL_HEADS:
            raise ValueError(f"unknown head {head!r}; allowed: {', '.join(DUAL_HEADS)}")
        head1 = model.classifier
        if not isinstance(head1, nn.Linear):
            raise TypeError("DualHead needs a model whose .classifier is an nn.Linear")
        self.backbone_model = model
        d, c = head1.in_features, head1.out_features
        self.feature_dim: int = d
        self.aux_head: nn.Module = nn.Linear(d, c) if head == "linear" else nonlinear_classifier(d, c)

    @property
    def classifier(self) -> nn.Linear:
        """The wrapped model's own head (a property, so it is not registered twice)."""
        return self.backbone_model.classifier

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        logits, feature = self.backbone_model(x)
        return logits, self.aux_head(feature), feature


def intermediate_stage(model: nn.Module) -> tuple[str, int]:
    """(submodule name, channels) of the output of a model's second-to-last stage.

    The stage before the last, as USKD's weak head reads (the authors' code takes the
    backbone's second-to-last stage output): ResNet `layer2` (post-ReLU), ResNet50 `layer3`,
    WideResNet `block2` (the pre-activation residual stream, as the next block receives
    it), VGG's fourth stage `block3` (its last ReLU), ShuffleNets' `layer2`, MobileNetV2's
    `blocks.4` and MobileNetV1's `model.11` (the third of the four feature stages their
    official code exposes), MLP's first hidden layer (its ReLU).
    """
    if isinstance(model, ResNet):
        return "layer2", model.layer2[-1].bn2.num_features
    if isinstance(model, BottleneckResNet):
        return "layer3", model.layer3[-1].bn3.num_features
    if isinstance(model, WideResNet):
        return "block2", model.block2[-1].conv2.out_channels
    if isinstance(model, VGG):
        return "block3", model.block3[-2].num_features
    if isinstance(model, ShuffleNetV1):
        return "layer2", model.layer2[-1].bn3.num_features
    if isinstance(model, ShuffleNetV2):
        return "layer2", model.layer2[0].bn2.num_features * 2
    if isinstance(model, MobileNetV2):
        return "blocks.4", model.blocks[4][-1].conv[-1].num_features
    if isinstance(model, MobileNetV1):
        return "model.11", model.model[11][-2].num_features
    if isinstance(model, MLP):
        return "body.2", model.body[1].out_features
    raise TypeError(
        f"no intermediate stage known for {type(model).__name__}: a weak head needs one of the "
        "architectures of kdlib.models.ARCHS"
    )


class WeakHead(nn.Module):
    """A model plus a linear classifier on the pooled output of its second-to-last stage.

    USKD's "weak" head: trained on a shallower feature, so its predictions are a weaker,
    differently-ranked opinion of the non-target classes. Nothing is detached: its loss
    reaches the backbone up to that stage. The model's own head is the one evaluated and
    exported; the weak head is dropped at inference. The stage output is caught by a
    forward hook that lives only during this module's forward.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        head1 = getattr(model, "classifier", None)
        if not isinstance(head1, nn.Linear):
            raise TypeError("WeakHead needs a model whose .classifier is an nn.Linear")
        self.backbone_model = model
        self.stage_name, width = intermediate_stage(model)
        self.weak_head = nn.Linear(width, head1.out_features)

    @property
    def classifier(self) -> nn.Linear:
        return self.backbone_model.classifier

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        caught: list[Tensor] = []
        stage = self.backbone_model.get_submodule(self.stage_name)
        handle = stage.register_forward_hook(lambda _module, _inputs, out: caught.append(out))
        try:
            logits, feature = self.backbone_model(x)
        finally:
            handle.remove()
        mid = caught[-1]
        if mid.dim() == 4:
            mid = F.adaptive_avg_pool2d(mid, 1).flatten(1)
        return logits, self.weak_head(mid), feature


class OnlinePair(nn.Module):
    """A student and a teacher trained together from scratch (online distillation).

    ``forward`` returns ``(student logits, teacher logits, student feature)``, so head 1
    is the student's: it is the one evaluated and exported; the teacher is dropped.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module) -> None:
        super().__init__()
        self.student = student
        self.teacher = teacher

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        logits, feature = self.student(x)
        teacher_logits, _ = self.teacher(x)
        return logits, teacher_logits, feature


class ProjectedFeature(nn.Module):
    """A student whose feature output is mapped to the teacher's feature width.

    For KD++ / DKD++ (the ND loss compares the student's penultimate feature with the
    teacher's class means): a linear projector when the widths differ, the identity when
    they match. The logits stay the student's own; the projector trains with the student
    and is dropped at export (`backbone_model` is the exported network).
    """

    def __init__(self, model: nn.Module, out_dim: int) -> None:
        super().__init__()
        self.backbone_model = model
        self.feature_dim: int = out_dim
        self.projector: nn.Module = nn.Identity() if model.feature_dim == out_dim else nn.Linear(model.feature_dim, out_dim)

    @property
    def classifier(self) -> nn.Linear:
        return self.backbone_model.classifier

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        logits, feature = self.backbone_model(x)
        return logits, self.projector(feature)
