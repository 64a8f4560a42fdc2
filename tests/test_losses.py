"""Tests of kdlib.losses against independent formulas (hand values and numpy fp64)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kdlib.losses import (
    binary_kl_loss,
    binary_kl_norm_loss,
    cross_entropy,
    dkd_loss,
    kd_loss,
)

TEMPS = [1.0, 2.0, 4.0]


# --------------------------------------------------------------------------- #
# independent numpy fp64 references, written from the definitions
# --------------------------------------------------------------------------- #
def np_softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def np_log_softmax(z: np.ndarray) -> np.ndarray:
    m = z.max(axis=-1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=-1, keepdims=True))


def np_kd(s: np.ndarray, t: np.ndarray, T: float) -> float:
    lps, lpt = np_log_softmax(s / T), np_log_softmax(t / T)
    return T * T * float(np.mean(np.sum(np.exp(lpt) * (lpt - lps), axis=1)))


def np_tckd_nckd(s: np.ndarray, t: np.ndarray, y: np.ndarray, T: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-row TCKD and NCKD straight from the DKD definitions (probabilities, np.delete)."""
    tckd, nckd = [], []
    for i in range(s.shape[0]):
        ps, pt = np_softmax(s[i] / T), np_softmax(t[i] / T)
        bs = np.array([ps[y[i]], 1.0 - ps[y[i]]])
        bt = np.array([pt[y[i]], 1.0 - pt[y[i]]])
        tckd.append(np.sum(bt * np.log(bt / bs)))
        hs = np_softmax(np.delete(s[i], y[i]) / T)
        ht = np_softmax(np.delete(t[i], y[i]) / T)
        nckd.append(np.sum(ht * np.log(ht / hs)))
    return np.array(tckd), np.array(nckd)


def np_sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def np_binary_kl(s: np.ndarray, t: np.ndarray, T: float) -> float:
    q, p = np_sigmoid(t / T), np_sigmoid(s / T)
    elem = q * np.log(q / p) + (1 - q) * np.log((1 - q) / (1 - p))
    return T * T * float(np.mean(elem.sum(axis=1)))


def np_binary_kl_norm_literal(s: np.ndarray, t: np.ndarray, T: float) -> float:
    """KL(Bernoulli(0.5) || Bernoulli(d)), d = sigmoid((s - t)/T), written literally."""
    d = np_sigmoid((s - t) / T)
    elem = 0.5 * np.log(0.5 / d) + 0.5 * np.log(0.5 / (1 - d))
    return T * T * float(np.mean(elem.sum(axis=1)))


def rand_case(n: int = 5, c: int = 7, seed: int = 0, scale: float = 3.0):
    g = np.random.default_rng(seed)
    s = g.normal(size=(n, c)) * scale
    t = g.normal(size=(n, c)) * scale
    y = g.integers(0, c, size=n)
    return s, t, y


def tt(a, dtype=torch.float64, requires_grad=False) -> torch.Tensor:
    return torch.tensor(np.asarray(a), dtype=dtype, requires_grad=requires_grad)


# Uniform wrappers so one test can loop over every loss: f(student, teacher, target, T).
LOSSES = {
    "cross_entropy": lambda s, t, y, T: cross_entropy(s, y),
    "kd": lambda s, t, y, T: kd_loss(s, t, T),
    "binary_kl": lambda s, t, y, T: binary_kl_loss(s, t, T),
    "binary_kl_norm": lambda s, t, y, T: binary_kl_norm_loss(s, t, T),
    "dkd": lambda s, t, y, T: dkd_loss(s, t, y, 1.0, 8.0, T),
}
DISTILL = [k for k in LOSSES if k != "cross_entropy"]


# --------------------------------------------------------------------------- #
# hand-computed small cases
# --------------------------------------------------------------------------- #
def test_cross_entropy_hand():
    # -log(e^3 / (e^1 + e^2 + e^3)) = log(1 + e^-1 + e^-2) = log(1.5032147244) = 0.4076059644
    out = cross_entropy(tt([[1.0, 2.0, 3.0]]), torch.tensor([2]))
    assert out.item() == pytest.approx(0.4076059644, abs=1e-9)
    # two rows: mean of (0.4076059644, log(1 + e^1 + e^2) = 0.4076059644 + 2)
    out = cross_entropy(tt([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]]), torch.tensor([2, 0]))
    assert out.item() == pytest.approx(1.4076059644, abs=1e-9)


@pytest.mark.parametrize("T", TEMPS)
def test_kd_hand(T):
    # softmax(t/T) = [0.75, 0.25], softmax(s/T) = [0.5, 0.5]:
    # KL = 0.75 log 1.5 + 0.25 log 0.5 = 0.30409883 - 0.17328680 = 0.13081204
    s = tt([[0.0, 0.0]])
    t = tt([[T * math.log(3.0), 0.0]])
    assert kd_loss(s, t, T).item() == pytest.approx(T * T * 0.13081204, rel=1e-7)


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


# --------------------------------------------------------------------------- #
# KD
# --------------------------------------------------------------------------- #
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


# --------------------------------------------------------------------------- #
# DKD
# --------------------------------------------------------------------------- #
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


# --------------------------------------------------------------------------- #
# BinaryKL
# --------------------------------------------------------------------------- #
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


# --------------------------------------------------------------------------- #
# BinaryKLNorm
# --------------------------------------------------------------------------- #
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


# --------------------------------------------------------------------------- #
# all losses: gradcheck, extremes, low precision, dtypes, validation
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("name", list(LOSSES))
@pytest.mark.parametrize("T", TEMPS)
def test_gradcheck_fp64(name, T):
    s, t, y = rand_case(n=3, c=4, seed=15, scale=1.5)
    st = tt(s, requires_grad=True)
    teacher, yt = tt(t), torch.tensor(y)
    assert torch.autograd.gradcheck(lambda x: LOSSES[name](x, teacher, yt, T), (st,))


def extreme_case():
    """Logits at +-100 (and some 0 / mixed) so |logit / T| reaches 100 at T = 1."""
    s = np.array(
        [
            [100.0, -100.0, 0.0, 100.0],
            [-100.0, -100.0, 100.0, 50.0],
            [100.0, 100.0, 100.0, -100.0],
            [100.0, -100.0, -100.0, -100.0],  # student sure of the target, teacher sure it is not
        ]
    )
    t = np.array(
        [
            [-100.0, 100.0, 0.0, -100.0],
            [-100.0, 100.0, -100.0, 0.0],
            [100.0, -100.0, 99.0, -100.0],
            [-100.0, 100.0, -100.0, -100.0],
        ]
    )
    y = np.array([0, 1, 3, 0])
    return s, t, y


@pytest.mark.parametrize("name", list(LOSSES))
@pytest.mark.parametrize("T", TEMPS)
def test_extreme_logits_fp32_finite_and_match_fp64(name, T):
    s, t, y = extreme_case()
    yt = torch.tensor(y)
    out = {}
    for dt in (torch.float32, torch.float64):
        st = tt(s, dtype=dt, requires_grad=True)
        loss = LOSSES[name](st, tt(t, dtype=dt), yt, T)
        loss.backward()
        assert loss.dtype == dt
        assert torch.isfinite(loss)
        assert torch.isfinite(st.grad).all()
        out[dt] = (loss.item(), st.grad.double().numpy())
    v32, g32 = out[torch.float32]
    v64, g64 = out[torch.float64]
    assert v32 == pytest.approx(v64, rel=1e-5, abs=1e-4)
    np.testing.assert_allclose(g32, g64, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("T", TEMPS)
def test_extreme_reference_values(T):
    # Independent closed forms at the extremes (fp32 inputs).
    s, t, y = extreme_case()
    st = tt(s, dtype=torch.float32, requires_grad=True)
    binary_kl_loss(st, tt(t, dtype=torch.float32), T).backward()
    expected = T * (np_sigmoid(s / T) - np_sigmoid(t / T)) / s.shape[0]
    np.testing.assert_allclose(st.grad.numpy(), expected, rtol=1e-5, atol=1e-7)
    # BinaryKLNorm at large gaps: log cosh(x) = |x| - log 2 + log1p(exp(-2|x|)) (numpy, fp64)
    x = (s - t) / (2 * T)
    ref = T * T * float(np.mean((np.abs(x) - math.log(2) + np.log1p(np.exp(-2 * np.abs(x)))).sum(1)))
    out = binary_kl_norm_loss(tt(s, dtype=torch.float32), tt(t, dtype=torch.float32), T).item()
    assert out == pytest.approx(ref, rel=1e-6)
    # DKD: TCKD + NCKD from numpy fp64 log-space definitions (probabilities underflow at +-100)
    tck, nck = [], []
    for i in range(s.shape[0]):
        zs, zt = s[i] / T, t[i] / T
        ls, lt = np_log_softmax(zs), np_log_softmax(zt)
        lns = np_log_softmax(np.delete(zs, y[i]))
        lnt = np_log_softmax(np.delete(zt, y[i]))
        # log(1 - p_y) = logsumexp(non-target) - logsumexp(all)
        def lse(v):
            return v.max() + np.log(np.exp(v - v.max()).sum())

        l1s = lse(np.delete(zs, y[i])) - lse(zs)
        l1t = lse(np.delete(zt, y[i])) - lse(zt)
        tck.append(np.exp(lt[y[i]]) * (lt[y[i]] - ls[y[i]]) + np.exp(l1t) * (l1t - l1s))
        nck.append(np.sum(np.exp(lnt) * (lnt - lns)))
    ref = T * T * float(np.mean(np.array(tck) + 8.0 * np.array(nck)))
    out = dkd_loss(tt(s, dtype=torch.float32), tt(t, dtype=torch.float32), torch.tensor(y), 1.0, 8.0, T).item()
    assert out == pytest.approx(ref, rel=1e-5)
    # KD against numpy fp64
    assert kd_loss(tt(s, dtype=torch.float32), tt(t, dtype=torch.float32), T).item() == pytest.approx(
        np_kd(s, t, T), rel=1e-5
    )


@pytest.mark.parametrize("name", list(LOSSES))
@pytest.mark.parametrize("low", [torch.float16, torch.bfloat16])
def test_low_precision_inputs_return_fp32(name, low):
    s, t, y = rand_case(seed=16)
    yt = torch.tensor(y)
    s_low = tt(s, dtype=low, requires_grad=True)
    t_low = tt(t, dtype=low)
    T = 2.0
    loss = LOSSES[name](s_low, t_low, yt, T)
    assert loss.dtype == torch.float32
    assert torch.isfinite(loss)
    loss.backward()
    assert s_low.grad.dtype == low
    assert torch.isfinite(s_low.grad).all()
    # same (rounded) values computed in fp32
    ref = LOSSES[name](s_low.detach().float(), t_low.float(), yt, T)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6, abs=1e-6)
    # and close to the unrounded fp64 computation (input rounding only)
    ref64 = LOSSES[name](tt(s), tt(t), yt, T)
    assert loss.item() == pytest.approx(ref64.item(), rel=5e-2, abs=5e-2)


@pytest.mark.parametrize("name", list(LOSSES))
def test_fp64_stays_fp64_and_fp32_stays_fp32(name):
    s, t, y = rand_case(seed=17)
    yt = torch.tensor(y)
    assert LOSSES[name](tt(s), tt(t), yt, 2.0).dtype == torch.float64
    assert LOSSES[name](tt(s, torch.float32), tt(t, torch.float32), yt, 2.0).dtype == torch.float32
    assert LOSSES[name](tt(s, torch.float32), tt(t, torch.float32), yt, 2.0).dim() == 0


@pytest.mark.parametrize("name", DISTILL)
def test_teacher_receives_no_gradient(name):
    s, t, y = rand_case(seed=18)
    st = tt(s, requires_grad=True)
    teacher = tt(t, requires_grad=True)
    LOSSES[name](st, teacher, torch.tensor(y), 2.0).backward()
    assert teacher.grad is None
    assert st.grad is not None


# ---- validation ----
GOOD_S = torch.zeros(4, 5)
GOOD_T = torch.zeros(4, 5)
GOOD_Y = torch.zeros(4, dtype=torch.long)


@pytest.mark.parametrize("name", DISTILL)
@pytest.mark.parametrize(
    "s,t,match",
    [
        (torch.zeros(4), GOOD_T, "student"),
        (torch.zeros(4, 5, 1), GOOD_T, "student"),
        (GOOD_S, torch.zeros(4, 6), "teacher"),
        (GOOD_S, torch.zeros(3, 5), "teacher"),
        (GOOD_S, torch.zeros(20), "teacher"),
        (torch.zeros(4, 5, dtype=torch.long), GOOD_T, "student"),
        (torch.zeros(0, 5), torch.zeros(0, 5), "student"),
    ],
)
def test_bad_logit_shapes_raise(name, s, t, match):
    with pytest.raises(ValueError, match=match):
        LOSSES[name](s, t, GOOD_Y, 2.0)


@pytest.mark.parametrize("name", ["cross_entropy", "dkd"])
@pytest.mark.parametrize(
    "y",
    [
        torch.zeros(3, dtype=torch.long),
        torch.zeros(4, 1, dtype=torch.long),
        torch.zeros(4, dtype=torch.float32),
        torch.zeros(4, dtype=torch.bool),
    ],
)
def test_bad_target_raises(name, y):
    with pytest.raises(ValueError, match="target"):
        LOSSES[name](GOOD_S, GOOD_T, y, 2.0)


def test_cross_entropy_bad_logits_raise():
    with pytest.raises(ValueError, match="logits"):
        cross_entropy(torch.zeros(4), GOOD_Y)
    with pytest.raises(ValueError, match="logits"):
        cross_entropy(torch.zeros(4, 5, dtype=torch.long), GOOD_Y)


@pytest.mark.parametrize("name", DISTILL)
@pytest.mark.parametrize("T", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_temperature_raises(name, T):
    with pytest.raises(ValueError, match="temperature"):
        LOSSES[name](GOOD_S, GOOD_T, GOOD_Y, T)


def test_dkd_needs_two_classes():
    with pytest.raises(ValueError, match="student"):
        dkd_loss(torch.zeros(4, 1), torch.zeros(4, 1), GOOD_Y, 1.0, 8.0, 4.0)


def test_int32_target_accepted():
    s, t, y = rand_case(seed=19)
    y32 = torch.tensor(y, dtype=torch.int32)
    y64 = torch.tensor(y, dtype=torch.int64)
    assert cross_entropy(tt(s), y32).item() == pytest.approx(cross_entropy(tt(s), y64).item())
    assert dkd_loss(tt(s), tt(t), y32, 1.0, 8.0, 4.0).item() == pytest.approx(
        dkd_loss(tt(s), tt(t), y64, 1.0, 8.0, 4.0).item()
    )
