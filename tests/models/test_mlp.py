"""The MLP: the one arch that needs the exact input size."""

from __future__ import annotations

from torch import nn

from kdlib.models import build_model


def test_mlp_uses_image_size() -> None:
    model = build_model("mlp", 10, in_channels=1, image_size=28)
    first = model.body[1]
    assert isinstance(first, nn.Linear) and first.in_features == 28 * 28
    assert model.feature_dim == 256
