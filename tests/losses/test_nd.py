"""kdlib.losses.nd: the ND feature loss (KD++ / DKD++) against hand computations, a numpy
reference and the spec's formula in Python floats; the teacher's feature enters through its norm."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kdlib.losses.nd import nd_loss, nd_loss_from_norms
from tests.helpers.reference import labels, rand, t64


def np_nd(es, et, mu, y):
    out = []
    for i in range(es.shape[0]):
        u = mu[y[i]] / np.linalg.norm(mu[y[i]])
        out.append(1 - es[i] @ u / max(np.linalg.norm(es[i]), np.linalg.norm(et[i])))
    return float(np.mean(out))


def nd_by_hand(e_s, mu, y, t_norm):
    """The spec's formula, one sample at a time in Python floats."""
    total = 0.0
    for row, label, tn in zip(e_s.tolist(), y.tolist(), t_norm.tolist()):
        m = mu[label].tolist()
        m_norm = math.sqrt(sum(v * v for v in m))
        s_norm = math.sqrt(sum(v * v for v in row))
        total += 1 - sum(a * b / m_norm for a, b in zip(row, m)) / max(s_norm, tn)
    return total / len(y)


def test_nd_hand():
    es = t64([[3.0, 4.0], [1.0, 0.0]])
    et = t64([[0.0, 10.0], [0.5, 0.0]])
    mu = t64([[1.0, 1.0], [0.0, 2.0]])
    y = torch.tensor([1, 0])
    # row 0: u = (0, 1), <e_s, u> = 4, max norm 10 -> 0.6; row 1: u = (1, 1)/sqrt2, max norm 1
    exp = (0.6 + (1 - 1 / math.sqrt(2))) / 2
    assert nd_loss(es, et, mu, y).item() == pytest.approx(exp, rel=1e-12)


def test_nd_matches_numpy():
    es, et, mu, y = rand(6, 4, 28), rand(6, 4, 29), rand(3, 4, 30), labels(6, 3, 28)
    got = nd_loss(t64(es), t64(et), t64(mu), torch.tensor(y)).item()
    assert got == pytest.approx(np_nd(es, et, mu, y), rel=1e-12)


def test_nd_from_norms_hand_computed():
    # sample 0: e_s = (3, 4), |e_s| = 5, u_y = (1, 0), |e_t| = 10 -> 1 - 3/10 = 0.7
    # sample 1: e_s = (0, 2), |e_s| = 2, u_y = (0, 1), |e_t| = 1  -> 1 - 2/2  = 0
    e_s = torch.tensor([[3.0, 4.0], [0.0, 2.0]])
    mu = torch.tensor([[2.0, 0.0], [0.0, 5.0]])
    y = torch.tensor([0, 1])
    got = nd_loss_from_norms(e_s, torch.tensor([10.0, 1.0]), mu, y)
    assert got.item() == pytest.approx(0.35, abs=1e-6)
    # the teacher's feature enters only through its norm: any direction of norm 10 / 1 gives the same loss
    e_t = torch.tensor([[6.0, -8.0], [0.0, 1.0]])
    assert nd_loss(e_s, e_t, mu, y).item() == pytest.approx(0.35, abs=1e-6)


def test_nd_from_norms_random_matches_formula_and_gradcheck():
    g = torch.Generator().manual_seed(0)
    e_s = torch.randn(5, 4, generator=g, dtype=torch.float64)
    mu = torch.randn(3, 4, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 2, 1, 1, 0])
    t_norm = torch.rand(5, generator=g, dtype=torch.float64) * 4
    got = nd_loss_from_norms(e_s, t_norm, mu, y).item()
    assert got == pytest.approx(nd_by_hand(e_s, mu, y, t_norm), rel=1e-12)
    x = e_s.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda z: nd_loss_from_norms(z, t_norm, mu, y), (x,))
    with pytest.raises(ValueError, match=r"teacher_norm must be a floating-point tensor of shape \(5,\)"):
        nd_loss_from_norms(e_s, t_norm[:4], mu, y)
