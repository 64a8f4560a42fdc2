"""``digits``: scikit-learn's real 8x8 handwritten digits (bundled, no download)."""

from __future__ import annotations

import numpy as np
import torch

from kdlib.data.dataset import Dataset, channel_stats
from kdlib.data.sources.base import DataSettings, Source

def load_digits(seed: int, test_fraction: float = 0.2) -> Dataset:
    """scikit-learn's 1797 8x8 handwritten digits with a stratified, seeded split.

    Pixel values 0..16 are rescaled to 0..255 uint8. Digits have no superclass,
    so each class is its own (``coarse_of_class[k] == k``).
    """
    from sklearn.datasets import load_digits as _sk_load_digits
    from sklearn.model_selection import train_test_split

    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    bunch = _sk_load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    labels = bunch.target.astype(np.int64)
    idx_train, idx_test = train_test_split(
        np.arange(labels.shape[0]),
        test_size=test_fraction,
        stratify=labels,
        random_state=np.random.RandomState(seed % 2**32),
    )
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
        name=f"digits-s{seed}",
    )


class Digits(Source):
    """``load_digits`` with ``data.test_fraction`` held out: 1x8x8 images, 10 classes."""

    name = "digits"

    @classmethod
    def input_shape(cls, data: DataSettings) -> tuple[int, int, int]:
        return 1, 8, 10

    @classmethod
    def build(cls, data: DataSettings) -> Dataset:
        return load_digits(data.seed, data.test_fraction)
