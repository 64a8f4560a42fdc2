"""The imagefolder source: root/{train,test}/<class>/*.{png,jpg,jpeg} as RGB images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

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
        (root / split / "c").mkdir(parents=True)
        Image.fromarray(np.stack([grad] * 3, axis=-1)).save(root / split / "c" / "g.png")
    ds = load_imagefolder(root, 8)
    expected = Image.fromarray(np.stack([grad] * 3, axis=-1)).resize(
        (8, 8), Image.Resampling.BILINEAR
    )
    assert torch.equal(ds.x_train[0], torch.from_numpy(np.array(expected)).permute(2, 0, 1))
    row = ds.x_train[0, 0, 0].tolist()
    assert row == sorted(row) and row[0] < 40 and row[-1] > 210


def test_imagefolder_errors(folder: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="root not found"):
        load_imagefolder(tmp_path / "nope", 8)
    with pytest.raises(ValueError, match="image_size"):
        load_imagefolder(folder, 0)

    (folder / "test" / "zinnia" / "t.jpeg").rename(folder / "t.jpeg")
    (folder / "test" / "zinnia").rmdir()
    (folder / "test" / "rose").mkdir()
    with pytest.raises(ValueError, match=r"extra in test: \['rose'\], missing from test: \['zinnia'\]"):
        load_imagefolder(folder, 8)
    (folder / "test" / "rose").rmdir()
    (folder / "test" / "zinnia").mkdir()
    with pytest.raises(ValueError, match=r"test/zinnia has no \.png"):
        load_imagefolder(folder, 8)  # empty class
    (folder / "t.jpeg").rename(folder / "test" / "zinnia" / "t.jpeg")
    load_imagefolder(folder, 8)  # restored: loads again

    bad = folder / "train" / "aster" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(ValueError, match="cannot read image .*broken.png"):
        load_imagefolder(folder, 8)
    bad.unlink()
    write_image(bad, (4, 4), (1, 1, 1), fmt="GIF")  # right suffix, wrong format
    with pytest.raises(ValueError, match="cannot read image .*broken.png"):
        load_imagefolder(folder, 8)
    bad.unlink()

    for child in sorted((folder / "test").rglob("*"), reverse=True):
        child.unlink() if child.is_file() else child.rmdir()
    (folder / "test").rmdir()
    with pytest.raises(FileNotFoundError, match="no test/ folder"):
        load_imagefolder(folder, 8)
