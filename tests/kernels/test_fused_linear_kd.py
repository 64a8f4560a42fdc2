"""kdlib.kernels.fused_linear_kd (chunked KD through the output heads) against the eager
kdlib.losses.fused_linear_kd reference, its memory bound and an fp64 gradcheck."""
from __future__ import annotations

import pytest
import torch

from kdlib.kernels import fused_linear_kd as kernel
from kdlib.kernels.fused_linear_kd import chunk_rows
from kdlib.losses import fused_linear_kd as reference
from tests.helpers.kernels import CLASSES, TEMPS, heads, logits

# the interpreter runs on numpy, which warns about values computed in masked lanes
# (-inf - -inf) or in the branch a tl.where discards (exp overflow in sigmoid)
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning:triton.runtime.interpreter")


@pytest.mark.parametrize("c", CLASSES)
@pytest.mark.parametrize("temperature", TEMPS)
def test_fused_linear_kd_matches_eager(c, temperature):
    """Chunked (a budget of 2 rows per chunk, so 3 chunks over 5 rows) vs eager full logits; grads of h_s and W_s."""
    h_s, w_s, h_t, w_t = heads(5, c, 16, 24, 25)
    budget = 2 * 3 * c * 4
    assert chunk_rows(5, c, 4, budget) == 2
    ins = [h_s.clone().requires_grad_(), w_s.clone().requires_grad_()]
    ref = [h_s.clone().requires_grad_(), w_s.clone().requires_grad_()]
    v_k = kernel.fused_linear_kd_loss(*ins, h_t, w_t, temperature, backend="triton", memory_budget=budget)
    v_r = reference.fused_linear_kd_loss(*ref, h_t, w_t, temperature)
    torch.testing.assert_close(v_k, v_r, rtol=1e-5, atol=1e-6)
    g_k = torch.autograd.grad(2.0 * v_k, ins)
    g_r = torch.autograd.grad(2.0 * v_r, ref)
    for a, b in zip(g_k, g_r):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_fused_linear_kd_never_builds_the_full_logits(monkeypatch):
    """Every logit block the kd kernel sees fits the memory budget: 3 buffers of rows x C."""
    import kdlib.kernels.fused_linear_kd as fused

    seen = []
    real = fused.kd_forward
    monkeypatch.setattr(fused, "kd_forward", lambda s, t, *a, **k: seen.append(s.shape) or real(s, t, *a, **k))
    n, c = 37, 1000
    budget = 3 * 8 * c * 4  # 8 rows of fp32
    h_s, w_s, h_t, w_t = heads(n, c, 16, 16, 60)
    kernel.fused_linear_kd_loss(h_s.requires_grad_(), w_s, h_t, w_t, 2.0, backend="triton", memory_budget=budget)
    assert [rows for rows, _ in seen] == [8, 8, 8, 8, 5]
    assert all(3 * rows * cols * 4 <= budget for rows, cols in seen)


def test_fused_linear_kd_teacher_gets_no_gradient_and_budget_checked():
    h_s, w_s, h_t, w_t = heads(3, 50, 8, 8, 26)
    h_t.requires_grad_()
    loss = kernel.fused_linear_kd_loss(h_s.requires_grad_(), w_s, h_t, w_t, 2.0, backend="triton")
    loss.backward()
    assert h_t.grad is None and h_s.grad is not None
    with pytest.raises(ValueError, match="memory_budget"):
        kernel.fused_linear_kd_loss(h_s, w_s, h_t, w_t, 2.0, backend="triton", memory_budget=0)
    with pytest.raises(ValueError, match="teacher_weight"):
        kernel.fused_linear_kd_loss(h_s, w_s, h_t, w_t[:-1], 2.0, backend="triton")


def test_fp64_gradcheck_fused_linear():
    h_t, w_t = logits(2, 5, 30, dtype=torch.float64), logits(9, 5, 31, dtype=torch.float64)
    h_s = logits(2, 4, 33, dtype=torch.float64).requires_grad_()
    w_s = logits(9, 4, 34, dtype=torch.float64).requires_grad_()
    fn = lambda a, b: kernel.fused_linear_kd_loss(a, b, h_t, w_t, 2.0, backend="triton", memory_budget=9 * 8 * 3)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (h_s, w_s), eps=1e-6, atol=1e-6)
