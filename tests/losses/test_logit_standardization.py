"""kdlib.losses.logit_standardization: the row z-score against hand values and numpy."""
from __future__ import annotations

import math

import numpy as np

from kdlib.losses.logit_standardization import logit_standardize
from tests.helpers.reference import rand, t64


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
