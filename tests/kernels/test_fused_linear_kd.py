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


@pytest.mark.parametrize("backend, chunk_fn", [("triton", "_triton_chunk"), ("torch_chunked", "_torch_chunk")])
def test_fused_linear_kd_never_builds_the_full_logits(monkeypatch, backend, chunk_fn):
    """Every logit block the per-chunk loss sees fits the memory budget: 3 buffers of rows x C."""
    import kdlib.kernels.fused_linear_kd as fused

    seen = []
    real = getattr(fused, chunk_fn)
    monkeypatch.setattr(fused, chunk_fn, lambda s, t, *a: seen.append(s.shape) or real(s, t, *a))
    n, c = 37, 1000
    budget = 3 * 8 * c * 4  # 8 rows of fp32
    h_s, w_s, h_t, w_t = heads(n, c, 16, 16, 60)
    kernel.fused_linear_kd_loss(h_s.requires_grad_(), w_s, h_t, w_t, 2.0, backend=backend, memory_budget=budget)
    assert [rows for rows, _ in seen] == [8, 8, 8, 8, 5]
    assert all(3 * rows * cols * 4 <= budget for rows, cols in seen)


@pytest.mark.parametrize("backend", ["triton", "torch_chunked"])
def test_fused_linear_kd_teacher_gets_no_gradient_and_budget_checked(backend):
    h_s, w_s, h_t, w_t = heads(3, 50, 8, 8, 26)
    h_t.requires_grad_()
    loss = kernel.fused_linear_kd_loss(h_s.requires_grad_(), w_s, h_t, w_t, 2.0, backend=backend)
    loss.backward()
    assert h_t.grad is None and h_s.grad is not None
    with pytest.raises(ValueError, match="memory_budget"):
        kernel.fused_linear_kd_loss(h_s, w_s, h_t, w_t, 2.0, backend=backend, memory_budget=0)
    with pytest.raises(ValueError, match="teacher_weight"):
        kernel.fused_linear_kd_loss(h_s, w_s, h_t, w_t[:-1], 2.0, backend=backend)


def test_fp64_gradcheck_fused_linear():
    h_t, w_t = logits(2, 5, 30, dtype=torch.float64), logits(9, 5, 31, dtype=torch.float64)
    h_s = logits(2, 4, 33, dtype=torch.float64).requires_grad_()
    w_s = logits(9, 4, 34, dtype=torch.float64).requires_grad_()
    fn = lambda a, b: kernel.fused_linear_kd_loss(a, b, h_t, w_t, 2.0, backend="triton", memory_budget=9 * 8 * 3)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (h_s, w_s), eps=1e-6, atol=1e-6)


# --------------------------------------------------------------------------- #
# backend "torch_chunked": the same chunk loop, the per-chunk loss in plain PyTorch
# --------------------------------------------------------------------------- #


def _value_and_grads(fn, h_s, w_s, *args, **kwargs):
    ins = [h_s.detach().clone().requires_grad_(), w_s.detach().clone().requires_grad_()]
    value = fn(*ins, *args, **kwargs)
    return (value.detach(), *torch.autograd.grad(3.0 * value, ins))


@pytest.mark.parametrize("rows", [1, 3, 4, 7, 100])  # 7 chunks of 1; 3+3+1; 4+3; one chunk; budget above N
@pytest.mark.parametrize("temperature", [0.5, 1.0, 4.0])
def test_torch_chunked_equals_eager_fp64(rows, temperature):
    """Value and the gradients of h_s and W_s, to fp64 rounding, for any chunking (an uneven last chunk too)."""
    n, c = 7, 53
    h_s, w_s, h_t, w_t = heads(n, c, 6, 9, 70, dtype=torch.float64)
    budget = rows * 3 * c * 8
    assert chunk_rows(n, c, 8, budget) == min(rows, n)
    got = _value_and_grads(kernel.fused_linear_kd_loss, h_s, w_s, h_t, w_t, temperature,
                           backend="torch_chunked", memory_budget=budget)
    want = _value_and_grads(reference.fused_linear_kd_loss, h_s, w_s, h_t, w_t, temperature)
    for a, b in zip(got, want):
        assert a.dtype == b.dtype == torch.float64
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_torch_chunked_fp64_gradcheck():
    h_t, w_t = logits(5, 6, 71, dtype=torch.float64), logits(9, 6, 72, dtype=torch.float64)
    h_s = logits(5, 4, 73, dtype=torch.float64).requires_grad_()
    w_s = logits(9, 4, 74, dtype=torch.float64).requires_grad_()
    fn = lambda a, b: kernel.fused_linear_kd_loss(a, b, h_t, w_t, 2.0, backend="torch_chunked", memory_budget=2 * 9 * 8 * 3)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (h_s, w_s), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_torch_chunked_fp32_close_to_eager(temperature):
    h_s, w_s, h_t, w_t = heads(37, 5000, 32, 48, 75)
    got = _value_and_grads(kernel.fused_linear_kd_loss, h_s, w_s, h_t, w_t, temperature,
                           backend="torch_chunked", memory_budget=3 * 8 * 5000 * 4)
    want = _value_and_grads(reference.fused_linear_kd_loss, h_s, w_s, h_t, w_t, temperature)
    for a, b in zip(got, want):
        assert a.dtype == b.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_torch_chunked_bf16_inputs():
    """bf16 heads: the loss in fp32 (as the reference), gradients in bf16, close to the fp64 values of the same inputs."""
    h_s, w_s, h_t, w_t = heads(19, 700, 32, 32, 76, dtype=torch.bfloat16)
    value, g_h, g_w = _value_and_grads(kernel.fused_linear_kd_loss, h_s, w_s, h_t, w_t, 2.0,
                                       backend="torch_chunked", memory_budget=3 * 4 * 700 * 2)
    eager = _value_and_grads(reference.fused_linear_kd_loss, h_s, w_s, h_t, w_t, 2.0)
    exact = _value_and_grads(reference.fused_linear_kd_loss, *(x.double() for x in (h_s, w_s, h_t, w_t)), 2.0)
    assert value.dtype == torch.float32 and g_h.dtype == g_w.dtype == torch.bfloat16
    assert torch.isfinite(value) and torch.isfinite(g_h).all() and torch.isfinite(g_w).all()
    torch.testing.assert_close(value.double(), exact[0], rtol=2e-2, atol=1e-3)
    for got, ref, want in zip((g_h, g_w), eager[1:], exact[1:]):
        # bf16 logits and gradients: no worse than the eager bf16 path, relative to the largest entry
        scale = want.abs().max()
        err = (got.double() - want).abs().max() / scale
        assert err < 5e-2 and err <= 2 * (ref.double() - want).abs().max() / scale + 1e-2


def test_torch_chunked_no_grad_and_backend_names():
    h_s, w_s, h_t, w_t = heads(5, 40, 8, 8, 77)
    with torch.no_grad():
        v = kernel.fused_linear_kd_loss(h_s, w_s, h_t, w_t, 2.0, backend="torch_chunked", memory_budget=3 * 2 * 40 * 4)
    torch.testing.assert_close(v, reference.fused_linear_kd_loss(h_s, w_s, h_t, w_t, 2.0))
    # "torch" keeps its meaning in every kernel module: the eager reference, bit for bit
    assert torch.equal(kernel.fused_linear_kd_loss(h_s.cpu(), w_s.cpu(), h_t.cpu(), w_t.cpu(), 2.0, backend="torch"),
                       reference.fused_linear_kd_loss(h_s.cpu(), w_s.cpu(), h_t.cpu(), w_t.cpu(), 2.0))
    with pytest.raises(ValueError, match="torch_chunked"):
        kernel.fused_linear_kd_loss(h_s, w_s, h_t, w_t, 2.0, backend="chunked")


def test_torch_chunked_does_not_import_triton():
    """The module imports the kd kernel (and triton) only when the triton backend runs."""
    import subprocess
    import sys

    code = ("import sys, torch; from kdlib.kernels.fused_linear_kd import fused_linear_kd_loss as f; "
            "x = torch.randn(4, 3, requires_grad=True); w = torch.randn(6, 3, requires_grad=True); "
            "f(x, w, x.detach(), w.detach(), 2.0, backend='torch_chunked', memory_budget=144).backward(); "
            "assert 'triton' not in sys.modules, 'triton imported'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
