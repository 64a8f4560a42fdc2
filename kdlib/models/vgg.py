"""VGG8 / 11 / 13 / 16 / 19 with batch norm, as used in CRD, mdistiller and DHKD.

Layer for layer the official `models/vgg.py` (`vgg8_bn` ... `vgg19_bn`), so the state_dict
keys are the official ones (`block<i>.<k>`, `classifier`): each stage is one Sequential of
conv3x3-BN-ReLU; the official code drops each stage's last ReLU module and applies it as a
function, which changes no key.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from kdlib.models.layers import init_weights

# the conv widths of each of the five stages (the official cfg 'S', 'A', 'B', 'D', 'E')
VGG8_CFG: list[list[int]] = [[64], [128], [256], [512], [512]]
VGG11_CFG: list[list[int]] = [[64], [128], [256, 256], [512, 512], [512, 512]]
VGG13_CFG: list[list[int]] = [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]]
VGG16_CFG: list[list[int]] = [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]]
VGG19_CFG: list[list[int]] = [[64, 64], [128, 128], [256] * 4, [512] * 4, [512] * 4]


class VGG(nn.Module):
    """CIFAR VGG (CRD / mdistiller style): 5 stages `block0` ... `block4` of conv3x3-BN-ReLU.

    Max-pools follow stages 1-3 (32 -> 16 -> 8 -> 4 for CIFAR, the official layout for
    32x32 inputs); stages 4-5 run at that resolution and adaptive average pooling reduces
    to 1x1, so inputs >= 8 pixels work.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        image_size: int = 32,
        cfg: Sequence[Sequence[int]] = VGG8_CFG,
    ) -> None:
        super().__init__()
        if len(cfg) != 5:
            raise ValueError(f"a VGG has 5 stages, got {len(cfg)}")
        stages: list[nn.Sequential] = []
        channels = in_channels
        for stage in cfg:
            layers: list[nn.Module] = []
            for width in stage:
                layers += [nn.Conv2d(channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
                channels = width
            stages.append(nn.Sequential(*layers))
        self.block0, self.block1, self.block2, self.block3, self.block4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim: int = channels
        self.classifier = nn.Linear(self.feature_dim, num_classes)
        self.apply(init_weights)

    def stages(self) -> tuple[nn.Sequential, ...]:
        return (self.block0, self.block1, self.block2, self.block3, self.block4)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        for i, stage in enumerate(self.stages()):
            x = stage(x)
            if i < 3:
                x = F.max_pool2d(x, 2, 2)
        feature = self.pool(x).flatten(1)
        return self.classifier(feature), feature


def vgg8(num_classes: int, in_channels: int = 3, image_size: int = 32) -> VGG:
    return VGG(num_classes, in_channels, image_size, cfg=VGG8_CFG)


def vgg11(num_classes: int, in_channels: int = 3, image_size: int = 32) -> VGG:
    return VGG(num_classes, in_channels, image_size, cfg=VGG11_CFG)


def vgg13(num_classes: int, in_channels: int = 3, image_size: int = 32) -> VGG:
    return VGG(num_classes, in_channels, image_size, cfg=VGG13_CFG)


def vgg16(num_classes: int, in_channels: int = 3, image_size: int = 32) -> VGG:
    return VGG(num_classes, in_channels, image_size, cfg=VGG16_CFG)


def vgg19(num_classes: int, in_channels: int = 3, image_size: int = 32) -> VGG:
    return VGG(num_classes, in_channels, image_size, cfg=VGG19_CFG)


ARCHS: dict[str, Callable[..., nn.Module]] = {
    "vgg8": vgg8,
    "vgg11": vgg11,
    "vgg13": vgg13,
    "vgg16": vgg16,
    "vgg19": vgg19,
}
