"""kdlib.losses.pld: Plackett-Luce distillation against hand values and a per-row numpy reference."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kdlib.losses.ce import cross_entropy
from kdlib.losses.pld import pld_loss
from tests.helpers.reference import labels, np_log_softmax, np_softmax, rand, t64


def np_lse(v: np.ndarray) -> float:
    m = v.max()
    return float(m + np.log(np.exp(v - m).sum()))


def np_pld(s, t, y, tau):
    total = 0.0
    for i in range(s.shape[0]):
        rest = [c for c in range(s.shape[1]) if c != y[i]]
        rest.sort(key=lambda c: (-t[i, c], c))  # teacher logit descending, ties by index
        pi = [int(y[i])] + rest
        a = np_softmax(t[i] / tau)
        for k in range(len(pi)):
            total += a[pi[k]] * (np_lse(s[i, pi[k:]]) - s[i, pi[k]])
    return total / s.shape[0]


def test_pld_hand():
    # uniform teacher, s = 0: a = 1/3, order (0, 1, 2): (log 3 + log 2 + 0) / 3
    z = t64([[0.0, 0.0, 0.0]])
    assert pld_loss(z, z, torch.tensor([0]), 1.0).item() == pytest.approx(math.log(6) / 3, rel=1e-12)
    # s = (2, 0, 1), t = (0, 1, 3), y = 0: order (0, 2, 1), s_pi = (2, 1, 0)
    s, t = t64([[2.0, 0.0, 1.0]]), t64([[0.0, 1.0, 3.0]])
    den = 1 + math.e + math.e**3
    a0, a2 = 1 / den, math.e**3 / den
    exp = a0 * math.log(1 + math.exp(-1) + math.exp(-2)) + a2 * math.log(1 + math.exp(-1))
    assert pld_loss(s, t, torch.tensor([0]), 1.0).item() == pytest.approx(exp, rel=1e-12)


@pytest.mark.parametrize("tau", [1.0, 4.0])
def test_pld_matches_numpy(tau):
    s, t, y = rand(6, 7, 9), rand(6, 7, 10), labels(6, 7, 9)
    got = pld_loss(t64(s), t64(t), torch.tensor(y), tau).item()
    assert got == pytest.approx(np_pld(s, t, y, tau), rel=1e-12)


def test_pld_shift_invariant():
    s, t, y = rand(6, 7, 11), rand(6, 7, 12), torch.tensor(labels(6, 7, 11))
    shift = np.random.default_rng(13).normal(size=(6, 1)) * 40
    a = pld_loss(t64(s), t64(t), y, 4.0).item()
    assert pld_loss(t64(s + shift), t64(t + shift), y, 4.0).item() == pytest.approx(a, rel=1e-10)


def test_pld_one_hot_teacher_is_ce():
    s, y = rand(6, 7, 14), labels(6, 7, 14)
    t = np.zeros((6, 7))
    t[np.arange(6), y] = 1000.0  # a = (1, 0, ..., 0) exactly at tau = 1
    got = pld_loss(t64(s), t64(t), torch.tensor(y), 1.0).item()
    ce = float(np.mean(-np_log_softmax(s)[np.arange(6), y]))
    assert got == pytest.approx(ce, rel=1e-12)
    assert got == pytest.approx(cross_entropy(t64(s), torch.tensor(y)).item(), rel=1e-12)
