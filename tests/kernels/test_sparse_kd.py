"""kdlib.kernels.sparse_kd against kdlib.losses.sparse_kd and a hand case."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from kdlib.kernels import sparse_kd as kernel
from kdlib.losses import sparse_kd as reference
from tests.helpers.kernels import CLASSES, DEV, FP, ROWS, assert_matches, logits, topk_cache, value_and_grad
from tests.helpers.reference import np_log_softmax

# the interpreter runs on numpy, which warns about values computed in masked lanes
# (-inf - -inf) or in the branch a tl.where discards (exp overflow in sigmoid)
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning:triton.runtime.interpreter")


@pytest.mark.parametrize("c", CLASSES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_sparse_kd_loss_matches_reference(c, dtype):
    for k in sorted({1, min(5, c), c if c <= 100 else 100}):
        vals, idx = topk_cache(ROWS, c, k, 22 + k, dtype)
        assert_matches(kernel.sparse_kd_loss, reference.sparse_kd_loss, logits(ROWS, c, 23, dtype=dtype), vals, idx,
                       **FP[dtype])


def test_sparse_kd_loss_hand_case():
    """C=4, K=2, top-K (0.5, 0.3) at (2, 0): the other two classes get 0.1 each."""
    s = torch.tensor([[1.0, -2.0, 0.5, 3.0]], device=DEV)
    vals = torch.tensor([[0.5, 0.3]], device=DEV)
    idx = torch.tensor([[2, 0]], device=DEV)
    p = np.array([0.3, 0.1, 0.5, 0.1])
    log_p = np_log_softmax(s.double().cpu().numpy())[0]
    v, g = value_and_grad(kernel.sparse_kd_loss, s, vals, idx, backend="triton")
    assert float(v) == pytest.approx(-float(np.sum(p * log_p)), rel=1e-6)
    np.testing.assert_allclose(g.cpu().numpy()[0], np.exp(log_p) - p, rtol=1e-5, atol=1e-7)


def test_sparse_kd_loss_fp16_mass_above_one():
    """fp16 rounding can make sum(topK) > 1: the rest mass clamps to 0, as in the reference."""
    vals = torch.tensor([[0.6, 0.45], [0.7, 0.3]], dtype=torch.float16, device=DEV)
    idx = torch.tensor([[1, 3], [0, 2]], device=DEV)
    assert_matches(kernel.sparse_kd_loss, reference.sparse_kd_loss, logits(2, 6, 24), vals, idx)
