"""kdlib.losses.zloss: Z-loss against hand values, numpy, and its shift and scale invariance."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kdlib.losses.zloss import z_loss
from tests.helpers.reference import labels, rand, t64


def np_z(o, y, a, b):
    out = []
    for i in range(o.shape[0]):
        mu = o[i].mean()
        sd = np.sqrt(np.mean((o[i] - mu) ** 2))
        z = (o[i, y[i]] - mu) / sd
        out.append(np.log1p(np.exp(a * (b - z))) / a)
    return float(np.mean(out))


def test_z_loss_hand():
    o, y = t64([[1.0, 2.0, 3.0]]), torch.tensor([2])
    zy = 1 / math.sqrt(2 / 3)  # population std sqrt(2/3)
    assert z_loss(o, y, 1.0, 0.0).item() == pytest.approx(math.log1p(math.exp(-zy)), rel=1e-6)
    assert z_loss(o, y, 2.0, 1.0).item() == pytest.approx(math.log1p(math.exp(2 * (1 - zy))) / 2, rel=1e-6)


def test_z_loss_numpy_and_invariance():
    o, y = rand(6, 8, 17), labels(6, 8, 17)
    got = z_loss(t64(o), torch.tensor(y), 0.5, 3.0).item()
    assert got == pytest.approx(np_z(o, y, 0.5, 3.0), rel=1e-6)
    shift = np.random.default_rng(18).normal(size=(6, 1)) * 20
    scale = np.exp(np.random.default_rng(19).normal(size=(6, 1)))
    assert z_loss(t64(o * scale + shift), torch.tensor(y), 0.5, 3.0).item() == pytest.approx(got, rel=1e-6)
