"""The official CRD / mdistiller / DHKD parameter names, for writing released-format checkpoints.

`official_state_dict` renames a kdflow model's state_dict to what the official model class's
`state_dict()` holds, written here in reverse of `kdlib.models.checkpoint.OFFICIAL_NAMES`
(independently of it), and `OFFICIAL_KEYS` pins the result: (number of entries, first 16 hex
of the sha256 of the sorted lines "<name> <shape tuple>") of each official model's
`state_dict()` at num_classes=100, computed by instantiating the official code:
penghui-yang/DHKD models/ (model_dict names) at 7976c69d408e72b4203d04a6e82dc27792ec1469;
CRD (HobbitLong/RepDistiller b84f547c5db6a35318d4671d7d5c4de74c822403) and mdistiller
(megvii-research/mdistiller a08d46f10d6102bd6e3f258ca5ac880b020ea259) give the same
fingerprints for every arch they share, except MobileNetV2's head (`OFFICIAL_KEYS_CRD`).
"""
from __future__ import annotations

import hashlib
import re

import torch
from torch import nn

from kdlib.models.mobilenet import MobileNetV2
from kdlib.models.resnet import BottleneckResNet, ResNet
from kdlib.models.shufflenet import ShuffleNetV1, ShuffleNetV2
from kdlib.models.wrn import WideResNet

OFFICIAL_KEYS: dict[str, tuple[int, str]] = {
    "resnet8": (56, "99cb0c0b2ea3c613"),
    "resnet14": (92, "629933907d5744ff"),
    "resnet20": (128, "0386434ca6f34c26"),
    "resnet32": (200, "9e5592f61f0020a8"),
    "resnet44": (272, "df3dce284c7a26b4"),
    "resnet56": (344, "fa692cabb2e3a217"),
    "resnet110": (668, "9ca5a9542fb3a343"),
    "resnet8x4": (62, "b2ead61a142ef3af"),
    "resnet32x4": (206, "99154b2aea1aeb59"),
    "ResNet50": (320, "d5367c1bcc2c22ea"),
    "wrn_16_1": (82, "b4de1d786e12f08a"),
    "wrn_16_2": (83, "2266f04469bf5dd9"),
    "wrn_40_1": (226, "01abc5646d8c075c"),
    "wrn_40_2": (227, "595ec0db20d1ca1c"),
    "vgg8": (37, "7f85b8479109415f"),
    "vgg11": (58, "6053995f63325762"),
    "vgg13": (72, "5778ceb5832ef6a7"),
    "vgg16": (93, "0729229b18559f53"),
    "vgg19": (114, "e27ccb5da4f3ad9e"),
    "MobileNetV1": (164, "d0f056c2369c3d5f"),
    "MobileNetV2": (320, "4b4dd36785358269"),
    "ShuffleV1": (296, "1282e767b3e9c6cd"),
    "ShuffleV2": (338, "9b7750ae03289b13"),
}
OFFICIAL_KEYS_CRD = {"MobileNetV2": (320, "54501c9a7e317631")}  # classifier = Sequential(Linear): classifier.0.*

# kdflow name -> official name, per model class (regex, replacement), applied in order
TO_OFFICIAL: dict[type[nn.Module], tuple[tuple[str, str], ...]] = {
    ResNet: ((r"^classifier\.", "fc."),),
    BottleneckResNet: ((r"^classifier\.", "linear."),),
    ShuffleNetV1: ((r"^classifier\.", "linear."),),
    ShuffleNetV2: ((r"^classifier\.", "linear."),),
    WideResNet: (
        (r"^(block\d)\.", r"\1.layer."),
        (r"\.shortcut\.", ".convShortcut."),
        (r"^bn\.", "bn1."),
        (r"^classifier\.", "fc."),
    ),
}


def official_state_dict(model: nn.Module, crd_head: bool = False) -> dict[str, torch.Tensor]:
    """`model`'s state_dict under the official names (DHKD's; `crd_head`: CRD / mdistiller's
    MobileNetV2 head `classifier.0`)."""
    rules = TO_OFFICIAL.get(type(model), ())
    if crd_head and isinstance(model, MobileNetV2):
        rules = ((r"^classifier\.", "classifier.0."),)
    out = {}
    for name, tensor in model.state_dict().items():
        for pattern, replacement in rules:
            name = re.sub(pattern, replacement, name)
        out[name] = tensor
    return out


def fingerprint(state: dict[str, torch.Tensor]) -> tuple[int, str]:
    lines = sorted(f"{k} {tuple(v.shape)}" for k, v in state.items())
    return len(state), hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]
