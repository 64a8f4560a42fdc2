"""The Dataset container: normalisation (to_float) and the dataset file (save/load)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kdlib.data.dataset import Dataset, load_dataset, save_dataset, to_float
from tests.helpers.data import same_dataset


def test_to_float_normalises_train_split(small: Dataset) -> None:
    x = to_float(small.x_train, small.mean, small.std)
    assert x.dtype == torch.float32 and x.shape == small.x_train.shape
    assert torch.allclose(x.mean((0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(x.std((0, 2, 3)), torch.ones(3), atol=1e-3)


def test_save_load_round_trip(tmp_path: Path, small: Dataset, digits: Dataset) -> None:
    for ds in (small, digits):
        path = tmp_path / "nested" / f"{ds.name}.pt"
        save_dataset(ds, path)
        back = load_dataset(path)
        assert same_dataset(ds, back) and back.name == ds.name
        assert isinstance(back.mean, tuple) and isinstance(back.std, tuple)
    # The atomic write leaves no temp files behind.
    assert sorted(p.name for p in (tmp_path / "nested").iterdir()) == sorted(
        f"{ds.name}.pt" for ds in (small, digits)
    )


def test_load_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.pt"
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_dataset(path)


def test_load_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.pt"
    path.write_bytes(b"this is not a torch file")
    with pytest.raises(ValueError, match="corrupt.pt"):
        load_dataset(path)


def test_load_wrong_content(tmp_path: Path, small: Dataset) -> None:
    path = tmp_path / "wrong.pt"
    torch.save({"x_train": torch.zeros(2)}, path)
    with pytest.raises(ValueError, match="wrong.pt"):
        load_dataset(path)
    # Right keys, wrong dtype.
    save_dataset(small, path)
    payload = torch.load(path, weights_only=True)
    payload["x_train"] = payload["x_train"].float()
    torch.save(payload, path)
    with pytest.raises(ValueError, match="wrong.pt"):
        load_dataset(path)
