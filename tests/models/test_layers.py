"""The shared weight init (kdlib.models.layers.init_weights), as every conv net applies it."""

from __future__ import annotations

import torch
from torch import nn

from kdlib.models import build_model


def test_init_is_kaiming_and_unit_bn() -> None:
    torch.manual_seed(0)
    model = build_model("resnet20", 10)
    w = model.layer3[1].conv1.weight  # 64 -> 64, fan_out = 64 * 9
    expected_std = (2.0 / (64 * 9)) ** 0.5
    assert abs(float(w.detach().std()) - expected_std) < 0.1 * expected_std
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)
