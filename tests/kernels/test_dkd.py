"""kdlib.kernels.dkd against kdlib.losses.dkd and the numpy definitions of TCKD and NCKD."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from kdlib.kernels import dkd as kernel
from kdlib.losses import dkd as reference
from tests.helpers.kernels import DEV, FP, ROWS, TEMPS, assert_matches, labels, logits
from tests.helpers.reference import np_tckd_nckd

# the interpreter runs on numpy, which warns about values computed in masked lanes
# (-inf - -inf) or in the branch a tl.where discards (exp overflow in sigmoid)
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning:triton.runtime.interpreter")


@pytest.mark.parametrize("c", [2, 7, 100, 1000, 5000])
@pytest.mark.parametrize("temperature", TEMPS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_dkd_loss_matches_reference(c, temperature, dtype):
    s, t, y = logits(ROWS, c, 17, dtype=dtype), logits(ROWS, c, 18, dtype=dtype), labels(ROWS, c, 19)
    assert_matches(kernel.dkd_loss, reference.dkd_loss, s, t, y, 1.0, 8.0, temperature, **FP[dtype])


def test_dkd_loss_target_at_block_edges():
    """Targets at column 0, the last column of the first block, the first of the second, the last."""
    c = 5000
    s, t = logits(4, c, 20), logits(4, c, 21)
    y = torch.tensor([0, 4095, 4096, c - 1], device=DEV)
    assert_matches(kernel.dkd_loss, reference.dkd_loss, s, t, y, 2.0, 3.0, 4.0)
    T = 4.0
    tckd, nckd = np_tckd_nckd(s.double().cpu().numpy(), t.double().cpu().numpy(), y.cpu().numpy(), T)
    v = kernel.dkd_loss(s, t, y, 2.0, 3.0, T, backend="triton")
    assert float(v) == pytest.approx(T * T * float(np.mean(2.0 * tckd + 3.0 * nckd)), rel=1e-5)
