"""ResNets of the CIFAR KD zoo (CRD / mdistiller / DHKD).

- CIFAR ResNets (He et al. 2016, Sec. 4.2): post-activation BasicBlocks, 3 stages, depth
  6n+2 (the official `models/resnet.py`).
- ResNet50 of the same zoo (the official `models/resnetv2.py`): the ImageNet ResNet-50's
  four stages of bottlenecks on a 3x3 stride-1 stem without max-pool, for 32x32 inputs.

Parameter names are the official ones (`downsample` in the CIFAR BasicBlock, `shortcut` in
the bottleneck, as there) except the head: the official `fc` / `linear` is `classifier`
here, the name every kdflow model gives its head (`kdlib.models.checkpoint` maps it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from kdlib.models.layers import conv3x3, init_weights


class BasicBlock(nn.Module):
    """conv-BN-ReLU-conv-BN plus shortcut, then ReLU (He et al. 2016).

    The shortcut is a 1x1 conv + BN whenever the shape changes (option B), which
    is what the CRD / mdistiller CIFAR ResNets use; it is named `downsample`, as there.
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.downsample(x))


class ResNet(nn.Module):
    """CIFAR ResNet: a 3x3 stem then 3 stages of n BasicBlocks, depth = 6n + 2.

    ``widths`` is (stem, stage1, stage2, stage3); stages 2 and 3 halve the
    resolution. Adaptive average pooling makes any input size >= 8 work.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        image_size: int = 32,
        depth: int = 20,
        widths: Sequence[int] = (16, 16, 32, 64),
    ) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f"ResNet depth must be 6n+2 with n >= 1, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = conv3x3(in_channels, widths[0])
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.layer1 = self._make_stage(widths[0], widths[1], n, stride=1)
        self.layer2 = self._make_stage(widths[1], widths[2], n, stride=2)
        self.layer3 = self._make_stage(widths[2], widths[3], n, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim: int = widths[3]
        self.classifier = nn.Linear(self.feature_dim, num_classes)
        self.apply(init_weights)

    @staticmethod
    def _make_stage(in_planes: int, planes: int, n: int, stride: int) -> nn.Sequential:
        blocks = [BasicBlock(in_planes, planes, stride)]
        blocks += [BasicBlock(planes, planes) for _ in range(n - 1)]
        return nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        feature = self.pool(x).flatten(1)
        return self.classifier(feature), feature


# Named constructors: the names a config's `arch` uses

_RESNET = (16, 16, 32, 64)
_RESNET_X4 = (32, 64, 128, 256)


def resnet8(num_classes: int, in_channels: int = 3, image_size: int = 32) -> ResNet:
    return ResNet(num_classes, in_channels, image_size, depth=8, widths=_RESNET)


def resnet14(num_classes: int, in_channels: int = 3, image_size: int = 32) -> ResNet:
    return ResNet(num_classes, in_channels, image_size, depth=14, widths=_RESNET)


def resnet20(num_classes: int, in_channels: int = 3, image_size: int = 32) -> ResNet:
    return ResNet(num_classes, in_channels, image_size, depth=20, widths=_RESNET)


def resnet32(num_classes: int, in_channels: int = 3, image_size: int = 32) -> ResNet:
    return ResNet(num_classes, in_channels, image_size, depth=32, widths=_RESNET)


def resnet44(num_classes: int, in_channels: int = 3, image_size: int = 32) -> ResNet:
    return ResNet(num_classes, in_channels, image_size, depth=44, widths=_RESNET)


def resnet56(num_classes: int, in_channels: int = 3, image_size: int = 32) -> ResNet:
    return ResNet(num_classes, in_channels, image_size, depth=56, widths=_RESNET)


def resnet110(num_classes: int, in_channels: int = 3, image_size: int = 32) -> ResNet:
    return ResNet(num_classes, in_channels, image_size, depth=110, widths=_RESNET)


def resnet8x4(num_classes: int, in_channels: int = 3, image_size: int = 32) -> ResNet:
    return ResNet(num_classes, in_channels, image_size, depth=8, widths=_RESNET_X4)


def resnet32x4(num_classes: int, in_channels: int = 3, image_size: int = 32) -> ResNet:
    return ResNet(num_classes, in_channels, image_size, depth=32, widths=_RESNET_X4)


class Bottleneck(nn.Module):
    """1x1 conv-BN-ReLU, 3x3 (stride) conv-BN-ReLU, 1x1 conv-BN to 4x the width, plus the
    shortcut (a 1x1 conv + BN when the shape changes), then ReLU."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != out_planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_planes),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class BottleneckResNet(nn.Module):
    """The zoo's `ResNet50` family: a 3x3 stride-1 stem of 64 channels + BN + ReLU, then four
    stages of Bottlenecks (widths 64, 128, 256, 512, x4 out; stages 2-4 halve the
    resolution), average pooling, a linear head. Init as the official code: Kaiming-normal
    convs, unit/zero BN (`init_weights`), PyTorch's default for the head."""

    def __init__(
        self, num_classes: int, in_channels: int = 3, image_size: int = 32, blocks: Sequence[int] = (3, 4, 6, 3)
    ) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_channels, 64)
        self.bn1 = nn.BatchNorm2d(64)
        stages, in_planes = [], 64
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), blocks)):
            stage = [Bottleneck(in_planes, planes, stride=1 if i == 0 else 2)]
            in_planes = planes * Bottleneck.expansion
            stage += [Bottleneck(in_planes, planes) for _ in range(n - 1)]
            stages.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim: int = in_planes
        self.classifier = nn.Linear(in_planes, num_classes)
        self.apply(init_weights)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        feature = self.pool(x).flatten(1)
        return self.classifier(feature), feature


def resnet50(num_classes: int, in_channels: int = 3, image_size: int = 32) -> BottleneckResNet:
    return BottleneckResNet(num_classes, in_channels, image_size, blocks=(3, 4, 6, 3))


ARCHS: dict[str, Callable[..., nn.Module]] = {
    "resnet8": resnet8,
    "resnet14": resnet14,
    "resnet20": resnet20,
    "resnet32": resnet32,
    "resnet44": resnet44,
    "resnet56": resnet56,
    "resnet110": resnet110,
    "resnet8x4": resnet8x4,
    "resnet32x4": resnet32x4,
    "ResNet50": resnet50,  # the official model_dict name
}
