"""A small MLP, as a deliberately weak student / sanity baseline."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from kdlib.models.layers import init_weights


class MLP(nn.Module):
    """Two hidden layers of 256 on flattened pixels: a weak student baseline.

    Unlike the conv nets it needs the exact input size, hence ``image_size``.
    """

    def __init__(self, num_classes: int, in_channels: int = 3, image_size: int = 32) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_channels * image_size * image_size, 256),
            nn.ReLU(inplace=True),
            nn.Linear(256, 256),
            nn.ReLU(inplace=True),
        )
        self.feature_dim: int = 256
        self.classifier = nn.Linear(self.feature_dim, num_classes)
        self.apply(init_weights)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        feature = self.body(x)
        return self.classifier(feature), feature


def mlp(num_classes: int, in_channels: int = 3, image_size: int = 32) -> MLP:
    return MLP(num_classes, in_channels, image_size)


ARCHS: dict[str, Callable[..., nn.Module]] = {
    "mlp": mlp,
}
