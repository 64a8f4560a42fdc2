"""ShuffleNetV1 / ShuffleNetV2 as the CIFAR KD zoo builds them (CRD's `ShuffleV1`, `ShuffleV2`).

Layer for layer the official models (penghui-yang/DHKD `models/ShuffleNetv1.py`,
`models/ShuffleNetv2.py`, the same in HobbitLong/RepDistiller and mdistiller), so their
state_dict keys are this module's except the head: the official `linear` is `classifier`
here, the name every kdflow model gives its head (`kdlib.models.checkpoint` maps it).
Both keep PyTorch's default init everywhere, as the official models (no init loop). The
official 4x4 average pool (after a 32x32 input) is adaptive here.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

STEM = 24
"""Channels of both ShuffleNets' 1x1 stem (the official code's)."""


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """(N, g * c, H, W) -> the channels interleaved group by group (ShuffleNet's shuffle)."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleUnitV1(nn.Module):
    """ShuffleNetV1 unit: grouped 1x1 (BN, ReLU), channel shuffle, 3x3 depthwise (BN),
    grouped 1x1 (BN), then ReLU of the sum with the input, or at stride 2 of the
    concatenation with the input's 3x3 average pool. Width of the middle: out / 4. The
    unit reading the 24-channel stem has an ungrouped first 1x1 (as the official code)."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, groups: int) -> None:
        super().__init__()
        mid = out_planes // 4
        self.stride = stride
        self.first_groups = 1 if in_planes == STEM else groups
        self.conv1 = nn.Conv2d(in_planes, mid, 1, groups=self.first_groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride=stride, padding=1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, out_planes, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut: nn.Module = nn.AvgPool2d(3, stride=2, padding=1) if stride == 2 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = channel_shuffle(F.relu(self.bn1(self.conv1(x))), self.first_groups)
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        res = self.shortcut(x)
        return F.relu(torch.cat([out, res], 1) if self.stride == 2 else out + res)


class ShuffleNetV1(nn.Module):
    """1x1 stem (24, BN, ReLU), three stages of ShuffleV1 units (the first of each at stride
    2, concatenating its input), average pooling, a linear head. `ShuffleV1`: stage widths
    240, 480, 960, units 4, 8, 4, 3 groups."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        image_size: int = 32,
        widths: tuple[int, int, int] = (240, 480, 960),
        units: tuple[int, int, int] = (4, 8, 4),
        groups: int = 3,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, STEM, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(STEM)
        stages, channels = [], STEM
        for width, n in zip(widths, units):
            # the first unit concatenates its pooled input: it adds width - input channels
            blocks = [ShuffleUnitV1(channels, width - channels, 2, groups)]
            blocks += [ShuffleUnitV1(width, width, 1, groups) for _ in range(n - 1)]
            stages.append(nn.Sequential(*blocks))
            channels = width
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim: int = channels
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        feature = self.pool(x).flatten(1)
        return self.classifier(feature), feature


class ShuffleUnitV2(nn.Module):
    """ShuffleNetV2 basic unit: the channels split in half; one half goes through 1x1 (BN,
    ReLU), 3x3 depthwise (BN), 1x1 (BN, ReLU); concatenated with the other half, shuffled."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.split = channels // 2
        half = channels - self.split
        self.conv1 = nn.Conv2d(half, half, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(half)
        self.conv2 = nn.Conv2d(half, half, 3, padding=1, groups=half, bias=False)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv3 = nn.Conv2d(half, half, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(half)

    def forward(self, x: Tensor) -> Tensor:
        kept, x = x[:, : self.split], x[:, self.split :]
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = F.relu(self.bn3(self.conv3(out)))
        return channel_shuffle(torch.cat([kept, out], 1), 2)


class DownUnitV2(nn.Module):
    """ShuffleNetV2 stride-2 unit: left 3x3 depthwise stride 2 (BN), 1x1 (BN, ReLU); right
    1x1 (BN, ReLU), 3x3 depthwise stride 2 (BN), 1x1 (BN, ReLU); each to out / 2
    channels, concatenated, shuffled."""

    def __init__(self, in_planes: int, out_planes: int) -> None:
        super().__init__()
        mid = out_planes // 2
        self.conv1 = nn.Conv2d(in_planes, in_planes, 3, stride=2, padding=1, groups=in_planes, bias=False)
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv2 = nn.Conv2d(in_planes, mid, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(in_planes, mid, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = nn.Conv2d(mid, mid, 3, stride=2, padding=1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, 1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)

    def forward(self, x: Tensor) -> Tensor:
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = F.relu(self.bn3(self.conv3(x)))
        right = F.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
        return channel_shuffle(torch.cat([left, right], 1), 2)


class ShuffleNetV2(nn.Module):
    """1x1 stem (24, BN, ReLU), three stages (a stride-2 unit then basic units), a 1x1 conv
    (BN, ReLU), average pooling, a linear head. `ShuffleV2` (net size 1): stage widths
    116, 232, 464, basic units 3, 7, 3, last conv 1024."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        image_size: int = 32,
        widths: tuple[int, int, int, int] = (116, 232, 464, 1024),
        units: tuple[int, int, int] = (3, 7, 3),
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, STEM, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(STEM)
        stages, channels = [], STEM
        for width, n in zip(widths[:3], units):
            stages.append(nn.Sequential(DownUnitV2(channels, width), *(ShuffleUnitV2(width) for _ in range(n))))
            channels = width
        self.layer1, self.layer2, self.layer3 = stages
        self.conv2 = nn.Conv2d(channels, widths[3], 1, bias=False)
        self.bn2 = nn.BatchNorm2d(widths[3])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim: int = widths[3]
        self.classifier = nn.Linear(widths[3], num_classes)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        feature = self.pool(x).flatten(1)
        return self.classifier(feature), feature


def shufflev1(num_classes: int, in_channels: int = 3, image_size: int = 32) -> ShuffleNetV1:
    return ShuffleNetV1(num_classes, in_channels, image_size)


def shufflev2(num_classes: int, in_channels: int = 3, image_size: int = 32) -> ShuffleNetV2:
    return ShuffleNetV2(num_classes, in_channels, image_size)


# the official model_dict names (CRD / DHKD models/__init__.py)
ARCHS: dict[str, Callable[..., nn.Module]] = {
    "ShuffleV1": shufflev1,
    "ShuffleV2": shufflev2,
}
