"""VGG8 / VGG13 with batch norm, as used in CRD and mdistiller."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import Tensor, nn

from kdlib.models.layers import init_weights

VGG8_CFG: list[list[int]] = [[64], [128], [256], [512], [512]]
VGG13_CFG: list[list[int]] = [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]]


class VGG(nn.Module):
    """CIFAR VGG (mdistiller style): 5 stages of conv3x3-BN-ReLU.

    Max-pools follow stages 1-3 (32 -> 16 -> 8 -> 4 for CIFAR, the mdistiller
    layout for 32x32 inputs); stages 4-5 run at that resolution and adaptive
    average pooling reduces to 1x1, so inputs >= 8 pixels work.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        image_size: int = 32,
        cfg: Sequence[Sequence[int]] = VGG8_CFG,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        self.stage_ends: list[int] = []  # index in `features` of each stage's last ReLU
        for i, stage in enumerate(cfg):
            for width in stage:
                layers += [
                    nn.Conv2d(channels, width, 3, padding=1),
                    nn.BatchNorm2d(width),
                    nn.ReLU(inplace=True),
                ]
                channels = width
            self.stage_ends.append(len(layers) - 1)
            if i < 3:
                layers.append(nn.MaxPool2d(2, 2))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim: int = channels
        self.classifier = nn.Linear(self.feature_dim, num_classes)
        self.apply(init_weights)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        feature = self.pool(self.features(x)).flatten(1)
        return self.classifier(feature), feature


def vgg8(num_classes: int, in_channels: int = 3, image_size: int = 32) -> VGG:
    return VGG(num_classes, in_channels, image_size, cfg=VGG8_CFG)


def vgg13(num_classes: int, in_channels: int = 3, image_size: int = 32) -> VGG:
    return VGG(num_classes, in_channels, image_size, cfg=VGG13_CFG)


ARCHS: dict[str, Callable[..., nn.Module]] = {
    "vgg8": vgg8,
    "vgg13": vgg13,
}
