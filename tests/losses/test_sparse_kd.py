"""kdlib.losses.sparse_kd: soft CE against the reconstructed top-K target (TinyViT)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kdlib.losses.sparse_kd import sparse_kd_loss
from tests.helpers.reference import np_log_softmax, np_softmax, rand, t64


def np_sparse_target(vals, idx, c):
    n, k = vals.shape
    p = np.zeros((n, c))
    for i in range(n):
        rest = max(1.0 - vals[i].sum(), 0.0)
        others = [j for j in range(c) if j not in set(idx[i].tolist())]
        for j in others:
            p[i, j] = rest / len(others)
        p[i, idx[i]] = vals[i]
    return p


def test_sparse_kd_hand():
    # C = 4, K = 2: p = (0.1, 0.5, 0.1, 0.3); s = 0 gives sum(p) * log 4
    vals, idx = t64([[0.5, 0.3]]), torch.tensor([[1, 3]])
    assert sparse_kd_loss(t64([[0.0] * 4]), vals, idx).item() == pytest.approx(math.log(4), rel=1e-12)
    s = np.array([[1.0, -1.0, 0.5, 2.0]])
    exp = -float(np.sum(np.array([0.1, 0.5, 0.1, 0.3]) * np_log_softmax(s)[0]))
    assert sparse_kd_loss(t64(s), vals, idx).item() == pytest.approx(exp, rel=1e-12)


def test_sparse_kd_matches_numpy_and_reconstruction_sums_to_one():
    n, c, k = 5, 10, 3
    tp = np_softmax(rand(n, c, 21))
    idx = np.argsort(-tp, axis=1)[:, :k]
    vals = np.take_along_axis(tp, idx, 1)
    s = rand(n, c, 22)
    p = np_sparse_target(vals, idx, c)
    np.testing.assert_allclose(p.sum(1), 1.0, rtol=1e-12)
    got = sparse_kd_loss(t64(s), t64(vals), torch.tensor(idx)).item()
    assert got == pytest.approx(-float(np.mean(np.sum(p * np_log_softmax(s), 1))), rel=1e-12)
    # recover the reconstruction used inside from the gradient at s = 0:
    # dL/ds = (sum(p) / C - p) / N  ->  p = sum(p)/C - N * grad, and L(0) = sum(p) log C
    z = torch.zeros(n, c, dtype=torch.float64, requires_grad=True)
    loss = sparse_kd_loss(z, t64(vals), torch.tensor(idx))
    assert loss.item() == pytest.approx(math.log(c), rel=1e-12)  # every row sums to 1
    (g,) = torch.autograd.grad(loss, z)
    np.testing.assert_allclose(1.0 / c - n * g.numpy(), p, atol=1e-12)


def test_sparse_kd_full_k_equals_soft_ce():
    n, c = 4, 6
    tp = np_softmax(rand(n, c, 23))
    perm = np.stack([np.random.default_rng(i).permutation(c) for i in range(n)])
    s = rand(n, c, 24)
    got = sparse_kd_loss(t64(s), t64(np.take_along_axis(tp, perm, 1)), torch.tensor(perm)).item()
    assert got == pytest.approx(-float(np.mean(np.sum(tp * np_log_softmax(s), 1))), rel=1e-12)


def test_sparse_kd_clamps_excess_mass():
    # fp16-style rounding: top-K sums above 1 -> other classes get 0, not negative
    s = np.array([[0.3, -0.2, 1.0, 0.0]])
    got = sparse_kd_loss(t64(s), t64([[0.6, 0.5]]), torch.tensor([[2, 0]])).item()
    ls = np_log_softmax(s)[0]
    assert got == pytest.approx(-(0.6 * ls[2] + 0.5 * ls[0]), rel=1e-12)
