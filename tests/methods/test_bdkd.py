"""BD-KD (kdlib.methods.bdkd), online: the pair it builds, its terms, where each gradient goes,
and one epoch of `fit` training both networks."""
import pytest
import torch
import torch.nn.functional as F

from kdlib.config import AugmentConfig, ScheduleConfig
from kdlib.data.sources.synthetic import make_synthetic
from kdlib.losses.bdkd import bdkd_loss
from kdlib.losses.kd import reverse_kl_loss
from kdlib.models import build_model
from kdlib.models.heads import OnlinePair
from kdlib.train import fit
from tests.helpers.methods import build


def bdkd_setup():
    torch.manual_seed(0)
    method = build("bdkd", {"temperature": 2.0, "kd_weight": 0.7, "teacher_kd_weight": 0.3})
    model = method.build(build_model("mlp", 10, 1, 8), build_model("resnet8", 10, 1, 8))
    return method, model, torch.randn(6, 1, 8, 8), torch.randint(0, 10, (6,))


def test_bdkd_needs_the_teacher_network():
    with pytest.raises(ValueError, match="needs the teacher network"):
        build("bdkd").build(build_model("mlp", 10, 1, 8))


def test_bdkd_terms_and_where_each_gradient_goes():
    method, model, x, y = bdkd_setup()
    model.eval()
    assert isinstance(model, OnlinePair)
    logits, terms = method.forward_train(model, x, y, None, 0)
    assert set(terms) == {"ce", "bdkd", "teacher_ce", "teacher_reverse_kl"}
    with torch.no_grad():
        s, _ = model.student(x)
        t, _ = model.teacher(x)
    torch.testing.assert_close(logits, s)
    torch.testing.assert_close(terms["bdkd"], 0.7 * bdkd_loss(s, t, 2.0))
    torch.testing.assert_close(terms["teacher_reverse_kl"], 0.3 * reverse_kl_loss(t, s, 2.0))
    torch.testing.assert_close(terms["teacher_ce"], F.cross_entropy(t, y))
    for student_side, teacher_side in ((("ce", "bdkd"), model.teacher), (("teacher_ce", "teacher_reverse_kl"), model.student)):
        model.zero_grad(set_to_none=True)
        sum(terms[k] for k in student_side).backward(retain_graph=True)
        assert all(p.grad is None for p in teacher_side.parameters()), student_side
    assert method.exported(model) is model.student


def test_bdkd_one_epoch_through_fit_trains_both_networks():
    ds = make_synthetic(seed=0, num_train_per_class=4, num_test_per_class=2, image_size=8, num_classes=10, num_superclasses=2)
    method = build("bdkd")
    torch.manual_seed(0)
    model = method.build(build_model("mlp", 10, 3, 8), build_model("resnet8", 10, 3, 8))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = fit(model, method, ds, ScheduleConfig(epochs=1, batch_size=16, lr=0.05), 0,
                 AugmentConfig(padding=1, flip=True, seed=0), teacher_views=None, log=lambda _: None)
    record = result.history[0]
    assert {k for k in record if k.startswith("loss/")} == {"loss/ce", "loss/bdkd", "loss/teacher_ce", "loss/teacher_reverse_kl"}
    after = model.state_dict()
    assert not torch.equal(before["student.classifier.weight"], after["student.classifier.weight"])
    assert not torch.equal(before["teacher.classifier.weight"], after["teacher.classifier.weight"])
