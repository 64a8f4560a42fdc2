"""The data set container every step shares: uint8 images, labels, class metadata.

Images are stored as uint8 (N, C, H, W) so a data set is small on disk and
bit-exact across machines; ``to_float`` normalises at use time. Where the images
come from is a source's business (``kdlib.data.sources``). The dataset file also holds
token data sets (``kdlib.data.tokens.TokenDataset``), told apart by its ``kind``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from kdlib import artifacts, time_account
from kdlib.data.augment import augment
from kdlib.data import tokens
from kdlib.data.tokens import TokenDataset

_FORMAT_VERSION = 1


@dataclass
class Dataset:
    """A train/test split of uint8 images with labels and class metadata.

    ``coarse_of_class[k]`` is the superclass of fine class ``k``, used to ask
    whether errors stay inside the right superclass. ``mean``/``std`` are
    per-channel statistics of the train split in [0, 1] scale, computed once so
    every consumer normalises identically.
    """

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    num_classes: int
    coarse_of_class: Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]
    name: str

    kind: ClassVar[str] = "images"

    @property
    def num_channels(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.x_train.shape[-1])

    @property
    def num_superclasses(self) -> int:
        return int(self.coarse_of_class.max().item()) + 1 if self.coarse_of_class.numel() else 0

    def train_inputs(self, x: Tensor, augment_config: Any, epoch: int, indices: Tensor) -> Tensor:
        """The model's input for training images `x` (samples `indices`): their replayed view in
        `epoch` (`kdlib.data.augment`, a pure function of the seed, epoch and index), normalised."""
        a = augment_config
        return to_float(augment(x, a.seed, epoch, indices, a.padding, a.flip), self.mean, self.std)

    def eval_inputs(self, x: Tensor) -> Tensor:
        """The model's input for evaluation images `x`: un-augmented, normalised."""
        return to_float(x, self.mean, self.std)

    @staticmethod
    def rows(y: Tensor) -> Tensor:
        """The labels as the rows the logits are: one per image, unchanged."""
        return y

    def validate(self) -> None:
        """Raise ``ValueError`` if fields are inconsistent (used after loading)."""
        problems: list[str] = []
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if not isinstance(x, Tensor) or x.dtype != torch.uint8 or x.ndim != 4:
                problems.append(f"x_{split} must be a uint8 tensor (N, C, H, W)")
                continue
            if not isinstance(y, Tensor) or y.dtype != torch.int64 or y.shape != (x.shape[0],):
                problems.append(f"y_{split} must be an int64 tensor of shape ({x.shape[0]},)")
                continue
            if y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
                problems.append(f"y_{split} has labels outside [0, {self.num_classes})")
        if not problems and self.x_train.shape[1:] != self.x_test.shape[1:]:
            problems.append("train and test images differ in shape")
        if not isinstance(self.coarse_of_class, Tensor) or self.coarse_of_class.shape != (
            self.num_classes,
        ):
            problems.append(f"coarse_of_class must have shape ({self.num_classes},)")
        if not problems and (
            len(self.mean) != self.num_channels or len(self.std) != self.num_channels
        ):
            problems.append("mean/std must have one entry per channel")
        if problems:
            raise ValueError("invalid Dataset: " + "; ".join(problems))


def channel_stats(x_uint8: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean/std (unbiased) in [0, 1] scale.

    Computed from exact integer sums, so the result is bit-identical whatever the
    thread count (float reductions are not), keeping same-seed data sets equal.
    """
    x = x_uint8.to(torch.int64).transpose(0, 1).reshape(x_uint8.shape[1], -1)
    n = x.shape[1]
    means: list[float] = []
    stds: list[float] = []
    for s1, s2 in zip(x.sum(1).tolist(), (x * x).sum(1).tolist(), strict=True):
        var = (n * s2 - s1 * s1) / (n * max(n - 1, 1)) / 255.0**2  # Python ints: exact
        means.append(s1 / n / 255.0)
        stds.append(max(var, 0.0) ** 0.5 or 1e-6)
    return tuple(means), tuple(stds)


def to_float(images_uint8: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """uint8 (N, C, H, W) -> float32, scaled to [0, 1] then normalised per channel."""
    x = images_uint8.to(torch.float32) / 255.0
    m = torch.tensor(mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


# -----------------------------------------------------------------------------
# Persistence

_TENSOR_FIELDS = ("x_train", "y_train", "x_test", "y_test", "coarse_of_class")
IMAGES = "images"
"""The ``kind`` of an image data set file. Image files carry no ``kind`` key (they are
written byte for byte as before token data sets existed); a file without one is images."""
Kind = Literal["images", "tokens"]


AnyDataset = Dataset | TokenDataset
"""What a step trains and evaluates on: images, or token windows (`kdlib.data.tokens`)."""


def save_dataset(ds: AnyDataset, path: Path) -> None:
    """Write ``ds`` with ``torch.save`` atomically (temp file + rename, see kdlib.artifacts).

    Only tensors and plain values are stored, so ``load_dataset`` can use
    ``weights_only=True``; a crash mid-write never leaves a partial file behind. A
    ``TokenDataset`` is written with ``kind: "tokens"`` (``kdlib.data.tokens.to_payload``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(ds, TokenDataset):
        artifacts.save_tensors(path, tokens.to_payload(ds))
        return
    payload: dict[str, Any] = {name: getattr(ds, name).contiguous() for name in _TENSOR_FIELDS}
    payload.update(
        format_version=_FORMAT_VERSION,
        num_classes=int(ds.num_classes),
        mean=[float(v) for v in ds.mean],
        std=[float(v) for v in ds.std],
        name=str(ds.name),
    )
    artifacts.save_tensors(path, payload)


@time_account.charged("data")
def load_dataset(path: Path, kind: Kind | None = None) -> AnyDataset:
    """Read a file written by ``save_dataset`` (``weights_only=True``, validated): a
    ``Dataset`` or a ``TokenDataset``, as its ``kind`` says; ``kind`` given, the file must
    be of that kind.

    Raises ``FileNotFoundError`` if ``path`` is missing and ``ValueError`` naming
    the path if it is unreadable, not a data set file, or of another kind.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dataset file not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle/zip errors come in many types
        raise ValueError(f"cannot read dataset file {path}: {exc}") from exc
    found = payload.get("kind", IMAGES) if isinstance(payload, dict) else IMAGES
    if not isinstance(found, str) or found not in (IMAGES, tokens.KIND):
        raise ValueError(f"{path} is not a kdflow dataset file (unknown kind {found!r})")
    if kind is not None and found != kind:
        raise ValueError(f"{path} holds a {found} data set, not {kind}")
    if found == tokens.KIND:
        try:
            return tokens.from_payload(payload)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path} holds an invalid token dataset: {exc}") from exc
    required = set(_TENSOR_FIELDS) | {"num_classes", "mean", "std", "name"}
    if not isinstance(payload, dict) or not required <= payload.keys():
        missing = sorted(required - payload.keys()) if isinstance(payload, dict) else "all"
        raise ValueError(f"{path} is not a kdflow dataset file (missing: {missing})")
    if payload.get("format_version", _FORMAT_VERSION) != _FORMAT_VERSION:
        raise ValueError(f"{path}: unsupported format_version {payload['format_version']!r}")
    try:
        ds = Dataset(
            x_train=payload["x_train"],
            y_train=payload["y_train"],
            x_test=payload["x_test"],
            y_test=payload["y_test"],
            num_classes=int(payload["num_classes"]),
            coarse_of_class=payload["coarse_of_class"],
            mean=tuple(float(v) for v in payload["mean"]),
            std=tuple(float(v) for v in payload["std"]),
            name=str(payload["name"]),
        )
        ds.validate()
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path} holds an invalid dataset: {exc}") from exc
    return ds
