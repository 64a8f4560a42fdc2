"""``imagefolder``: ``root/{train,test}/<class>/*.{png,jpg,jpeg}`` read as RGB images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from kdlib.data.dataset import Dataset, channel_stats
from kdlib.data.sources.base import DataSettings, Source

IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg")


def _list_images(class_dir: Path) -> list[Path]:
    """Regular files with an image suffix (any case), sorted; hidden files skipped."""
    return sorted(
        p
        for p in class_dir.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
    )


def _class_dirs(split_dir: Path) -> dict[str, Path]:
    return {
        p.name: p for p in sorted(split_dir.iterdir()) if p.is_dir() and not p.name.startswith(".")
    }


def _read_image(path: Path, image_size: int) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path, formats=["PNG", "JPEG"]) as img:
            rgb = img.convert("RGB").resize(
                (image_size, image_size), resample=Image.Resampling.BILINEAR
            )
            arr = np.asarray(rgb, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ValueError(f"cannot read image {path}: {exc}") from exc
    return arr.transpose(2, 0, 1)  # (H, W, 3) -> (3, H, W)


def load_imagefolder(root: Path, image_size: int) -> Dataset:
    """Load ``root/{train,test}/<class>/*.{png,jpg,jpeg}`` as uint8 RGB images.

    Classes are the non-hidden sub-folders of ``root/train``, sorted by name;
    ``root/test`` must have the same set. Every class folder must hold at
    least one image; other files and nested folders are ignored (suffixes are
    matched case-insensitively, only PNG and JPEG decoders are used). Images
    are converted to RGB and resized to ``image_size`` x ``image_size`` with
    bilinear filtering (aspect ratio not kept, EXIF orientation not applied).
    Samples are ordered by class, then file name. No superclasses:
    ``coarse_of_class`` is the identity. Raises ``FileNotFoundError`` for a
    missing root or split, ``ValueError`` (naming the folder or file) for
    mismatched classes, an empty class or an unreadable image.
    """
    root = Path(root)
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    if not root.is_dir():
        raise FileNotFoundError(f"image folder root not found: {root}")
    split_dirs = {s: root / s for s in ("train", "test")}
    for s, d in split_dirs.items():
        if not d.is_dir():
            raise FileNotFoundError(f"image folder {root} has no {s}/ folder ({d})")
    train_classes = _class_dirs(split_dirs["train"])
    test_classes = _class_dirs(split_dirs["test"])
    if not train_classes:
        raise ValueError(f"no class folders in {split_dirs['train']}")
    classes = sorted(train_classes)
    extra = sorted(set(test_classes) - set(train_classes))
    missing = sorted(set(train_classes) - set(test_classes))
    if extra or missing:
        raise ValueError(
            f"{split_dirs['test']} must have the same classes as {split_dirs['train']}: "
            f"extra in test: {extra}, missing from test: {missing}"
        )

    def split(dirs: dict[str, Path]) -> tuple[Tensor, Tensor]:
        images: list[np.ndarray] = []
        labels: list[int] = []
        for label, cls in enumerate(classes):
            files = _list_images(dirs[cls])
            if not files:
                raise ValueError(f"class folder {dirs[cls]} has no .png/.jpg/.jpeg images")
            for f in files:
                images.append(_read_image(f, image_size))
                labels.append(label)
        x = torch.from_numpy(np.stack(images))
        return x, torch.tensor(labels, dtype=torch.int64)

    x_train, y_train = split(train_classes)
    x_test, y_test = split(test_classes)
    mean, std = channel_stats(x_train)
    ds = Dataset(
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        num_classes=len(classes),
        coarse_of_class=torch.arange(len(classes), dtype=torch.int64),
        mean=mean,
        std=std,
        name=f"imagefolder-{root.name}-{image_size}px",
    )
    ds.validate()
    return ds


class ImageFolder(Source):
    """``load_imagefolder(data.path, data.image_size)``."""

    name = "imagefolder"
    takes_image_size = True

    @classmethod
    def check(cls, data: DataSettings) -> None:
        if data.path is None:
            raise ValueError("data.path is needed for source 'imagefolder' (a folder with train/<class>/ and test/<class>/)")

    @classmethod
    def input_shape(cls, data: DataSettings) -> tuple[int, int, int]:
        # The class count is only known once the folder is read; it does not change
        # whether a shape can run, so 2 stands in for it.
        return 3, data.image_size, 2

    @classmethod
    def build(cls, data: DataSettings) -> Dataset:
        assert data.path is not None  # check() refuses it
        return load_imagefolder(Path(data.path), data.image_size)
