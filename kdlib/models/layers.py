"""Building blocks shared by the architecture families: the 3x3 conv and the weight init."""

from __future__ import annotations

from torch import nn


def init_weights(module: nn.Module) -> None:
    """Kaiming-normal convs, unit/zero BN: the standard CIFAR ResNet recipe.

    Linear layers keep PyTorch's default init. Everything draws from torch's
    global RNG, so two builds under the same ``torch.manual_seed`` are equal.
    """
    if isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
