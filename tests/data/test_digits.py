"""The digits source: scikit-learn's 8x8 handwritten digits, split stratified and seeded."""

from __future__ import annotations

import torch

from kdlib.data.dataset import Dataset
from kdlib.data.sources.digits import load_digits
from tests.helpers.data import same_dataset


def test_digits_split(digits: Dataset) -> None:
    assert digits.x_train.shape[0] + digits.x_test.shape[0] == 1797
    assert digits.x_train.shape[1:] == (1, 8, 8) and digits.x_train.dtype == torch.uint8
    assert digits.y_train.dtype == torch.int64
    assert digits.num_classes == 10 and digits.num_channels == 1 and digits.image_size == 8
    assert torch.equal(digits.coarse_of_class, torch.arange(10))
    assert abs(digits.x_test.shape[0] - 0.2 * 1797) <= 1
    assert int(digits.x_train.max()) == 255 and int(digits.x_train.min()) == 0
    # Stratified: every class has ~20% of its samples in the test split.
    n_test = torch.bincount(digits.y_test, minlength=10).float()
    n_all = n_test + torch.bincount(digits.y_train, minlength=10).float()
    assert torch.all((n_test / n_all - 0.2).abs() < 0.02)
    assert len(digits.mean) == 1 and len(digits.std) == 1


def test_digits_deterministic_split(digits: Dataset) -> None:
    assert same_dataset(digits, load_digits(seed=0))
    other = load_digits(seed=1)
    assert not torch.equal(digits.y_test, other.y_test)


def test_digits_values_are_scaled_sklearn_pixels(digits: Dataset) -> None:
    from sklearn.datasets import load_digits as sk_load

    raw = torch.from_numpy(sk_load().images).double()
    allowed = torch.round(torch.arange(17, dtype=torch.float64) * 255 / 16).to(torch.uint8)
    assert torch.isin(digits.x_train.unique(), allowed).all()
    assert raw.shape[0] == 1797
