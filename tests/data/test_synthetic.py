"""The synthetic source: a CIFAR-100-shaped generated problem."""

from __future__ import annotations

import pytest
import torch

from kdlib.data.dataset import Dataset
from kdlib.data.sources.synthetic import make_synthetic
from tests.helpers.data import same_dataset


def test_synthetic_is_deterministic_per_seed(small: Dataset) -> None:
    again = make_synthetic(seed=0, num_train_per_class=6, num_test_per_class=3, image_size=8)
    other = make_synthetic(seed=1, num_train_per_class=6, num_test_per_class=3, image_size=8)
    assert same_dataset(small, again)
    assert not torch.equal(small.x_train, other.x_train)
    assert not torch.equal(small.y_train, other.y_train)


def test_synthetic_does_not_touch_global_rng() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    make_synthetic(seed=5, num_train_per_class=2, num_test_per_class=1, image_size=8)
    assert torch.equal(torch.rand(3), expected)


def test_synthetic_shapes_dtypes_and_balance(small: Dataset) -> None:
    assert small.x_train.shape == (600, 3, 8, 8) and small.x_train.dtype == torch.uint8
    assert small.x_test.shape == (300, 3, 8, 8) and small.x_test.dtype == torch.uint8
    assert small.y_train.dtype == torch.int64 and small.y_test.dtype == torch.int64
    assert small.num_classes == 100 and small.num_channels == 3 and small.image_size == 8
    assert torch.equal(torch.bincount(small.y_train, minlength=100), torch.full((100,), 6))
    assert torch.equal(torch.bincount(small.y_test, minlength=100), torch.full((100,), 3))
    # 20 superclasses of 5 fine classes each.
    assert small.coarse_of_class.dtype == torch.int64 and small.coarse_of_class.shape == (100,)
    assert torch.equal(torch.bincount(small.coarse_of_class), torch.full((20,), 5))
    # The train order is shuffled, not grouped by class.
    assert not torch.equal(small.y_train, small.y_train.sort().values)
    # Pixels use a good part of the uint8 range.
    assert int(small.x_train.min()) < 40 and int(small.x_train.max()) > 215


def test_synthetic_channel_stats_match_train_split(small: Dataset) -> None:
    x = small.x_train.double() / 255
    assert len(small.mean) == len(small.std) == 3
    assert torch.allclose(torch.tensor(small.mean, dtype=torch.float64), x.mean((0, 2, 3)))
    assert torch.allclose(torch.tensor(small.std, dtype=torch.float64), x.std((0, 2, 3)))


@pytest.mark.parametrize("size", [16, 32])
def test_synthetic_other_sizes(size: int) -> None:
    ds = make_synthetic(
        seed=0, num_train_per_class=2, num_test_per_class=1, image_size=size,
        num_classes=20, num_superclasses=4,
    )  # fmt: skip
    assert ds.x_train.shape == (40, 3, size, size) and ds.image_size == size
    assert torch.equal(torch.bincount(ds.coarse_of_class), torch.full((4,), 5))


def test_synthetic_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        make_synthetic(0, 2, 1, 8, num_classes=10, num_superclasses=3)
    with pytest.raises(ValueError):
        make_synthetic(0, 2, 1, 8, difficulty=-1.0)


def test_siblings_are_closer_than_other_classes() -> None:
    """Class-mean images of one superclass are nearer each other than across."""
    ds = make_synthetic(seed=3, num_train_per_class=20, num_test_per_class=0, image_size=8)
    x = ds.x_train.float().flatten(1) / 255
    means = torch.zeros(ds.num_classes, x.shape[1]).index_add_(0, ds.y_train, x) / 20
    dist = torch.cdist(means, means)
    same = ds.coarse_of_class[:, None] == ds.coarse_of_class[None, :]
    off_diag = ~torch.eye(ds.num_classes, dtype=torch.bool)
    within = dist[same & off_diag].mean()
    across = dist[~same].mean()
    assert within < 0.8 * across
    # ... and it holds class by class: each class's nearest other class is mostly a sibling.
    nearest = dist.masked_fill(~off_diag, float("inf")).argmin(1)
    hits = (ds.coarse_of_class[nearest] == ds.coarse_of_class).float().mean()
    assert hits > 0.7


def test_higher_difficulty_adds_within_class_spread() -> None:
    def spread(difficulty: float) -> float:
        ds = make_synthetic(0, 10, 0, 8, num_classes=20, num_superclasses=4, difficulty=difficulty)
        x = ds.x_train.float().flatten(1)
        means = torch.zeros(20, x.shape[1]).index_add_(0, ds.y_train, x) / 10
        return float((x - means[ds.y_train]).norm(dim=1).mean())

    assert spread(0.0) < spread(1.0) < spread(2.0)
