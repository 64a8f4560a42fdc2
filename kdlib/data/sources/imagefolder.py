"""``imagefolder``: ``root/{train,test}/<class>/*.{png,jpg,jpeg}`` read as RGB images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from kdlib.data.dataset import Dataset, channel_stats
from kdlib.data.sources.base import DataSettings, DataSourceError, MissingDataError, Source

IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg")
LAYOUT = "<path>/train/<class>/*.png|jpg|jpeg and <path>/test/<class>/..."
MIN_CLASSES = 2
"""A classification data set has at least 2 classes (with 1, every loss is 0)."""


def _shown(path: Path | str) -> str:
    """A path as messages print it: as is, or quoted with escapes when it holds characters
    a terminal would act on (a hostile file name cannot rewrite the error it causes)."""
    text = str(path)
    return text if text.isprintable() else repr(text)


def _entries(folder: Path, root: Path) -> list[Path]:
    """The non-hidden entries of ``folder``, sorted; ``DataSourceError`` if it cannot be listed."""
    try:
        return sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    except OSError as exc:
        where = _shown(folder.relative_to(root)) + "/" if folder != root else ""
        raise DataSourceError(f"{_shown(root)}: cannot list {where or 'the folder'} ({exc.strerror or exc})") from exc


def _is(path: Path, kind: str) -> bool:
    """``path.is_dir()`` / ``is_file()``, False where it cannot even be stat'ed."""
    try:
        return path.is_dir() if kind == "dir" else path.is_file()
    except OSError:
        return False


def _list_images(class_dir: Path, root: Path) -> list[Path]:
    """Regular files with an image suffix (any case), sorted; hidden files skipped. None is
    a ``DataSourceError`` naming the folder (and a file it holds, when it holds others)."""
    entries = _entries(class_dir, root)
    files = [p for p in entries if _is(p, "file") and p.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        others = [p.name for p in entries]
        found = f"; it holds {len(others)} other {'entry' if len(others) == 1 else 'entries'}, e.g. {_shown(others[0])}" if others else ""
        raise DataSourceError(
            f"{_shown(root)}: {_shown(class_dir.relative_to(root))} has no images (.png, .jpg or .jpeg{found})"
        )
    return files


def class_folders(root: Path) -> tuple[list[str], dict[str, dict[str, Path]]]:
    """The class names (the non-hidden folders of ``root/train``, sorted) and each split's
    folder per class, read from the folder listing alone (no image is opened).

    ``MissingDataError`` for a missing ``root``, ``train/`` or ``test/``; ``DataSourceError``
    for a ``root`` that is a file, fewer than ``MIN_CLASSES`` classes, or ``test/`` with
    other class folders than ``train/``. Each message starts with ``root``.
    """
    root = Path(root)
    shown = _shown(root)
    if not _is(root, "dir"):
        if root.exists():
            raise DataSourceError(f"{shown}: not a folder (source 'imagefolder' reads {LAYOUT})")
        raise MissingDataError(f"{shown}: image folder root not found")
    splits: dict[str, dict[str, Path]] = {}
    for split in ("train", "test"):
        folder = root / split
        if not _is(folder, "dir"):
            raise MissingDataError(f"{shown}: no {split}/ folder (source 'imagefolder' reads {LAYOUT})")
        splits[split] = {p.name: p for p in _entries(folder, root) if _is(p, "dir")}
    classes = sorted(splits["train"])
    if len(classes) < MIN_CLASSES:
        have = f"1 class folder ({_shown(classes[0])})" if classes else "no class folders"
        raise DataSourceError(f"{shown}: train/ has {have}; a classification data set needs at least {MIN_CLASSES}")
    missing = sorted(set(classes) - set(splits["test"]))
    extra = sorted(set(splits["test"]) - set(classes))
    if missing or extra:
        parts = [f"missing from test/: {missing}"] * bool(missing) + [f"not in train/: {extra}"] * bool(extra)
        raise DataSourceError(f"{shown}: test/ must have the same class folders as train/; {', '.join(parts)}")
    return classes, splits


_OTHER_FORMATS: tuple[tuple[bytes, str], ...] = (
    (b"GIF8", "GIF"), (b"BM", "BMP"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"RIFF", "RIFF/WebP"),
    (b"\x00\x00\x00\x0cjP", "JPEG 2000"), (b"8BPS", "PSD"), (b"%PDF", "PDF"), (b"PK\x03\x04", "zip"),
)


def _reason(exc: BaseException, path: Path) -> str:
    """What PIL (or numpy) says, without the file name it repeats; for a file of another
    format (a GIF named .png), which one, told by its first bytes (no other decoder runs)."""
    text = str(exc)
    for name in (repr(str(path)), repr(path), str(path)):
        text = text.replace(f" {name}", "")
    text = text.strip() or type(exc).__name__
    try:
        with open(path, "rb") as fh:
            head = fh.read(16)
    except OSError:
        return text
    for magic, fmt in _OTHER_FORMATS:
        if head.startswith(magic):
            return f"{text}: a {fmt} file; only PNG and JPEG are read"
    return text


def _read_image(path: Path, image_size: int, root: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path, formats=["PNG", "JPEG"]) as img:
            rgb = img.convert("RGB").resize(
                (image_size, image_size), resample=Image.Resampling.BILINEAR
            )
            arr = np.asarray(rgb, dtype=np.uint8)
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, struct.error, zlib.error, ...
        raise DataSourceError(
            f"{_shown(root)}: {_shown(path.relative_to(root))} is not a readable image ({_reason(exc, path)})"
        ) from exc
    return arr.transpose(2, 0, 1)  # (H, W, 3) -> (3, H, W)


def load_imagefolder(root: Path, image_size: int) -> Dataset:
    """Load ``root/{train,test}/<class>/*.{png,jpg,jpeg}`` as uint8 RGB images.

    Classes are the non-hidden sub-folders of ``root/train``, sorted by name (at
    least 2); ``root/test`` must have the same set. Every class folder must hold at
    least one image; other files and nested folders are ignored (suffixes are
    matched case-insensitively, only PNG and JPEG decoders are used). Images
    are converted to RGB and resized to ``image_size`` x ``image_size`` with
    bilinear filtering (aspect ratio not kept, EXIF orientation not applied).
    Samples are ordered by class, then file name. No superclasses:
    ``coarse_of_class`` is the identity. Bad input raises ``DataSourceError`` (a
    ``ValueError``; ``MissingDataError``, also a ``FileNotFoundError``, for a missing
    root or split) whose message starts with ``root`` and names the folder or file:
    mismatched classes, an empty class, a folder that cannot be listed, a file that
    is not a readable PNG or JPEG image (whatever PIL raised).
    """
    root = Path(root)
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    classes, splits = class_folders(root)

    def split(dirs: dict[str, Path]) -> tuple[Tensor, Tensor]:
        images: list[np.ndarray] = []
        labels: list[int] = []
        for label, cls in enumerate(classes):
            for f in _list_images(dirs[cls], root):
                images.append(_read_image(f, image_size, root))
                labels.append(label)
        x = torch.from_numpy(np.stack(images))
        return x, torch.tensor(labels, dtype=torch.int64)

    x_train, y_train = split(splits["train"])
    x_test, y_test = split(splits["test"])
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
        try:
            class_folders(Path(data.path))  # the layout, from the folder listing alone
        except DataSourceError as err:
            raise type(err)(f"data.path {err}") from err

    @classmethod
    def input_shape(cls, data: DataSettings) -> tuple[int, int, int]:
        # The class count is that of the class folders of data.path/train (listed, no image read).
        classes = len(class_folders(Path(data.path))[0]) if data.path is not None else MIN_CLASSES
        return 3, data.image_size, classes

    @classmethod
    def build(cls, data: DataSettings) -> Dataset:
        assert data.path is not None  # check() refuses it
        try:
            return load_imagefolder(Path(data.path), data.image_size)
        except DataSourceError as err:
            raise type(err)(f"data.path {err}") from err
