"""kdlib.losses.sinkd: the Sinkhorn distance against a hand case, a numpy reference and the
SinKD code's formula; the soft cross-entropy KD term against the SinKD code's and Hinton's KD."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kdlib.losses.kd import kd_loss
from kdlib.losses.sinkd import sinkhorn_loss, soft_cross_entropy
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


# --------------------------------------------------------------------------- #
# the SinKD code's formulas (2018cx/SinKD loss.py), restated in torch, fp64
# --------------------------------------------------------------------------- #
def official_distill_kl(y_s, y_t, T):
    """loss.py:15-17 (DistillKL, classification): -sum p_t log p_s per row, batch mean, no T^2."""
    return -torch.sum(torch.softmax(y_t / T, dim=-1) * torch.log_softmax(y_s / T, dim=-1), dim=-1).mean()


def official_sinkhorn(y_s, y_t):
    """loss.py:119-138 (Sinkhorn.forward): T fixed at 2, cdist p=1, K = exp(-W / 0.1), 20 rounds of
    row- then column-normalisation in the linear domain, 0.001 * sum(P * W)."""
    p_s, p_t = torch.softmax(y_s / 2, dim=1), torch.softmax(y_t / 2, dim=1)
    W = torch.cdist(p_s, p_t, p=1)
    P = torch.exp(-W / 0.1)
    for _ in range(20):
        P = P / P.sum(dim=1, keepdim=True)
        P = P / P.sum(dim=0, keepdim=True)
    return 0.001 * torch.sum(P * W)


def value_and_grad(fn, s):
    s = s.clone().requires_grad_(True)
    value = fn(s)
    (grad,) = torch.autograd.grad(value, s)
    return value.detach(), grad


@pytest.mark.parametrize("T", [1.0, 2.0, 3.5])
def test_soft_cross_entropy_is_the_official_distill_kl(T):
    s, t = t64(rand(6, 5, 30, scale=3.0)), t64(rand(6, 5, 31, scale=3.0))
    got, got_grad = value_and_grad(lambda z: soft_cross_entropy(z, t, T), s)
    ref, ref_grad = value_and_grad(lambda z: official_distill_kl(z, t, T), s)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(got_grad, ref_grad, rtol=1e-12, atol=1e-14)
    # numpy, by the definition
    ps_log = np.log(np_softmax(s.numpy() / T))
    assert got.item() == pytest.approx(-np.mean(np.sum(np_softmax(t.numpy() / T) * ps_log, axis=1)), rel=1e-12)


@pytest.mark.parametrize("T", [1.0, 2.0, 4.0])
def test_soft_cross_entropy_is_kd_over_t2_plus_the_teachers_entropy(T):
    # kd_form soft_ce vs kl_t2: the same gradient divided by T^2, a value larger by H(p_t)
    s, t = t64(rand(5, 7, 32)), t64(rand(5, 7, 33))
    ce_value, ce_grad = value_and_grad(lambda z: soft_cross_entropy(z, t, T), s)
    kd_value, kd_grad = value_and_grad(lambda z: kd_loss(z, t, T), s)
    pt = np_softmax(t.numpy() / T)
    entropy = float(np.mean(-np.sum(pt * np.log(pt), axis=1)))
    assert ce_value.item() == pytest.approx(kd_value.item() / T**2 + entropy, rel=1e-12)
    torch.testing.assert_close(ce_grad, kd_grad / T**2, rtol=1e-12, atol=1e-14)


def test_soft_cross_entropy_gradcheck_and_teacher_is_constant():
    s = t64(rand(3, 4, 34)).requires_grad_(True)
    t = t64(rand(3, 4, 35)).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda z: soft_cross_entropy(z, t.detach(), 2.0), (s,))
    soft_cross_entropy(s, t, 2.0).backward()
    assert t.grad is None


def test_sinkhorn_times_0_001_at_t2_is_the_official_sinkhorn():
    s, t = t64(rand(8, 6, 36, scale=3.0)), t64(rand(8, 6, 37, scale=3.0))
    got, got_grad = value_and_grad(lambda z: 0.001 * sinkhorn_loss(z, t, 2.0, 0.1, 20), s)
    ref, ref_grad = value_and_grad(lambda z: official_sinkhorn(z, t), s)
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-15)
    torch.testing.assert_close(got_grad, ref_grad, rtol=1e-8, atol=1e-13)
