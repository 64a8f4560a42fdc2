"""Tests for kdlib.models: the shared model contract, published sizes, DualHead."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdlib.models import ARCHS, DualHead, ResNet, WideResNet, build_model, count_parameters

ALL_ARCHS = [
    "resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110",
    "resnet8x4", "resnet32x4",
    "wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2", "wrn_28_4",
    "vgg8", "vgg13", "mlp",
]  # fmt: skip


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """Tiny CPU batches are fastest on one thread, and stay fast on a busy machine."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def test_registry_has_exactly_the_documented_archs() -> None:
    assert sorted(ARCHS) == sorted(ALL_ARCHS)


# -----------------------------------------------------------------------------
# The (logits, feature) contract, for every arch and input shape


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


def test_mlp_uses_image_size() -> None:
    model = build_model("mlp", 10, in_channels=1, image_size=28)
    first = model.body[1]
    assert isinstance(first, nn.Linear) and first.in_features == 28 * 28
    assert model.feature_dim == 256


# -----------------------------------------------------------------------------
# Parameter counts against the published numbers
#
# The reference counts below are arithmetic from the papers' layer recipes, not
# from the model code: CIFAR ResNet (CRD/mdistiller) = 3x3 stem + BN, BasicBlocks
# of two 3x3 convs + BNs with a 1x1 conv + BN shortcut on shape change, fc.
# WRN = 3x3 stem (no BN), pre-act blocks of BN,3x3,BN,3x3 with a bare 1x1 conv
# shortcut on shape change, final BN, fc.


def _ref_resnet(n: int, widths: tuple[int, int, int, int], classes: int) -> int:
    total = 9 * 3 * widths[0] + 2 * widths[0]  # stem conv + BN
    in_planes = widths[0]
    for stage, planes in enumerate(widths[1:]):
        for b in range(n):
            stride = 2 if (stage > 0 and b == 0) else 1
            total += 9 * in_planes * planes + 2 * planes + 9 * planes * planes + 2 * planes
            if stride != 1 or in_planes != planes:
                total += in_planes * planes + 2 * planes
            in_planes = planes
    return total + widths[3] * classes + classes


def _ref_wrn(depth: int, k: int, classes: int) -> int:
    n = (depth - 4) // 6
    total = 9 * 3 * 16
    in_planes = 16
    for planes in (16 * k, 32 * k, 64 * k):
        for _ in range(n):
            total += 2 * in_planes + 9 * in_planes * planes + 2 * planes + 9 * planes * planes
            if in_planes != planes:
                total += in_planes * planes
            in_planes = planes
    return total + 2 * in_planes + in_planes * classes + classes


# (arch, reference count from the recipe, published count in millions as tabulated
# in CRD (Tian et al. 2020) / mdistiller, given to 2 decimals)
PUBLISHED = [
    ("resnet8", _ref_resnet(1, (16, 16, 32, 64), 100), 0.08),
    ("resnet20", _ref_resnet(3, (16, 16, 32, 64), 100), 0.28),
    ("resnet8x4", _ref_resnet(1, (32, 64, 128, 256), 100), 1.23),
    ("resnet32x4", _ref_resnet(5, (32, 64, 128, 256), 100), 7.43),
    ("wrn_40_2", _ref_wrn(40, 2, 100), 2.26),
]


@pytest.mark.parametrize(("arch", "reference", "published_m"), PUBLISHED)
def test_parameter_count_matches_published(arch: str, reference: int, published_m: float) -> None:
    n = count_parameters(build_model(arch, 100))
    assert n == reference
    # 2% tolerance; resnet8's "0.08M" is only known to +-0.005M (83,892 rounds to it).
    tol = max(0.02 * published_m, 0.005)
    assert abs(n / 1e6 - published_m) <= tol, f"{arch}: {n} params vs {published_m}M"


def test_reference_formula_sanity() -> None:
    # Hand-checked totals, so a slip in the helper formulas cannot hide a model bug.
    assert _ref_resnet(3, (16, 16, 32, 64), 100) == 278_324
    assert _ref_wrn(40, 2, 100) == 2_255_156


def test_count_parameters_counts_frozen_params_too() -> None:
    model = nn.Linear(3, 2)
    model.weight.requires_grad_(False)
    assert count_parameters(model) == 8


# -----------------------------------------------------------------------------
# DualHead


@pytest.mark.parametrize("head", ["linear", "mlp"])
def test_dual_head_outputs_and_identity(head: str) -> None:
    torch.manual_seed(0)
    base = build_model("resnet8", 10)
    dual = DualHead(base, head=head)
    assert dual.backbone_model is base
    assert dual.classifier is base.classifier
    assert dual.feature_dim == base.feature_dim
    # the original head must not be registered a second time
    keys = list(dual.state_dict())
    assert len(keys) == len(set(keys))
    assert not any(k.startswith("classifier.") for k in keys)

    out = dual(torch.randn(2, 3, 16, 16))
    assert isinstance(out, tuple) and len(out) == 3
    logits1, logits2, feature = out
    assert logits1.shape == (2, 10) and logits2.shape == (2, 10)
    assert feature.shape == (2, base.feature_dim)
    assert torch.equal(logits1, dual.classifier(feature))


def _grad_norm(module: nn.Module) -> float:
    return sum(float(p.grad.abs().sum()) for p in module.parameters() if p.grad is not None)


@pytest.mark.parametrize("head", ["linear", "mlp"])
def test_dual_head_each_loss_reaches_backbone(head: str) -> None:
    torch.manual_seed(0)
    dual = DualHead(build_model("resnet8", 10), head=head)
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    stem = dual.backbone_model.conv1

    for which in (0, 1):
        dual.zero_grad(set_to_none=True)
        logits = dual(x)[which]
        F.cross_entropy(logits, y).backward()
        assert _grad_norm(stem) > 0, f"head {which + 1} loss does not reach the backbone"
        heads = (dual.classifier, dual.aux_head)
        own, other = heads[which], heads[1 - which]
        assert _grad_norm(own) > 0
        assert _grad_norm(other) == 0


def test_dual_head_unknown_head() -> None:
    with pytest.raises(ValueError, match="linear.*mlp"):
        DualHead(build_model("resnet8", 10), head="conv")


# -----------------------------------------------------------------------------
# Determinism and errors


@pytest.mark.parametrize("arch", ALL_ARCHS)
def test_same_seed_same_weights(arch: str) -> None:
    torch.manual_seed(123)
    a = build_model(arch, 10)
    torch.manual_seed(123)
    b = build_model(arch, 10)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_different_seed_different_weights() -> None:
    torch.manual_seed(1)
    a = build_model("resnet8", 10)
    torch.manual_seed(2)
    b = build_model("resnet8", 10)
    assert not torch.equal(a.conv1.weight, b.conv1.weight)


def test_init_is_kaiming_and_unit_bn() -> None:
    torch.manual_seed(0)
    model = build_model("resnet20", 10)
    w = model.layer3[1].conv1.weight  # 64 -> 64, fan_out = 64 * 9
    expected_std = (2.0 / (64 * 9)) ** 0.5
    assert abs(float(w.detach().std()) - expected_std) < 0.1 * expected_std
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)


def test_unknown_arch_lists_allowed_names() -> None:
    with pytest.raises(ValueError, match="resnet8"):
        build_model("resnet9000", 10)


def test_bad_depths_raise() -> None:
    with pytest.raises(ValueError):
        ResNet(10, depth=21)
    with pytest.raises(ValueError):
        WideResNet(10, depth=17)
