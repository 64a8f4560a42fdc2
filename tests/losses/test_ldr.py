"""kdlib.losses.ldr: LDR-KL against hand values and a per-row numpy reference."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

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
