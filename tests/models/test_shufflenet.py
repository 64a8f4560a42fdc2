"""ShuffleV1 / ShuffleV2: sizes against the official models, the channel shuffle."""

from __future__ import annotations

import pytest
import torch

from kdlib.models import build_model, count_parameters
from kdlib.models.shufflenet import channel_shuffle

# Exact counts of the official models at 100 classes (penghui-yang/DHKD models/ShuffleNetv1.py
# `ShuffleV1(num_classes=100)`, models/ShuffleNetv2.py `ShuffleV2(num_classes=100)` at commit
# 7976c69, instantiated; CRD's and mdistiller's give the same), with the figures in millions
# KD papers on this zoo print (ShuffleNetV1 0.95M, ShuffleNetV2 1.36M).
OFFICIAL = [("ShuffleV1", 949_258, 0.95), ("ShuffleV2", 1_355_528, 1.36)]


@pytest.mark.parametrize(("arch", "official", "published_m"), OFFICIAL)
def test_parameter_count_matches_official(arch: str, official: int, published_m: float) -> None:
    n = count_parameters(build_model(arch, 100))
    assert n == official
    assert round(n / 1e6, 2) == published_m


def test_channel_shuffle_interleaves_groups() -> None:
    x = torch.arange(6.0).view(1, 6, 1, 1)
    assert channel_shuffle(x, 3).flatten().tolist() == [0, 2, 4, 1, 3, 5]
    assert channel_shuffle(x, 2).flatten().tolist() == [0, 3, 1, 4, 2, 5]


def test_shufflev1_first_unit_concatenates_and_is_ungrouped() -> None:
    model = build_model("ShuffleV1", 10)
    first = model.layer1[0]
    assert first.conv1.groups == 1 and first.conv3.groups == 3  # it reads the 24-channel stem
    assert first.conv3.out_channels == 240 - 24  # plus the pooled input: 240
    assert model.layer2[0].conv1.groups == 3
    assert [len(s) for s in (model.layer1, model.layer2, model.layer3)] == [4, 8, 4]
    with torch.no_grad():
        assert model.layer1(torch.zeros(1, 24, 8, 8)).shape == (1, 240, 4, 4)


def test_shufflev2_stage_widths() -> None:
    model = build_model("ShuffleV2", 10)
    assert [len(s) for s in (model.layer1, model.layer2, model.layer3)] == [4, 8, 4]  # a down unit + 3, 7, 3
    with torch.no_grad():
        x = torch.zeros(1, 24, 32, 32)
        for layer, width in ((model.layer1, 116), (model.layer2, 232), (model.layer3, 464)):
            x = layer(x)
            assert x.shape[1] == width
    assert model.feature_dim == 1024
