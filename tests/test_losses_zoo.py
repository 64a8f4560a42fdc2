"""Tests of the extra kdlib.losses methods (LS, DIST, PLD, NKD, Z-loss, LDR-KL,
sparse KD, SinKD, ND, MCMI) against independent formulas: hand-computed numbers
and numpy fp64 references written from the definitions in docs/methods.md."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kdlib.losses import (
    cross_entropy,
    dist_loss,
    ldr_kl_loss,
    logit_standardize,
    mcmi_regularizer,
    nd_loss,
    nkd_loss,
    pld_loss,
    sinkhorn_loss,
    sparse_kd_loss,
    z_loss,
)
from tests.test_losses import np_log_softmax, np_softmax


# independent numpy fp64 references: np_softmax / np_log_softmax are shared with test_losses


def np_lse(v: np.ndarray) -> float:
    m = v.max()
    return float(m + np.log(np.exp(v - m).sum()))


def np_pearson(a: np.ndarray, b: np.ndarray, eps: float = 1e-8) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (np.sqrt((a * a).sum()) * np.sqrt((b * b).sum()) + eps))


def np_dist(s, t, beta, gamma, tau):
    ys, yt = np_softmax(s / tau), np_softmax(t / tau)
    inter = 1 - np.mean([np_pearson(ys[i], yt[i]) for i in range(s.shape[0])])
    intra = 1 - np.mean([np_pearson(ys[:, c], yt[:, c]) for c in range(s.shape[1])])
    return tau**2 * (beta * inter + gamma * intra)


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


def np_nkd(s, t, y, T, gamma):
    lt = ln = 0.0
    for i in range(s.shape[0]):
        t_y = np_softmax(t[i])[y[i]]
        lt += -t_y * np_log_softmax(s[i])[y[i]]
        sh = np_log_softmax(np.delete(s[i], y[i]) / T)
        th = np_softmax(np.delete(t[i], y[i]) / T)
        ln += -gamma * T * T * np.sum(th * sh)
    return (lt + ln) / s.shape[0]


def np_z(o, y, a, b):
    out = []
    for i in range(o.shape[0]):
        mu = o[i].mean()
        sd = np.sqrt(np.mean((o[i] - mu) ** 2))
        z = (o[i, y[i]] - mu) / sd
        out.append(np.log1p(np.exp(a * (b - z))) / a)
    return float(np.mean(out))


def np_ldr(f, y, lam, delta):
    out = []
    for i in range(f.shape[0]):
        sp = np.log1p(np.exp(f[i]))
        ft = sp / sp.mean()
        marg = np.full(f.shape[1], delta)
        marg[y[i]] = 0.0
        out.append(lam * np.log(np.mean(np.exp((marg + ft - ft[y[i]]) / lam))))
    return float(np.mean(out))


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


def np_sinkhorn(s, t, T, eps, iters):
    ps, pt = np_softmax(s / T), np_softmax(t / T)
    n = s.shape[0]
    W = np.array([[np.abs(ps[i] - pt[j]).sum() for j in range(n)] for i in range(n)])
    P = np.exp(-W / eps)
    for _ in range(iters):
        P = P / P.sum(axis=1, keepdims=True)
        P = P / P.sum(axis=0, keepdims=True)
    return float((P * W).sum())


def np_nd(es, et, mu, y):
    out = []
    for i in range(es.shape[0]):
        u = mu[y[i]] / np.linalg.norm(mu[y[i]])
        out.append(1 - es[i] @ u / max(np.linalg.norm(es[i]), np.linalg.norm(et[i])))
    return float(np.mean(out))


def np_mcmi(z, y, Q):
    P = np_softmax(z)
    return float(np.mean([np.sum(P[i] * np.log(P[i] / Q[y[i]])) for i in range(z.shape[0])]))


def t64(a) -> torch.Tensor:
    return torch.tensor(np.asarray(a), dtype=torch.float64)


def rand(n, c, seed, scale=2.0):
    return np.random.default_rng(seed).normal(size=(n, c)) * scale


def labels(n, c, seed):
    return np.random.default_rng(seed + 1000).integers(0, c, size=n)


# --------------------------------------------------------------------------- #
# logit standardization
# --------------------------------------------------------------------------- #
def test_ls_hand():
    out = logit_standardize(t64([[1.0, 2.0, 3.0], [10.0, 10.0, 16.0]]))
    # row 1: mean 2, unbiased std 1; row 2: mean 12, unbiased std sqrt(12)
    r = math.sqrt(12.0)
    exp = [[-1.0, 0.0, 1.0], [-2 / r, -2 / r, 4 / r]]
    np.testing.assert_allclose(out.numpy(), exp, rtol=1e-6)


def test_ls_matches_numpy_unbiased_std():
    z = rand(5, 7, 0)
    exp = (z - z.mean(1, keepdims=True)) / (z.std(1, ddof=1, keepdims=True) + 1e-7)
    np.testing.assert_allclose(logit_standardize(t64(z)).numpy(), exp, rtol=1e-12)


def test_ls_invariances_and_moments():
    z = rand(6, 10, 1)
    shift = np.random.default_rng(2).normal(size=(6, 1)) * 50
    scale = np.exp(np.random.default_rng(3).normal(size=(6, 1)))
    base = logit_standardize(t64(z)).numpy()
    np.testing.assert_allclose(logit_standardize(t64(z + shift)).numpy(), base, atol=1e-9)
    # exact up to the 1e-7 added to std (relative error ~1e-7 / (scale * std))
    np.testing.assert_allclose(logit_standardize(t64(z * scale)).numpy(), base, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(base.mean(1), 0.0, atol=1e-12)
    np.testing.assert_allclose(base.std(1, ddof=1), 1.0, atol=1e-6)


# --------------------------------------------------------------------------- #
# DIST
# --------------------------------------------------------------------------- #
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


# --------------------------------------------------------------------------- #
# PLD
# --------------------------------------------------------------------------- #
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


# --------------------------------------------------------------------------- #
# NKD
# --------------------------------------------------------------------------- #
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


# --------------------------------------------------------------------------- #
# Z-loss and LDR-KL
# --------------------------------------------------------------------------- #
def test_z_loss_hand():
    o, y = t64([[1.0, 2.0, 3.0]]), torch.tensor([2])
    zy = 1 / math.sqrt(2 / 3)  # population std sqrt(2/3)
    assert z_loss(o, y, 1.0, 0.0).item() == pytest.approx(math.log1p(math.exp(-zy)), rel=1e-6)
    assert z_loss(o, y, 2.0, 1.0).item() == pytest.approx(math.log1p(math.exp(2 * (1 - zy))) / 2, rel=1e-6)


def test_z_loss_numpy_and_invariance():
    o, y = rand(6, 8, 17), labels(6, 8, 17)
    got = z_loss(t64(o), torch.tensor(y), 0.5, 3.0).item()
    assert got == pytest.approx(np_z(o, y, 0.5, 3.0), rel=1e-6)
    shift = np.random.default_rng(18).normal(size=(6, 1)) * 20
    scale = np.exp(np.random.default_rng(19).normal(size=(6, 1)))
    assert z_loss(t64(o * scale + shift), torch.tensor(y), 0.5, 3.0).item() == pytest.approx(got, rel=1e-6)


def test_ldr_kl_hand():
    f, y = t64([[0.0, 0.0]]), torch.tensor([0])
    # f~ = (1, 1): L = lam * log((1 + e^{delta/lam}) / 2)
    assert ldr_kl_loss(f, y, 10.0, 1.0).item() == pytest.approx(10 * math.log((1 + math.exp(0.1)) / 2), rel=1e-12)
    assert ldr_kl_loss(f, y, 2.0, 0.0).item() == pytest.approx(0.0, abs=1e-15)


@pytest.mark.parametrize("lam,delta", [(10.0, 1.0), (1.0, 0.5)])
def test_ldr_kl_matches_numpy(lam, delta):
    f, y = rand(6, 8, 20), labels(6, 8, 20)
    got = ldr_kl_loss(t64(f), torch.tensor(y), lam, delta).item()
    assert got == pytest.approx(np_ldr(f, y, lam, delta), rel=1e-12)


# --------------------------------------------------------------------------- #
# TinyViT sparse KD
# --------------------------------------------------------------------------- #
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


# --------------------------------------------------------------------------- #
# SinKD
# --------------------------------------------------------------------------- #
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
# ND and MCMI
# --------------------------------------------------------------------------- #
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


def test_mcmi_hand_and_numpy():
    Q = np.array([[0.25, 0.75], [0.6, 0.4]])
    got = mcmi_regularizer(t64([[0.0, 0.0]]), torch.tensor([0]), t64(Q)).item()
    assert got == pytest.approx(0.5 * math.log(2) + 0.5 * math.log(2 / 3), rel=1e-12)
    z, y = rand(8, 4, 31), labels(8, 4, 31)
    Qr = np_softmax(rand(4, 4, 32))
    got = mcmi_regularizer(t64(z), torch.tensor(y), t64(Qr)).item()
    assert got == pytest.approx(np_mcmi(z, y, Qr), rel=1e-12)
    # the centroid of class c is the mean teacher softmax over class c
    P = np_softmax(z)
    Qc = np.stack([P[y == c].mean(0) if (y == c).any() else np.full(4, 0.25) for c in range(4)])
    assert mcmi_regularizer(t64(z), torch.tensor(y), t64(Qc)).item() == pytest.approx(np_mcmi(z, y, Qc), rel=1e-12)


# --------------------------------------------------------------------------- #
# all: gradcheck, extremes, teacher detached, dtypes, validation
# --------------------------------------------------------------------------- #
_N, _C = 3, 4
_Y = torch.tensor([0, 3, 1])
_T = t64(rand(_N, _C, 40))
_MU = t64(rand(_C, _C, 41))
_Q = t64(np_softmax(rand(_C, _C, 42)))
_TOPV = t64([[0.5, 0.2], [0.7, 0.1], [0.4, 0.4]])
_TOPI = torch.tensor([[1, 2], [0, 3], [3, 1]])

# each: x -> loss, where x is the (N, C) differentiable input
ZOO = {
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


@pytest.mark.parametrize("name", list(ZOO))
def test_gradcheck_fp64(name):
    x = t64(rand(_N, _C, 43)).requires_grad_()
    assert torch.autograd.gradcheck(lambda v: ZOO[name](v, _T), (x,))


@pytest.mark.parametrize("name", list(ZOO))
def test_extreme_logits_fp32_finite(name):
    rng = np.random.default_rng(44)
    x = torch.tensor(rng.choice([-100.0, 100.0], size=(_N, _C)) + rng.normal(size=(_N, _C)), dtype=torch.float32)
    x.requires_grad_()
    t = torch.tensor(rng.choice([-100.0, 100.0], size=(_N, _C)), dtype=torch.float32)
    out = ZOO[name](x, t)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    (g,) = torch.autograd.grad(out.sum(), x)
    assert torch.isfinite(g).all()
    # fp32 agrees with fp64 on the same inputs
    out64 = ZOO[name](x.detach().double(), t.double())
    np.testing.assert_allclose(out.detach().double().numpy(), out64.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["dist", "pld", "nkd", "ldr_kl", "sparse_kd", "sinkhorn", "mcmi"])
def test_all_zero_student_logits_finite(name):
    # a freshly initialised head can output a constant row: (centred) norms are 0 there
    x = torch.zeros(_N, _C, requires_grad=True)
    out = ZOO[name](x, _T.float())
    (g,) = torch.autograd.grad(out.sum(), x)
    assert torch.isfinite(out).all() and torch.isfinite(g).all()


@pytest.mark.parametrize("name", TEACHER_LOSSES)
def test_teacher_gets_no_gradient(name):
    x = t64(rand(_N, _C, 45)).requires_grad_()
    t = t64(rand(_N, _C, 46)).requires_grad_()
    ZOO[name](x, t).backward()
    assert t.grad is None and x.grad is not None


@pytest.mark.parametrize("name", list(ZOO))
@pytest.mark.parametrize("low", [torch.float16, torch.bfloat16])
def test_low_precision_inputs_return_fp32(name, low):
    x = torch.tensor(rand(_N, _C, 47), dtype=low)
    out = ZOO[name](x, _T.to(low))
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
