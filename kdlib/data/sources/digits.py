"""``digits``: scikit-learn's real 8x8 handwritten digits (bundled, no download)."""

from __future__ import annotations

import numpy as np
import torch

from kdlib.data.dataset import Dataset, channel_stats
from kdlib.data.sources.base import DataSettings, Source

CLASS_COUNTS = (178, 182, 177, 183, 181, 182, 181, 179, 174, 180)
"""Images per class of scikit-learn's digits (1797 in all): what ``check`` bounds
``data.train_per_class`` with before any data is read (a test checks them against sklearn)."""


def max_train_per_class(test_fraction: float) -> int:
    """The most training images every class is sure to have after the stratified split at
    ``test_fraction``, whatever the seed. scikit-learn holds out ``ceil(fraction * 1797)``
    images and gives class c at least ``floor(n_train * n_c / 1797)`` of the rest (its
    ``_approximate_mode``); one less where that quotient is whole, against float rounding."""
    total = sum(CLASS_COUNTS)
    n_train = total - int(np.ceil(test_fraction * total))
    return min((n_train * n - 1) // total for n in CLASS_COUNTS)


def stratified_subset(idx: np.ndarray, labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """``per_class`` samples of each class of ``idx`` (the first of a seeded shuffle per class),
    kept in ``idx``'s order. The shuffles depend on ``seed`` alone, so a smaller ``per_class``
    keeps a subset of a larger one's samples."""
    rng = np.random.default_rng([seed % 2**32, 1])  # its own stream: the split drew from RandomState(seed)
    keep = np.zeros(len(idx), dtype=bool)
    for c in range(int(labels.max()) + 1):
        where = np.flatnonzero(labels[idx] == c)
        if len(where) < per_class:
            raise ValueError(f"train_per_class {per_class}: class {c} has only {len(where)} training images")
        keep[rng.permutation(where)[:per_class]] = True
    return idx[keep]


def load_digits(seed: int, test_fraction: float = 0.2, train_per_class: int | None = None) -> Dataset:
    """scikit-learn's 1797 8x8 handwritten digits with a stratified, seeded split.

    Pixel values 0..16 are rescaled to 0..255 uint8. Digits have no superclass,
    so each class is its own (``coarse_of_class[k] == k``). ``train_per_class`` K keeps K
    images per class of the training split (``stratified_subset``, seeded by ``seed``); the
    test split is the same with or without it.
    """
    from sklearn.datasets import load_digits as _sk_load_digits
    from sklearn.model_selection import train_test_split

    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if train_per_class is not None and train_per_class < 1:
        raise ValueError(f"train_per_class must be >= 1, got {train_per_class}")
    bunch = _sk_load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    labels = bunch.target.astype(np.int64)
    idx_train, idx_test = train_test_split(
        np.arange(labels.shape[0]),
        test_size=test_fraction,
        stratify=labels,
        random_state=np.random.RandomState(seed % 2**32),
    )
    name = f"digits-s{seed}"
    if train_per_class is not None:
        idx_train = stratified_subset(idx_train, labels, train_per_class, seed)
        name += f"-k{train_per_class}"
    x = torch.from_numpy(images).unsqueeze(1)  # (N, 1, 8, 8)
    y = torch.from_numpy(labels)
    x_train = x[torch.from_numpy(idx_train)].contiguous()
    mean, std = channel_stats(x_train)
    return Dataset(
        x_train=x_train,
        y_train=y[torch.from_numpy(idx_train)].contiguous(),
        x_test=x[torch.from_numpy(idx_test)].contiguous(),
        y_test=y[torch.from_numpy(idx_test)].contiguous(),
        num_classes=10,
        coarse_of_class=torch.arange(10, dtype=torch.int64),
        mean=mean,
        std=std,
        name=name,
    )


class Digits(Source):
    """``load_digits`` with ``data.test_fraction`` held out and, with ``data.train_per_class``,
    a seeded stratified subset of the training split: 1x8x8 images, 10 classes."""

    name = "digits"

    @classmethod
    def check(cls, data: DataSettings) -> None:
        if data.train_per_class is not None and data.train_per_class > max_train_per_class(data.test_fraction):
            raise ValueError(
                f"data.train_per_class: {data.train_per_class} is more than the training split holds of every class "
                f"at test_fraction {data.test_fraction} (at most {max_train_per_class(data.test_fraction)}); "
                "leave it unset for the whole split"
            )

    @classmethod
    def input_shape(cls, data: DataSettings) -> tuple[int, int, int]:
        return 1, 8, 10

    @classmethod
    def build(cls, data: DataSettings) -> Dataset:
        return load_digits(data.seed, data.test_fraction, data.train_per_class)
