"""The digits source: scikit-learn's 8x8 handwritten digits, split stratified and seeded."""

from __future__ import annotations

import pytest
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


def test_train_per_class_is_a_seeded_stratified_subset_of_the_training_split(digits: Dataset) -> None:
    sub = load_digits(seed=0, train_per_class=12)
    assert torch.equal(torch.bincount(sub.y_train, minlength=10), torch.full((10,), 12))
    # the test split is the one without a subset, image for image
    assert torch.equal(sub.x_test, digits.x_test) and torch.equal(sub.y_test, digits.y_test)
    # a subsequence of the full training split, in its order
    full = [bytes(x.numpy()) + bytes([int(y)]) for x, y in zip(digits.x_train, digits.y_train)]
    kept = [bytes(x.numpy()) + bytes([int(y)]) for x, y in zip(sub.x_train, sub.y_train)]
    it = iter(full)
    assert all(k in it for k in kept)
    assert sub.name == "digits-s0-k12" and digits.name == "digits-s0"
    assert (sub.mean, sub.std) != (digits.mean, digits.std)  # normalised by the subset it trains on
    # deterministic, seeded, nested: K=5 keeps images of K=12 under the same seed
    assert same_dataset(sub, load_digits(seed=0, train_per_class=12))
    assert not torch.equal(load_digits(seed=1, train_per_class=12).x_train, sub.x_train)
    small = [bytes(x.numpy()) for x in load_digits(seed=0, train_per_class=5).x_train]
    assert set(small) <= {bytes(x.numpy()) for x in sub.x_train}


def test_train_per_class_is_bounded_at_validation() -> None:
    from sklearn.datasets import load_digits as sk_load

    from kdlib.config import ConfigError, DataConfig, parse_config
    from kdlib.data.sources.base import source_class
    from kdlib.data.sources.digits import CLASS_COUNTS, max_train_per_class
    from tests.helpers.data import study_with_data

    assert tuple(torch.bincount(torch.from_numpy(sk_load().target)).tolist()) == CLASS_COUNTS
    for fraction, seed in ((0.2, 0), (0.2, 3), (0.5, 1), (0.9, 2)):  # the bound never exceeds a real split
        most = max_train_per_class(fraction)
        ds = load_digits(seed, fraction, most)
        assert torch.equal(torch.bincount(ds.y_train, minlength=10), torch.full((10,), most))
    assert max_train_per_class(0.2) == 139
    data = DataConfig(source="digits", train_per_class=20)
    assert data.train_per_class == 20 and DataConfig(source="digits").train_per_class is None
    assert same_dataset(source_class("digits").build(data), load_digits(0, 0.2, 20))
    with pytest.raises(ConfigError, match=r"data\.train_per_class: 140 is more than .*\(at most 139\)"):
        parse_config(study_with_data(source="digits", train_per_class=140))
    # synthetic resolves an unset count to its 40 at validation
    assert DataConfig(source="synthetic").train_per_class == 40 == DataConfig().train_per_class
