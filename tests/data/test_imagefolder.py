"""The imagefolder source: root/{train,test}/<class>/*.{png,jpg,jpeg} as RGB images."""

from __future__ import annotations

import io
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from kdlib.config import DataConfig
from kdlib.data.sources.base import DataSourceError, MissingDataError, source_class
from kdlib.data.sources.imagefolder import load_imagefolder
from tests.helpers.data import write_image


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "flowers"
    # Class names chosen so that sorted order differs from creation order.
    write_image(root / "train" / "zinnia" / "a.png", (10, 7), (255, 0, 0))
    write_image(root / "train" / "zinnia" / "b.PNG", (40, 40), (0, 0, 255, 128), mode="RGBA")
    write_image(root / "train" / "aster" / "x.jpg", (16, 12), (0, 200, 0), fmt="JPEG")
    write_image(root / "train" / "aster" / "y.png", (5, 9), 90, mode="L")
    (root / "train" / "aster" / "notes.txt").write_text("ignored")
    write_image(root / "test" / "zinnia" / "t.jpeg", (33, 20), (10, 20, 30), fmt="JPEG")
    write_image(root / "test" / "aster" / "u.png", (8, 8), (1, 2, 3))
    return root


def test_load_imagefolder(folder: Path) -> None:
    ds = load_imagefolder(folder, 6)
    assert ds.x_train.shape == (4, 3, 6, 6) and ds.x_train.dtype == torch.uint8
    assert ds.x_test.shape == (2, 3, 6, 6)
    assert ds.num_classes == 2 and ds.coarse_of_class.tolist() == [0, 1]
    # aster (0) before zinnia (1); files in name order within a class.
    assert ds.y_train.tolist() == [0, 0, 1, 1] and ds.y_train.dtype == torch.int64
    assert ds.y_test.tolist() == [0, 1]
    x = ds.x_train
    jpeg_green = x[0].to(torch.int64)
    assert (jpeg_green[1] - 200).abs().max() <= 3 and jpeg_green[0].max() <= 3
    assert torch.all(x[1] == 90)  # grayscale -> three equal channels
    assert torch.all(x[2, 0] == 255) and torch.all(x[2, 1:] == 0)  # solid colour survives
    assert torch.all(x[3, 2] == 255)  # RGBA -> RGB drops alpha
    assert torch.all(ds.x_test[0].permute(1, 2, 0) == torch.tensor([1, 2, 3], dtype=torch.uint8))
    assert ds.name == "imagefolder-flowers-6px"
    ds.validate()


def test_imagefolder_bilinear_resize(tmp_path: Path) -> None:
    from PIL import Image

    root = tmp_path / "r"
    grad = np.tile(np.arange(0, 256, 8, dtype=np.uint8), (32, 1))  # horizontal ramp
    for split in ("train", "test"):
        for cls in ("c", "d"):  # a data set has at least 2 classes; "c" sorts first
            (root / split / cls).mkdir(parents=True)
            Image.fromarray(np.stack([grad] * 3, axis=-1)).save(root / split / cls / "g.png")
    ds = load_imagefolder(root, 8)
    expected = Image.fromarray(np.stack([grad] * 3, axis=-1)).resize(
        (8, 8), Image.Resampling.BILINEAR
    )
    assert torch.equal(ds.x_train[0], torch.from_numpy(np.array(expected)).permute(2, 0, 1))
    row = ds.x_train[0, 0, 0].tolist()
    assert row == sorted(row) and row[0] < 40 and row[-1] > 210


def test_bad_arguments(folder: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="image_size"):
        load_imagefolder(folder, 0)
    with pytest.raises(MissingDataError, match="nope: image folder root not found") as info:
        load_imagefolder(tmp_path / "nope", 8)
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, ValueError)
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataSourceError, match=r"file: not a folder \(source 'imagefolder' reads"):
        load_imagefolder(tmp_path / "file", 8)


# --------------------------------------------------------------------------- #
# One test per kind of bad folder: each is a DataSourceError (a ValueError) whose
# message starts with the root and names the folder or file, in the real format.
# --------------------------------------------------------------------------- #
def error_of(root: Path) -> str:
    with pytest.raises(DataSourceError) as info:
        load_imagefolder(root, 8)
    msg = str(info.value)
    assert msg.startswith(f"{root}: "), msg
    return msg.removeprefix(f"{root}: ")


def test_no_test_folder(folder: Path) -> None:
    shutil.rmtree(folder / "test")
    assert error_of(folder).startswith("no test/ folder (source 'imagefolder' reads <path>/train/<class>/")
    with pytest.raises(FileNotFoundError):  # a MissingDataError is both
        load_imagefolder(folder, 8)
    shutil.rmtree(folder / "train")
    assert error_of(folder).startswith("no train/ folder")


def test_classes_of_train_and_test_differ(folder: Path) -> None:
    (folder / "test" / "zinnia" / "t.jpeg").rename(folder / "t.jpeg")
    (folder / "test" / "zinnia").rmdir()
    (folder / "test" / "rose").mkdir()
    assert error_of(folder) == (
        "test/ must have the same class folders as train/; missing from test/: ['zinnia'], not in train/: ['rose']"
    )
    (folder / "test" / "rose").rmdir()
    assert error_of(folder) == "test/ must have the same class folders as train/; missing from test/: ['zinnia']"


def test_empty_class_folder(folder: Path) -> None:
    (folder / "test" / "zinnia" / "t.jpeg").unlink()
    assert error_of(folder) == "test/zinnia has no images (.png, .jpg or .jpeg)"
    (folder / "test" / "zinnia" / "t.bmp").write_bytes(b"BM")
    (folder / "test" / "zinnia" / "t.webp").write_bytes(b"RIFF")
    assert error_of(folder) == "test/zinnia has no images (.png, .jpg or .jpeg; it holds 2 other entries, e.g. t.bmp)"


@pytest.mark.parametrize("classes", [[], ["aster"]])
def test_fewer_than_two_classes(tmp_path: Path, classes: list[str]) -> None:
    root = tmp_path / "set"
    for split in ("train", "test"):
        (root / split).mkdir(parents=True)
        for cls in classes:
            write_image(root / split / cls / "a.png", (4, 4), (1, 2, 3))
    have = "1 class folder (aster)" if classes else "no class folders"
    assert error_of(root) == f"train/ has {have}; a classification data set needs at least 2"


def png_bytes(size: int = 24) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    pixels = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize(
    "content, reason",
    [
        (b"", "cannot identify image file"),  # an empty file
        (b"\x89PNG\r\n\x1a\n garbage", "Truncated File Read"),  # the PNG signature, then garbage
        (png_bytes()[:400], "image file is truncated"),  # a real PNG, cut short
        (b"name,label\ncat.png,0\n", "cannot identify image file"),  # a file that is not an image
    ],
    ids=["empty", "garbage", "truncated", "text"],
)
def test_a_file_that_is_not_a_readable_image(folder: Path, content: bytes, reason: str) -> None:
    (folder / "test" / "aster" / "3.png").write_bytes(content)
    assert error_of(folder) == f"test/aster/3.png is not a readable image ({reason})"


def test_an_image_of_another_format_says_which(folder: Path) -> None:
    write_image(folder / "train" / "aster" / "b.png", (4, 4), (1, 1, 1), fmt="GIF")  # right suffix, wrong format
    assert error_of(folder) == (
        "train/aster/b.png is not a readable image (cannot identify image file: a GIF file; only PNG and JPEG are read)"
    )


def test_a_hostile_file_name_is_printed_escaped(folder: Path) -> None:
    name = "a\x1b[2J\n.png"  # clear-screen and a newline: a terminal would act on them
    (folder / "train" / "aster" / name).write_bytes(b"not an image")
    msg = error_of(folder)
    assert "\x1b" not in msg and "\n" not in msg
    assert msg.startswith(repr(f"train/aster/{name}"))


def test_every_truncation_and_bit_flip_of_an_image_is_a_named_error(folder: Path) -> None:
    """What PIL raises on a damaged file varies (OSError, SyntaxError, ValueError, zlib or struct
    errors); each comes back as a DataSourceError naming the file."""
    good = png_bytes()
    rng = random.Random(0)
    flipped = []
    for _ in range(40):
        damaged = bytearray(good)
        for _ in range(3):
            damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        flipped.append(bytes(damaged))
    target = folder / "train" / "zinnia" / "a.png"
    for content in [good[:n] for n in range(0, len(good), 37)] + flipped:
        target.write_bytes(content)
        try:
            load_imagefolder(folder, 8)  # a flip in pixel data can leave a readable image
        except DataSourceError as err:
            assert str(err).startswith(f"{folder}: train/zinnia/a.png is not a readable image ("), err


def test_source_names_the_field_and_checks_the_layout_at_validation(folder: Path, monkeypatch) -> None:
    """`data.path` at validation (the folder listing: no image is read), and in `build`."""
    monkeypatch.chdir(folder.parent)
    data = DataConfig(source="imagefolder", path=folder.name, image_size=8)
    assert data.input_shape() == (3, 8, 2)  # the class folders of train/
    (folder / "train" / "aster" / "y.png").write_bytes(b"garbage")
    with pytest.raises(DataSourceError) as info:
        source_class("imagefolder").build(data)
    assert str(info.value) == "data.path flowers: train/aster/y.png is not a readable image (cannot identify image file)"
    shutil.rmtree(folder / "test" / "zinnia")
    with pytest.raises(ValueError, match=r"data\.path flowers: test/ must have the same class folders as train/"):
        DataConfig(source="imagefolder", path=folder.name, image_size=8)
