"""The conventions every loss keeps (kdlib/losses/__init__.py): fp64 gradcheck, finite values
and gradients at |logit| = 100, float32 results from fp16/bf16 inputs, a constant teacher,
and bad inputs named in the error.

Two tables: `TEMPERED`, the losses of (student, teacher, target, T), and `ONE_INPUT`,
every other family as a function of its one differentiable input.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kdlib.losses.binary_kl import binary_kl_loss, binary_kl_norm_loss
from kdlib.losses.ce import cross_entropy
from kdlib.losses.dist import dist_loss
from kdlib.losses.dkd import dkd_loss
from kdlib.losses.kd import kd_loss
from kdlib.losses.ldr import ldr_kl_loss
from kdlib.losses.logit_standardization import logit_standardize
from kdlib.losses.nd import nd_loss
from kdlib.losses.nkd import nkd_loss
from kdlib.losses.pld import pld_loss
from kdlib.losses.sinkd import sinkhorn_loss
from kdlib.losses.sparse_kd import sparse_kd_loss
from kdlib.losses.zloss import z_loss
from kdlib.mcmi import mcmi_regularizer
from tests.helpers.reference import np_kd, np_log_softmax, np_sigmoid, np_softmax, rand, rand_case, t64, tt

TEMPS = [1.0, 2.0, 4.0]

# Uniform wrappers so one test can loop over every loss: f(student, teacher, target, T).
TEMPERED = {
    "cross_entropy": lambda s, t, y, T: cross_entropy(s, y),
    "kd": lambda s, t, y, T: kd_loss(s, t, T),
    "binary_kl": lambda s, t, y, T: binary_kl_loss(s, t, T),
    "binary_kl_norm": lambda s, t, y, T: binary_kl_norm_loss(s, t, T),
    "dkd": lambda s, t, y, T: dkd_loss(s, t, y, 1.0, 8.0, T),
}
DISTILL = [k for k in TEMPERED if k != "cross_entropy"]


# --------------------------------------------------------------------------- #
# TEMPERED: gradcheck, extremes, low precision, dtypes, validation
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("name", list(TEMPERED))
@pytest.mark.parametrize("T", TEMPS)
def test_gradcheck_fp64(name, T):
    s, t, y = rand_case(n=3, c=4, seed=15, scale=1.5)
    st = tt(s, requires_grad=True)
    teacher, yt = tt(t), torch.tensor(y)
    assert torch.autograd.gradcheck(lambda x: TEMPERED[name](x, teacher, yt, T), (st,))


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


@pytest.mark.parametrize("name", list(TEMPERED))
@pytest.mark.parametrize("T", TEMPS)
def test_extreme_logits_fp32_finite_and_match_fp64(name, T):
    s, t, y = extreme_case()
    yt = torch.tensor(y)
    out = {}
    for dt in (torch.float32, torch.float64):
        st = tt(s, dtype=dt, requires_grad=True)
        loss = TEMPERED[name](st, tt(t, dtype=dt), yt, T)
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


@pytest.mark.parametrize("name", list(TEMPERED))
@pytest.mark.parametrize("low", [torch.float16, torch.bfloat16])
def test_low_precision_inputs_return_fp32(name, low):
    s, t, y = rand_case(seed=16)
    yt = torch.tensor(y)
    s_low = tt(s, dtype=low, requires_grad=True)
    t_low = tt(t, dtype=low)
    T = 2.0
    loss = TEMPERED[name](s_low, t_low, yt, T)
    assert loss.dtype == torch.float32
    assert torch.isfinite(loss)
    loss.backward()
    assert s_low.grad.dtype == low
    assert torch.isfinite(s_low.grad).all()
    # same (rounded) values computed in fp32
    ref = TEMPERED[name](s_low.detach().float(), t_low.float(), yt, T)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6, abs=1e-6)
    # and close to the unrounded fp64 computation (input rounding only)
    ref64 = TEMPERED[name](tt(s), tt(t), yt, T)
    assert loss.item() == pytest.approx(ref64.item(), rel=5e-2, abs=5e-2)


@pytest.mark.parametrize("name", list(TEMPERED))
def test_fp64_stays_fp64_and_fp32_stays_fp32(name):
    s, t, y = rand_case(seed=17)
    yt = torch.tensor(y)
    assert TEMPERED[name](tt(s), tt(t), yt, 2.0).dtype == torch.float64
    assert TEMPERED[name](tt(s, torch.float32), tt(t, torch.float32), yt, 2.0).dtype == torch.float32
    assert TEMPERED[name](tt(s, torch.float32), tt(t, torch.float32), yt, 2.0).dim() == 0


@pytest.mark.parametrize("name", DISTILL)
def test_teacher_receives_no_gradient(name):
    s, t, y = rand_case(seed=18)
    st = tt(s, requires_grad=True)
    teacher = tt(t, requires_grad=True)
    TEMPERED[name](st, teacher, torch.tensor(y), 2.0).backward()
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
        TEMPERED[name](s, t, GOOD_Y, 2.0)


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
        TEMPERED[name](GOOD_S, GOOD_T, y, 2.0)


@pytest.mark.parametrize("name", DISTILL)
@pytest.mark.parametrize("T", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_temperature_raises(name, T):
    with pytest.raises(ValueError, match="temperature"):
        TEMPERED[name](GOOD_S, GOOD_T, GOOD_Y, T)


def test_int32_target_accepted():
    s, t, y = rand_case(seed=19)
    y32 = torch.tensor(y, dtype=torch.int32)
    y64 = torch.tensor(y, dtype=torch.int64)
    assert cross_entropy(tt(s), y32).item() == pytest.approx(cross_entropy(tt(s), y64).item())
    assert dkd_loss(tt(s), tt(t), y32, 1.0, 8.0, 4.0).item() == pytest.approx(
        dkd_loss(tt(s), tt(t), y64, 1.0, 8.0, 4.0).item()
    )


# --------------------------------------------------------------------------- #
# ONE_INPUT: gradcheck, extremes, teacher detached, dtypes, validation
# --------------------------------------------------------------------------- #
_N, _C = 3, 4
_Y = torch.tensor([0, 3, 1])
_T = t64(rand(_N, _C, 40))
_MU = t64(rand(_C, _C, 41))
_Q = t64(np_softmax(rand(_C, _C, 42)))
_TOPV = t64([[0.5, 0.2], [0.7, 0.1], [0.4, 0.4]])
_TOPI = torch.tensor([[1, 2], [0, 3], [3, 1]])


# each: x -> loss, where x is the (N, C) differentiable input
ONE_INPUT = {
    "ls": lambda x, t: logit_standardize(x),
    "dist": lambda x, t: dist_loss(x, t, 2.0, 2.0, 4.0),
    "pld": lambda x, t: pld_loss(x, t, _Y.to(x.device), 4.0),
    "nkd": lambda x, t: nkd_loss(x, t, _Y, 3.0, 3.5),
    "z": lambda x, t: z_loss(x, _Y, 0.5, 2.0),
    "ldr_kl": lambda x, t: ldr_kl_loss(x, _Y, 10.0, 1.0),
    "sparse_kd": lambda x, t: sparse_kd_loss(x, _TOPV.to(x.dtype), _TOPI),
    "sinkhorn": lambda x, t: sinkhorn_loss(x, t, 2.0, 0.1, 20),
    "nd": lambda x, t: nd_loss(x, t, _MU.to(x.dtype), _Y),
    "mcmi": lambda x, t: mcmi_regularizer(x, _Y, _Q.to(x.dtype)),
}
TEACHER_LOSSES = ["dist", "pld", "nkd", "sinkhorn", "nd"]


@pytest.mark.parametrize("name", list(ONE_INPUT))
def test_gradcheck_fp64_one_input(name):
    x = t64(rand(_N, _C, 43)).requires_grad_()
    assert torch.autograd.gradcheck(lambda v: ONE_INPUT[name](v, _T), (x,))


@pytest.mark.parametrize("name", list(ONE_INPUT))
def test_extreme_logits_fp32_finite(name):
    rng = np.random.default_rng(44)
    x = torch.tensor(rng.choice([-100.0, 100.0], size=(_N, _C)) + rng.normal(size=(_N, _C)), dtype=torch.float32)
    x.requires_grad_()
    t = torch.tensor(rng.choice([-100.0, 100.0], size=(_N, _C)), dtype=torch.float32)
    out = ONE_INPUT[name](x, t)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    (g,) = torch.autograd.grad(out.sum(), x)
    assert torch.isfinite(g).all()
    # fp32 agrees with fp64 on the same inputs
    out64 = ONE_INPUT[name](x.detach().double(), t.double())
    np.testing.assert_allclose(out.detach().double().numpy(), out64.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["dist", "pld", "nkd", "ldr_kl", "sparse_kd", "sinkhorn", "mcmi"])
def test_all_zero_student_logits_finite(name):
    # a freshly initialised head can output a constant row: (centred) norms are 0 there
    x = torch.zeros(_N, _C, requires_grad=True)
    out = ONE_INPUT[name](x, _T.float())
    (g,) = torch.autograd.grad(out.sum(), x)
    assert torch.isfinite(out).all() and torch.isfinite(g).all()


@pytest.mark.parametrize("name", TEACHER_LOSSES)
def test_teacher_gets_no_gradient(name):
    x = t64(rand(_N, _C, 45)).requires_grad_()
    t = t64(rand(_N, _C, 46)).requires_grad_()
    ONE_INPUT[name](x, t).backward()
    assert t.grad is None and x.grad is not None


@pytest.mark.parametrize("name", list(ONE_INPUT))
@pytest.mark.parametrize("low", [torch.float16, torch.bfloat16])
def test_low_precision_one_input_returns_fp32(name, low):
    x = torch.tensor(rand(_N, _C, 47), dtype=low)
    out = ONE_INPUT[name](x, _T.to(low))
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_bad_shapes_raise():
    s, t, y = torch.zeros(3, 4), torch.zeros(3, 4), torch.tensor([0, 1, 2])
    cases = [
        (lambda: logit_standardize(torch.zeros(4)), "logits"),
        (lambda: logit_standardize(torch.zeros(3, 1)), "logits"),
        (lambda: dist_loss(s, torch.zeros(3, 5), 1, 1, 4), "teacher"),
        (lambda: dist_loss(s, t, 1, 1, 0.0), "temperature"),
        (lambda: pld_loss(s, t, torch.tensor([0, 1]), 4), "target"),
        (lambda: pld_loss(torch.zeros(3, 4, 1), t, y, 4), "student"),
        (lambda: nkd_loss(s, t, y.float(), 1, 1), "target"),
        (lambda: nkd_loss(torch.zeros(3, 1), torch.zeros(3, 1), y, 1, 1), "student"),
        (lambda: z_loss(s, torch.tensor([[0], [1], [2]]), 1, 1), "target"),
        (lambda: z_loss(s, y, 0.0, 1), "a"),
        (lambda: ldr_kl_loss(s, y, -1.0, 1), "lam"),
        (lambda: ldr_kl_loss(torch.zeros(3, 4, dtype=torch.long), y, 10, 1), "logits"),
        (lambda: sparse_kd_loss(s, torch.zeros(3, 5), torch.zeros(3, 5, dtype=torch.long)), "topk_probs"),
        (lambda: sparse_kd_loss(s, torch.zeros(2, 2), torch.zeros(2, 2, dtype=torch.long)), "topk_probs"),
        (lambda: sparse_kd_loss(s, torch.zeros(3, 2), torch.zeros(3, 3, dtype=torch.long)), "topk_indices"),
        (lambda: sparse_kd_loss(s, torch.zeros(3, 2), torch.zeros(3, 2)), "topk_indices"),
        (lambda: sinkhorn_loss(s, torch.zeros(4, 4), 2, 0.1, 20), "teacher"),
        (lambda: sinkhorn_loss(s, t, 2, 0.0, 20), "epsilon"),
        (lambda: sinkhorn_loss(s, t, 2, 0.1, 0), "iterations"),
        (lambda: nd_loss(s, torch.zeros(3, 5), torch.ones(4, 4), y), "teacher_feat"),
        (lambda: nd_loss(s, t, torch.ones(4, 5), y), "class_means"),
        (lambda: nd_loss(s, t, torch.ones(4, 4), torch.tensor([0, 1])), "target"),
        (lambda: mcmi_regularizer(s, y, torch.ones(4, 3)), "centroids"),
        (lambda: mcmi_regularizer(torch.zeros(3), y, torch.ones(4, 4)), "teacher_logits"),
    ]
    for fn, arg in cases:
        with pytest.raises(ValueError, match=arg):
            fn()
