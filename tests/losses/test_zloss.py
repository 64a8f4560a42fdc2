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


def test_z_loss_std_eps_zero_is_the_papers_formula_and_the_default_is_kdflows_guard():
    """`std_eps=0`: the paper's z-score exactly (numpy, no eps); the default 1e-7 (kdflow's guard)
    moves it by ~1e-7 / std relative, and keeps a constant row finite (z = 0) where the paper's
    0 / 0 is NaN."""
    o, y = rand(6, 8, 17), labels(6, 8, 17)
    paper = z_loss(t64(o), torch.tensor(y), 0.5, 3.0, std_eps=0.0).item()
    assert paper == pytest.approx(np_z(o, y, 0.5, 3.0), rel=1e-13)
    default = z_loss(t64(o), torch.tensor(y), 0.5, 3.0).item()
    assert default == z_loss(t64(o), torch.tensor(y), 0.5, 3.0, std_eps=1e-7).item()
    assert default != paper and default == pytest.approx(paper, rel=1e-6)
    flat, y0 = torch.zeros(2, 4, dtype=torch.float64), torch.tensor([0, 1])
    assert z_loss(flat, y0, 1.0, 5.0).item() == pytest.approx(math.log1p(math.exp(5.0)))  # z_y = 0
    assert math.isnan(z_loss(flat, y0, 1.0, 5.0, std_eps=0.0).item())
    with pytest.raises(ValueError, match="std_eps must be a finite number >= 0"):
        z_loss(flat, y0, 1.0, 5.0, std_eps=-1e-7)
