"""kdlib.losses.dkd: Decoupled KD against hand values and the numpy definitions."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kdlib.losses.dkd import dkd_loss
from tests.helpers.reference import np_kd, np_softmax, np_tckd_nckd, rand_case, tt

TEMPS = [1.0, 2.0, 4.0]
GOOD_Y = torch.zeros(4, dtype=torch.long)


@pytest.mark.parametrize("T", TEMPS)
@pytest.mark.parametrize("alpha,beta", [(1.0, 0.0), (0.0, 1.0), (1.0, 8.0), (0.5, 2.0)])
def test_dkd_hand(T, alpha, beta):
    # target 0; p_t = [0.5, 0.25, 0.25], p_s = [0.25, 0.25, 0.5]
    # b_t = [0.5, 0.5], b_s = [0.25, 0.75]: TCKD = 0.5 log 2 + 0.5 log(2/3) = 0.5 log(4/3) = 0.14384104
    # p_hat_t = [0.5, 0.5], p_hat_s = [1/3, 2/3]: NCKD = 0.5 log 1.5 + 0.5 log 0.75 = 0.5 log 1.125 = 0.05889152
    t = tt([[T * math.log(2.0), 0.0, 0.0]])
    s = tt([[0.0, 0.0, T * math.log(2.0)]])
    y = torch.tensor([0])
    expected = T * T * (alpha * 0.14384104 + beta * 0.05889152)
    assert dkd_loss(s, t, y, alpha, beta, T).item() == pytest.approx(expected, rel=1e-7)


@pytest.mark.parametrize("T", TEMPS)
@pytest.mark.parametrize("alpha,beta", [(1.0, 0.0), (0.0, 1.0), (1.0, 8.0)])
def test_dkd_matches_numpy_definitions(T, alpha, beta):
    s, t, y = rand_case(n=6, c=5, seed=3)
    tckd, nckd = np_tckd_nckd(s, t, y, T)
    expected = T * T * float(np.mean(alpha * tckd + beta * nckd))
    out = dkd_loss(tt(s), tt(t), torch.tensor(y), alpha, beta, T).item()
    assert out == pytest.approx(expected, rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("T", TEMPS)
def test_dkd_shift_invariant_per_row(T):
    s, t, y = rand_case(seed=4)
    a = np.linspace(-9, 3, 5)[:, None]
    b = np.linspace(4, -6, 5)[:, None]
    yt = torch.tensor(y)
    base = dkd_loss(tt(s), tt(t), yt, 1.0, 8.0, T).item()
    assert dkd_loss(tt(s + a), tt(t + b), yt, 1.0, 8.0, T).item() == pytest.approx(base, rel=1e-10)


@pytest.mark.parametrize("T", TEMPS)
def test_dkd_decomposition_reconstructs_kl(T):
    # DKD paper identity: KL(p_t || p_s) = TCKD + (1 - p_t_y) * NCKD, per row.
    # So for one row, dkd(alpha=1, beta=1 - p_t_y) == KL * T^2 (computed in numpy).
    s, t, y = rand_case(n=4, c=6, seed=5)
    for i in range(4):
        pty = np_softmax(t[i] / T)[y[i]]
        out = dkd_loss(tt(s[i : i + 1]), tt(t[i : i + 1]), torch.tensor(y[i : i + 1]), 1.0, 1.0 - pty, T)
        assert out.item() == pytest.approx(np_kd(s[i : i + 1], t[i : i + 1], T), rel=1e-10)


def test_dkd_zero_when_equal_and_two_classes():
    s, _, y = rand_case(seed=6)
    assert dkd_loss(tt(s), tt(s), torch.tensor(y), 1.0, 8.0, 4.0).item() == pytest.approx(0.0, abs=1e-12)
    # C = 2: the non-target softmax has one class, so NCKD = 0 and DKD(beta only) = 0.
    s2, t2, y2 = rand_case(c=2, seed=7)
    assert dkd_loss(tt(s2), tt(t2), torch.tensor(y2), 0.0, 1.0, 2.0).item() == pytest.approx(0.0, abs=1e-12)


def test_dkd_needs_two_classes():
    with pytest.raises(ValueError, match="student"):
        dkd_loss(torch.zeros(4, 1), torch.zeros(4, 1), GOOD_Y, 1.0, 8.0, 4.0)
