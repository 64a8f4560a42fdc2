"""DHKD wires CE to head 1 and BinaryKLNorm to head 2 (kdlib.methods.dhkd); its defaults are
the official CIFAR-100 quick start; its second heads. `grad_align` is tested in test_grad_align.py."""
import pytest
import torch
from torch import nn

from kdlib.losses.binary_kl import binary_kl_norm_loss
from kdlib.methods.base import validate_method_entry
from kdlib.models.heads import DUAL_HEADS, DualHead
from tests.helpers.methods import setup


@pytest.mark.parametrize("aux_head", ["nonlinear", "linear"])
def test_dhkd_puts_ce_on_head1_and_binarykl_norm_on_head2(aux_head):
    method, model, x, y, teacher = setup("dhkd", ce_weight=0.5, aux_weight=2.0, aux_temperature=3.0, aux_head=aux_head)
    assert isinstance(model, DualHead)
    model.eval()  # the non-linear head's dropout: the same head 2 in both forwards
    logits, terms = method.forward_train(model, x, y, teacher, 0)
    head1, head2, _ = model(x)
    torch.testing.assert_close(logits, head1)
    torch.testing.assert_close(terms["ce"], 0.5 * torch.nn.functional.cross_entropy(head1, y))
    torch.testing.assert_close(terms["aux_binarykl_norm"], 2.0 * binary_kl_norm_loss(head2, teacher, 3.0))
    # head 1 gets no gradient from the aux term, head 2 none from CE
    model.zero_grad()
    terms["aux_binarykl_norm"].backward(retain_graph=True)
    assert model.classifier.weight.grad is None or model.classifier.weight.grad.abs().max() == 0
    model.zero_grad()
    terms["ce"].backward()
    assert all(p.grad is None or p.grad.abs().max() == 0 for p in model.aux_head.parameters())
    # exported model is head 1 only
    assert method.exported(model) is model.backbone_model


@pytest.mark.parametrize("name", ["dhkd", "dhkd_kd"])
def test_defaults_are_the_official_cifar_quick_start(name):
    # README: --dual_head --nonlinear --ga --distill dhkd -r 1 -a 1 --BinaryKL_T 2
    s = validate_method_entry(name, None)
    assert (s.aux_head, s.grad_align, s.aux_weight, s.aux_temperature) == ("nonlinear", "official", 1.0, 2.0)
    if name == "dhkd":
        assert s.ce_weight == 1.0
    method, model, *_ = setup(name)
    assert method.shapes_gradients


def official_nonlinear_classifier(dim_in, n_label):
    """penghui-yang/DHKD models/classifier.py:9-15, the layers of NonLinearClassifier(dim_in, n_label, p=0.1)."""
    return nn.Sequential(
        nn.Linear(dim_in, 200), nn.Dropout(p=0.1), nn.BatchNorm1d(200), nn.ReLU(inplace=True), nn.Linear(200, n_label),
    )


@pytest.mark.parametrize("aux_head", ["nonlinear", "mlp"])
def test_nonlinear_head_is_the_official_nonlinear_classifier(aux_head):
    _, model, x, *_ = setup("dhkd", aux_head=aux_head)
    head, d = model.aux_head, model.feature_dim
    reference = official_nonlinear_classifier(d, 10)
    assert [type(m) for m in head] == [type(m) for m in reference]
    assert (head[0].in_features, head[0].out_features, head[0].bias is not None) == (d, 200, True)
    assert head[1].p == 0.1
    bn = head[2]
    assert (bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats) == (200, 1e-5, 0.1, True, True)
    assert (head[4].in_features, head[4].out_features, head[4].bias is not None) == (200, 10, True)
    assert sum(p.numel() for p in head.parameters()) == d * 200 + 200 + 2 * 200 + 200 * 10 + 10
    # the same weights compute the same logits, in training mode (dropout, batch statistics) too
    feature = model(x)[2].detach()
    reference.load_state_dict(head.state_dict())  # after that forward: its running statistics too
    for train in (True, False):
        head.train(train), reference.train(train)
        torch.manual_seed(1)
        a = head(feature)
        torch.manual_seed(1)
        torch.testing.assert_close(a, reference(feature))


def test_aux_head_choices():
    assert set(DUAL_HEADS) == {"linear", "nonlinear", "mlp"}
    _, model, *_ = setup("dhkd", aux_head="linear")
    assert isinstance(model.aux_head, nn.Linear)
    with pytest.raises(ValueError, match=r"methods\.dhkd\.aux_head"):
        validate_method_entry("dhkd", {"aux_head": "conv"})
