"""kdlib.losses.dist: DIST against a hand case, numpy's corrcoef and a numpy reference."""
from __future__ import annotations

import numpy as np
import pytest

from kdlib.losses.dist import dist_loss
from tests.helpers.reference import np_softmax, rand, t64


def np_pearson(a: np.ndarray, b: np.ndarray, eps: float = 1e-8) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (np.sqrt((a * a).sum()) * np.sqrt((b * b).sum()) + eps))


def np_dist(s, t, beta, gamma, tau):
    ys, yt = np_softmax(s / tau), np_softmax(t / tau)
    inter = 1 - np.mean([np_pearson(ys[i], yt[i]) for i in range(s.shape[0])])
    intra = 1 - np.mean([np_pearson(ys[:, c], yt[:, c]) for c in range(s.shape[1])])
    return tau**2 * (beta * inter + gamma * intra)


def test_dist_hand():
    # C = 2, N = 2, opposite predictions: every row and every column correlates -1
    s = t64([[1.0, 0.0], [0.0, 1.0]])
    t = t64([[0.0, 1.0], [1.0, 0.0]])
    # tau = 1: inter = 1 - (-1) = 2, intra = 2 -> 1 * (1 * 2 + 0.5 * 2) = 3
    assert dist_loss(s, t, 1.0, 0.5, 1.0).item() == pytest.approx(3.0, abs=1e-6)
    # tau = 2 multiplies by 4 (correlations are still -1)
    assert dist_loss(s, t, 1.0, 0.5, 2.0).item() == pytest.approx(12.0, abs=1e-5)


@pytest.mark.parametrize("tau", [1.0, 4.0])
def test_dist_matches_numpy_and_corrcoef(tau):
    s, t = rand(8, 6, 4), rand(8, 6, 5)
    got = dist_loss(t64(s), t64(t), 2.0, 2.0, tau).item()
    assert got == pytest.approx(np_dist(s, t, 2.0, 2.0, tau), rel=1e-12)
    ys, yt = np_softmax(s / tau), np_softmax(t / tau)
    inter = 1 - np.mean([np.corrcoef(ys[i], yt[i])[0, 1] for i in range(8)])
    intra = 1 - np.mean([np.corrcoef(ys[:, c], yt[:, c])[0, 1] for c in range(6)])
    assert got == pytest.approx(tau**2 * 2 * (inter + intra), rel=1e-4, abs=1e-6)


def test_dist_zero_when_equal_and_shift_invariant():
    s, t = rand(8, 6, 6, scale=3.0), rand(8, 6, 7)
    # not exactly 0: the +1e-8 in pearson's denominator leaves ~tau^2 * 1e-8 / ||centred y||^2
    same = dist_loss(t64(s), t64(s), 2.0, 2.0, 4.0).item()
    assert 0.0 <= same < 1e-4
    assert same == pytest.approx(np_dist(s, s, 2.0, 2.0, 4.0), rel=1e-9)
    shift = np.random.default_rng(8).normal(size=(8, 1)) * 30
    a = dist_loss(t64(s), t64(t), 2.0, 2.0, 4.0).item()
    b = dist_loss(t64(s + shift), t64(t - shift), 2.0, 2.0, 4.0).item()
    assert b == pytest.approx(a, rel=1e-10)
    assert a > 1e-3
