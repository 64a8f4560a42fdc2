"""MobileNets of the CRD / DHKD zoo: MobileNetV2 (CRD's `mobile_half`) and MobileNetV1.

Layer for layer the official models (penghui-yang/DHKD `models/mobilenetv2.py`,
`models/mobilenetv1.py`; HobbitLong/RepDistiller and mdistiller have the same MobileNetV2),
so their state_dict keys are this module's: `conv1.0`, `blocks.<i>.<j>.conv.<k>`, `conv2.0`,
`classifier` (CRD and mdistiller wrap that one linear in a Sequential, `classifier.0`:
`kdlib.models.checkpoint` reads both); MobileNetV1's `model.<i>.<k>`, `classifier`.
The official fixed-size average pools (2x2 after MobileNetV2's 32x32 input, 7x7 after
MobileNetV1's 224x224 ImageNet input) are adaptive here: the same at those sizes, and any
input of 8 pixels or more works.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from kdlib.models.layers import init_weights


def conv_bn_relu(in_planes: int, out_planes: int, kernel: int, stride: int, groups: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(in_planes, out_planes, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_planes),
        nn.ReLU(inplace=True),
    ]


class InvertedResidual(nn.Module):
    """1x1 expansion (BN, ReLU), 3x3 depthwise (BN, ReLU), 1x1 linear projection (BN), all in
    `conv`; the input is added back when the stride is 1 and the widths match. The expansion
    conv is there even at expansion 1, as in the official code (keys `conv.0` to `conv.7`)."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_planes * expansion
        self.use_res_connect = stride == 1 and in_planes == out_planes
        self.conv = nn.Sequential(
            *conv_bn_relu(in_planes, hidden, 1, 1),
            *conv_bn_relu(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, out_planes, 1, bias=False),
            nn.BatchNorm2d(out_planes),
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)
        return x + out if self.use_res_connect else out


# (expansion, channels, blocks, stride) of each stage; "T" is the expansion of the arch
MOBILENETV2_STAGES: tuple[tuple[int | str, int, int, int], ...] = (
    (1, 16, 1, 1), ("T", 24, 2, 1), ("T", 32, 3, 2), ("T", 64, 4, 2), ("T", 96, 3, 1), ("T", 160, 3, 2), ("T", 320, 1, 1),
)


class MobileNetV2(nn.Module):
    """MobileNetV2 (Sandler et al. 2018) as the CIFAR KD zoo builds it: a 3x3 stride-2 stem,
    seven stages of inverted residuals (channels x `width`), a 1x1 conv to 1280 channels,
    average pooling, a linear head. `mobile_half` is expansion 6, width 0.5.

    Conv and batch-norm init as the official `_initialize_weights` (`init_weights`: normal
    with std sqrt(2 / (k*k*out_channels)), unit/zero BN); the linear head keeps PyTorch's
    default, as every kdflow head (the official code draws it from N(0, 0.01)).
    """

    def __init__(
        self, num_classes: int, in_channels: int = 3, image_size: int = 32, expansion: int = 6, width: float = 0.5
    ) -> None:
        super().__init__()
        channels = int(32 * width)
        self.conv1 = nn.Sequential(*conv_bn_relu(in_channels, channels, 3, 2))
        stages = []
        for t, c, n, s in MOBILENETV2_STAGES:
            out = int(c * width)
            blocks = []
            for i in range(n):
                blocks.append(InvertedResidual(channels, out, s if i == 0 else 1, expansion if t == "T" else int(t)))
                channels = out
            stages.append(nn.Sequential(*blocks))
        self.blocks = nn.ModuleList(stages)
        self.feature_dim: int = int(1280 * width) if width > 1.0 else 1280
        self.conv2 = nn.Sequential(*conv_bn_relu(channels, self.feature_dim, 1, 1))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(self.feature_dim, num_classes)
        self.apply(init_weights)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = self.conv1(x)
        for stage in self.blocks:
            x = stage(x)
        feature = self.pool(self.conv2(x)).flatten(1)
        return self.classifier(feature), feature


# (output channels, stride) of MobileNetV1's 13 depthwise-separable blocks
MOBILENETV1_BLOCKS: tuple[tuple[int, int], ...] = (
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1),
)  # fmt: skip


class MobileNetV1(nn.Module):
    """MobileNetV1 (Howard et al. 2017), the ImageNet student of CRD / DHKD (ResNet50 ->
    MobileNetV1): a 3x3 stride-2 stem of 32 channels, 13 depthwise-separable blocks
    (3x3 depthwise BN ReLU, 1x1 pointwise BN ReLU) to 1024 channels, average pooling (the
    last entry of `model`), a linear head. Every layer keeps PyTorch's default init, as the
    official model (it has no init loop).

    At 32x32 the five stride-2 layers leave a 1x1 map (the official 7x7 pool needs 224x224).
    """

    def __init__(self, num_classes: int, in_channels: int = 3, image_size: int = 32) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Sequential(*conv_bn_relu(in_channels, 32, 3, 2))]
        channels = 32
        for out, stride in MOBILENETV1_BLOCKS:
            layers.append(nn.Sequential(*conv_bn_relu(channels, channels, 3, stride, groups=channels), *conv_bn_relu(channels, out, 1, 1)))
            channels = out
        layers.append(nn.AdaptiveAvgPool2d(1))
        self.model = nn.Sequential(*layers)
        self.feature_dim: int = channels
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        feature = self.model(x).flatten(1)
        return self.classifier(feature), feature


def mobilenetv2(num_classes: int, in_channels: int = 3, image_size: int = 32) -> MobileNetV2:
    """CRD's `mobile_half`: expansion 6, width 0.5."""
    return MobileNetV2(num_classes, in_channels, image_size, expansion=6, width=0.5)


def mobilenetv1(num_classes: int, in_channels: int = 3, image_size: int = 32) -> MobileNetV1:
    return MobileNetV1(num_classes, in_channels, image_size)


# the official model_dict names (DHKD models/__init__.py), which its checkpoints' folders carry
ARCHS: dict[str, Callable[..., nn.Module]] = {
    "MobileNetV2": mobilenetv2,
    "MobileNetV1": mobilenetv1,
}
