"""Wide ResNets (Zagoruyko & Komodakis 2016): pre-activation blocks, depth 6n+4."""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor, nn

from kdlib.models.layers import conv3x3, init_weights


class WideBasicBlock(nn.Module):
    """BN-ReLU-conv-BN-ReLU-conv with identity or 1x1-conv shortcut (WRN paper).

    When the shape changes, the shortcut reads the pre-activated input, exactly
    as in the reference WRN code used by CRD / mdistiller.
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(x))
        residual = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + residual


class WideResNet(nn.Module):
    """WRN-d-w: 3x3 stem (16 ch) then 3 stages of n blocks with widths
    16w, 32w, 64w, depth = 6n + 4, and a final BN-ReLU before pooling."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        image_size: int = 32,
        depth: int = 16,
        widen_factor: int = 2,
    ) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0 or depth < 10:
            raise ValueError(f"WideResNet depth must be 6n+4 with n >= 1, got {depth}")
        n = (depth - 4) // 6
        widths = (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.conv1 = conv3x3(in_channels, widths[0])
        self.block1 = self._make_stage(widths[0], widths[1], n, stride=1)
        self.block2 = self._make_stage(widths[1], widths[2], n, stride=2)
        self.block3 = self._make_stage(widths[2], widths[3], n, stride=2)
        self.bn = nn.BatchNorm2d(widths[3])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim: int = widths[3]
        self.classifier = nn.Linear(self.feature_dim, num_classes)
        self.apply(init_weights)

    @staticmethod
    def _make_stage(in_planes: int, planes: int, n: int, stride: int) -> nn.Sequential:
        blocks = [WideBasicBlock(in_planes, planes, stride)]
        blocks += [WideBasicBlock(planes, planes) for _ in range(n - 1)]
        return nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = self.conv1(x)
        x = self.block3(self.block2(self.block1(x)))
        x = F.relu(self.bn(x))
        feature = self.pool(x).flatten(1)
        return self.classifier(feature), feature


def wrn_16_1(num_classes: int, in_channels: int = 3, image_size: int = 32) -> WideResNet:
    return WideResNet(num_classes, in_channels, image_size, depth=16, widen_factor=1)


def wrn_16_2(num_classes: int, in_channels: int = 3, image_size: int = 32) -> WideResNet:
    return WideResNet(num_classes, in_channels, image_size, depth=16, widen_factor=2)


def wrn_40_1(num_classes: int, in_channels: int = 3, image_size: int = 32) -> WideResNet:
    return WideResNet(num_classes, in_channels, image_size, depth=40, widen_factor=1)


def wrn_40_2(num_classes: int, in_channels: int = 3, image_size: int = 32) -> WideResNet:
    return WideResNet(num_classes, in_channels, image_size, depth=40, widen_factor=2)


def wrn_28_4(num_classes: int, in_channels: int = 3, image_size: int = 32) -> WideResNet:
    return WideResNet(num_classes, in_channels, image_size, depth=28, widen_factor=4)


ARCHS: dict[str, Callable[..., nn.Module]] = {
    "wrn_16_1": wrn_16_1,
    "wrn_16_2": wrn_16_2,
    "wrn_40_1": wrn_40_1,
    "wrn_40_2": wrn_40_2,
    "wrn_28_4": wrn_28_4,
}
