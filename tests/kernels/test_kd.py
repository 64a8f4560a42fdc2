"""kdlib.kernels.kd (softmax KD and CE + KD) against kdlib.losses.kd and independent formulas."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from kdlib.kernels import kd as kernel
from kdlib.losses import kd as reference
from tests.helpers.kernels import CLASSES, DEV, FP, ROWS, TEMPS, assert_matches, labels, logits, value_and_grad
from tests.helpers.reference import np_kd, np_log_softmax, np_softmax

# the interpreter runs on numpy, which warns about values computed in masked lanes
# (-inf - -inf) or in the branch a tl.where discards (exp overflow in sigmoid)
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning:triton.runtime.interpreter")


@pytest.mark.parametrize("c", CLASSES)
@pytest.mark.parametrize("temperature", TEMPS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_kd_loss_matches_reference(c, temperature, dtype):
    s, t = logits(ROWS, c, 1, dtype=dtype), logits(ROWS, c, 2, dtype=dtype)
    assert_matches(kernel.kd_loss, reference.kd_loss, s, t, temperature, **FP[dtype])


@pytest.mark.parametrize("c", CLASSES)
def test_kd_loss_independent_formula(c):
    """numpy fp64 value, and the closed-form gradient T/N (softmax(s/T) - softmax(t/T))."""
    T = 2.5
    s, t = logits(ROWS, c, 3), logits(ROWS, c, 4)
    v, g = value_and_grad(kernel.kd_loss, s, t, T, backend="triton")
    sn, tn = s.double().cpu().numpy(), t.double().cpu().numpy()
    assert float(v) == pytest.approx(np_kd(sn, tn, T), rel=1e-5, abs=1e-6)
    expected = T / ROWS * (np_softmax(sn / T) - np_softmax(tn / T))
    np.testing.assert_allclose(g.double().cpu().numpy(), expected, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("c", CLASSES)
@pytest.mark.parametrize("temperature", TEMPS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_ce_kd_loss_matches_reference(c, temperature, dtype):
    s, t, y = logits(ROWS, c, 5, dtype=dtype), logits(ROWS, c, 6, dtype=dtype), labels(ROWS, c, 7)
    assert_matches(kernel.ce_kd_loss, reference.ce_kd_loss, s, t, y, temperature, 0.3, 0.7, **FP[dtype])


def test_ce_kd_loss_independent_formula():
    """0.3 * CE + 0.7 * T^2 KL from numpy; gradient 0.3/N (p - onehot) + 0.7 T/N (p_T - q_T)."""
    T, c = 3.0, 100
    s, t, y = logits(ROWS, c, 8), logits(ROWS, c, 9), labels(ROWS, c, 10)
    v, g = value_and_grad(kernel.ce_kd_loss, s, t, y, T, 0.3, 0.7, backend="triton")
    sn, tn, yn = s.double().cpu().numpy(), t.double().cpu().numpy(), y.cpu().numpy()
    ce = -np.mean(np_log_softmax(sn)[np.arange(ROWS), yn])
    assert float(v) == pytest.approx(0.3 * ce + 0.7 * np_kd(sn, tn, T), rel=1e-5)
    onehot = np.eye(c)[yn]
    expected = 0.3 / ROWS * (np_softmax(sn) - onehot) + 0.7 * T / ROWS * (np_softmax(sn / T) - np_softmax(tn / T))
    np.testing.assert_allclose(g.double().cpu().numpy(), expected, rtol=1e-4, atol=1e-7)


def test_kd_loss_shift_invariant_and_zero_at_teacher():
    s = logits(ROWS, 300, 11)
    v0 = kernel.kd_loss(s, s.clone(), 4.0, backend="triton")
    assert abs(float(v0)) < 1e-5
    t = logits(ROWS, 300, 12)
    shift = torch.tensor([[5.0], [-30.0], [100.0]], device=DEV)
    a = kernel.kd_loss(s, t, 4.0, backend="triton")
    b = kernel.kd_loss(s + shift, t - shift, 4.0, backend="triton")
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
