"""kdlib.kernels.binary_kl against kdlib.losses.binary_kl and the closed-form gradients."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from kdlib.kernels import binary_kl as kernel
from kdlib.losses import binary_kl as reference
from tests.helpers.kernels import CLASSES, FP, ROWS, TEMPS, assert_matches, logits, value_and_grad
from tests.helpers.reference import np_binary_kl

# the interpreter runs on numpy, which warns about values computed in masked lanes
# (-inf - -inf) or in the branch a tl.where discards (exp overflow in sigmoid)
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning:triton.runtime.interpreter")


@pytest.mark.parametrize("name", ["binary_kl_loss", "binary_kl_norm_loss"])
@pytest.mark.parametrize("c", CLASSES)
@pytest.mark.parametrize("temperature", TEMPS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_binary_kl_matches_reference(name, c, temperature, dtype):
    s, t = logits(ROWS, c, 13, dtype=dtype), logits(ROWS, c, 14, dtype=dtype)
    assert_matches(getattr(kernel, name), getattr(reference, name), s, t, temperature, **FP[dtype])


def test_binary_kl_independent_formulas():
    """BinaryKL: numpy value, gradient T/N (sigmoid(s/T) - sigmoid(t/T)); Norm: T^2 mean sum log cosh, T/2N tanh."""
    T, c = 2.0, 1000
    s, t = logits(ROWS, c, 15), logits(ROWS, c, 16)
    sn, tn = s.double().cpu().numpy(), t.double().cpu().numpy()
    v, g = value_and_grad(kernel.binary_kl_loss, s, t, T, backend="triton")
    assert float(v) == pytest.approx(np_binary_kl(sn, tn, T), rel=1e-5)
    sig = lambda x: 1.0 / (1.0 + np.exp(-x))  # noqa: E731
    np.testing.assert_allclose(g.double().cpu().numpy(), T / ROWS * (sig(sn / T) - sig(tn / T)), rtol=1e-4, atol=1e-7)
    v, g = value_and_grad(kernel.binary_kl_norm_loss, s, t, T, backend="triton")
    x = (sn - tn) / (2 * T)
    assert float(v) == pytest.approx(T * T * np.mean(np.sum(np.log(np.cosh(x)), axis=1)), rel=1e-5)
    np.testing.assert_allclose(g.double().cpu().numpy(), T / (2 * ROWS) * np.tanh(x), rtol=1e-4, atol=1e-7)
