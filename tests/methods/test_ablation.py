"""DHKD's ablation table (CE, KD, DKD, BinaryKL, BinaryKLNorm, CE + BinaryKL, CE + BinaryKLNorm, DHKD,
DHKD + KD): registered, finite terms that reach every parameter, and the terms' names."""
import pytest
import torch

from kdlib.methods.base import method_names
from tests.helpers.methods import ABLATION_METHODS, setup


def test_registry_has_the_ablation_methods():
    assert set(ABLATION_METHODS) <= set(method_names())


@pytest.mark.parametrize("name", ABLATION_METHODS)
def test_terms_are_finite_and_backpropagate(name):
    method, model, x, y, teacher = setup(name)
    logits, terms = method.forward_train(model, x, y, teacher if method.needs_teacher else None, epoch=0)
    assert logits.shape == (6, 10) and terms
    loss = sum(terms.values())
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_term_names():
    names = {n: set(setup(n)[0].forward_train(*setup(n)[1:4], setup(n)[4], 0)[1]) for n in ABLATION_METHODS}
    assert names["ce"] == {"ce"}
    assert names["kd"] == {"ce", "kd"}
    assert names["ce+binarykl"] == {"ce", "binarykl"}
    assert names["ce+binarykl_norm"] == {"ce", "binarykl_norm"}
    assert names["dhkd"] == {"ce", "aux_binarykl_norm"}
    assert names["dhkd_kd"] == {"ce", "kd", "aux_binarykl_norm"}
    assert names["dkd"] == {"ce", "dkd"}
