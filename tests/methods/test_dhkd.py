"""DHKD wires CE to head 1 and BinaryKLNorm to head 2 (kdlib.methods.dhkd); its second head.
Its `grad_align` is tested in test_grad_align.py."""
import torch

from kdlib.losses.binary_kl import binary_kl_norm_loss
from kdlib.models.heads import DualHead
from tests.helpers.methods import setup


def test_dhkd_puts_ce_on_head1_and_binarykl_norm_on_head2():
    method, model, x, y, teacher = setup("dhkd", ce_weight=0.5, aux_weight=2.0, aux_temperature=3.0)
    assert isinstance(model, DualHead)
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
    assert model.aux_head.weight.grad is None or model.aux_head.weight.grad.abs().max() == 0
    # exported model is head 1 only
    assert method.exported(model) is model.backbone_model


def test_mlp_aux_head():
    method, model, *_ = setup("dhkd", aux_head="mlp")
    assert isinstance(model.aux_head, torch.nn.Sequential)
