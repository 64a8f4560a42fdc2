"""The one-head BinaryKL methods (kdlib.methods.binary_kl): DHKD's same-head ablation."""
import torch

from kdlib.losses.binary_kl import binary_kl_norm_loss
from kdlib.models.heads import DualHead
from tests.helpers.methods import setup


def test_same_head_ablation_shares_one_head():
    method, model, x, y, teacher = setup("ce+binarykl_norm")
    assert not isinstance(model, DualHead)
    logits, terms = method.forward_train(model, x, y, teacher, 0)
    torch.testing.assert_close(terms["binarykl_norm"], binary_kl_norm_loss(logits, teacher, 2.0))
