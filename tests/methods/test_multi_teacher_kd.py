"""The multi_teacher_kd method: its teachers, and its CE and KD terms from the entropy-balanced loss."""
import pytest
import torch

from kdlib.losses import multi_teacher_kd
from tests.helpers.methods import build
from tests.helpers.teachers import FixedLogits, binary_teacher


def test_multi_teacher_kd_method_terms():
    method = build("mt", {"method": "multi_teacher_kd", "teachers": ["teacher", "other"]})
    assert method.teacher_names() == ["teacher", "other"]
    teachers = torch.stack([binary_teacher(4.0, 2), binary_teacher(2.0, 2)]).float()
    model = FixedLogits([[0.5, -0.5], [0.0, 1.0]])
    _, terms = method.forward_train(model, None, torch.tensor([0, 1]), teachers, 0)
    taus = torch.tensor([2.0, 1.0], dtype=torch.float64)
    ce = torch.nn.functional.cross_entropy(model.z, torch.tensor([0, 1]))
    assert terms["ce"].item() == pytest.approx(0.1 * ce.item(), rel=1e-9)
    expected = 0.9 * multi_teacher_kd.multi_teacher_kd_loss(model.z, teachers.double(), taus)
    assert terms["kd"].item() == pytest.approx(expected.item(), rel=1e-6)
