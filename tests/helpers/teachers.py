"""Teacher-side stand-ins with known outputs, for the MCMI and multi-teacher KD tests."""
from __future__ import annotations

import torch


class FixedLogits(torch.nn.Module):
    """A 'model' whose logits are a trainable table, so d loss / d logits is its gradient."""

    def __init__(self, logits):
        super().__init__()
        self.z = torch.nn.Parameter(torch.as_tensor(logits, dtype=torch.float64).clone())

    def forward(self, x):
        return self.z, None


def binary_teacher(a, n=3):
    """n rows of logits [0, a]: its softmax at T is [1 - sigmoid(a/T), sigmoid(a/T)]."""
    return torch.tensor([[0.0, a]] * n, dtype=torch.float64)
