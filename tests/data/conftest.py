"""Data sets shared by the data tests (built once per module)."""

from __future__ import annotations

import pytest

from kdlib.data.dataset import Dataset
from kdlib.data.sources.digits import load_digits
from kdlib.data.sources.synthetic import make_synthetic


@pytest.fixture(scope="module")
def small() -> Dataset:
    return make_synthetic(seed=0, num_train_per_class=6, num_test_per_class=3, image_size=8)


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_digits(seed=0)
