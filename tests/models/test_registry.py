"""The arch registry and the model contract every arch keeps: (logits, feature), sizes,
seeded init."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdlib.models import ARCHS, TOKEN_ARCHS, build_model, count_parameters


ALL_ARCHS = [
    "resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110",
    "resnet8x4", "resnet32x4",
    "wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2", "wrn_28_4",
    "ResNet50", "vgg8", "vgg11", "vgg13", "vgg16", "vgg19",
    "MobileNetV2", "MobileNetV1", "ShuffleV1", "ShuffleV2", "mlp",
]  # fmt: skip


# The image contract below; the token archs keep theirs in tests/models/test_gpt.py.
TOKEN_ARCH_NAMES = ["gpt_nano", "gpt_micro", "gpt_mini", "gpt_small"]


def test_registry_has_exactly_the_documented_archs() -> None:
    assert sorted(ARCHS) == sorted(ALL_ARCHS + TOKEN_ARCH_NAMES)
    assert TOKEN_ARCHS == set(TOKEN_ARCH_NAMES)


@pytest.mark.parametrize("image_size", [16, 32])
@pytest.mark.parametrize("in_channels", [3, 1])
@pytest.mark.parametrize("num_classes", [100, 10])
@pytest.mark.parametrize("arch", ALL_ARCHS)
def test_forward_contract(arch: str, num_classes: int, in_channels: int, image_size: int) -> None:
    torch.manual_seed(0)
    model = build_model(arch, num_classes, in_channels=in_channels, image_size=image_size)
    assert isinstance(model.classifier, nn.Linear)
    assert isinstance(model.feature_dim, int)
    assert model.feature_dim == model.classifier.in_features
    assert model.classifier.out_features == num_classes

    x = torch.randn(2, in_channels, image_size, image_size)
    with torch.no_grad():
        out = model(x)
        assert isinstance(out, tuple) and len(out) == 2
        logits, feature = out
        assert logits.shape == (2, num_classes)
        assert feature.shape == (2, model.feature_dim)
        assert torch.equal(logits, model.classifier(feature))


@pytest.mark.parametrize("arch", [a for a in ALL_ARCHS if a != "mlp"])
@pytest.mark.parametrize("image_size", [8, 28])
def test_conv_nets_accept_small_and_odd_sizes(arch: str, image_size: int) -> None:
    model = build_model(arch, 10, in_channels=1).eval()
    with torch.no_grad():
        logits, feature = model(torch.randn(1, 1, image_size, image_size))
    assert logits.shape == (1, 10) and feature.shape == (1, model.feature_dim)


@pytest.mark.parametrize("arch", ALL_ARCHS)
def test_same_seed_same_weights(arch: str) -> None:
    torch.manual_seed(123)
    a = build_model(arch, 10)
    torch.manual_seed(123)
    b = build_model(arch, 10)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("arch", ALL_ARCHS)
def test_one_training_step(arch: str) -> None:
    """One SGD step of cross-entropy on CPU, batch 2 at 32x32: every parameter gets a gradient."""
    torch.manual_seed(0)
    model = build_model(arch, 10).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([1, 7])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    logits, _ = model(x)
    F.cross_entropy(logits, y).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    optimizer.step()
    after = model.state_dict()
    assert not torch.equal(before["classifier.weight"], after["classifier.weight"])
    assert any(not torch.equal(before[k], after[k]) for k in before if "running_mean" in k) or arch == "mlp"


def test_different_seed_different_weights() -> None:
    torch.manual_seed(1)
    a = build_model("resnet8", 10)
    torch.manual_seed(2)
    b = build_model("resnet8", 10)
    assert not torch.equal(a.conv1.weight, b.conv1.weight)


def test_unknown_arch_lists_allowed_names() -> None:
    with pytest.raises(ValueError, match="resnet8"):
        build_model("resnet9000", 10)


def test_count_parameters_counts_frozen_params_too() -> None:
    model = nn.Linear(3, 2)
    model.weight.requires_grad_(False)
    assert count_parameters(model) == 8
