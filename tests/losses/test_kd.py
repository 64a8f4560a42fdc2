"""kdlib.losses.kd: Hinton KD against hand values and numpy fp64."""
from __future__ import annotations

import math

import numpy as np
import pytest

from kdlib.losses.kd import kd_loss
from tests.helpers.reference import np_kd, rand_case, tt

TEMPS = [1.0, 2.0, 4.0]


@pytest.mark.parametrize("T", TEMPS)
def test_kd_hand(T):
    # softmax(t/T) = [0.75, 0.25], softmax(s/T) = [0.5, 0.5]:
    # KL = 0.75 log 1.5 + 0.25 log 0.5 = 0.30409883 - 0.17328680 = 0.13081204
    s = tt([[0.0, 0.0]])
    t = tt([[T * math.log(3.0), 0.0]])
    assert kd_loss(s, t, T).item() == pytest.approx(T * T * 0.13081204, rel=1e-7)


@pytest.mark.parametrize("T", TEMPS)
def test_kd_matches_numpy(T):
    s, t, _ = rand_case()
    assert kd_loss(tt(s), tt(t), T).item() == pytest.approx(np_kd(s, t, T), rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("T", TEMPS)
def test_kd_zero_iff_equal_up_to_row_shift(T):
    s, t, _ = rand_case(seed=1)
    shift = np.arange(5.0)[:, None] * 3.7 - 4.0
    assert kd_loss(tt(s), tt(s), T).item() == pytest.approx(0.0, abs=1e-12)
    assert kd_loss(tt(s), tt(s + shift), T).item() == pytest.approx(0.0, abs=1e-12)
    assert kd_loss(tt(s), tt(t), T).item() > 1e-3


@pytest.mark.parametrize("T", TEMPS)
def test_kd_shift_invariant(T):
    s, t, _ = rand_case(seed=2)
    a = np.linspace(-5, 5, 5)[:, None]
    b = np.linspace(7, -2, 5)[:, None]
    base = kd_loss(tt(s), tt(t), T).item()
    assert kd_loss(tt(s + a), tt(t + b), T).item() == pytest.approx(base, rel=1e-10)
