"""What every kernel keeps, across families: fp64 gradcheck, |logit| = 100 in fp32, the
backward that only scales the stored gradient, non-contiguous inputs; on a GPU, bf16 and
LLM-sized rows."""
from __future__ import annotations

import pytest
import torch

from tests.helpers.kernels import ROWS, assert_matches, kernel, labels, logits, reference, topk_cache, value_and_grad

# the interpreter runs on numpy, which warns about values computed in masked lanes
# (-inf - -inf) or in the branch a tl.where discards (exp overflow in sigmoid)
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning:triton.runtime.interpreter")


def _gradcheck_cases():
    c = 9
    t = logits(2, c, 27, dtype=torch.float64)
    y = labels(2, c, 28)
    vals, idx = topk_cache(2, c, 3, 29, torch.float64)
    return {
        "kd_loss": lambda s: kernel("kd_loss")(s, t, 2.0, backend="triton"),
        "ce_kd_loss": lambda s: kernel("ce_kd_loss")(s, t, y, 2.0, 0.4, 0.6, backend="triton"),
        "binary_kl_loss": lambda s: kernel("binary_kl_loss")(s, t, 2.0, backend="triton"),
        "binary_kl_norm_loss": lambda s: kernel("binary_kl_norm_loss")(s, t, 2.0, backend="triton"),
        "dkd_loss": lambda s: kernel("dkd_loss")(s, t, y, 1.0, 8.0, 2.0, backend="triton"),
        "sparse_kd_loss": lambda s: kernel("sparse_kd_loss")(s, vals, idx, backend="triton"),
    }


@pytest.mark.parametrize("name", list(_gradcheck_cases()))
def test_fp64_gradcheck(name):
    fn = _gradcheck_cases()[name]
    s = logits(2, 9, 32, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(fn, (s,), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ["kd_loss", "ce_kd_loss", "binary_kl_loss", "binary_kl_norm_loss", "dkd_loss"])
@pytest.mark.parametrize("c", [7, 5000])
def test_extreme_logits(name, c):
    """|x| = 100 in fp32 (random signs): finite, and equal to the fp64 reference."""
    signs = lambda seed: torch.where(logits(ROWS, c, seed) > 0, 100.0, -100.0)  # noqa: E731
    s, t, y = signs(35), signs(36), labels(ROWS, c, 37)
    args = {"kd_loss": (t, 1.0), "ce_kd_loss": (t, y, 1.0, 0.5, 0.5), "binary_kl_loss": (t, 1.0),
            "binary_kl_norm_loss": (t, 1.0), "dkd_loss": (t, y, 1.0, 8.0, 1.0)}[name]
    v_k, g_k = value_and_grad(kernel(name), s, *args, backend="triton")
    args64 = tuple(a.double() if torch.is_tensor(a) and a.is_floating_point() else a for a in args)
    v_r, g_r = value_and_grad(reference(name), s.double(), *args64)
    assert torch.isfinite(v_k) and torch.isfinite(g_k).all()
    torch.testing.assert_close(v_k.double(), v_r, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(g_k.double(), g_r, rtol=1e-5, atol=1e-6)


def test_backward_scales_by_grad_output_and_no_grad_input():
    s, t = logits(ROWS, 100, 38), logits(ROWS, 100, 39)
    _, g1 = value_and_grad(kernel("kd_loss"), s, t, 2.0, backend="triton")
    _, g3 = value_and_grad(lambda a, *r, **k: -3.0 * kernel("kd_loss")(a, *r, **k), s, t, 2.0, backend="triton")
    torch.testing.assert_close(g3, -3.0 * g1)
    with torch.no_grad():
        v = kernel("kd_loss")(s, t, 2.0, backend="triton")
    torch.testing.assert_close(v, reference("kd_loss")(s, t, 2.0))
    # the gradient is precomputed, so a second derivative would be silently wrong: it is refused
    x = s.clone().requires_grad_()
    (g,) = torch.autograd.grad(kernel("kd_loss")(x, t, 2.0, backend="triton"), x, create_graph=True)
    with pytest.raises(RuntimeError, match="differentiate twice|does not require grad"):
        g.sum().backward()


def test_non_contiguous_inputs():
    base_s, base_t = logits(200, ROWS, 40), logits(200, ROWS, 41)
    s, t = base_s.t(), base_t.t()  # (3, 200) views, column-major
    assert not s.is_contiguous()
    assert_matches(kernel("kd_loss"), reference("kd_loss"), s, t, 2.0)
    assert_matches(kernel("binary_kl_norm_loss"), reference("binary_kl_norm_loss"), s, t, 2.0)


# --------------------------------------------------------------------------- #
# on a GPU only: bf16 (the interpreter's bf16 arithmetic is broken) and large rows
# --------------------------------------------------------------------------- #


@pytest.mark.cuda
@pytest.mark.parametrize("c", [100, 32000, 128256])
def test_cuda_bf16_large_rows(c):
    s, t, y = logits(64, c, 47, dtype=torch.bfloat16), logits(64, c, 48, dtype=torch.bfloat16), labels(64, c, 49)
    tol = dict(rtol=2e-2, atol=1e-3, grad_atol=1e-5)
    assert_matches(kernel("kd_loss"), reference("kd_loss"), s, t, 4.0, **tol)
    assert_matches(kernel("ce_kd_loss"), reference("ce_kd_loss"), s, t, y, 4.0, 0.1, 0.9, **tol)
    assert_matches(kernel("dkd_loss"), reference("dkd_loss"), s, t, y, 1.0, 8.0, 4.0, **tol)
    assert_matches(kernel("binary_kl_norm_loss"), reference("binary_kl_norm_loss"), s, t, 2.0, **tol)
