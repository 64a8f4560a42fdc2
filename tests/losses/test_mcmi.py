"""MCMI's regulariser KL(P_x || Q_y) against hand values and numpy. The teacher's own loss:
it lives in kdlib.mcmi (teacher fine-tuning), not in kdlib.losses, and keeps the same
conventions (tests/losses/test_conventions.py)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kdlib.mcmi import mcmi_regularizer
from tests.helpers.reference import labels, np_softmax, rand, t64


def np_mcmi(z, y, Q):
    P = np_softmax(z)
    return float(np.mean([np.sum(P[i] * np.log(P[i] / Q[y[i]])) for i in range(z.shape[0])]))


def test_mcmi_hand_and_numpy():
    Q = np.array([[0.25, 0.75], [0.6, 0.4]])
    got = mcmi_regularizer(t64([[0.0, 0.0]]), torch.tensor([0]), t64(Q)).item()
    assert got == pytest.approx(0.5 * math.log(2) + 0.5 * math.log(2 / 3), rel=1e-12)
    z, y = rand(8, 4, 31), labels(8, 4, 31)
    Qr = np_softmax(rand(4, 4, 32))
    got = mcmi_regularizer(t64(z), torch.tensor(y), t64(Qr)).item()
    assert got == pytest.approx(np_mcmi(z, y, Qr), rel=1e-12)
    # the centroid of class c is the mean teacher softmax over class c
    P = np_softmax(z)
    Qc = np.stack([P[y == c].mean(0) if (y == c).any() else np.full(4, 0.25) for c in range(4)])
    assert mcmi_regularizer(t64(z), torch.tensor(y), t64(Qc)).item() == pytest.approx(np_mcmi(z, y, Qc), rel=1e-12)
