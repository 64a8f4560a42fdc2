"""SinKD (kdlib.methods.sinkd): by default the SinKD code's objective; alpha splits CE and KD,
`kd_form` picks the KD term, beta weighs the Sinkhorn term at its own temperature.
The losses against the SinKD code's formulas: tests/losses/test_sinkd.py."""
import pytest
import torch
import torch.nn.functional as F

from kdlib.losses.kd import kd_loss
from kdlib.losses.sinkd import sinkhorn_loss, soft_cross_entropy
from kdlib.methods.base import validate_method_entry
from tests.helpers.methods import build, setup
from tests.helpers.reference import labels, rand, t64


def test_defaults_are_the_sinkd_codes():
    s = validate_method_entry("sinkd", None)
    # main_glue_distill.py:52,54,58 (--alpha 0.8, --temperature 2, --beta 1) and loss.py:122,129,138
    # (Sinkhorn T 2, eps 0.1, 20 iterations, x 0.001)
    assert (s.alpha, s.temperature, s.kd_form) == (0.8, 2.0, "soft_ce")
    assert (s.beta, s.sinkhorn_temperature, s.epsilon, s.iterations) == (0.001, 2.0, 0.1, 20)


def test_default_objective_is_the_sinkd_codes_on_random_logits():
    # glue_train.py:403,429: alpha * DistillKL + (1 - alpha) * CE + beta * Sinkhorn, with the defaults
    method = build("sinkd")
    z = t64(rand(8, 6, 40, scale=3.0)).requires_grad_(True)
    teacher, y = t64(rand(8, 6, 41, scale=3.0)), torch.from_numpy(labels(8, 6, 40))
    _, terms = method.forward_train(lambda _x: (z, z), None, y, teacher, 0)
    ref = 0.2 * F.cross_entropy(z, y) + 0.8 * soft_cross_entropy(z, teacher, 2.0) + 0.001 * sinkhorn_loss(z, teacher, 2.0, 0.1, 20)
    got = sum(terms.values())
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-14)
    (g_got,) = torch.autograd.grad(got, z, retain_graph=True)
    (g_ref,) = torch.autograd.grad(ref, z)
    torch.testing.assert_close(g_got, g_ref, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("kd_form", ["soft_ce", "kl_t2"])
def test_settings_reach_their_terms(kd_form):
    method, model, x, y, teacher = setup(
        "sinkd", alpha=0.25, beta=2.0, temperature=3.0, sinkhorn_temperature=1.5, epsilon=0.5, iterations=5, kd_form=kd_form,
    )
    model.eval()
    logits, terms = method.forward_train(model, x, y, teacher, 0)
    kd_term = soft_cross_entropy if kd_form == "soft_ce" else kd_loss
    torch.testing.assert_close(terms["ce"], 0.75 * F.cross_entropy(logits, y))
    torch.testing.assert_close(terms["kd"], 0.25 * kd_term(logits, teacher, 3.0))
    torch.testing.assert_close(terms["sinkhorn"], 2.0 * sinkhorn_loss(logits, teacher, 1.5, 0.5, 5))


def test_bad_settings_name_the_field():
    with pytest.raises(ValueError, match=r"methods\.sinkd\.alpha"):
        validate_method_entry("sinkd", {"alpha": 1.5})
    with pytest.raises(ValueError, match=r"methods\.sinkd\.kd_form"):
        validate_method_entry("sinkd", {"kd_form": "kl"})
