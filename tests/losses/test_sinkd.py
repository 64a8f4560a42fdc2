"""kdlib.losses.sinkd: the Sinkhorn distance against a hand case and a numpy reference."""
from __future__ import annotations

import math

import numpy as np
import pytest

from kdlib.losses.sinkd import sinkhorn_loss
from tests.helpers.reference import np_softmax, rand, t64


def np_sinkhorn(s, t, T, eps, iters):
    ps, pt = np_softmax(s / T), np_softmax(t / T)
    n = s.shape[0]
    W = np.array([[np.abs(ps[i] - pt[j]).sum() for j in range(n)] for i in range(n)])
    P = np.exp(-W / eps)
    for _ in range(iters):
        P = P / P.sum(axis=1, keepdims=True)
        P = P / P.sum(axis=0, keepdims=True)
    return float((P * W).sum())


def test_sinkhorn_hand_single_sample():
    # N = 1: P = [[1]], L = W = ||(0.5, 0.5) - (0.25, 0.75)||_1 = 0.5
    s, t = t64([[0.0, 0.0]]), t64([[0.0, math.log(3)]])
    assert sinkhorn_loss(s, t, 1.0, 0.1, 20).item() == pytest.approx(0.5, rel=1e-12)


@pytest.mark.parametrize("T,eps,iters", [(2.0, 0.1, 20), (1.0, 0.5, 5)])
def test_sinkhorn_matches_numpy(T, eps, iters):
    s, t = rand(6, 5, 25), rand(6, 5, 26)
    got = sinkhorn_loss(t64(s), t64(t), T, eps, iters).item()
    assert got == pytest.approx(np_sinkhorn(s, t, T, eps, iters), rel=1e-10)


def test_sinkhorn_minimal_when_equal():
    s = rand(6, 5, 27, scale=4.0)
    same = sinkhorn_loss(t64(s), t64(s), 2.0, 0.1, 20).item()
    assert same == pytest.approx(np_sinkhorn(s, s, 2.0, 0.1, 20), rel=1e-10)
    assert same < 0.05
    for seed in range(3):
        other = s + np.random.default_rng(100 + seed).normal(size=s.shape)
        assert sinkhorn_loss(t64(other), t64(s), 2.0, 0.1, 20).item() > same
