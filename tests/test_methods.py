"""Each method wires the right loss to the right head, with named terms."""
import pytest
import torch

from kdlib import losses
from kdlib.methods import METHODS, build_method
from kdlib.models import DualHead, build_model

ISSUE_METHODS = ["ce", "kd", "binarykl", "binarykl_norm", "ce+binarykl_norm", "dhkd", "dhkd_kd", "dkd"]


def setup(name, **settings):
    torch.manual_seed(0)
    method = build_method(name, settings)
    model = method.build(build_model("mlp", 10, 1, 8))
    x = torch.randn(6, 1, 8, 8)
    y = torch.randint(0, 10, (6,))
    teacher = torch.randn(6, 10) * 3
    return method, model, x, y, teacher


def test_registry_has_the_ablation_methods():
    assert set(ISSUE_METHODS) <= set(METHODS)


@pytest.mark.parametrize("name", ISSUE_METHODS)
def test_terms_are_finite_and_backpropagate(name):
    method, model, x, y, teacher = setup(name)
    logits, terms = method.forward_train(model, x, y, teacher if method.needs_teacher else None, epoch=0)
    assert logits.shape == (6, 10) and terms
    loss = sum(terms.values())
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_term_names():
    names = {n: set(setup(n)[0].forward_train(*setup(n)[1:4], setup(n)[4], 0)[1]) for n in ISSUE_METHODS}
    assert names["ce"] == {"ce"}
    assert names["kd"] == {"ce", "kd"}
    assert names["ce+binarykl_norm"] == {"ce", "binarykl_norm"}
    assert names["dhkd"] == {"ce", "aux_binarykl_norm"}
    assert names["dhkd_kd"] == {"ce", "kd", "aux_binarykl_norm"}
    assert names["dkd"] == {"ce", "dkd"}


def test_dhkd_puts_ce_on_head1_and_binarykl_norm_on_head2():
    method, model, x, y, teacher = setup("dhkd", ce_weight=0.5, aux_weight=2.0, aux_temperature=3.0)
    assert isinstance(model, DualHead)
    logits, terms = method.forward_train(model, x, y, teacher, 0)
    head1, head2, _ = model(x)
    torch.testing.assert_close(logits, head1)
    torch.testing.assert_close(terms["ce"], 0.5 * torch.nn.functional.cross_entropy(head1, y))
    torch.testing.assert_close(terms["aux_binarykl_norm"], 2.0 * losses.binary_kl_norm_loss(head2, teacher, 3.0))
    # head 1 gets no gradient from the aux term, head 2 none from CE
    model.zero_grad()
    terms["aux_binarykl_norm"].backward(retain_graph=True)
    assert model.classifier.weight.grad is None or model.classifier.weight.grad.abs().max() == 0
    model.zero_grad()
    terms["ce"].backward()
    assert model.aux_head.weight.grad is None or model.aux_head.weight.grad.abs().max() == 0
    # exported model is head 1 only
    assert method.exported(model) is model.backbone_model


def test_same_head_ablation_shares_one_head():
    method, model, x, y, teacher = setup("ce+binarykl_norm")
    assert not isinstance(model, DualHead)
    logits, terms = method.forward_train(model, x, y, teacher, 0)
    torch.testing.assert_close(terms["binarykl_norm"], losses.binary_kl_norm_loss(logits, teacher, 2.0))


def test_dkd_warmup_ramps_linearly():
    method, model, x, y, teacher = setup("dkd", warmup_epochs=4)
    model.eval()
    full = losses.dkd_loss(model(x)[0], teacher, y, 1.0, 8.0, 4.0)
    for epoch, factor in [(0, 0.25), (1, 0.5), (3, 1.0), (10, 1.0)]:
        _, terms = method.forward_train(model, x, y, teacher, epoch)
        torch.testing.assert_close(terms["dkd"], factor * full)


def test_mlp_aux_head():
    method, model, *_ = setup("dhkd", aux_head="mlp")
    assert isinstance(model.aux_head, torch.nn.Sequential)
