"""Metrics against hand-computed values."""
import math

import torch

from kdlib.metrics import (
    agreement, evaluate_logits, expected_calibration_error, kl_to_teacher, nll, reliability_diagram, topk_accuracy,
)


def test_topk_hand_case():
    logits = torch.tensor([[3.0, 2.0, 1.0], [1.0, 3.0, 2.0], [1.0, 2.0, 3.0], [3.0, 1.0, 2.0]])
    target = torch.tensor([0, 2, 0, 1])
    assert topk_accuracy(logits, target, 1) == 25.0
    assert topk_accuracy(logits, target, 2) == 50.0
    assert topk_accuracy(logits, target, 5) == 100.0


def test_nll_hand_case():
    logits = torch.tensor([[0.0, math.log(3.0)]], dtype=torch.float64)  # p = (1/4, 3/4)
    assert math.isclose(nll(logits, torch.tensor([1])), -math.log(0.75), rel_tol=1e-12)


def test_ece_hand_case():
    # two samples with confidence 0.75 (one right, one wrong) -> bin acc 0.5, conf 0.75
    # one sample with confidence 0.5 + eps... use exact two-class probabilities
    logits = torch.tensor([[math.log(3.0), 0.0], [math.log(3.0), 0.0], [math.log(9.0), 0.0]], dtype=torch.float64)
    target = torch.tensor([0, 1, 0])
    # bins of width 1/15: 0.75 -> bin 11, 0.9 -> bin 13
    expected = (2 / 3) * abs(0.5 - 0.75) + (1 / 3) * abs(1.0 - 0.9)
    assert math.isclose(expected_calibration_error(logits, target, 15), 100 * expected, rel_tol=1e-9)


def test_perfectly_calibrated_is_zero():
    logits = torch.tensor([[50.0, 0.0], [0.0, 50.0]])
    assert expected_calibration_error(logits, torch.tensor([0, 1])) < 1e-9


def test_agreement_and_kl():
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    t = torch.tensor([[2.0, 0.0], [2.0, 0.0]])
    assert agreement(s, t) == 50.0
    assert kl_to_teacher(t, t) == 0.0
    p = torch.tensor([1 / (1 + math.exp(-2)), 1 - 1 / (1 + math.exp(-2))])
    q0 = torch.tensor([1 / (1 + math.exp(-1)), 1 - 1 / (1 + math.exp(-1))])
    q1 = q0.flip(0)
    expected = 0.5 * ((p * (p / q0).log()).sum() + (p * (p / q1).log()).sum()).item()
    assert math.isclose(kl_to_teacher(s, t), expected, rel_tol=1e-9)


def test_evaluate_logits_keys():
    m = evaluate_logits(torch.randn(8, 5), torch.randint(0, 5, (8,)), torch.randn(8, 5))
    assert set(m) == {"top1", "top5", "nll", "ece", "agreement", "kl_to_teacher"}


def test_reliability_diagram_hand_case():
    # confidences 0.75 (right), 0.75 (wrong), 0.9 (right) -> bins 11 and 13 of 15
    logits = torch.tensor([[math.log(3.0), 0.0], [math.log(3.0), 0.0], [math.log(9.0), 0.0]], dtype=torch.float64)
    d = reliability_diagram(logits, torch.tensor([0, 1, 0]), 15)
    assert d["count"][11] == 2 and d["count"][13] == 1 and sum(d["count"]) == 3
    assert math.isclose(d["confidence_sum"][11], 1.5) and math.isclose(d["confidence_sum"][13], 0.9)
    assert d["correct"][11] == 1 and d["correct"][13] == 1
