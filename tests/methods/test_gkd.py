"""GKD (kdlib.methods.gkd): TRL's defaults, beta's range, its terms against the generalized JSD,
its ends against forward and reverse KL, and a few steps on a token model."""
import pytest
import torch
import torch.nn.functional as F

from kdlib.losses.kd import kd_loss, reverse_kl_loss
from kdlib.losses.tokens import generalized_jsd_loss
from kdlib.methods.base import method_class, validate_method_entry
from tests.helpers.tokens import distil_steps, lm_setup


def test_defaults_are_trl_s():
    assert validate_method_entry("gkd", None).model_dump(exclude={"method"}) == {
        "beta": 0.5, "temperature": 1.0, "ce_weight": 0.0, "kd_weight": 1.0,
    }
    cls = method_class("gkd")
    assert cls.__module__ == "kdlib.methods.gkd" and cls.needs_teacher and cls.cached == ("logits",)


@pytest.mark.parametrize("beta", [-0.1, 1.01])
def test_beta_outside_0_1_is_refused_with_its_path(beta):
    with pytest.raises(ValueError, match=r"methods\.gkd\.beta: Input should be"):
        validate_method_entry("gkd", {"beta": beta})
    with pytest.raises(ValueError, match=r"methods\.gkd_rkl\.beta"):
        validate_method_entry("gkd_rkl", {"method": "gkd", "beta": beta})


def test_terms_are_the_weighted_generalized_jsd_per_token():
    method, model, x, y, teacher = lm_setup("gkd", beta=0.3, ce_weight=0.2, kd_weight=1.5)
    model.eval()
    logits, terms = method.forward_train(model, x, y, teacher, 0)
    assert logits.shape == (16, 24) and set(terms) == {"ce", "gkd"}
    torch.testing.assert_close(terms["ce"], 0.2 * F.cross_entropy(logits, y))
    torch.testing.assert_close(terms["gkd"], 1.5 * generalized_jsd_loss(logits, teacher, 0.3, 1.0))
    sum(terms.values()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_beta_0_trains_forward_kl_and_beta_1_reverse_kl():
    for beta, reference in ((0.0, kd_loss), (1.0, reverse_kl_loss)):
        method, model, x, y, teacher = lm_setup("gkd", beta=beta)
        model.eval()
        logits, terms = method.forward_train(model, x, y, teacher, 0)
        torch.testing.assert_close(terms["gkd"], reference(logits, teacher, 1.0))
        assert "ce" not in terms  # GKD's default has no CE term


def test_a_few_steps_on_a_token_model_reduce_the_loss():
    method, model, x, y, teacher = lm_setup("gkd")
    losses = distil_steps(method, model.train(), x, y, teacher)
    assert losses[-1] < 0.8 * losses[0], losses
