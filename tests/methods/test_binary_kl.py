"""The one-head BinaryKL methods (kdlib.methods.binary_kl): DHKD's same-head ablation."""
import torch

from kdlib.losses.binary_kl import binary_kl_loss, binary_kl_norm_loss
from kdlib.models.heads import DualHead
from tests.helpers.methods import setup


def test_same_head_ablation_shares_one_head():
    method, model, x, y, teacher = setup("ce+binarykl_norm")
    assert not isinstance(model, DualHead)
    logits, terms = method.forward_train(model, x, y, teacher, 0)
    torch.testing.assert_close(terms["binarykl_norm"], binary_kl_norm_loss(logits, teacher, 2.0))


def test_ce_plus_binarykl_is_ce_and_binarykl_on_the_one_head():
    method, model, x, y, teacher = setup("ce+binarykl", ce_weight=0.5, kd_weight=2.0, temperature=3.0)
    assert not isinstance(model, DualHead)
    logits, terms = method.forward_train(model, x, y, teacher, 0)
    assert set(terms) == {"ce", "binarykl"}
    torch.testing.assert_close(terms["ce"], 0.5 * torch.nn.functional.cross_entropy(logits, y))
    torch.testing.assert_close(terms["binarykl"], 2.0 * binary_kl_loss(logits, teacher, 3.0))
