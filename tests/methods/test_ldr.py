"""LDR (kdlib.methods.ldr): by default the LDR code's LDR-KL at the runnable script's margin.
The loss against the LDR code's `LDRLoss_V1`: tests/losses/test_ldr.py."""
import torch

from kdlib.losses.ldr import ldr_kl_loss
from kdlib.methods.base import validate_method_entry
from tests.helpers.methods import build, setup
from tests.helpers.reference import labels, rand, t64


def test_defaults_are_the_ldr_scripts():
    # experiment.py:23 --margin 0.1; lambda 10, one of the values experiment.py:134 cross-validates
    s = validate_method_entry("ldr", None)
    assert (s.delta, s.lam) == (0.1, 10.0)
    z = t64(rand(6, 8, 60, scale=3.0)).requires_grad_(True)
    y = torch.from_numpy(labels(6, 8, 60))
    _, terms = build("ldr").forward_train(lambda _x: (z, z), None, y, None, 0)
    assert terms.keys() == {"ldr"}
    torch.testing.assert_close(terms["ldr"], ldr_kl_loss(z, y, 10.0, 0.1), rtol=1e-12, atol=1e-14)


def test_settings_reach_the_loss():
    method, model, x, y, _ = setup("ldr", lam=1.0, delta=2.0)
    model.eval()
    logits, terms = method.forward_train(model, x, y, None, 0)
    torch.testing.assert_close(terms["ldr"], ldr_kl_loss(logits, y, 1.0, 2.0))
