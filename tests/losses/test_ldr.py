"""kdlib.losses.ldr: LDR-KL against hand values, a per-row numpy reference and the LDR code's
`LDRLoss_V1`."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kdlib.losses.ldr import ldr_kl_loss
from tests.helpers.reference import labels, rand, t64


def np_ldr(f, y, lam, delta):
    out = []
    for i in range(f.shape[0]):
        sp = np.log1p(np.exp(f[i]))
        ft = sp / sp.mean()
        marg = np.full(f.shape[1], delta)
        marg[y[i]] = 0.0
        out.append(lam * np.log(np.mean(np.exp((marg + ft - ft[y[i]]) / lam))))
    return float(np.mean(out))


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


def official_ldr_loss_v1(y_pred, y_true, threshold, Lambda):
    """DixianZhu/LDR loss.py:10-12,179-190 (LDRLoss_V1.forward) restated: y_true one-hot (as
    experiment.py:227 passes it), max-shifted log-mean-exp."""
    y_pred = F.softplus(y_pred)
    y_pred = y_pred / torch.mean(y_pred, dim=1, keepdim=True)
    diff = threshold * (1 - y_true) + (y_pred - torch.sum(y_pred * y_true, dim=1, keepdim=True))
    diff = diff / Lambda
    max_diff = torch.max(diff, dim=1, keepdim=True).values.detach()
    return (Lambda * (torch.log(torch.mean(torch.exp(diff - max_diff), dim=1, keepdim=True)) + max_diff)).mean()


@pytest.mark.parametrize("lam,delta", [(10.0, 0.1), (1.0, 0.1), (0.1, 0.1), (10.0, 2.0)])
def test_ldr_kl_is_the_official_ldr_loss_v1(lam, delta):
    f = t64(rand(7, 9, 21, scale=3.0)).requires_grad_(True)
    y = torch.from_numpy(labels(7, 9, 21))
    got = ldr_kl_loss(f, y, lam, delta)
    ref = official_ldr_loss_v1(f, F.one_hot(y, 9).double(), delta, lam)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-14)
    (g_got,) = torch.autograd.grad(got, f)
    (g_ref,) = torch.autograd.grad(ref, f)
    torch.testing.assert_close(g_got, g_ref, rtol=1e-11, atol=1e-14)
