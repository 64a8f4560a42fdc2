"""Teachers released with CRD, mdistiller and DHKD: reading their checkpoint files.

The released CIFAR teachers (CRD's `scripts/fetch_pretrained_teachers.sh` set, mdistiller's
`cifar_teachers/<arch>_vanilla/ckpt_epoch_240.pth`, DHKD's teachers) are
`torch.save({"model": state_dict, ...})` of the official model classes, and the official
`load_teacher` reads `torch.load(path)["model"]`. kdflow's models carry the official
parameter names except where `OFFICIAL_NAMES` says: every kdflow head is `classifier` (the
name the heads of `kdlib.models.heads` and the diagnostics' head/backbone split read), and
kdflow's WideResNet names its blocks its own way.

The file is read once, its sha256 taken from those bytes, then `torch.load(weights_only=True)`:
nothing but tensors, plain containers and numpy scalars (an accuracy some training scripts
save beside the weights) is unpickled. A file that does not fit the arch is
refused with every missing, unexpected and mis-shaped parameter named.
"""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from kdlib.models import build_model
from kdlib.models.mobilenet import MobileNetV2
from kdlib.models.resnet import BottleneckResNet, ResNet
from kdlib.models.shufflenet import ShuffleNetV1, ShuffleNetV2
from kdlib.models.wrn import WideResNet

OFFICIAL_NAMES: dict[type[nn.Module], tuple[tuple[str, str], ...]] = {
    # (regex on the official name, replacement), applied in order
    ResNet: ((r"^fc\.", "classifier."),),  # models/resnet.py
    BottleneckResNet: ((r"^linear\.", "classifier."),),  # models/resnetv2.py
    ShuffleNetV1: ((r"^linear\.", "classifier."),),
    ShuffleNetV2: ((r"^linear\.", "classifier."),),
    # CRD and mdistiller: Sequential(Linear) -> classifier.0; DHKD: a bare Linear, as here
    MobileNetV2: ((r"^classifier\.0\.", "classifier."),),
    WideResNet: (  # models/wrn.py: NetworkBlock(...).layer, convShortcut, final bn1, fc
        (r"^(block\d)\.layer\.", r"\1."),
        (r"\.convShortcut\.", ".shortcut."),
        (r"^bn1\.", "bn."),
        (r"^fc\.", "classifier."),
    ),
    # VGG, MobileNetV1: the official names, head included
}
"""Per model class, how an official parameter name becomes kdflow's."""

_SHOWN = 8  # names listed per kind of problem in an error


class CheckpointError(ValueError):
    """A checkpoint file that cannot be the teacher asked for; the message names why."""


def read_state_dict(path: Path | str, sha256: str | None = None) -> tuple[dict[str, Tensor], str]:
    """(state_dict, sha256 of the file) of a released checkpoint: `{"model": state_dict, ...}`
    (other entries, such as the optimizer or epoch, are read and ignored) or a bare state_dict.

    With `sha256`, a file with other bytes is refused before it is unpickled."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found")
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if sha256 is not None and digest != sha256.lower():
        raise CheckpointError(f"checkpoint {path}: its sha256 is {digest}, not the expected {sha256.lower()}")
    try:
        with torch.serialization.safe_globals(_numpy_scalars()):
            obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, a pickle of objects, not a torch file at all
        reason = (str(err).strip().splitlines() or [""])[0][:300]
        raise CheckpointError(
            f"checkpoint {path}: torch.load(weights_only=True) cannot read it ({type(err).__name__}: {reason})"
        ) from None
    state = obj["model"] if isinstance(obj, Mapping) and "model" in obj else obj
    if not isinstance(state, Mapping) or not state or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()
    ):
        found = sorted(map(str, obj))[:_SHOWN] if isinstance(obj, Mapping) else type(obj).__name__
        raise CheckpointError(
            f"checkpoint {path}: not a state_dict of tensors nor {{'model': state_dict}} (the CRD / mdistiller / "
            f"DHKD format); found {found}"
        )
    return dict(state), digest


def _numpy_scalars() -> list[Any]:
    """numpy scalars and their dtypes (data only) for the weights_only unpickler, under numpy 2's
    module name and numpy 1's (`numpy.core.multiarray.scalar`, as older files name it)."""
    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy 1
        from numpy.core.multiarray import scalar
    dtypes = [type(np.dtype(t)) for t in (np.float16, np.float32, np.float64, np.int32, np.int64, np.bool_)]
    return [scalar, (scalar, "numpy.core.multiarray.scalar"), np.dtype, *dtypes]


def kdflow_names(model: nn.Module, state: Mapping[str, Tensor]) -> dict[str, tuple[str, Tensor]]:
    """kdflow name -> (official name, tensor) for `model`'s class (`OFFICIAL_NAMES`); a
    `module.` prefix on every name (a model saved inside DataParallel) is dropped."""
    rules = OFFICIAL_NAMES.get(type(model), ())
    strip = all(k.startswith("module.") for k in state)
    out: dict[str, tuple[str, Tensor]] = {}
    for name, tensor in state.items():
        new = name.removeprefix("module.") if strip else name
        for pattern, replacement in rules:
            new = re.sub(pattern, replacement, new)
        if new in out:
            raise CheckpointError(f"parameters {out[new][0]!r} and {name!r} both map to {new!r}")
        out[new] = (name, tensor)
    return out


def _listed(names: list[str]) -> str:
    more = f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else ""
    return ", ".join(names[:_SHOWN]) + more


def load_official_state(model: nn.Module, state: Mapping[str, Tensor], source: str = "checkpoint") -> None:
    """Load an official state_dict into `model` (in place), or raise `CheckpointError` naming
    every missing, unexpected and mis-shaped parameter. Batch-norm `num_batches_tracked`
    counters absent from a file (PyTorch < 0.4.1 wrote none) keep the model's."""
    expected = model.state_dict()
    given = kdflow_names(model, state)
    missing = [k for k in expected if k not in given and not k.endswith("num_batches_tracked")]
    unexpected = [official for k, (official, _) in given.items() if k not in expected]
    shapes = [
        f"{official} {tuple(t.shape)} (the model's {k}: {tuple(expected[k].shape)})"
        for k, (official, t) in given.items() if k in expected and t.shape != expected[k].shape
    ]
    problems = [
        f"{label} {_listed(names)}"
        for label, names in (("missing:", missing), ("unexpected:", unexpected), ("shape mismatch:", shapes))
        if names
    ]
    if problems:
        raise CheckpointError(f"{source} does not fit a {type(model).__name__}: " + "; ".join(problems))
    model.load_state_dict({**expected, **{k: t for k, (_, t) in given.items()}})


def load_checkpoint_model(
    arch: str, num_classes: int, in_channels: int, image_size: int, path: Path | str, sha256: str | None = None
) -> tuple[nn.Module, str]:
    """(`arch` with the released weights of the file at `path`, in eval mode; the file's sha256)."""
    state, digest = read_state_dict(path, sha256)
    model = build_model(arch, num_classes, in_channels, image_size)
    load_official_state(model, state, f"checkpoint {path} ({arch}, {num_classes} classes)")
    return model.eval(), digest

