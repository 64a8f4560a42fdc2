"""kdlib.losses.binary_kl: BinaryKL and BinaryKLNorm against hand values, numpy fp64 and
their closed-form gradients."""
from __future__ import annotations

import math

import numpy as np
import pytest

from kdlib.losses.binary_kl import binary_kl_loss, binary_kl_norm_loss
from tests.helpers.reference import np_binary_kl, np_sigmoid, rand_case, tt

TEMPS = [1.0, 2.0, 4.0]


def np_binary_kl_norm_literal(s: np.ndarray, t: np.ndarray, T: float) -> float:
    """KL(Bernoulli(0.5) || Bernoulli(d)), d = sigmoid((s - t)/T), written literally."""
    d = np_sigmoid((s - t) / T)
    elem = 0.5 * np.log(0.5 / d) + 0.5 * np.log(0.5 / (1 - d))
    return T * T * float(np.mean(elem.sum(axis=1)))


@pytest.mark.parametrize("T", TEMPS)
def test_binary_kl_hand(T):
    # class 0: q = sigmoid(log 3) = 0.75, p = sigmoid(0) = 0.5 -> 0.1308120 (as above);
    # class 1: s == t -> 0.
    s = tt([[0.0, 1.5]])
    t = tt([[T * math.log(3.0), 1.5]])
    assert binary_kl_loss(s, t, T).item() == pytest.approx(T * T * 0.13081204, rel=1e-7)


@pytest.mark.parametrize("T", TEMPS)
def test_binary_kl_norm_hand(T):
    # s - t = 2T log 2 -> x = log 2, cosh x = (2 + 1/2)/2 = 1.25, log 1.25 = 0.22314355.
    # Literal: d = sigmoid(2 log 2) = 0.8; 0.5 log(0.5/0.8) + 0.5 log(0.5/0.2) = 0.5 log 1.5625.
    s = tt([[2 * T * math.log(2.0), 5.0]])
    t = tt([[0.0, 5.0]])
    assert binary_kl_norm_loss(s, t, T).item() == pytest.approx(T * T * 0.22314355, rel=1e-7)
    assert 0.5 * math.log(1.5625) == pytest.approx(0.22314355, abs=1e-8)


@pytest.mark.parametrize("T", TEMPS)
def test_binary_kl_matches_numpy_and_zero(T):
    s, t, _ = rand_case(seed=8)
    assert binary_kl_loss(tt(s), tt(t), T).item() == pytest.approx(np_binary_kl(s, t, T), rel=1e-10)
    assert binary_kl_loss(tt(s), tt(s), T).item() == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("T", TEMPS)
def test_binary_kl_gradient(T):
    s, t, _ = rand_case(seed=9)
    n = s.shape[0]
    st = tt(s, requires_grad=True)
    teacher = tt(t, requires_grad=True)
    binary_kl_loss(st, teacher, T).backward()
    expected = T * (np_sigmoid(s / T) - np_sigmoid(t / T)) / n
    np.testing.assert_allclose(st.grad.numpy(), expected, rtol=1e-10, atol=1e-14)
    assert teacher.grad is None  # teacher is a constant


@pytest.mark.parametrize("T", TEMPS)
def test_binary_kl_norm_matches_literal_bernoulli(T):
    s, t, _ = rand_case(seed=10, scale=2.0)  # moderate gaps: literal form is accurate
    out = binary_kl_norm_loss(tt(s), tt(t), T).item()
    assert out == pytest.approx(np_binary_kl_norm_literal(s, t, T), rel=1e-9)
    # and the log cosh identity, computed with numpy's cosh
    assert out == pytest.approx(T * T * float(np.mean(np.log(np.cosh((s - t) / (2 * T))).sum(1))), rel=1e-10)


@pytest.mark.parametrize("T", TEMPS)
def test_binary_kl_norm_zero_iff_equal(T):
    s, t, _ = rand_case(seed=11)
    assert binary_kl_norm_loss(tt(s), tt(s), T).item() == pytest.approx(0.0, abs=1e-12)
    assert binary_kl_norm_loss(tt(s), tt(t), T).item() > 1e-3
    # a single differing element is enough to make it positive
    s2 = s.copy()
    s2[2, 3] += 0.5
    assert binary_kl_norm_loss(tt(s2), tt(s), T).item() > 0.0


@pytest.mark.parametrize("T", TEMPS)
def test_binary_kl_norm_gradient(T):
    s, t, _ = rand_case(seed=12)
    n = s.shape[0]
    st = tt(s, requires_grad=True)
    teacher = tt(t, requires_grad=True)
    binary_kl_norm_loss(st, teacher, T).backward()
    expected = (T / 2) * np.tanh((s - t) / (2 * T)) / n
    np.testing.assert_allclose(st.grad.numpy(), expected, rtol=1e-10, atol=1e-14)
    assert teacher.grad is None


@pytest.mark.parametrize("T", TEMPS)
def test_binary_kl_norm_not_shift_invariant(T):
    s, _, _ = rand_case(n=3, c=4, seed=13)
    # s == t shifted by c = 1 everywhere: every element is log cosh(1 / (2T)), 12 elements, 3 rows.
    out = binary_kl_norm_loss(tt(s + 1.0), tt(s), T).item()
    assert out > 1e-3
    assert out == pytest.approx(T * T * 4 * math.log(math.cosh(1.0 / (2 * T))), rel=1e-10)


@pytest.mark.parametrize("T", TEMPS)
def test_binary_kl_norm_symmetric(T):
    s, t, _ = rand_case(seed=14)
    a = binary_kl_norm_loss(tt(s), tt(t), T).item()
    b = binary_kl_norm_loss(tt(t), tt(s), T).item()
    assert a == pytest.approx(b, rel=1e-12)
