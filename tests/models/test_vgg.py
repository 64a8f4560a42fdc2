"""VGG8 / 11 / 13 / 16 / 19 with batch norm: sizes against the published counts."""

from __future__ import annotations

import pytest

from kdlib.models import build_model, count_parameters
from kdlib.models.vgg import VGG8_CFG, VGG11_CFG, VGG13_CFG, VGG16_CFG, VGG19_CFG

# The reference counts below are arithmetic from the official layer recipe (`models/vgg.py` of
# CRD / mdistiller / DHKD, `vgg*_bn`): conv3x3 with bias + BN per entry of cfg 'S', 'A', 'B',
# 'D', 'E', a 512 -> C linear head.


def _ref_vgg(cfg: list[list[int]], classes: int) -> int:
    total, channels = 0, 3
    for width in (w for stage in cfg for w in stage):
        total += 9 * channels * width + width + 2 * width
        channels = width
    return total + 512 * classes + classes


# (arch, cfg, exact count of the official model at 100 classes: penghui-yang/DHKD models/vgg.py
# at commit 7976c69, instantiated; CRD's and mdistiller's are the same, published M as KD
# papers on this zoo print them: VGG8 3.96M, VGG13 9.46M)
OFFICIAL = [
    ("vgg8", VGG8_CFG, 3_965_028, 3.96),
    ("vgg11", VGG11_CFG, 9_277_284, 9.28),
    ("vgg13", VGG13_CFG, 9_462_180, 9.46),
    ("vgg16", VGG16_CFG, 14_774_436, 14.77),
    ("vgg19", VGG19_CFG, 20_086_692, 20.09),
]


@pytest.mark.parametrize(("arch", "cfg", "official", "published_m"), OFFICIAL)
def test_parameter_count_matches_official(arch: str, cfg: list[list[int]], official: int, published_m: float) -> None:
    n = count_parameters(build_model(arch, 100))
    assert n == official == _ref_vgg(cfg, 100)
    assert abs(n / 1e6 - published_m) <= 0.006  # "3.96M": 3,965,028 truncated rather than rounded


def test_five_stages_and_a_fourth_stage_relu() -> None:
    model = build_model("vgg13", 10)
    assert [len(s) for s in model.stages()] == [6, 6, 6, 6, 6]  # conv, BN, ReLU per conv
    assert type(model.block3[-1]).__name__ == "ReLU"  # what a weak head reads (heads.intermediate_stage)
