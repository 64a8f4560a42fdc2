"""kdlib.losses.nkd: Normalized KD against hand values and a per-row numpy reference."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kdlib.losses.nkd import nkd_loss
from tests.helpers.reference import labels, np_log_softmax, np_softmax, rand, t64


def np_nkd(s, t, y, T, gamma):
    lt = ln = 0.0
    for i in range(s.shape[0]):
        t_y = np_softmax(t[i])[y[i]]
        lt += -t_y * np_log_softmax(s[i])[y[i]]
        sh = np_log_softmax(np.delete(s[i], y[i]) / T)
        th = np_softmax(np.delete(t[i], y[i]) / T)
        ln += -gamma * T * T * np.sum(th * sh)
    return (lt + ln) / s.shape[0]


def test_nkd_hand():
    z = t64([[0.0, 0.0, 0.0]])
    y = torch.tensor([0])
    # t_y = 1/3, log s_y = -log 3; T_hat = S_hat = (1/2, 1/2)
    assert nkd_loss(z, z, y, 1.0, 1.0).item() == pytest.approx(math.log(3) / 3 + math.log(2), rel=1e-12)
    assert nkd_loss(z, z, y, 2.0, 1.5).item() == pytest.approx(math.log(3) / 3 + 1.5 * 4 * math.log(2), rel=1e-12)


@pytest.mark.parametrize("T,gamma", [(1.0, 1.5), (3.0, 3.5)])
def test_nkd_matches_numpy(T, gamma):
    s, t, y = rand(6, 5, 15), rand(6, 5, 16), labels(6, 5, 15)
    got = nkd_loss(t64(s), t64(t), torch.tensor(y), T, gamma).item()
    assert got == pytest.approx(np_nkd(s, t, y, T, gamma), rel=1e-12)
