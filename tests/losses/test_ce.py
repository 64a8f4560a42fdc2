"""kdlib.losses.ce: cross-entropy against a hand computation, and its input checks."""
from __future__ import annotations

import pytest
import torch

from kdlib.losses.ce import cross_entropy
from tests.helpers.reference import tt

GOOD_Y = torch.zeros(4, dtype=torch.long)


def test_cross_entropy_hand():
    # -log(e^3 / (e^1 + e^2 + e^3)) = log(1 + e^-1 + e^-2) = log(1.5032147244) = 0.4076059644
    out = cross_entropy(tt([[1.0, 2.0, 3.0]]), torch.tensor([2]))
    assert out.item() == pytest.approx(0.4076059644, abs=1e-9)
    # two rows: mean of (0.4076059644, log(1 + e^1 + e^2) = 0.4076059644 + 2)
    out = cross_entropy(tt([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]]), torch.tensor([2, 0]))
    assert out.item() == pytest.approx(1.4076059644, abs=1e-9)


def test_cross_entropy_bad_logits_raise():
    with pytest.raises(ValueError, match="logits"):
        cross_entropy(torch.zeros(4), GOOD_Y)
    with pytest.raises(ValueError, match="logits"):
        cross_entropy(torch.zeros(4, 5, dtype=torch.long), GOOD_Y)
