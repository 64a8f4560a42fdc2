"""Token-level reverse KL (kdlib.methods.reverse_kl): defaults, settings validation, its terms
against the reference losses, and a few steps on a token model."""
import pytest
import torch
import torch.nn.functional as F

from kdlib.losses.kd import reverse_kl_loss
from kdlib.methods.base import method_class, validate_method_entry
from tests.helpers.tokens import distil_steps, lm_setup


def test_defaults_are_the_lm_kd_ones():
    assert validate_method_entry("reverse_kl", None).model_dump(exclude={"method"}) == {
        "temperature": 1.0, "ce_weight": 0.5, "kd_weight": 0.5,
    }
    cls = method_class("reverse_kl")
    assert cls.__module__ == "kdlib.methods.reverse_kl" and cls.needs_teacher and cls.cached == ("logits",)


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match=r"methods\.reverse_kl\.temperature: Input should be greater than 0"):
        validate_method_entry("reverse_kl", {"temperature": 0})
    with pytest.raises(ValueError, match=r"methods\.reverse_kl\.kd_weight: Input should be greater than or equal to 0"):
        validate_method_entry("reverse_kl", {"kd_weight": -1})
    with pytest.raises(ValueError, match=r"methods\.reverse_kl\.beta: unknown key"):
        validate_method_entry("reverse_kl", {"beta": 0.5})


def test_terms_are_ce_and_the_student_first_kl_per_token():
    method, model, x, y, teacher = lm_setup("reverse_kl", ce_weight=0.3, kd_weight=2.0, temperature=2.0)
    model.eval()
    logits, terms = method.forward_train(model, x, y, teacher, 0)
    assert logits.shape == (16, 24) and set(terms) == {"ce", "reverse_kl"}
    torch.testing.assert_close(terms["ce"], 0.3 * F.cross_entropy(logits, y))
    # by hand: T^2 * mean over the 16 tokens of sum_v p_s (log p_s - log p_t)
    log_ps, log_pt = F.log_softmax(logits / 2, 1), F.log_softmax(teacher / 2, 1)
    torch.testing.assert_close(terms["reverse_kl"], 2.0 * 4.0 * (log_ps.exp() * (log_ps - log_pt)).sum(1).mean())
    torch.testing.assert_close(terms["reverse_kl"], 2.0 * reverse_kl_loss(logits, teacher, 2.0))
    sum(terms.values()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_a_few_steps_on_a_token_model_reduce_the_loss():
    method, model, x, y, teacher = lm_setup("reverse_kl")
    losses = distil_steps(method, model.train(), x, y, teacher)
    assert losses[-1] < 0.8 * losses[0], losses
